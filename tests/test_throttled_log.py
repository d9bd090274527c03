"""ThrottledLog: at most N lines per kind and second, the rest counted and reported once."""

from __future__ import annotations

import logging

import pytest

from visionrpc.logs import ThrottledLog


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_lines_past_the_rate_are_counted_and_reported_with_the_next_window(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    clock = Clock()
    throttled = ThrottledLog(logging.getLogger("test.throttled"), per_second=3, clock=clock)
    logged = [throttled.warning("bad", "bad message %d", i) for i in range(1000)]
    assert logged == [True] * 3 + [False] * 997
    assert throttled.warning("other", "another kind") is True  # kinds are limited separately
    clock.now += 1.5
    assert throttled.warning("bad", "bad message again") is True
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "bad message 0",
        "bad message 1",
        "bad message 2",
        "another kind",
        "suppressed 997 similar messages (bad) in the last 1.5s",
        "bad message again",
    ]
    assert caplog.records[4].fields == {"suppressed": 997, "kind": "bad"}  # type: ignore[attr-defined]


def test_tracebacks_are_kept_for_the_lines_let_through(caplog: pytest.LogCaptureFixture) -> None:
    throttled = ThrottledLog(logging.getLogger("test.throttled"), per_second=1, clock=Clock())
    error = RuntimeError("bug")
    throttled.error("RuntimeError", "unexpected error", exc_info=error)
    throttled.error("RuntimeError", "unexpected error", exc_info=error)
    assert [r.exc_info is not None for r in caplog.records] == [True]


def test_nothing_is_counted_below_the_logger_level(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR)
    throttled = ThrottledLog(logging.getLogger("test.throttled"), per_second=1, clock=Clock())
    assert throttled.warning("bad", "hidden") is False
    assert caplog.records == []
