"""The real energy-control loop: live telemetry -> controller -> concurrency cap (proxy) + SM clock (NVML).

Every ``interval_s`` the loop

1. reads the controlled replica's :class:`~rlserve.snapshot.ReplicaState` from the rlserve proxy
   (``GET /admin/replicas``: its bookkeeping plus vLLM ``/metrics``) and completes it with the GPU monitor:
   ``energy_j`` from the NVML energy counter, ``power_w``, and ``busy_s`` integrated from NVML utilisation, so
   the controller's observation is built by the same code from the same fields as in the simulator;
2. asks the controller for a decision;
3. applies the cap through the proxy's admission control (``PUT /admin/replicas/{i}/concurrency_cap``; vLLM's
   own ``max_num_seqs`` is fixed at start-up) and the clock through the :class:`ClockActuator` (a dry run,
   only logged, unless ``apply_clocks``).

On exit (end of ``duration_s``, Ctrl-C, an error) the loop gives back what it changed: the clocks (the
actuator's context) and the replica's admission cap as it was before the loop started (``None`` = uncapped), so a
stopped controller leaves no throttle behind on the proxy.

``arrivals_total`` of the snapshot is the replica's completed + outstanding requests (the proxy counts arrivals
for the whole cluster, the controller needs them for its replica).
"""

from __future__ import annotations

import dataclasses
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from rlserve.errors import BackendError, ConfigError
from rlserve.policies.energy.base import EnergyController, EnergyDecision
from rlserve.serve.clock_actuator import ClockActuator
from rlserve.snapshot import ClusterSnapshot, QueuedRequestView, ReplicaState
from rlserve.telemetry.gpu import GpuMonitor, NullGpuMonitor


def replica_state_from_json(d: Mapping[str, Any]) -> ReplicaState:
    """Inverse of ``dataclasses.asdict(ReplicaState)`` as the proxy's admin API sends it."""
    fields = {f.name for f in dataclasses.fields(ReplicaState)}
    data = {k: v for k, v in d.items() if k in fields}
    data["queue"] = tuple(QueuedRequestView(**q) for q in d.get("queue", ()))
    try:
        return ReplicaState(**data)
    except TypeError as exc:
        raise BackendError(f"the proxy's /admin/replicas answer lacks replica fields ({exc}); "
                           "is the proxy an rlserve of the same version?") from None


class ProxyAdmin:
    """The two admin calls the loop needs, over HTTP (``--url`` of a running ``rlserve serve``)."""

    def __init__(self, url: str, *, api_key: str | None = None, timeout_s: float = 5.0) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s)

    def replica_state(self, index: int) -> ReplicaState:
        """The replica as a router would see it now."""
        body = self._call("GET", "/admin/replicas")
        replicas = body.get("replicas", [])
        if not 0 <= index < len(replicas):
            raise ConfigError(f"the proxy at {self.url} has replicas 0..{len(replicas) - 1}, not {index}")
        return replica_state_from_json(replicas[index]["state"])

    def concurrency_cap(self, index: int) -> int | None:
        """The replica's admission cap now (``None`` = uncapped)."""
        replicas = self._call("GET", "/admin/replicas").get("replicas", [])
        if not 0 <= index < len(replicas):
            raise ConfigError(f"the proxy at {self.url} has replicas 0..{len(replicas) - 1}, not {index}")
        cap = replicas[index].get("cap")
        return None if cap is None else int(cap)

    def set_concurrency_cap(self, index: int, cap: int | None) -> None:
        """Admission cap of the replica (applies at once in the proxy); ``None`` removes it."""
        self._call("PUT", f"/admin/replicas/{index}/concurrency_cap", json={"cap": None if cap is None else int(cap)})

    def _call(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        try:
            r = self._http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise BackendError(f"cannot reach the rlserve proxy at {self.url} ({exc}); "
                               "start it with rlserve serve") from None
        if r.status_code != 200:
            raise BackendError(f"proxy {method} {path} answered {r.status_code}: {r.text[:200]}")
        return dict(r.json())

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._http.close()


@dataclass(frozen=True, slots=True)
class LoopDecision:
    """One tick of the loop, as logged."""

    time_s: float
    decision: EnergyDecision  # what the controller asked for
    concurrency_cap: int  # the cap applied (at most the replica's max_num_seqs)
    sm_clock_mhz: float  # the clock used (snapped to a supported one)
    clock_applied: bool  # False: dry run
    num_running: int
    num_waiting: int
    power_w: float | None


class EnergyLoop:
    """Runs a controller against one live replica (see the module docstring)."""

    def __init__(self, controller: EnergyController, admin: ProxyAdmin, actuator: ClockActuator,
                 gpu_monitor: GpuMonitor | NullGpuMonitor, *, replica: int = 0, interval_s: float = 1.0,
                 on_decision: Callable[[LoopDecision], None] | None = None) -> None:
        if not interval_s > 0:
            raise ConfigError(f"--interval-s must be > 0, got {interval_s}")
        self.controller = controller
        self.admin = admin
        self.actuator = actuator
        self.gpu = gpu_monitor
        self.replica = replica
        self.interval_s = interval_s
        self.on_decision = on_decision
        self.decisions: list[LoopDecision] = []
        self._t0 = time.monotonic()
        self._last_t: float | None = None
        self._busy_s = 0.0
        self._clock_mhz: float | None = None  # the clock in use (snapped)
        self._requested_mhz: float | None = None
        self._cap: int | None = None

    def _gpu_fields(self, now: float) -> dict[str, Any]:
        """energy_j / power_w / busy_s from the GPU monitor (empty without NVML: those fields stay None)."""
        if isinstance(self.gpu, NullGpuMonitor):
            return {}
        sample = self.gpu.current()
        if sample is None:
            return {}
        since = self._last_t if self._last_t is not None else now
        recent = self.gpu.trace(since_s=since) or [sample]
        util = sum(sum(s.gpu_util_pct) / len(s.gpu_util_pct) for s in recent) / len(recent) / 100.0
        self._busy_s += util * (now - since)
        return {"energy_j": float(sum(sample.energy_j)), "power_w": float(sum(sample.power_w)),
                "busy_s": self._busy_s}

    def snapshot(self) -> ClusterSnapshot:
        """The controlled replica now, as a one-replica snapshot."""
        now = time.monotonic()
        state = self.admin.replica_state(self.replica)
        fields = self._gpu_fields(now)
        if self._clock_mhz is not None:
            fields["sm_clock_mhz"] = self._clock_mhz  # what the controller set (dry run: what it asked for)
        state = dataclasses.replace(state, **fields)
        self._last_t = now
        arrivals = state.completed_total + state.num_waiting + state.num_running
        return ClusterSnapshot(now - self._t0, 1, (state,), arrivals_total=arrivals)

    def tick(self) -> LoopDecision:
        """Observe, decide, apply once."""
        snap = self.snapshot()
        r = snap.replicas[0]
        d = self.controller.decide(snap, 0)
        cap = max(1, min(d.concurrency_cap, r.max_num_seqs))
        if cap != self._cap:
            self.admin.set_concurrency_cap(self.replica, cap)
            self._cap = cap
        if d.sm_clock_mhz != self._requested_mhz:
            self._clock_mhz = self.actuator.set_sm_clock(d.sm_clock_mhz)
            self._requested_mhz = d.sm_clock_mhz
        rec = LoopDecision(snap.time_s, d, cap, self._clock_mhz or d.sm_clock_mhz, self.actuator.apply,
                           r.num_running, r.num_waiting, r.power_w)
        self.decisions.append(rec)
        if self.on_decision is not None:
            self.on_decision(rec)
        return rec

    def run(self, *, duration_s: float | None = None, stop: threading.Event | None = None) -> list[LoopDecision]:
        """Tick every ``interval_s`` until ``duration_s`` passes or ``stop`` is set (clocks and cap restored on
        exit)."""
        stop = stop or threading.Event()
        start = time.monotonic()
        self.controller.reset()
        initial_cap = self.admin.concurrency_cap(self.replica)
        with self.actuator:
            self.gpu.start()
            try:
                next_t = time.monotonic()
                while not stop.is_set() and (duration_s is None or time.monotonic() - start < duration_s):
                    self.tick()
                    next_t += self.interval_s
                    stop.wait(max(0.0, next_t - time.monotonic()))
            finally:
                self.gpu.stop()
                if self._cap is not None and self._cap != initial_cap:
                    try:
                        self.admin.set_concurrency_cap(self.replica, initial_cap)
                        self._cap = None
                    except BackendError as exc:  # the proxy is gone (its caps went with it): say so, keep the cause
                        warnings.warn(f"could not give replica {self.replica} its cap {initial_cap} back: {exc}",
                                      stacklevel=2)
        return self.decisions
