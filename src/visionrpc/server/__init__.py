"""The gRPC wire layer: app, servicers, converters, interceptors, error→status map."""
