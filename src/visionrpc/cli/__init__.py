"""The visionrpc command line."""
