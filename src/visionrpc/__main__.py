"""``python -m visionrpc``: the same as the ``visionrpc`` command."""

from visionrpc.cli.main import main

main()
