"""``visionrpc bench``: baseline vs optimised pipeline vs gRPC server, in one run.

Modules: ``images`` (the fixed image set), ``baseline`` (the straightforward pipeline),
``loadgen`` (closed-loop load drivers), ``worker`` (in-process measurements in a child process),
``procs`` (server subprocesses, peak RSS), ``bare_server`` (plain grpc.aio CoreServices),
``runner`` (the whole run) and ``report`` (row schema, ratios, targets, tables, JSON).
"""
