"""The wire layer shared by the client and the server: proto ↔ domain converters, status codes.

The generated protobuf and gRPC code itself lives in ``visionrpc.v1`` (the proto package's name).
"""
