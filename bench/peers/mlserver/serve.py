"""Start MLServer on 127.0.0.1 with visionrpc's model; run with .venv-mlserver's python.

Writes settings.json and yolo/model-settings.json into --workdir, then replaces this process with
``mlserver start`` (so SIGINT/SIGTERM reach MLServer directly).

    python mlserver/serve.py --workdir DIR --grpc-port P --http-port H --metrics-port M
        [--batching] [--parallel-workers N]

--parallel-workers N > 0 is MLServer's own lever for running model calls side by side: N worker
processes, each with its own copy of the model, requests handed to them in turn. With 0 the model
runs in the server process, one call at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODEL_NAME = "yolo"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # MLServer's default is gRPC's 4 MiB
MAX_BATCH_SIZE = 8
MAX_BATCH_TIME_S = 0.005


def write_repository(
    workdir: Path,
    *,
    grpc_port: int,
    http_port: int,
    metrics_port: int,
    batching: bool,
    parallel_workers: int,
) -> Path:
    """Write MLServer's settings.json and the model folder; returns the folder to serve."""
    model_dir = workdir / MODEL_NAME
    model_dir.mkdir(parents=True, exist_ok=True)
    settings = {
        "debug": False,
        "host": "127.0.0.1",
        "grpc_port": grpc_port,
        "http_port": http_port,
        "metrics_port": metrics_port,
        "metrics_endpoint": None,
        # 0: the model runs in the server process (no tensor copies), one call at a time
        "parallel_workers": parallel_workers,
        "grpc_max_message_length": MAX_MESSAGE_BYTES,
        "load_models_at_startup": True,
    }
    model_settings: dict[str, object] = {
        "name": MODEL_NAME,
        "implementation": "vision_runtime.VisionRuntime",
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1, 1]}],
        "outputs": [{"name": "result", "datatype": "BYTES", "shape": [-1, 1]}],
    }
    if batching:
        model_settings["max_batch_size"] = MAX_BATCH_SIZE
        model_settings["max_batch_time"] = MAX_BATCH_TIME_S
    (workdir / "settings.json").write_text(json.dumps(settings, indent=2) + "\n")
    (model_dir / "model-settings.json").write_text(json.dumps(model_settings, indent=2) + "\n")
    return workdir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument("--batching", action="store_true", help="adaptive batching 8 / 5 ms")
    parser.add_argument(
        "--parallel-workers", type=int, default=0, help="inference worker processes (0: none)"
    )
    args = parser.parse_args()
    root = write_repository(
        args.workdir,
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
        batching=args.batching,
        parallel_workers=args.parallel_workers,
    )
    paths = [str(HERE), str(HERE.parent), os.environ.get("PYTHONPATH", "")]
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    mlserver = Path(sys.executable).with_name("mlserver")
    os.chdir(root)  # MLServer writes .metrics/.envs folders into the working directory
    os.execv(mlserver, [str(mlserver), "start", str(root)])


if __name__ == "__main__":
    main()
