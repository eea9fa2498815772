"""Arrival processes: when requests arrive, as a precomputed schedule.

Every generator returns a float64 array of ``n`` non-decreasing arrival times in seconds whose first entry
is 0: the run starts with a request, and the gaps that follow are drawn from the process. The schedule is
computed once from an explicit ``numpy.random.Generator``, so the simulator (event times) and the benchmark
client (sleep schedule) replay exactly the same load for a seed.

Time-varying rates (``ramp``, ``piecewise_poisson``) are sampled by time rescaling rather than thinning:
draw a unit-rate Poisson process and map it through the inverse of the cumulative rate. That is exact,
needs no rejection loop and stays vectorised.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rlserve.errors import ConfigError


def _check_n(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ConfigError(f"number of requests must be an integer >= 1, got {n!r}")


def _check_positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float | np.number) or not value > 0 or value == np.inf:
        raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")


def _start_at_zero(gaps_s: np.ndarray) -> np.ndarray:
    """Arrival times from the ``n - 1`` gaps after the first request, which arrives at t = 0."""
    return np.concatenate(([0.0], np.cumsum(gaps_s, dtype=np.float64)))


def poisson(qps: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """Poisson arrivals at ``qps`` requests per second (exponential gaps)."""
    _check_positive("qps", qps)
    _check_n(n)
    return _start_at_zero(rng.exponential(1.0 / qps, n - 1))


def gamma(qps: float, burstiness: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """Gamma-gap arrivals exactly as ``vllm bench serve --burstiness`` draws them.

    Gaps have shape ``burstiness`` and scale ``1 / (qps * burstiness)``: the mean rate is ``qps`` whatever the
    burstiness, and the squared coefficient of variation of the gaps is ``1 / burstiness``. ``burstiness == 1``
    is Poisson, below 1 is burstier, above 1 is smoother.
    """
    _check_positive("qps", qps)
    _check_positive("burstiness", burstiness)
    _check_n(n)
    return _start_at_zero(rng.gamma(burstiness, 1.0 / (qps * burstiness), n - 1))


def constant(qps: float, n: int) -> np.ndarray:
    """Evenly spaced arrivals, one every ``1 / qps`` seconds (no randomness)."""
    _check_positive("qps", qps)
    _check_n(n)
    return np.arange(n, dtype=np.float64) / qps


def ramp(qps_start: float, qps_end: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """Poisson arrivals whose rate changes linearly from ``qps_start`` to ``qps_end``.

    The ramp lasts ``T = 2 n / (qps_start + qps_end)`` seconds, the time in which ``n`` requests are expected;
    if the random draw needs longer, the rate stays at ``qps_end``. Used for load that rises or falls over a
    run, e.g. the morning ramp an energy controller must follow.
    """
    _check_positive("qps_start", qps_start)
    _check_positive("qps_end", qps_end)
    _check_n(n)
    ramp_s = 2.0 * n / (qps_start + qps_end)
    slope = (qps_end - qps_start) / ramp_s  # qps per second
    # Cumulative rate L(t) = qps_start t + slope t^2 / 2 on [0, T]; invert it for unit-rate Poisson times.
    unit = np.cumsum(rng.exponential(1.0, n - 1))
    total_in_ramp = qps_start * ramp_s + 0.5 * slope * ramp_s**2
    in_ramp = np.minimum(unit, total_in_ramp)
    # Root of slope/2 t^2 + qps_start t - L = 0 in the form that stays exact as slope -> 0.
    disc = np.maximum(qps_start**2 + 2.0 * slope * in_ramp, 0.0)
    t = 2.0 * in_ramp / (qps_start + np.sqrt(disc))
    t = t + np.maximum(unit - total_in_ramp, 0.0) / qps_end
    return np.concatenate(([0.0], t))


def piecewise_poisson(
    rates_qps: Sequence[float], segment_s: float, n: int, rng: np.random.Generator
) -> np.ndarray:
    """Poisson arrivals with a piecewise-constant rate that repeats every ``len(rates_qps) * segment_s``.

    ``rates_qps[i]`` holds during ``[i * segment_s, (i + 1) * segment_s)`` of each cycle. A diurnal profile is
    24 hourly rates with ``segment_s = 3600`` (or a compressed day with a shorter segment). Rates may be 0
    (no arrivals in that segment) but at least one must be positive.
    """
    rates = np.asarray(rates_qps, dtype=np.float64)
    if rates.ndim != 1 or len(rates) == 0:
        raise ConfigError("rates_qps must be a non-empty list of rates")
    if not np.all(np.isfinite(rates)) or np.any(rates < 0) or not np.any(rates > 0):
        raise ConfigError(f"rates_qps must be finite, >= 0 and not all 0, got {rates.tolist()}")
    _check_positive("segment_s", segment_s)
    _check_n(n)
    cum = np.concatenate(([0.0], np.cumsum(rates * segment_s)))  # expected arrivals by each boundary
    per_cycle = cum[-1]
    unit = np.cumsum(rng.exponential(1.0, n - 1))
    cycle, rest = np.divmod(unit, per_cycle)
    # side="right" skips zero-rate segments: a point lands in the segment whose cumulative range holds it.
    seg = np.minimum(np.searchsorted(cum, rest, side="right") - 1, len(rates) - 1)
    t = (cycle * len(rates) + seg) * segment_s + (rest - cum[seg]) / rates[seg]
    return np.concatenate(([0.0], t))


def trace_replay(times_s: np.ndarray, time_scale: float = 1.0) -> np.ndarray:
    """Replay recorded arrival times, shifted to start at 0 and stretched by ``time_scale``.

    ``arrival = (t - t[0]) * time_scale``: ``time_scale = 2`` plays the trace at half its rate, ``0.5`` at
    twice its rate. The times must already be sorted (the loaders check that).
    """
    _check_positive("time_scale", time_scale)
    times = np.asarray(times_s, dtype=np.float64)
    if times.ndim != 1 or len(times) == 0:
        raise ConfigError("trace replay needs a non-empty 1-D array of arrival times")
    if np.any(np.diff(times) < 0):
        raise ConfigError("trace replay needs non-decreasing arrival times")
    return (times - times[0]) * time_scale


def time_scale_for_qps(times_s: np.ndarray, qps: float) -> float:
    """The ``time_scale`` that makes :func:`trace_replay` of ``times_s`` run at a mean rate of ``qps``.

    The mean rate of ``n`` arrivals spanning ``D`` seconds is taken as ``(n - 1) / D``.
    """
    _check_positive("qps", qps)
    times = np.asarray(times_s, dtype=np.float64)
    span_s = float(times[-1] - times[0]) if len(times) else 0.0
    if span_s <= 0:
        raise ConfigError("cannot rescale a trace to a target qps: all its arrivals are at the same time")
    return (len(times) - 1) / (qps * span_s)
