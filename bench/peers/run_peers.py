"""Benchmark the peer servers (MLServer, Triton via PyTriton) serving visionrpc's default model,
and visionrpc itself through the same client (its Open Inference Protocol vision view).

Run with the project's venv (it builds the image set and the reference answers with visionrpc):

    bench/peers/setup.sh                                   # once: the peers' virtualenvs
    .venv/bin/python bench/peers/run_peers.py --quick      # 1 s per point, about 4 minutes

For each server configuration: start the server (a peer in its own virtualenv, visionrpc with this
interpreter; a subprocess, 127.0.0.1 only), wait until the model is ready, run client.py from
.venv-triton (a separate process), stop the server (SIGINT), and compare its answers with
visionrpc's own (``InferencePipeline.infer_sync``) for every image. Each peer is run both with
one model call at a time and with its own lever for running model calls side by side (MLServer's
``parallel_workers``, the count of Triton's instance group); the summary names each server's best
configuration. Writes rows to --out:

    [{"name": "mlserver (batching off)", "peer": "MLServer", "configuration": "batching off",
      "model": "defects", "method": "ModelInfer", "concurrency": 16, "images_per_s": ...,
      "p50_ms": ..., "p99_ms": ..., "errors": 0, "matches_visionrpc": true}, ...]

and the details (model, image-set digest, versions, per-image comparison) to <out>.details.json.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The checkout, for bench.harness (not installed); python already put this script's folder first.
sys.path.insert(1, str(Path(__file__).resolve().parents[2]))
import grpc
from peer_model import result_to_json

from bench.harness.images import BENCH_SEED, BenchImage, make_images, save_images
from visionrpc.runtime.pipeline import InferencePipeline
from visionrpc.settings import Settings
from visionrpc.types import InferenceInput, InferenceOptions
from visionrpc.v1 import grpc_service_pb2, grpc_service_pb2_grpc

HERE = Path(__file__).resolve().parent
MLSERVER_VENV = HERE / ".venv-mlserver"
TRITON_VENV = HERE / ".venv-triton"
CLIENT_VENV = TRITON_VENV  # has tritonclient[grpc]; never the MLServer process
WORK = HERE / ".work"
MODEL_NAME = "yolo"
READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 30.0
BOX_TOLERANCE_PX = 2.0  # decoders may differ by a pixel between OpenCV versions
SCORE_TOLERANCE = 0.01


PARALLEL = 2  # model calls side by side for the peers' parallel configurations (one per core here)


def _threads_each(parallel: int) -> dict[str, str]:
    """ORT threads per model copy when ``parallel`` copies share the cores (as visionrpc plans its
    own instances), so that the copies do not oversubscribe the machine."""
    threads = max(1, (os.cpu_count() or 1) // parallel)
    return {
        "VISIONRPC_RUNTIME__INTRA_OP_THREADS": str(threads),
        # visionrpc's extra all-cores session for lone requests: the peers' batch path never uses it
        "VISIONRPC_RUNTIME__LONE_REQUEST_ALL_CORES": "false",
    }


@dataclass(frozen=True)
class Peer:
    """One server configuration: how to start it (given grpc/http/metrics ports), the server it
    belongs to (``server``, e.g. ``MLServer``) and its ``configuration`` within that server."""

    key: str
    server: str
    configuration: str
    command: Callable[[int, int, int], list[str]]
    env: dict[str, str] = field(default_factory=dict)
    vision: bool = False  # visionrpc's own vision view: ready over gRPC, client.py --vision

    @property
    def name(self) -> str:
        return f"{self.server.lower()} ({self.configuration})"


def _mlserver(batching: bool, workers: int = 0) -> Callable[[int, int, int], list[str]]:
    def command(grpc: int, http: int, metrics: int) -> list[str]:
        kind = "batching" if batching else "plain"
        return [
            str(MLSERVER_VENV / "bin" / "python"),
            str(HERE / "mlserver" / "serve.py"),
            f"--workdir={WORK / f'mlserver-{kind}-{workers}'}",
            f"--grpc-port={grpc}",
            f"--http-port={http}",
            f"--metrics-port={metrics}",
            f"--parallel-workers={workers}",
            *(["--batching"] if batching else []),
        ]

    return command


def _triton(delay_us: int, instances: int = 1) -> Callable[[int, int, int], list[str]]:
    def command(grpc: int, http: int, _metrics: int) -> list[str]:
        return [
            str(TRITON_VENV / "bin" / "python"),
            str(HERE / "triton" / "serve.py"),
            f"--grpc-port={grpc}",
            f"--http-port={http}",
            f"--max-queue-delay-us={delay_us}",
            f"--instances={instances}",
        ]

    return command


def _visionrpc(grpc: int, _http: int, _metrics: int) -> list[str]:
    argv = [sys.executable, "-m", "visionrpc.cli.main", "serve", "--host", "127.0.0.1"]
    return [*argv, "--port", str(grpc), "--grace", "1"]


PEERS = [
    Peer("mlserver", "MLServer", "batching off", _mlserver(False)),
    Peer("mlserver-batching", "MLServer", "adaptive batching 8 / 5 ms", _mlserver(True)),
    Peer(
        "mlserver-workers",
        "MLServer",
        f"parallel_workers {PARALLEL}, batching off",
        _mlserver(False, PARALLEL),
        _threads_each(PARALLEL),
    ),
    Peer("triton", "Triton", "batch 8, queue delay 0", _triton(0)),
    Peer("triton-delay", "Triton", "batch 8, queue delay 2000 us", _triton(2000)),
    Peer(
        "triton-instances",
        "Triton",
        f"{PARALLEL} instances, batch 8, queue delay 0",
        _triton(0, PARALLEL),
        _threads_each(PARALLEL),
    ),
    Peer("visionrpc", "visionrpc", "Open Inference Protocol", _visionrpc, vision=True),
]


def digest(images: list[BenchImage]) -> str:
    """sha256 over names and bytes: equal digests mean two runs sent the same images."""
    h = hashlib.sha256()
    for image in images:
        h.update(image.name.encode())
        h.update(image.data)
    return h.hexdigest()


def free_port() -> int:
    """A port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _http_ready(http_port: int, model: str) -> bool:
    """The KServe v2 model-ready endpoint (the peers) answers 200."""
    url = f"http://127.0.0.1:{http_port}/v2/models/{model}/ready"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:  # URLError included: not listening yet, or model not ready (4xx/5xx)
        return False


def _grpc_ready(grpc_port: int, model: str) -> bool:
    """The protocol's ModelReady over gRPC says ready (visionrpc serves no HTTP)."""
    try:
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            reply = stub.ModelReady(grpc_service_pb2.ModelReadyRequest(name=model), timeout=2)
            return bool(reply.ready)
    except grpc.RpcError:
        return False


def wait_ready(proc: subprocess.Popen[bytes], ready: Callable[[], bool], log_path: Path) -> float:
    """Poll ``ready`` until the model is ready; returns the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < READY_TIMEOUT_S:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}; see {log_path}")
        if ready():
            return time.monotonic() - start
        time.sleep(0.5)
    raise TimeoutError(f"model not ready after {READY_TIMEOUT_S:.0f} s; see {log_path}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT (Triton's and MLServer's clean stop), then SIGKILL whatever is left of its group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            print("  server did not stop on SIGINT; killing its process group", flush=True)
    with contextlib.suppress(ProcessLookupError):  # leftovers (tritonserver, stubs) of our session
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def compare(answers: list[dict[str, Any]], reference: list[dict[str, Any]]) -> dict[str, Any]:
    """Per image: same detection count and classes, boxes and scores within tolerance."""
    mismatched, box_diff, score_diff = [], 0.0, 0.0
    for i, (got, want) in enumerate(zip(answers, reference, strict=True)):
        pairs = list(zip(got["detections"], want["detections"], strict=False))
        same = len(got["detections"]) == len(want["detections"]) and all(
            a["class_id"] == b["class_id"] for a, b in pairs
        )
        coords = [(x, y) for a, b in pairs for x, y in zip(a["box"], b["box"], strict=True)]
        boxes = max((abs(x - y) for x, y in coords), default=0.0)
        scores = max((abs(a["score"] - b["score"]) for a, b in pairs), default=0.0)
        box_diff, score_diff = max(box_diff, boxes), max(score_diff, scores)
        if not same or boxes > BOX_TOLERANCE_PX or scores > SCORE_TOLERANCE:
            mismatched.append(i)
    return {
        "matches_visionrpc": not mismatched,
        "mismatched_images": mismatched,
        "detections": [len(a["detections"]) for a in answers],
        "visionrpc_detections": [len(r["detections"]) for r in reference],
        "max_box_diff_px": round(box_diff, 3),
        "max_score_diff": round(score_diff, 5),
    }


def versions(python: Path) -> dict[str, str]:
    """Versions of the packages that do the work, as ``python`` sees them."""
    names = [
        "mlserver",
        "nvidia-pytriton",
        "tritonclient",
        "onnxruntime",
        "opencv-python-headless",
        "numpy",
    ]
    code = (
        "import importlib.metadata as m, json, sys\n"
        "out = {}\n"
        f"for n in {names!r}:\n"
        "    try: out[n] = m.version(n)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(out))"
    )
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=60)
    return json.loads(done.stdout) if done.returncode == 0 else {}


def run_peer(
    peer: Peer,
    args: argparse.Namespace,
    images_dir: Path,
    reference: list[dict[str, Any]],
    model: str,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Start one server configuration, load it with client.py, stop it; returns (rows, details).
    ``model`` is visionrpc's default model: what the peers serve as ``yolo``."""
    grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
    logs = WORK / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{peer.key}.log"
    env = dict(os.environ)
    env.update(peer.env)
    env["PYTRITON_HOME"] = str(WORK / "pytriton")
    env["TMPDIR"] = str(WORK / "tmp")
    Path(env["TMPDIR"]).mkdir(parents=True, exist_ok=True)
    print(f"== {peer.name}: starting (log {log_path})", flush=True)
    started = time.monotonic()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            peer.command(grpc_port, http_port, metrics_port),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=HERE,
            start_new_session=True,
        )
        try:
            served = model if peer.vision else MODEL_NAME
            if peer.vision:
                ready_s = wait_ready(proc, lambda: _grpc_ready(grpc_port, served), log_path)
            else:
                ready_s = wait_ready(proc, lambda: _http_ready(http_port, served), log_path)
            print(f"   ready after {ready_s:.1f} s; load from a separate process", flush=True)
            client = [
                str(CLIENT_VENV / "bin" / "python"),
                str(HERE / "client.py"),
                f"--url=127.0.0.1:{grpc_port}",
                f"--images-dir={images_dir}",
                f"--concurrency={args.concurrency}",
                f"--duration={args.duration}",
                f"--warmup={args.warmup}",
                f"--model={served}",
                *(["--vision"] if peer.vision else []),
            ]
            points = len(args.concurrency.split(","))
            limit = 120 + points * (args.warmup + args.duration + 35)
            done = subprocess.run(client, capture_output=True, text=True, timeout=limit)
            if done.returncode != 0:
                raise RuntimeError(f"client failed ({done.returncode}):\n{done.stderr[-3000:]}")
            report = json.loads(done.stdout)
        finally:
            stop(proc)
    check = compare(report["answers"], reference)
    rows = [
        {
            "name": peer.name,
            "peer": peer.server,
            "configuration": peer.configuration,
            "model": model,
            "method": "ModelInfer",
            "concurrency": p["concurrency"],
            "images_per_s": p["images_per_s"],
            "p50_ms": p["p50_ms"],
            "p99_ms": p["p99_ms"],
            "errors": p["errors"],
            "matches_visionrpc": check["matches_visionrpc"],
        }
        for p in report["points"]
    ]
    details = {
        "name": peer.name,
        "env": peer.env,
        "ready_s": round(ready_s, 1),
        "wall_s": round(time.monotonic() - started, 1),
        "check": check,
        "points": report["points"],
    }
    return rows, details


def print_rows(rows: list[dict[str, Any]]) -> None:
    print(f"{'name':42} {'conc':>4} {'img/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'err':>4} match")
    for r in rows:
        print(
            f"{r['name']:42} {r['concurrency']:>4} {r['images_per_s']:>8} {r['p50_ms']!s:>8} "
            f"{r['p99_ms']!s:>8} {r['errors']:>4} {r['matches_visionrpc']}"
        )


def best_per_server(rows: list[dict[str, Any]], concurrency: int = 16) -> list[dict[str, Any]]:
    """Each server's configuration with the most images/s at ``concurrency`` (its row there)."""
    best: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r["concurrency"] != concurrency:
            continue
        server = r.get("peer", r["name"])
        if server not in best or r["images_per_s"] > best[server]["images_per_s"]:
            best[server] = r
    return list(best.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "peers-results.json")
    parser.add_argument("--peers", default=",".join(p.key for p in PEERS), help="comma-separated")
    parser.add_argument("--concurrency", default="1,4,16,64")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per point")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds per point")
    parser.add_argument("--quick", action="store_true", help="1 s per point, 0.5 s warm-up")
    parser.add_argument("--seed", type=int, default=BENCH_SEED, help="image set: synthetic stream")
    parser.add_argument("--count", type=int, default=32, help="image set: number of images")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.warmup = 1.0, 0.5
    by_key = {p.key: p for p in PEERS}
    unknown = [k for k in args.peers.split(",") if k not in by_key]
    if unknown:
        raise SystemExit(f"unknown peer(s) {unknown}; choose from {', '.join(by_key)}")
    missing = [v.name for v in (MLSERVER_VENV, TRITON_VENV) if not (v / ".setup-done").is_file()]
    if missing:
        raise SystemExit(f"missing {', '.join(missing)}: run {HERE / 'setup.sh'} first")

    started = time.monotonic()
    settings = Settings()
    pipeline = InferencePipeline.from_settings(settings)
    model = pipeline.repository.get()  # the default model
    print(f"model: {model.name} ({model.path})", flush=True)
    images = make_images(args.count, args.seed)
    images_dir = WORK / "images"
    shutil.rmtree(images_dir, ignore_errors=True)
    save_images(images, images_dir)
    reference = [
        json.loads(result_to_json(pipeline.infer_sync(InferenceInput(InferenceOptions(), im.data))))
        for im in images
    ]
    pipeline.shutdown()
    print(f"images: {len(images)} (seed {args.seed}), digest {digest(images)[:16]}", flush=True)

    rows: list[dict[str, Any]] = []
    details: list[dict[str, Any]] = []
    for key in args.peers.split(","):
        peer = by_key[key]
        try:
            peer_rows, peer_details = run_peer(peer, args, images_dir, reference, model.name)
        except (RuntimeError, TimeoutError, subprocess.TimeoutExpired, ValueError) as exc:
            print(f"   FAILED: {exc}", flush=True)  # the other peers still run
            details.append({"name": peer.name, "error": str(exc)[-3000:]})
            continue
        rows += peer_rows
        details.append(peer_details)
        print_rows(peer_rows)
        check = peer_details["check"]
        print(f"   {peer_details['wall_s']} s; matches visionrpc: {check['matches_visionrpc']}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    meta = {
        "model": model.name,
        "model_path": str(model.path),
        "image_set": {"seed": args.seed, "count": args.count, "sha256": digest(images)},
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "versions": {
            "visionrpc": versions(Path(sys.executable)),
            ".venv-mlserver": versions(MLSERVER_VENV / "bin" / "python"),
            ".venv-triton": versions(TRITON_VENV / "bin" / "python"),
        },
        "peers": details,
        "wall_s": round(time.monotonic() - started, 1),
    }
    details_path = args.out.with_suffix(".details.json")
    details_path.write_text(json.dumps(meta, indent=2) + "\n")
    print()
    print_rows(rows)
    print("\nbest configuration per server (most images/s at concurrency 16):")
    print_rows(best_per_server(rows))
    print(f"\nwrote {args.out} and {details_path} in {meta['wall_s']} s")


if __name__ == "__main__":
    main()
