"""The project's benchmarks (not installed): harness/, peers/, run.sh, RESULTS.md."""
