"""Run by test_oip_tritonclient_aio.py with an interpreter that has tritonclient[grpc] (its own
venv: tritonclient pins its own protobuf). Uses ``tritonclient.grpc.aio`` as an asyncio user would:
several infers in flight at once, then bad requests, and prints what it saw as JSON. Imports
nothing from visionrpc.

    python oip_tritonclient_aio_probe.py ADDRESS MODEL CONFIDENCE IMAGE...
"""

from __future__ import annotations

import asyncio
import json
import struct
import sys
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc.aio as triton  # type: ignore[import-not-found]
from tritonclient.utils import InferenceServerException  # type: ignore[import-not-found]

CONCURRENT = 8
OUTPUTS = ("BOXES", "SCORES", "CLASS_IDS", "IMAGE_INDEX")


def image_input(image: bytes) -> Any:
    tensor = triton.InferInput("IMAGE", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([image], dtype=np.object_))
    return tensor


async def infer(client: Any, model: str, image: bytes, confidence: float) -> dict[str, Any]:
    result = await client.infer(model, [image_input(image)], parameters={"confidence": confidence})
    return {name: result.as_numpy(name).tolist() for name in OUTPUTS}


async def refused(client: Any, model: str, tensor: Any) -> list[str] | None:
    """The (status, message) of the client's exception for a request the server must refuse."""
    try:
        await client.infer(model, [tensor])
    except InferenceServerException as exc:
        return [str(exc.status()), str(exc.message())]
    return None


def bad_requests(image: bytes) -> dict[str, Any]:
    wrong_datatype = triton.InferInput("IMAGE", [3], "UINT8")
    wrong_datatype.set_data_from_numpy(np.zeros(3, np.uint8))
    # One image sent, the shape claims three.
    wrong_shape = image_input(image)
    wrong_shape.set_shape([3])
    # The element's 4-byte length prefix claims 100 bytes more than follow. tritonclient always
    # frames correctly, so the framed bytes it will send are replaced by hand.
    bad_framing = image_input(image)
    bad_framing._raw_content = struct.pack("<I", len(image) + 100) + image
    unknown_name = triton.InferInput("PICTURE", [1], "BYTES")
    unknown_name.set_data_from_numpy(np.array([image], dtype=np.object_))
    return {
        "wrong_datatype": wrong_datatype,
        "wrong_shape": wrong_shape,
        "bad_framing": bad_framing,
        "unknown_name": unknown_name,
    }


async def main() -> None:
    address, model, confidence_text, *paths = sys.argv[1:]
    confidence = float(confidence_text)
    images = [Path(p).read_bytes() for p in paths]
    async with triton.InferenceServerClient(address) as client:
        seen: dict[str, Any] = {
            "live": await client.is_server_live(),
            "ready": await client.is_server_ready(),
            "model_ready": await client.is_model_ready(model),
            "model_metadata": await client.get_model_metadata(model, as_json=True),
        }
        # Each request carries one image, the images taken in turn; all in flight together.
        sent = [i % len(images) for i in range(CONCURRENT)]
        results = await asyncio.gather(*(infer(client, model, images[i], confidence) for i in sent))
        seen["concurrent"] = [
            {"image": i, "outputs": r} for i, r in zip(sent, results, strict=True)
        ]
        for name, tensor in bad_requests(images[0]).items():
            seen[name] = await refused(client, model, tensor)
        seen["after_errors"] = await infer(client, model, images[0], confidence)
    print(json.dumps(seen))


if __name__ == "__main__":
    asyncio.run(main())
