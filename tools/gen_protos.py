"""Regenerate the committed protobuf/gRPC Python code from protos/ (the single source of truth).

    python tools/gen_protos.py          # rewrite src/visionrpc/v1/
    python tools/gen_protos.py --check  # exit 1 if the committed code is stale

The generated modules live in ``src/visionrpc/v1/`` so that the proto package ``visionrpc.v1`` is
also the Python package: protoc's own ``from visionrpc.v1 import ...`` lines work unchanged. Type
stubs (``*_pb2.pyi`` for messages, ``*_pb2_grpc.pyi`` for the typed stubs and servicers) come from
mypy-protobuf's plugins, so the client/server boundary is type-checked. Only ``protos/`` and
protoc's bundled well-known types are on the include path: the ``.proto`` files are usable alone.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PACKAGE_DIR = ROOT / "src" / "visionrpc" / "v1"
INIT_TEXT = '"""Generated from protos/visionrpc/v1 by tools/gen_protos.py. Do not edit."""\n'


def _plugin(name: str) -> str:
    """A mypy-protobuf plugin next to this interpreter (a venv's bin/), else on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} not found: pip install -e '.[test]' (it brings mypy-protobuf)")
    return found


def generate(out_root: Path) -> dict[str, bytes]:
    """Run protoc into ``out_root`` and return {file name: content} of the generated package."""
    protos = sorted(PROTO_ROOT.glob("visionrpc/v1/*.proto"))
    well_known = str(resources.files("grpc_tools") / "_proto")
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--python_out={out_root}",
        f"--mypy_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--mypy_grpc_out={out_root}",
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
