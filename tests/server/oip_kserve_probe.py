"""Run by test_oip_kserve.py with an interpreter that has ``kserve`` (its own venv: kserve pins its
own protobuf and brings a server stack). Calls the server through KServe's v2 gRPC client,
``kserve.InferenceGRPCClient``, and prints what it saw as JSON. Imports nothing from visionrpc.

    python oip_kserve_probe.py ADDRESS MODEL CONFIDENCE IMAGE

InferenceGRPCClient has no metadata call; ModelMetadata goes through the v2 stub kserve ships.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from google.protobuf.json_format import MessageToDict
from kserve import InferenceGRPCClient, InferInput, InferRequest  # type: ignore[import-not-found]
from kserve.protocol.grpc import grpc_predict_v2_pb2 as v2  # type: ignore[import-not-found]
from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import (  # type: ignore[import-not-found]
    GRPCInferenceServiceStub,
)

OUTPUTS = ("BOXES", "SCORES", "CLASS_IDS", "IMAGE_INDEX")


async def infer(client: Any, request: Any) -> dict[str, Any]:
    response = await client.infer(request)
    return {name: response.get_output_by_name(name).as_numpy().tolist() for name in OUTPUTS}


async def refused(client: Any, request: Any) -> list[str] | None:
    try:
        await client.infer(request)
    except grpc.aio.AioRpcError as exc:
        return [exc.code().name, str(exc.details())]
    return None


async def main() -> None:
    address, model, confidence_text, image_path = sys.argv[1:5]
    image = Path(image_path).read_bytes()
    # KServe's v2 proto has no double_param: a fractional number travels as a string.
    parameters = {"confidence": confidence_text}
    # Two images in raw_input_contents (set_data_from_numpy frames them as Triton does) ...
    framed = InferInput("IMAGE", [2], "BYTES")
    framed.set_data_from_numpy(np.array([image, image], dtype=np.object_))
    # ... and one in contents.bytes_contents (data given as a list).
    listed = InferInput("IMAGE", [1], "BYTES", data=[image])
    wrong = InferInput("IMAGE", [2], "FP32")
    wrong.set_data_from_numpy(np.zeros(2, np.float32))
    async with InferenceGRPCClient(address, retries=0, timeout=60) as client:
        seen: dict[str, Any] = {
            "live": await client.is_server_live(),
            "ready": await client.is_server_ready(),
            "model_ready": await client.is_model_ready(model),
            "unknown_model_ready": await client.is_model_ready("nope"),
            "raw": await infer(client, InferRequest(model, [framed], parameters=parameters)),
            "bytes_contents": await infer(
                client, InferRequest(model, [listed], parameters=parameters)
            ),
            "wrong_datatype": await refused(client, InferRequest(model, [wrong])),
            "unknown_model": await refused(client, InferRequest("nope", [listed])),
            "not_a_number": await refused(
                client, InferRequest(model, [listed], parameters={"confidence": "high"})
            ),
        }
    async with grpc.aio.insecure_channel(address) as channel:
        metadata = await GRPCInferenceServiceStub(channel).ModelMetadata(
            v2.ModelMetadataRequest(name=model)
        )
    seen["model_metadata"] = MessageToDict(metadata)
    print(json.dumps(seen))


if __name__ == "__main__":
    asyncio.run(main())
