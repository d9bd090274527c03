"""bench/statistics_cost.py runs and prints its figures (one short round)."""

from __future__ import annotations

import pytest

from bench import statistics_cost


def test_prints_the_cost_per_request(capsys: pytest.CaptureFixture[str]) -> None:
    statistics_cost.main(rounds=1, calls=200)
    printed = capsys.readouterr().out
    for line in ("one thread", "2 threads at once", "4 threads at once", "accounting share"):
        assert line in printed
