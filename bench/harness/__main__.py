"""``python -m bench.harness [OPTIONS]`` from the repository root (bench/run.sh does this)."""

from bench.harness.cli import app

app()
