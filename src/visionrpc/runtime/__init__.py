"""Model runtime: loading, pre/post-processing and batching. Knows nothing of gRPC."""
