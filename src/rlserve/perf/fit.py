"""Fit perf-model knobs to measured iteration times by (robust, log-space) least squares.

Observations are of two kinds, both predicted by the very :class:`ReplicaPerfModel` the simulator uses:

- a lone prefill of ``n`` tokens seen by a client: ``frontend_latency_s + step_cost([(n, 0)], 0, 0)``;
- a decode iteration of batch ``B`` over context sum ``S``: ``step_cost([], B, S)`` (= ``t0(B) + t1 S``).

The knobs are found with :func:`scipy.optimize.least_squares` over their logarithms (all are positive), on
log-ratio residuals (relative error, so a 10 ms and a 100 ms point count alike) with a soft-L1 loss (a shared
machine's stray slow request does not drag the fit). A CPU server is described by a nominal device
(:data:`CPU_DEVICE`: 10 TFLOP/s, 500 GB/s, above any one core) whose efficiencies the fit then expresses as
fractions of those nominal rates; energy figures of such a calibration mean nothing and are not fitted.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import least_squares

from rlserve.errors import InputError
from rlserve.perf.config import KNOBS, with_knobs
from rlserve.perf.gpus import GpuSpec
from rlserve.perf.models import ModelSpec
from rlserve.perf.roofline import ReplicaPerfModel

CPU_DEVICE: dict[str, Any] = {"name": "cpu", "peak_tflops": 10.0, "mem_bandwidth_gbps": 500.0}
# On a nominal CPU device, memory efficiencies are 1 (the nominal bandwidth is the achieved one) and there are
# no per-layer kernel-launch gaps (folded into the per-iteration overhead).
CPU_FIXED: dict[str, float] = {"eff_mem_linear": 1.0, "eff_mem_attn": 1.0, "eff_mem_elementwise": 1.0,
                               "layer_overhead_s": 0.0}
FIT_KNOBS: tuple[str, ...] = ("iteration_overhead_s", "per_seq_overhead_s", "frontend_latency_s",
                              "eff_compute_linear", "eff_compute_attn", "eff_compute_attn_decode")
# with request streams in the fit (simulation in the loop) the frontend's load dependence is identifiable too
FIT_KNOBS_STREAMS: tuple[str, ...] = (*FIT_KNOBS, "frontend_per_inflight_s")
_START = {"frontend_per_inflight_s": 1e-3, "iteration_overhead_s": 2e-3, "per_seq_overhead_s": 5e-5,
          "frontend_latency_s": 2e-3,
          "eff_compute_linear": 0.1, "eff_compute_attn": 0.1, "eff_compute_attn_decode": 0.1,
          "eff_compute_linear_decode": 0.1, "eff_mem_attn": 0.5, "eff_mem_linear": 0.5, "layer_overhead_s": 2e-5}


@dataclass(frozen=True)
class FitResult:
    """Fitted knobs, the fixed ones, and the fit error per term (relative, signed median and abs median)."""

    knobs: dict[str, float]
    fixed: dict[str, float]
    terms: dict[str, dict[str, float]]  # term -> {"n", "median_err", "median_abs_err", "max_abs_err"}
    median_abs_err: float
    device: dict[str, Any] | None

    def table(self) -> str:
        """Plain-text table of the per-term errors and the fitted values (what ``rlserve calibrate`` prints)."""
        lines = [f"{'term':<28} {'n':>3} {'median err':>11} {'|err| median':>13} {'|err| max':>10}"]
        for name, t in self.terms.items():
            lines.append(f"{name:<28} {t['n']:>3.0f} {t['median_err']:>+11.1%} {t['median_abs_err']:>13.1%} "
                         f"{t['max_abs_err']:>10.1%}")
        lines.append(f"all points: median |err| {self.median_abs_err:.1%}")
        lines += [f"  {k} = {v:.6g}" for k, v in self.knobs.items()]
        return "\n".join(lines)


def perf_model(gpu: GpuSpec, model: ModelSpec, tp: int, knobs: Mapping[str, float],
               device: Mapping[str, Any] | None = None) -> ReplicaPerfModel:
    """The perf model with ``knobs`` (calibration fields and engine overheads) and ``device`` fields applied."""
    gpu, engine = with_knobs(gpu, knobs, device)
    return ReplicaPerfModel(gpu, model, tp=tp, power_split=None, **engine)


def predict(perf: ReplicaPerfModel, prefills: Sequence[tuple[int, float]],
            decodes: Sequence[tuple[int, float, float]]) -> np.ndarray:
    """Modelled values of the observations, prefills first (client TTFT), then decodes (step seconds)."""
    pre = [perf.frontend_latency_s + perf.step_cost([(int(n), 0)], 0, 0)[0] for n, _ in prefills]
    dec = [perf.step_cost([], int(b), s)[0] for b, s, _ in decodes]  # type: ignore[arg-type]
    return np.asarray(pre + dec, dtype=np.float64)


def fit_knobs(prefills: Sequence[tuple[int, float]], decodes: Sequence[tuple[int, float, float]], gpu: GpuSpec,
              model: ModelSpec, *, tp: int = 1, device: Mapping[str, Any] | None = None,
              fit: Sequence[str] = FIT_KNOBS, fixed: Mapping[str, float] | None = None,
              start: Mapping[str, float] | None = None,
              extra: Callable[[ReplicaPerfModel], tuple[list[str], np.ndarray]] | None = None) -> FitResult:
    """Least-squares fit of the ``fit`` knobs to prefill ``(tokens, ttft_s)`` and decode
    ``(batch, context_sum, step_s)`` observations, the ``fixed`` knobs held (see the module docstring).

    ``start`` gives starting values; ``extra(perf)`` adds named relative errors ``sim / real - 1`` of other
    observations (e.g. latency percentiles of request streams run through the simulator with ``perf``), fitted
    in log space like the rest.

    Raises:
        InputError: too few observations for the knobs, or non-positive times.
    """
    fixed = dict(fixed or {})
    obs = np.array([t for _, t in prefills] + [t for _, _, t in decodes], dtype=np.float64)
    if len(obs) < len(fit) + 2:
        raise InputError(f"{len(obs)} observations cannot fit {len(fit)} knobs; measure more points")
    if not np.all(obs > 0):
        raise InputError("every observed time must be > 0 seconds")
    lo = np.array([max(KNOBS[k][0], 1e-9) for k in fit])
    hi = np.array([KNOBS[k][1] for k in fit])
    # Several starts (efficiencies spread over three decades) for the cheap lone-point fit: the roofline's
    # max() makes the loss piecewise and a single start can stop in the wrong piece. With ``extra`` (a
    # simulation per evaluation) only the given start.
    firsts = [{**_START, **(start or {})}]
    if extra is None:
        firsts += [{**_START, **{k: e for k in fit if k.startswith("eff_")}} for e in (0.003, 0.03, 0.3)]
    extra_names: list[str] = []

    def residuals(x: np.ndarray, weighted: bool = True) -> np.ndarray:
        nonlocal extra_names
        perf = perf_model(gpu, model, tp, {**fixed, **dict(zip(fit, np.exp(x), strict=True))}, device)
        r = np.log(predict(perf, prefills, decodes) / obs)
        if extra is None:
            return r
        extra_names, rel = extra(perf)
        e = np.log1p(np.maximum(rel, -0.99))
        if not weighted:
            return np.concatenate([r, e])
        # the two groups weigh alike however many points each has (streams are few but say the most)
        return np.concatenate([r / np.sqrt(len(r)), e / np.sqrt(max(len(e), 1))])

    # Lone points alone: a robust loss (a stray slow request on a shared machine must not drag the fit). With
    # streams: plain least squares (the caller drops lone-point outliers first), so that streams far off the
    # lone-point optimum are not treated as outliers themselves.
    loss, f_scale = ("soft_l1", 0.1) if extra is None else ("linear", 1.0)
    sol = None
    for first in firsts:
        x0 = np.log(np.clip([first.get(k, 0.1) for k in fit], lo * 1.01, hi * 0.99))
        trial = least_squares(residuals, x0, bounds=(np.log(lo), np.log(hi)), loss=loss, f_scale=f_scale,
                              diff_step=1e-3)
        if sol is None or trial.cost < sol.cost:
            sol = trial
    assert sol is not None
    knobs = {k: float(v) for k, v in zip(fit, np.exp(sol.x), strict=True)}
    err = np.exp(residuals(sol.x, weighted=False)) - 1.0  # relative error of the model against each observation
    names = [f"prefill {n} tok" for n, _ in prefills] + [f"decode B={b}" for b, _, _ in decodes] + extra_names
    terms: dict[str, dict[str, float]] = {}
    for name in dict.fromkeys(names):
        e = err[[i for i, n in enumerate(names) if n == name]]
        terms[name] = {"n": float(len(e)), "median_err": float(np.median(e)),
                       "median_abs_err": float(np.median(np.abs(e))), "max_abs_err": float(np.max(np.abs(e)))}
    return FitResult(knobs={**fixed, **knobs}, fixed=fixed, terms=terms,
                     median_abs_err=float(np.median(np.abs(err))), device=dict(device) if device else None)
