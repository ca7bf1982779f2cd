"""Prometheus metrics for one frontend, cheap on the hot path.

Counting is plain integer arithmetic on a ``Meter`` (one greenlet runs at a time, so no
locks); the delivery latency histogram is a bisect into fixed buckets in each socket's
writer. prometheus-client only meets the numbers at scrape time, through a collector.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from service.core.envelope import TARGET_KINDS

#: Delivery latency buckets, seconds (publish time to the socket write).
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                     2.5, 5.0, 10.0)


class Meter:
    """This frontend's counters."""

    def __init__(self) -> None:
        self.frames_in = 0
        self.frames_out = 0
        self.publishes = dict.fromkeys(TARGET_KINDS, 0)
        self.outbox_overflows = 0
        self.bus_reconnects = 0
        self.bus_messages = 0  # bus messages received (several envelopes each, batched)
        self.bus_events = 0  # event envelopes received from other frontends
        self.replayed = 0
        self.latency_counts = [0] * (len(LATENCY_BUCKETS_S) + 1)
        self.latency_sum = 0.0

    def observe_latency(self, seconds: float, n: int = 1) -> None:
        self.latency_counts[bisect_left(LATENCY_BUCKETS_S, seconds)] += n
        self.latency_sum += seconds * n

    def count_sent(self, n: int, stamps: list[float]) -> None:
        """``n`` sockets were written the same frames (their publish times in ``stamps``;
        0.0: a reply, no latency): one clock read for the lot."""
        if not n:
            return
        self.frames_out += n * len(stamps)
        now = time.time()
        for ts in stamps:
            if ts:
                self.observe_latency(now - ts, n)


#: The counters a frontend writes into its registry row at each heartbeat, with their rates.
STATS_COUNTERS = ("published", "delivered", "frames_in", "frames_out")


def totals(meter: Meter) -> dict[str, int]:
    """A Meter's counters as the registry row carries them: publishes made through this
    frontend, live events written to sockets (the latency histogram's count: one per
    socket and event), and client frames in and frames out (replies included)."""
    return {"published": sum(meter.publishes.values()), "delivered": sum(meter.latency_counts),
            "frames_in": meter.frames_in, "frames_out": meter.frames_out}


class Rates:
    """A Meter's counters and their per-second rates since the previous sample: what the
    heartbeat writes into the frontends row (``GET /api/frontends``' ``stats``)."""

    def __init__(self, meter: Meter, clock: Callable[[], float] = time.monotonic) -> None:
        self.meter = meter
        self.clock = clock
        self._last = (clock(), totals(meter))

    def sample(self) -> dict[str, float]:
        """The counters now, ``<name>_per_s`` over the window since the last sample, and
        ``window_s``, that window in seconds (the first one starts at construction)."""
        now, counts = self.clock(), totals(self.meter)
        then, before = self._last
        self._last = (now, counts)
        window = now - then
        rates = {f"{name}_per_s": round((counts[name] - before[name]) / window, 3)
                 if window > 0 else 0.0 for name in STATS_COUNTERS}
        return {**counts, **rates, "window_s": round(window, 3)}


class HeraldCollector(Collector):
    """Turns a Meter plus live gauges into Prometheus metric families at scrape time."""

    def __init__(self, meter: Meter, gauges: Callable[[], dict[str, float]],
                 frontend: str) -> None:
        self.meter = meter
        self.gauges = gauges
        self.frontend = frontend

    def collect(self) -> Iterator[Metric]:
        m, labels = self.meter, ["frontend"]
        values = [self.frontend]

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            c = CounterMetricFamily(name, doc, labels=labels)
            c.add_metric(values, value)
            return c

        for name, value in self.gauges().items():
            g = GaugeMetricFamily(f"herald_{name}", f"Current {name.replace('_', ' ')}",
                                  labels=labels)
            g.add_metric(values, value)
            yield g
        yield counter("herald_frames_in", "Client frames received", m.frames_in)
        yield counter("herald_frames_out", "Frames written to sockets", m.frames_out)
        pub = CounterMetricFamily("herald_publishes", "Publishes made through this frontend",
                                  labels=["frontend", "target"])
        for kind, n in m.publishes.items():
            pub.add_metric([self.frontend, kind], n)
        yield pub
        yield counter("herald_outbox_overflows", "Sockets closed with 1013", m.outbox_overflows)
        yield counter("herald_bus_reconnects", "Fanout consumer reconnections", m.bus_reconnects)
        yield counter("herald_bus_messages", "Bus messages received", m.bus_messages)
        yield counter("herald_bus_events", "Event envelopes received from other frontends",
                      m.bus_events)
        yield counter("herald_replayed_messages", "Durable messages replayed", m.replayed)
        buckets: list[tuple[str, float]] = []
        total = 0
        for bound, n in zip((*LATENCY_BUCKETS_S, float("inf")), m.latency_counts, strict=True):
            total += n
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), total))
        hist = HistogramMetricFamily("herald_delivery_latency_seconds",
                                     "Publish time to socket write", labels=labels)
        hist.add_metric(values, buckets, m.latency_sum)
        yield hist


def render(meter: Meter, gauges: Callable[[], dict[str, float]], frontend: str) -> Any:
    """The Prometheus text exposition of this frontend's metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HeraldCollector(meter, gauges, frontend))
    return generate_latest(registry)
