"""Generated from protos/visionrpc/v1 by tools/gen_protos.py. Do not edit."""
