"""A frontend's counters and their per-second rates, as its heartbeat writes them."""

from __future__ import annotations

from service.core.metrics import STATS_COUNTERS, Meter, Rates, totals


def test_rates_are_the_counters_growth_over_the_window_since_the_last_sample() -> None:
    meter, now = Meter(), [100.0]
    rates = Rates(meter, clock=lambda: now[0])
    meter.publishes["group"] += 3
    meter.publishes["all"] += 1
    meter.count_sent(5, [99.9, 0.0])  # 5 sockets, one event and one reply each
    meter.frames_in += 8
    now[0] = 102.0
    first = rates.sample()
    assert {k: first[k] for k in STATS_COUNTERS} == {
        "published": 4, "delivered": 5, "frames_in": 8, "frames_out": 10}
    assert (first["published_per_s"], first["delivered_per_s"], first["frames_in_per_s"],
            first["frames_out_per_s"], first["window_s"]) == (2.0, 2.5, 4.0, 5.0, 2.0)

    meter.publishes["user"] += 1
    now[0] = 106.0
    second = rates.sample()  # only what happened since the first sample counts
    assert (second["published"], second["published_per_s"], second["delivered_per_s"],
            second["window_s"]) == (5, 0.25, 0.0, 4.0)
    assert set(second) == {*STATS_COUNTERS, *(f"{k}_per_s" for k in STATS_COUNTERS),
                           "window_s"}


def test_a_sample_without_time_passing_has_zero_rates() -> None:
    meter = Meter()
    rates = Rates(meter, clock=lambda: 5.0)
    meter.frames_in += 1
    got = rates.sample()
    assert got["frames_in"] == 1 and got["frames_in_per_s"] == 0.0 and got["window_s"] == 0.0
    assert totals(meter) == {"published": 0, "delivered": 0, "frames_in": 1, "frames_out": 0}
