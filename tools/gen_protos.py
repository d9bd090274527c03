"""Regenerate the committed protobuf/gRPC Python code from protos/ (the single source of truth).

    python tools/gen_protos.py          # rewrite src/visionrpc/v1/
    python tools/gen_protos.py --check  # exit 1 if the committed code is stale

The generated modules live in ``src/visionrpc/v1/`` so that the proto package ``visionrpc.v1`` is
also the Python package: protoc's own ``from visionrpc.v1 import ...`` lines work unchanged.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PACKAGE_DIR = ROOT / "src" / "visionrpc" / "v1"
INIT_TEXT = '"""Generated from protos/visionrpc/v1 by tools/gen_protos.py. Do not edit."""\n'


def generate(out_root: Path) -> dict[str, bytes]:
    """Run protoc into ``out_root`` and return {file name: content} of the generated package."""
    protos = sorted(PROTO_ROOT.glob("visionrpc/v1/*.proto"))
    well_known = str(resources.files("grpc_tools") / "_proto")
    import google.rpc  # googleapis-common-protos ships status.proto beside its modules

    googleapis = str(Path(next(iter(google.rpc.__path__))).parent.parent)
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"-I{googleapis}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *(str(p) for p in protos),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    generated = out_root / "visionrpc" / "v1"
    files = {p.name: p.read_bytes() for p in sorted(generated.iterdir()) if p.is_file()}
    files["__init__.py"] = INIT_TEXT.encode()
    return files


def stale_files(package_dir: Path = PACKAGE_DIR) -> list[str]:
    """Names of generated files in ``package_dir`` that differ from a fresh protoc run."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
    current = {p.name: p.read_bytes() for p in package_dir.glob("*") if p.is_file()}
    return sorted(n for n in fresh.keys() | current.keys() if fresh.get(n) != current.get(n))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="only compare, write nothing")
    args = parser.parse_args()
    if args.check:
        stale = stale_files()
        if stale:
            print("stale generated code: " + ", ".join(stale), file=sys.stderr)
            print("run: python tools/gen_protos.py", file=sys.stderr)
            return 1
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
    current = {p.name for p in PACKAGE_DIR.glob("*") if p.is_file()}
    PACKAGE_DIR.mkdir(parents=True, exist_ok=True)
    for name in current - fresh.keys():
        (PACKAGE_DIR / name).unlink()
    for name, content in fresh.items():
        (PACKAGE_DIR / name).write_bytes(content)
    print(f"wrote {len(fresh)} files to {PACKAGE_DIR.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
