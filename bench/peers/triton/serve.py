"""Start Triton (through PyTriton) on 127.0.0.1 with visionrpc's model; run with .venv-triton.

Model ``yolo``: input ``image`` (BYTES, declared shape (1,), so clients send [N, 1]), output
``result`` (BYTES: one JSON document per image, see peer_model.result_to_json). The dynamic batcher
hands the model function up to 8 requests at once; --max-queue-delay-us says how long it may wait
to fill a batch. --instances N is Triton's own lever for running model calls side by side (the
count of the model's instance group): PyTriton binds a list of N inference callables, one per
instance, each with its own copy of the model, and Triton hands batches to idle instances (PyTriton
sets the instance group's count to the number of callables). PyTriton runs a real tritonserver
binary with its Python backend; the callables run in this process, one thread each. Stop it with
SIGINT.

The Python backend's stub needs this interpreter's own lib/ folder on LD_LIBRARY_PATH (pyenv/uv
Pythons); main() adds it. Set PYTRITON_HOME and TMPDIR to folders of your own (run_peers.py does),
or PyTriton writes into ~/.cache/pytriton and /tmp.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from peer_model import PeerModel

MODEL_NAME = "yolo"
MAX_BATCH_SIZE = 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--max-queue-delay-us", type=int, default=0)
    parser.add_argument("--instances", type=int, default=1, help="model instances (callables)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    # The Python backend's stub must load this interpreter's libpython, not the system one.
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    ld_path = os.environ.get("LD_LIBRARY_PATH", "")
    if libdir and libdir not in ld_path.split(os.pathsep):
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, ld_path) if p)

    def instance(peer: PeerModel) -> Callable[..., dict[str, np.ndarray]]:
        """One instance's inference callable, over its own copy of the model."""

        @batch
        def infer(image: np.ndarray) -> dict[str, np.ndarray]:
            results = peer.infer([row[0] for row in image])
            return {"result": np.array(results, dtype=np.object_).reshape(-1, 1)}

        return infer

    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=args.http_port,
        grpc_address="127.0.0.1",
        grpc_port=args.grpc_port,
        allow_metrics=False,
        exit_timeout_secs=5,
    )
    with Triton(config=config) as triton:
        triton.bind(
            model_name=MODEL_NAME,
            infer_func=[instance(PeerModel()) for _ in range(args.instances)],
            inputs=[Tensor(name="image", dtype=np.bytes_, shape=(1,))],
            outputs=[Tensor(name="result", dtype=np.bytes_, shape=(1,))],
            config=ModelConfig(
                max_batch_size=MAX_BATCH_SIZE,
                batcher=DynamicBatcher(max_queue_delay_microseconds=args.max_queue_delay_us),
            ),
            strict=True,
        )
        triton.serve()  # blocks until SIGINT/SIGTERM


if __name__ == "__main__":
    main()
