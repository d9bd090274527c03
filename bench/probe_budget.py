"""Probe issue 9 item 3: time and peak RSS of a server answering one huge, cheap-to-send PNG.

Starts ``visionrpc serve`` in a subprocess on a free loopback port, sends a 16384x3000 PNG of zeros
(143 KB, under the pixel limit) with confidence 1e-6, max_detections 300, with and without masks,
and prints per call: status, wall time, and the server's VmHWM / VmRSS (from /proc). Also sends
calls with a short deadline and reports the server CPU time they cost.

    PYTHONPATH=src:. python -m bench.probe_budget [--env VISIONRPC_LIMITS__...=...]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import cv2
import grpc
import numpy as np

from bench.harness.procs import free_port, stop_process
from visionrpc.v1 import inference_pb2 as pb
from visionrpc.v1 import inference_pb2_grpc


def proc_status(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmHWM", "VmRSS")):
                k, v = line.split(":")
                out[k] = int(v.split()[0]) // 1024  # MiB
    return out


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reset_hwm(pid: int) -> None:
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--env", action="append", default=[])
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    _, png = cv2.imencode(".png", np.zeros((3000, 16384, 3), np.uint8))
    data = png.tobytes()
    print(f"PNG 16384x3000 zeros: {len(data)} bytes")
    port = free_port()
    env = dict(os.environ)
    env.update(kv.split("=", 1) for kv in args.env)
    server = subprocess.Popen(
        [sys.executable, "-m", "visionrpc", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        channel = grpc.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", 256 * 2**20)]
        )
        grpc.channel_ready_future(channel).result(timeout=60)
        stub = inference_pb2_grpc.InferenceMethodsStub(channel)
        time.sleep(1)
        # warm up
        stub.Infer(
            pb.InferRequest(
                image_bytes=cv2.imencode(".jpg", np.zeros((64, 64, 3), np.uint8))[1].tobytes()
            ),
            timeout=60,
        )
        print(f"idle server: {proc_status(server.pid)}")
        for masks, max_det in ((False, 300), (True, 300), (True, 100)):
            for i in range(args.repeat):
                reset_hwm(server.pid)
                req = pb.InferRequest(
                    image_bytes=data,
                    confidence_threshold=1e-6,
                    max_detections=max_det,
                    return_masks=masks,
                )
                c0 = cpu_s(server.pid)
                t0 = time.perf_counter()
                try:
                    resp = stub.Infer(req, timeout=120)
                    outcome = f"OK {len(resp.detections)} detections"
                except grpc.RpcError as e:
                    outcome = f"{e.code().name}: {(e.details() or '')[:160]}"
                dt = time.perf_counter() - t0
                time.sleep(0.3)
                st = proc_status(server.pid)
                cpu = cpu_s(server.pid) - c0
                print(
                    f"masks={masks} max_detections={max_det} #{i}: {dt:.3f} s, "
                    f"server cpu {cpu:.2f} s, "
                    f"peak RSS {st['VmHWM']} MiB, RSS after {st['VmRSS']} MiB -> {outcome}"
                )
        # expired calls: a deadline shorter than the work
        for deadline in (0.05, 0.2):
            reset_hwm(server.pid)
            c0 = cpu_s(server.pid)
            t0 = time.perf_counter()
            for _ in range(3):
                req = pb.InferRequest(
                    image_bytes=data,
                    confidence_threshold=1e-6,
                    max_detections=300,
                    return_masks=False,
                )
                try:
                    stub.Infer(req, timeout=deadline)
                    outcome = "OK"
                except grpc.RpcError as e:
                    outcome = e.code().name
            # wait for the server to go idle
            last = -1.0
            while (now := cpu_s(server.pid)) != last:
                last = now
                time.sleep(1.0)
            print(
                f"3 calls with deadline {deadline}s ({outcome}): server cpu {last - c0:.2f} s "
                f"(wall {time.perf_counter() - t0:.1f} s incl. idle wait)"
            )
        # server still serves
        stub.Infer(
            pb.InferRequest(
                image_bytes=cv2.imencode(".jpg", np.zeros((64, 64, 3), np.uint8))[1].tobytes()
            ),
            timeout=60,
        )
        print("server still serves; final", proc_status(server.pid))
    finally:
        stop_process(server, 15)


if __name__ == "__main__":
    main()
