"""A bounded run of the coverage-guided fuzz target for the image path (tools/fuzz_image.py).

The full command for longer runs is in that file's docstring and the README. Here a few thousand
inputs, from the target's seed files, must end without a crash, an out-of-memory or an
exception other than the domain errors.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TARGET = ROOT / "tools" / "fuzz_image.py"
RUNS = 3000

pytest.importorskip("atheris")


def test_fuzz_image_path_bounded_run(tmp_path: Path) -> None:
    (tmp_path / "corpus").mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    proc = subprocess.run(
        [
            sys.executable,
            str(TARGET),
            f"-runs={RUNS}",
            "-seed=1",
            "-rss_limit_mb=1024",
            "-max_len=16384",
            str(tmp_path / "corpus"),
        ],
        cwd=tmp_path,  # crash-*/oom-* files would land here
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    tail = "\n".join(line for line in proc.stderr.splitlines()[-40:] if "Instrumenting" not in line)
    assert proc.returncode == 0, tail
    assert f"Done {RUNS} runs" in proc.stderr, tail
    assert not list(tmp_path.glob("crash-*")) and not list(tmp_path.glob("oom-*"))
