"""bench/measure_cost.py and bench/measure_accuracy.py run and print their figures (tiny runs)."""

from __future__ import annotations

import pytest

from bench import measure_accuracy, measure_cost


def test_cost_prints_each_case(capsys: pytest.CaptureFixture[str]) -> None:
    figures = measure_cost.main(rounds=1, images=2)
    printed = capsys.readouterr().out
    for case in measure_cost.CASES:
        assert case in printed
        post, total = figures[case]
        assert 0 < post < total


def test_accuracy_prints_errors_per_method_and_class(capsys: pytest.CaptureFixture[str]) -> None:
    measure_accuracy.main(images=3)
    printed = capsys.readouterr().out
    assert "3 images" in printed
    for word in ("truth", "model", "skeleton", "rect", "length", "width", "area", "all"):
        assert word in printed
