"""Run by test_oip_tritonclient_stream.py with an interpreter that has tritonclient[grpc] (its own
venv: tritonclient pins its own protobuf). Streams to the server the way a Triton user does, with
the sync client's callback stream and the aio client's stream_infer, then reads the inference
statistics, and prints what it saw as JSON. Imports nothing from visionrpc.

    python oip_tritonclient_stream_probe.py ADDRESS MODEL IMAGE CONFIDENCE
"""

from __future__ import annotations

import asyncio
import base64
import json
import queue
import sys
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as triton  # type: ignore[import-not-found]
import tritonclient.grpc.aio as triton_aio  # type: ignore[import-not-found]


def images(*encoded: bytes) -> Any:
    tensor = triton.InferInput("IMAGE", [len(encoded)], "BYTES")
    tensor.set_data_from_numpy(np.array(list(encoded), dtype=np.object_))
    return tensor


def wrong_datatype() -> Any:
    tensor = triton.InferInput("IMAGE", [3], "UINT8")
    tensor.set_data_from_numpy(np.zeros(3, np.uint8))
    return tensor


def seen(result: Any, error: Any) -> dict[str, Any]:
    """One stream answer: the id and detections, or the error (the callback gets no id then)."""
    if error is not None:
        return {"id": None, "error": error.message()}
    index = result.as_numpy("IMAGE_INDEX")  # None when the request named other outputs
    return {
        "id": result.get_response().id,
        "error": None,
        "image_index": None if index is None else index.tolist(),
        "scores": result.as_numpy("SCORES").tolist(),
    }


def sync_stream(address: str, model: str, image: bytes, parameters: dict[str, Any]) -> list[Any]:
    answers: queue.Queue[dict[str, Any]] = queue.Queue()
    client = triton.InferenceServerClient(address)
    client.start_stream(callback=lambda result, error: answers.put(seen(result, error)))
    client.async_stream_infer(model, [images(image)], request_id="a", parameters=parameters)
    client.async_stream_infer(model, [wrong_datatype()], request_id="b", parameters=parameters)
    client.async_stream_infer(model, [images(image)], request_id="c", parameters=parameters)
    client.async_stream_infer(model, [images(image, image)], request_id="d", parameters=parameters)
    client.stop_stream()  # waits until every answer has been handed to the callback
    client.close()
    return [answers.get_nowait() for _ in range(answers.qsize())]


async def aio_stream(
    address: str, model: str, image: bytes, parameters: dict[str, Any]
) -> dict[str, Any]:
    masks = [
        triton.InferRequestedOutput(name) for name in ("SCORES", "MASKS", "MASK_ORIGINS", "RESULT")
    ]

    async def requests() -> Any:
        yield {
            "model_name": model,
            "inputs": [images(image)],
            "request_id": "x",
            "parameters": parameters,
        }
        yield {"model_name": "nope", "inputs": [images(image)], "request_id": "y"}
        yield {
            "model_name": model,
            "inputs": [images(image)],
            "request_id": "z",
            "parameters": {**parameters, "masks": True},
            "outputs": masks,
        }

    async with triton_aio.InferenceServerClient(address) as client:
        answers = [(result, error) async for result, error in client.stream_infer(requests())]
    out: dict[str, Any] = {"answers": [seen(r, e) for r, e in answers]}
    result, error = answers[2]
    if error is None:
        out["masks"] = [base64.b64encode(m).decode() for m in result.as_numpy("MASKS")]
        out["mask_origins"] = result.as_numpy("MASK_ORIGINS").tolist()
        out["result"] = [base64.b64encode(r).decode() for r in result.as_numpy("RESULT")]
    return out


def main() -> None:
    address, model, image_path, confidence = sys.argv[1:5]
    image = Path(image_path).read_bytes()
    parameters = {"confidence": float(confidence)}
    report: dict[str, Any] = {
        "sync": sync_stream(address, model, image, parameters),
        "aio": asyncio.run(aio_stream(address, model, image, parameters)),
    }
    client = triton.InferenceServerClient(address)
    report["statistics"] = client.get_inference_statistics(model, as_json=True)
    report["all_statistics"] = client.get_inference_statistics(as_json=True)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
