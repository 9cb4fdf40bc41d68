"""`launcher.datagen.client.RateLimit` on a fake clock: calls are spaced 1/rate apart whatever the caller's pace,
an idle gap is not saved up as a burst, and no rate means no waiting."""

from __future__ import annotations

from launcher.datagen.client import RateLimit


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.now += seconds


def starts(limit: RateLimit, clock: FakeClock, work: list[float]) -> list[float]:
    out = []
    for seconds in work:
        limit.wait()
        out.append(clock.now)
        clock.now += seconds  # the request itself
    return out


def test_calls_are_spaced_one_interval_apart() -> None:
    clock = FakeClock()
    t = starts(RateLimit(4, clock, clock.sleep), clock, [0.01, 0.3, 0.0, 0.0, 0.0])
    assert [round(b - a, 9) for a, b in zip(t, t[1:], strict=False)] == [0.25, 0.3, 0.25, 0.25]


def test_an_idle_gap_is_not_a_burst_allowance() -> None:
    clock = FakeClock()
    limit = RateLimit(2, clock, clock.sleep)
    limit.wait()
    clock.now += 10  # idle
    t = starts(limit, clock, [0.0, 0.0, 0.0])
    assert [round(b - a, 9) for a, b in zip(t, t[1:], strict=False)] == [0.5, 0.5]


def test_no_rate_never_sleeps() -> None:
    clock = FakeClock()
    limit = RateLimit(None, clock, lambda s: (_ for _ in ()).throw(AssertionError("slept")))
    assert starts(limit, clock, [0.0] * 5) == [100.0] * 5
