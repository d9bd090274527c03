"""Benchmark the peer servers (MLServer, Triton via PyTriton) serving visionrpc's default model.

Run with the project's venv (it builds the image set and the reference answers with visionrpc):

    bench/peers/setup.sh                                   # once: the peers' virtualenvs
    .venv/bin/python bench/peers/run_peers.py --quick      # 1 s per point, about 2 minutes

For each peer configuration: start the server in its own virtualenv (a subprocess, 127.0.0.1 only),
wait until the model is ready, run client.py from .venv-triton (a separate process), stop the server
(SIGINT), and compare its answers with visionrpc's own (``InferencePipeline.infer_sync``) for every
image. Writes rows to --out:

    [{"name": "mlserver (batching off)", "concurrency": 16, "images_per_s": ..., "p50_ms": ...,
      "p99_ms": ..., "errors": 0, "matches_visionrpc": true}, ...]

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The checkout, for bench.harness (not installed); python already put this script's folder first.
sys.path.insert(1, str(Path(__file__).resolve().parents[2]))
from peer_model import result_to_json

from bench.harness.images import BENCH_SEED, BenchImage, make_images, save_images
from visionrpc.runtime.pipeline import InferencePipeline
from visionrpc.settings import Settings
from visionrpc.types import InferenceInput, InferenceOptions

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


@dataclass(frozen=True)
class Peer:
    """One server configuration: how to start it (given grpc/http/metrics ports)."""

    key: str
    name: str
    command: Callable[[int, int, int], list[str]]


def _mlserver(batching: bool) -> Callable[[int, int, int], list[str]]:
    def command(grpc: int, http: int, metrics: int) -> list[str]:
        workdir = WORK / f"mlserver-{'batching' if batching else 'plain'}"
        return [
            str(MLSERVER_VENV / "bin" / "python"),
            str(HERE / "mlserver" / "serve.py"),
            f"--workdir={workdir}",
            f"--grpc-port={grpc}",
            f"--http-port={http}",
            f"--metrics-port={metrics}",
            *(["--batching"] if batching else []),
        ]

    return command


def _triton(delay_us: int) -> Callable[[int, int, int], list[str]]:
    def command(grpc: int, http: int, _metrics: int) -> list[str]:
        return [
            str(TRITON_VENV / "bin" / "python"),
            str(HERE / "triton" / "serve.py"),
            f"--grpc-port={grpc}",
            f"--http-port={http}",
            f"--max-queue-delay-us={delay_us}",
        ]

    return command


PEERS = [
    Peer("mlserver", "mlserver (batching off)", _mlserver(False)),
    Peer("mlserver-batching", "mlserver (adaptive batching 8 / 5 ms)", _mlserver(True)),
    Peer("triton", "triton (batch 8, queue delay 0)", _triton(0)),
    Peer("triton-delay", "triton (batch 8, queue delay 2000 us)", _triton(2000)),
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


def wait_ready(proc: subprocess.Popen[bytes], http_port: int, log_path: Path) -> float:
    """Poll the KServe v2 model-ready endpoint; returns the seconds it took."""
    url = f"http://127.0.0.1:{http_port}/v2/models/{MODEL_NAME}/ready"
    start = time.monotonic()
    while time.monotonic() - start < READY_TIMEOUT_S:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}; see {log_path}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return time.monotonic() - start
        except OSError:  # URLError included: not listening yet, or model not ready (4xx/5xx)
            pass
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
    peer: Peer, args: argparse.Namespace, images_dir: Path, reference: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Start one peer, load it with client.py, stop it; returns (rows, details)."""
    grpc, http, metrics = free_port(), free_port(), free_port()
    logs = WORK / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{peer.key}.log"
    env = dict(os.environ)
    env["PYTRITON_HOME"] = str(WORK / "pytriton")
    env["TMPDIR"] = str(WORK / "tmp")
    Path(env["TMPDIR"]).mkdir(parents=True, exist_ok=True)
    print(f"== {peer.name}: starting (log {log_path})", flush=True)
    started = time.monotonic()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            peer.command(grpc, http, metrics),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=HERE,
            start_new_session=True,
        )
        try:
            ready_s = wait_ready(proc, http, log_path)
            print(f"   ready after {ready_s:.1f} s; load from a separate process", flush=True)
            client = [
                str(CLIENT_VENV / "bin" / "python"),
                str(HERE / "client.py"),
                f"--url=127.0.0.1:{grpc}",
                f"--images-dir={images_dir}",
                f"--concurrency={args.concurrency}",
                f"--duration={args.duration}",
                f"--warmup={args.warmup}",
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
            peer_rows, peer_details = run_peer(peer, args, images_dir, reference)
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
    print(f"\nwrote {args.out} and {details_path} in {meta['wall_s']} s")


if __name__ == "__main__":
    main()
