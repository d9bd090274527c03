"""A Node client built from the .proto files alone (@grpc/grpc-js + @grpc/proto-loader) can call
all four CoreServices methods. Needs `npm ci --prefix tests/interop/node`; skipped without node or
node_modules."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from tests.helpers import RunningServer

NODE_DIR = Path(__file__).parent / "node"
NODE = shutil.which("node")

pytestmark = [
    pytest.mark.skipif(NODE is None, reason="node is not installed"),
    pytest.mark.skipif(
        not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir(),
        reason="run `npm ci --prefix tests/interop/node` first",
    ),
]


async def test_node_client_calls_all_core_methods(server: RunningServer) -> None:
    assert NODE is not None
    process = await asyncio.create_subprocess_exec(
        NODE,
        str(NODE_DIR / "core_client.js"),
        server.address,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()
    result = json.loads(stdout)

    ping = result["ping"]
    assert ping["message"] == "hello from node"
    assert ping["instance_id"] == server.core.instance_id
    assert ping["server_time"].endswith("Z")

    assert result["stream_numbers"] == [{"index": i, "value": str(-2 + 3 * i)} for i in range(4)]

    upload = result["upload_numbers"]
    total = 5 - 1 + 9007199254740993  # beyond 2**53: int64 must survive as a string
    assert upload == {
        "count": "3",
        "sum": str(total),
        "min": "-1",
        "max": "9007199254740993",
        "mean": pytest.approx(total / 3),
    }

    chat = result["chat"]
    assert [(m["sender"], m["text"], m["seq"]) for m in chat] == [
        ("node", "first", "1"),
        ("node", "second", "2"),
    ]
    assert server.core.hub.rooms() == []
