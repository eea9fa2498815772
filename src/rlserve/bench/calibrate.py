"""Calibrate the simulator against a live server: profile it (:mod:`rlserve.bench.profile`), fit the perf-model
knobs (:mod:`rlserve.perf.fit`) and write a calibration file a scenario's ``perf: {calibration: ...}`` uses.

One implementation for ``rlserve calibrate --url`` and the fidelity benchmarks. A profile that did not finish
inside its time bound is written (if at all) with ``complete: false``, which every loader refuses.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlserve.bench.profile import Profile, ProfileDesign, profile_server
from rlserve.errors import ConfigError
from rlserve.perf import get_gpu, get_model, load_hf_config
from rlserve.perf.config import write_calibration
from rlserve.perf.fit import CPU_DEVICE, CPU_FIXED, FitResult, fit_knobs
from rlserve.perf.models import ModelSpec


@dataclass(frozen=True)
class Calibration:
    """A profile, the fit made from it, and what the calibration file records."""

    profile: Profile
    fit: FitResult | None  # None when the profile has too few points to fit

    def server(self) -> dict[str, Any]:
        """What the profiled server reported (the simulator's replica should use the same values)."""
        p = self.profile
        return {"url": p.url, "model": p.model, "block_size": p.block_size, "num_gpu_blocks": p.num_gpu_blocks,
                "profile_s": round(p.elapsed_s, 1), "missing": p.missing, "rejected": p.rejected}

    def write(self, path: str | Path, source: str) -> Path:
        """Write the calibration file; ``complete`` is true only if the whole design was measured."""
        if self.fit is None:
            raise ConfigError("nothing to write: the profile has too few points to fit")
        fit = {"terms": self.fit.terms, "median_abs_err": self.fit.median_abs_err,
               "prefills": [[p.tokens, p.ttft_s] for p in self.profile.prefills],
               "decodes": [[d.batch, d.context_sum, d.step_s] for d in self.profile.decodes]}
        return write_calibration(path, perf=self.fit.knobs, device=self.fit.device, server=self.server(), fit=fit,
                                 source=source, complete=self.profile.complete)


def model_spec(name_or_config: str) -> ModelSpec:
    """A catalogue model name, or a Hugging Face ``config.json`` / model directory holding one."""
    p = Path(name_or_config)
    if p.is_dir():
        p = p / "config.json"
    if p.suffix == ".json":
        if not p.exists():
            raise ConfigError(f"model config {p} does not exist; give a config.json, a model directory or a "
                              "catalogue name")
        return load_hf_config(str(p))
    return get_model(name_or_config)


def fit_profile(profile: Profile, model: ModelSpec, gpu: str | None, tp: int = 1) -> FitResult:
    """Fit the knobs to a profile: on the catalogue ``gpu``, or on a nominal CPU device when ``gpu`` is None."""
    prefills = [(p.tokens, p.ttft_s) for p in profile.prefills]
    decodes = [(d.batch, d.context_sum, d.step_s) for d in profile.decodes]
    if gpu is None:
        return fit_knobs(prefills, decodes, get_gpu("h100-sxm"), model, tp=tp, device=CPU_DEVICE, fixed=CPU_FIXED)
    return fit_knobs(prefills, decodes, get_gpu(gpu), model, tp=tp)


def calibrate_server(url: str, model: ModelSpec, *, gpu: str | None = None, tp: int = 1,
                     served_model: str | None = None, design: ProfileDesign | None = None,
                     progress: Callable[[str], None] | None = None) -> Calibration:
    """Profile ``url`` and fit; ``fit`` is None when too few points were measured to fit anything."""
    profile = asyncio.run(profile_server(url, served_model, design, progress))
    try:
        fit = fit_profile(profile, model, gpu, tp)
    except ConfigError:
        raise
    except ValueError:  # InputError: too few observations
        fit = None
    return Calibration(profile, fit)
