"""visionrpc's own runtime, packaged for a peer server's model function.

Both peers (MLServer, Triton) call :class:`PeerModel` with a batch of encoded images and send back
one JSON document per image. The work inside is visionrpc's server path step for step: the
pipeline's decode + letterbox (``InferencePipeline._prepare``), one ONNX Runtime call for the whole
batch (``BatchRunner``, the runner visionrpc's DynamicBatcher uses), and its post-processing
(``InferencePipeline._finish``: box/mask decoding, defect summaries). Only the serving layer around
it differs. The model is the one visionrpc serves by default (``InferencePipeline.from_settings``,
so ``VISIONRPC_*`` variables apply here too). One PeerModel runs one model call at a time, so unless
``VISIONRPC_RUNTIME__INSTANCES`` says otherwise its session is planned for one instance: each ORT
call uses every core, the best set-up for a server without model instances. A peer running copies
side by side (MLServer's parallel workers, Triton's instance group) holds one PeerModel per copy,
and run_peers.py shares the cores out with ``VISIONRPC_RUNTIME__INTRA_OP_THREADS``.

The private ``_prepare``/``_finish`` are used on purpose: they are the exact per-image steps of
visionrpc's batched path; if they are renamed, this module is the one place to follow.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence

from visionrpc.runtime.budget import Deadline
from visionrpc.runtime.pipeline import BatchRunner, InferencePipeline, resolve_options
from visionrpc.settings import Settings
from visionrpc.types import InferenceInput, InferenceOptions, InferenceResult

log = logging.getLogger(__name__)


def result_to_json(result: InferenceResult) -> bytes:
    """The fields a peer returns per image (what the sanity check compares), as compact JSON."""
    doc = {
        "model": result.model,
        "width": result.image_width,
        "height": result.image_height,
        "detections": [
            {
                "class_id": d.class_id,
                "class_name": d.class_name,
                "score": round(d.score, 5),
                "box": [round(v, 2) for v in (d.box.x_min, d.box.y_min, d.box.x_max, d.box.y_max)],
                "mask_area_px": d.mask_area_px,
            }
            for d in result.detections
        ],
    }
    return json.dumps(doc, separators=(",", ":")).encode()


class PeerModel:
    """visionrpc's default model behind a ``list[bytes] -> list[bytes]`` batch call.

    Thread-safe: decoding and post-processing may run in several threads at once, model calls take
    turns (the runner reuses one input buffer, like visionrpc's single batch worker).
    """

    def __init__(self, settings: Settings | None = None) -> None:
        settings = settings or Settings()
        if not settings.runtime.instances:
            runtime = settings.runtime.model_copy(update={"instances": 1})
            settings = settings.model_copy(update={"runtime": runtime})
        self.settings = settings
        self.pipeline = InferencePipeline.from_settings(self.settings)
        self.model = self.pipeline.repository.get()  # the default model
        self._runner = BatchRunner(self.model)
        self._run_lock = threading.Lock()
        log.info(
            "peer model %s (%s), input %s, max batch %d",
            self.model.name,
            self.model.path,
            self.model.onnx.input_size,
            self.model.max_batch_size,
        )

    def infer(self, images: Sequence[bytes]) -> list[bytes]:
        """Decode + letterbox each image, run the model once per batch, post-process each."""
        start = time.perf_counter()
        model, pipeline = self.model, self.pipeline
        items = [InferenceInput(InferenceOptions(), image_bytes=bytes(b)) for b in images]
        options = [resolve_options(item.options, model) for item in items]
        prepared = [pipeline._prepare(item, model, Deadline()) for item in items]  # no budget
        outputs = []
        step = model.max_batch_size
        with self._run_lock:
            t0 = time.perf_counter()
            for i in range(0, len(prepared), step):
                outputs.extend(self._runner(prepared[i : i + step]))
            run_ms = (time.perf_counter() - t0) * 1000
        return [
            result_to_json(pipeline._finish(item, model, opts, prep, out, run_ms, 0.0, start))
            for item, opts, prep, out in zip(items, options, prepared, outputs, strict=True)
        ]
