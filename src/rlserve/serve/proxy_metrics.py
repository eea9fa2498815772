"""The proxy's own Prometheus ``/metrics``.

Counts and gauges are read from the bookkeeping at scrape time by a custom collector, so the request path pays
nothing for them (no per-request metric locks or label look-ups). Only the decision-latency histogram is
observed per request. Each proxy has its own registry, so several proxies can live in one process (tests).

==========================================  =======  ===============================================================
metric                                      type     meaning
==========================================  =======  ===============================================================
``rlserve_proxy_routed_requests_total``     counter  attempts routed to a replica (label ``replica``)
``rlserve_proxy_completed_requests_total``  counter  responses completed by a replica
``rlserve_proxy_in_flight``                 gauge    requests sent to a replica and not finished
``rlserve_proxy_queued``                    gauge    requests waiting at a replica's admission gate
``rlserve_proxy_concurrency_cap``           gauge    admission cap (``max_num_seqs`` when uncapped)
``rlserve_proxy_replica_up``                gauge    1 when the last health check (or request) succeeded
``rlserve_proxy_retries_total``             counter  attempts on a replica that failed before the first byte and
                                                     were retried elsewhere
``rlserve_proxy_errors_total``              counter  requests answered with an error, by ``kind`` (see
                                                     :mod:`rlserve.serve.proxy_error`), plus ``upstream_midstream``
                                                     (a stream broken after its first byte) and
                                                     ``client_disconnected``
``rlserve_proxy_decision_seconds``          histo.   time to build the snapshot and run the router, per decision
==========================================  =======  ===============================================================
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from rlserve.serve.bookkeeping import ReplicaBook

DECISION_BUCKETS_S = (2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 1e-2, 0.1)


class ProxyMetrics:
    """The registry behind ``GET /metrics``; ``errors`` is a plain ``kind -> count`` dict the proxy increments."""

    def __init__(self, books: Sequence[ReplicaBook]) -> None:
        self._books = books
        self.errors: dict[str, int] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.decision_s = Histogram("rlserve_proxy_decision_seconds", "Snapshot build + router decision time.",
                                    buckets=DECISION_BUCKETS_S, registry=self.registry)
        self.registry.register(self)  # collect() below

    def count_error(self, kind: str) -> None:
        """One more request ended with error ``kind``."""
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def collect(self) -> Iterator[Any]:
        """Prometheus collector protocol: the bookkeeping's counters and gauges, read now."""
        books = self._books
        per_replica: list[tuple[type, str, str, Any]] = [
            (CounterMetricFamily, "rlserve_proxy_routed_requests", "Attempts routed to the replica.",
             lambda b: b.routed_total),
            (CounterMetricFamily, "rlserve_proxy_completed_requests", "Responses completed by the replica.",
             lambda b: b.completed_total),
            (GaugeMetricFamily, "rlserve_proxy_in_flight", "Requests sent to the replica, not finished.",
             lambda b: b.gate.in_flight),
            (GaugeMetricFamily, "rlserve_proxy_queued", "Requests waiting at the replica's admission gate.",
             lambda b: b.gate.queued),
            (GaugeMetricFamily, "rlserve_proxy_concurrency_cap", "Admission cap (max_num_seqs when uncapped).",
             lambda b: b.spec.max_num_seqs if b.gate.cap is None else b.gate.cap),
            (GaugeMetricFamily, "rlserve_proxy_replica_up", "1 if the replica is considered healthy.",
             lambda b: float(b.healthy)),
            (CounterMetricFamily, "rlserve_proxy_retries", "Failed attempts on the replica retried elsewhere.",
             lambda b: b.retried_total),
        ]
        for family_type, name, doc, value in per_replica:
            family = family_type(name, doc, labels=["replica", "url"])
            for b in books:
                family.add_metric([b.spec.name or str(b.index), b.spec.url], value(b))
            yield family
        errors = CounterMetricFamily("rlserve_proxy_errors", "Requests that ended with an error.", labels=["kind"])
        for kind, n in sorted(self.errors.items()):
            errors.add_metric([kind], n)
        yield errors
