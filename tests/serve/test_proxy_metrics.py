"""The proxy's decision histogram renders as prometheus_client's own Histogram would for the same observations."""

import numpy as np
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from rlserve.serve.proxy_metrics import DECISION_BUCKETS_S, DecisionHistogram


def test_decision_histogram_exposes_what_prometheus_client_would() -> None:
    rng = np.random.default_rng(0)
    times = [*rng.lognormal(np.log(3e-5), 1.5, 500), *DECISION_BUCKETS_S, 0.0, 5.0]  # bucket edges are "<= le"
    ours = DecisionHistogram(DECISION_BUCKETS_S)
    reference_registry = CollectorRegistry()
    reference = Histogram("d_seconds", "Decision time.", buckets=DECISION_BUCKETS_S, registry=reference_registry)
    for t in times:
        ours.observe(float(t))
        reference.observe(float(t))

    class _Collector:
        def collect(self):  # type: ignore[no-untyped-def]
            yield ours.family("d_seconds", "Decision time.")

    our_registry = CollectorRegistry()
    our_registry.register(_Collector())
    lines = lambda registry: sorted(  # noqa: E731
        line for line in generate_latest(registry).decode().splitlines() if "d_seconds_created" not in line)
    assert lines(our_registry) == lines(reference_registry)
    assert f'd_seconds_bucket{{le="+Inf"}} {len(times)}.0' in lines(our_registry)
