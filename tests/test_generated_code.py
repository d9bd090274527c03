"""The committed protobuf/gRPC code must match what tools/gen_protos.py makes from protos/."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tools.gen_protos import PACKAGE_DIR, ROOT, stale_files


def test_committed_generated_code_is_fresh() -> None:
    stale = stale_files()
    assert not stale, f"regenerate with `python tools/gen_protos.py`: {stale}"


def test_an_edited_generated_file_is_reported_stale(tmp_path: Path) -> None:
    copy = tmp_path / "v1"
    shutil.copytree(PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / "inference_pb2.pyi"
    target.write_text(target.read_text() + "\n# hand edit\n")
    assert stale_files(copy) == ["inference_pb2.pyi"]


def test_check_command_exits_zero_on_the_committed_tree() -> None:
    done = subprocess.run(
        [sys.executable, "tools/gen_protos.py", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
