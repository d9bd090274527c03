"""MLServer runtime: visionrpc's default model behind KServe v2, encoded images as a BYTES tensor.

Input ``image`` (BYTES, shape [N, 1]: one encoded image per row; with adaptive batching MLServer
concatenates the rows of several requests), output ``result`` (BYTES, [N, 1]: one JSON document
per image, see peer_model.result_to_json). The work runs in a worker thread so the event loop keeps
accepting requests while the model runs, as visionrpc's own server does.
"""

from __future__ import annotations

import asyncio

from mlserver import MLModel
from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput
from peer_model import PeerModel

INPUT_NAME = "image"
OUTPUT_NAME = "result"


class VisionRuntime(MLModel):
    """Runs visionrpc's decode -> letterbox -> ONNX Runtime -> post-processing per batch."""

    async def load(self) -> bool:
        self._peer = PeerModel()
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        request_input = next(i for i in payload.inputs if i.name == INPUT_NAME)
        data = request_input.data
        images: list[bytes] = list(getattr(data, "root", data))
        results = await asyncio.to_thread(self._peer.infer, images)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[
                ResponseOutput(
                    name=OUTPUT_NAME, datatype="BYTES", shape=[len(results), 1], data=results
                )
            ],
        )
