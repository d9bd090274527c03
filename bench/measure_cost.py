"""What measurements and verdicts cost per request: the same generated images through the shipped
model in-process with nothing asked, with a scale only (areas in mm², no lengths), with lengths and
widths (``measure``), and with a rule set on lengths (which measures too). Interleaved rounds;
prints the median post-processing time per request (where the measuring and the rules run) and
the median whole request.

    PYTHONPATH=src:. python -m bench.measure_cost [--rounds 5] [--images 20]
"""

from __future__ import annotations

import argparse
import statistics

from visionrpc.runtime.pipeline import InferencePipeline
from visionrpc.settings import Settings
from visionrpc.synthetic import generate_sample
from visionrpc.types import (
    InferenceInput,
    InferenceOptions,
    Metric,
    PixelFormat,
    RawImage,
    Rule,
    RuleSet,
    Verdict,
)

RULES = RuleSet(
    rules=(
        Rule("long-crack", Metric.LENGTH_PX, Verdict.FAIL, "crack", minimum=100.0),
        Rule("wide-scratch", Metric.WIDTH_PX, Verdict.REVIEW, "scratch", minimum=20.0),
        Rule("many-spots", Metric.COUNT, Verdict.FAIL, "spot", minimum=3),
    ),
)
CASES = {
    "nothing asked": InferenceOptions(),
    "scale only (area mm²)": InferenceOptions(pixels_per_mm=10.0),
    "measure (length, width)": InferenceOptions(measure=True, pixels_per_mm=10.0),
    "rules on length/width/count": InferenceOptions(rules=RULES),
}


def main(rounds: int, images: int) -> dict[str, tuple[float, float]]:
    pipeline = InferencePipeline.from_settings(Settings(access_log=False))
    frames = []
    for index in range(images):
        sample = generate_sample(7, index)
        frames.append(
            RawImage(sample.width, sample.height, 3, PixelFormat.RGB, sample.image.tobytes())
        )
    post: dict[str, list[float]] = {name: [] for name in CASES}
    total: dict[str, list[float]] = {name: [] for name in CASES}
    try:
        for _ in range(rounds):
            for frame in frames:
                for name, options in CASES.items():
                    result = pipeline.infer_sync(InferenceInput(options, raw=frame))
                    post[name].append(result.timings.postprocess_ms)
                    total[name].append(result.timings.total_ms)
    finally:
        pipeline.shutdown()
    out = {}
    print(f"{rounds} rounds x {images} generated images, shipped model, one request at a time")
    print(f"{'case':30} {'post-processing ms':>19} {'request ms':>11}")
    for name in CASES:
        out[name] = (statistics.median(post[name]), statistics.median(total[name]))
        print(f"{name:30} {out[name][0]:19.2f} {out[name][1]:11.2f}")
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--images", type=int, default=20)
    args = parser.parse_args()
    main(args.rounds, args.images)
