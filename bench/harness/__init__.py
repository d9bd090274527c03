"""The comparison benchmark (``python -m bench.harness``, bench/run.sh): baseline vs visionrpc's
pipeline in-process vs its gRPC server, in one run. Not installed with the package; the load
loop it shares with ``visionrpc bench --target`` is ``visionrpc.client.loadtest``.

Modules: ``images`` (the fixed image set), ``baseline`` (the straightforward pipeline),
``loadgen`` (report rows, CoreServices drivers), ``worker`` (in-process measurements in a child
process), ``procs`` (server subprocesses, peak RSS), ``bare_server`` (plain grpc.aio
CoreServices), ``runner`` (the whole run) and ``report`` (row schema, ratios, targets, tables).
"""
