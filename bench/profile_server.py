"""Profile ``visionrpc serve`` with py-spy while it is under Infer load, and list the hotspots.

    .venv/bin/pip install py-spy          # not a project dependency
    .venv/bin/python -m bench.profile_server --concurrency 16 --seconds 20   # from the checkout

Starts the server as the comparison benchmark (bench/harness) does (separate process, default
settings, VISIONRPC_* env applies), drives unary Infer with the bench image set from this process,
samples the server with ``py-spy record --format raw`` (all threads, GIL holders and waiters
alike, idle frames dropped) and prints the functions with the most self and inclusive samples.
The raw collapsed stacks are kept (``--out-dir``) for flamegraph.pl or speedscope.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.harness import models as bench_models
from bench.harness.images import make_images
from bench.harness.procs import visionrpc_server
from visionrpc.client import AsyncClient
from visionrpc.client.loadtest import infer_load, infer_requests

_LINE = re.compile(r":\d+\)$")


def parse_collapsed(path: Path) -> tuple[collections.Counter[str], collections.Counter[str], int]:
    """(self samples per frame, inclusive samples per frame, total samples) of a raw py-spy file."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_LINE.sub(")", f) for f in stack.split(";")]  # per function, not per line
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    return own, inclusive, total


def report(path: Path, top: int) -> str:
    own, inclusive, total = parse_collapsed(path)
    lines = [f"{total} samples in {path}", "", f"top {top} by self samples:"]
    lines += [f"  {100 * n / total:5.1f}%  {frame}" for frame, n in own.most_common(top)]
    lines += ["", f"top {top} by inclusive samples:"]
    lines += [f"  {100 * n / total:5.1f}%  {frame}" for frame, n in inclusive.most_common(top)]
    return "\n".join(lines)


async def drive(
    address: str, data: list[bytes], model: str, concurrency: int, seconds: float
) -> str:
    async with AsyncClient(address, timeout=120) as client:
        requests = infer_requests(data, model)
        result = await infer_load(
            client, requests, concurrency=concurrency, duration_s=seconds, max_requests=1_000_000
        )
    return (
        f"Infer c{concurrency}: {result.rate:.1f} images/s, p50 {result.p50_ms:.1f} ms, "
        f"p99 {result.p99_ms:.1f} ms, {result.errors} errors"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--model", default="", help="model to load (default: the first one)")
    parser.add_argument("--models-dir", type=Path, default=None)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--native", action="store_true", help="also sample C/C++ frames")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out-dir", type=Path, default=Path("bench/results"))
    args = parser.parse_args()

    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        sys.exit("py-spy is not installed: .venv/bin/pip install py-spy")
    available = bench_models.discover(args.models_dir)
    selected = bench_models.select(available, [args.model] if args.model else [])[:1]
    data = [image.data for image in make_images(args.images)]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    raw = args.out_dir / f"profile-{selected[0].name}-c{args.concurrency}.txt"
    with tempfile.TemporaryDirectory(prefix="visionrpc-profile-") as tmp:
        models_dir = bench_models.link_subset(selected, Path(tmp) / "models")
        with visionrpc_server(models_dir, Path(tmp) / "server.log") as server:
            asyncio.run(drive(server.address, data, selected[0].name, 4, 2.0))  # warm-up
            spy_argv = [py_spy, "record", "--pid", str(server.pid), "--format", "raw"]
            spy_argv += ["--rate", str(args.rate), "--duration", str(int(args.seconds))]
            spy_argv += ["--output", str(raw), "--threads"]
            # --native needs to stop the process to unwind C frames; otherwise do not pause it
            spy_argv += ["--native"] if args.native else ["--nonblocking"]
            spy = subprocess.Popen(spy_argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(1.0)  # let py-spy attach before the load starts
            summary = asyncio.run(
                drive(server.address, data, selected[0].name, args.concurrency, args.seconds)
            )
            _, err = spy.communicate(timeout=args.seconds + 60)
            if spy.returncode != 0:
                sys.exit(f"py-spy failed: {err.decode(errors='replace')}")
    print(summary)
    print(report(raw, args.top))


if __name__ == "__main__":
    main()
