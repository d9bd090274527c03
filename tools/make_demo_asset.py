"""Write the demo's image and its planted defects into the package (src/visionrpc/cli/assets/).

    python tools/make_demo_asset.py

``visionrpc demo`` sends this image, so the demo works from a client-only install (no OpenCV, no
generator). tests/cli/test_demo.py checks that the files still match the generator.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from visionrpc.evaluation import encode_for_eval
from visionrpc.synthetic import Sample, generate_sample

ASSETS = Path(__file__).resolve().parent.parent / "src" / "visionrpc" / "cli" / "assets"
DEMO_SAMPLE = (1001, 11)
"""(seed, index) of the generated image: held out from training, 2 defects."""


def describe(sample: Sample, seed: int, index: int) -> dict[str, Any]:
    """What the demo prints about its image: where it came from and the defects planted in it."""
    return {
        "seed": seed,
        "index": index,
        "width": sample.width,
        "height": sample.height,
        "texture": sample.texture,
        "defects": [
            {"class_name": d.class_name, "bbox": [round(v, 1) for v in d.bbox]}
            for d in sample.defects
        ],
    }


def main() -> None:
    sample = generate_sample(*DEMO_SAMPLE)
    ASSETS.mkdir(parents=True, exist_ok=True)
    (ASSETS / "demo.jpg").write_bytes(encode_for_eval(sample))
    doc = describe(sample, *DEMO_SAMPLE)
    (ASSETS / "demo.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {ASSETS}/demo.jpg and demo.json")


if __name__ == "__main__":
    main()
