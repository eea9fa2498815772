"""RoutingEnv: a gymnasium environment with one step per arriving request and the replica index as action.

An episode is a workload of M requests on a cluster drawn by the :class:`ScenarioSampler`. At step k the
observation is the router's state at request k's arrival; the action dispatches request k; the simulator then
advances to request k+1's arrival and the reward is computed from that interval (:mod:`router_reward`).

Truncation: after the M-th dispatch the episode is **truncated**, not terminated. The cluster keeps serving the
requests in flight (their latency is real), the workload was merely cut, so the learner bootstraps the return
with V(final observation) rather than treating the end as zero future cost.

Warm-start support: :meth:`heuristic_action` answers what a heuristic router would choose in the current state,
so demonstrations can label every visited state with a teacher's choice (see :func:`router_demonstrator`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from rlserve.envs.router_reward import RewardCalculator, StepOutcome, load_balance_cv
from rlserve.envs.router_state import StateBuilder
from rlserve.envs.scenario_sampler import RANDOMIZED, SampledScenario, ScenarioSampler
from rlserve.policies import Router, make_router
from rlserve.rl.config import RewardConfig, StateConfig
from rlserve.sim import ClusterSimulator, SimResult, simulate
from rlserve.sim.lookahead import LookaheadPlanner, simulate_lookahead
from rlserve.snapshot import ClusterSnapshot
from rlserve.workload.request import Request

LOOKAHEAD_TEACHER = "lookahead"
"""Teacher name of the clairvoyant lookahead planner (:mod:`rlserve.sim.lookahead`): demonstrations only."""
LOOKAHEAD_TTFT_WEIGHT = 1.0
"""Default weight of first-token times in the lookahead teacher's cost (completion + weight x first-token times, as
the hindsight cost weighs them); ``warm_start.lookahead_ttft_weight`` overrides it."""

SYSTEM_KEYS = ("system/throughput_rps", "system/latency_s", "system/queue_length", "system/outstanding",
               "system/balance_cv", "system/qps")


class RoutingEnv(gym.Env[np.ndarray, np.int64]):
    """Route each arriving request of a simulated cluster (see module docstring).

    Args:
        scenarios: scenario names/paths and/or ``"randomized"``, one drawn per episode.
        num_replicas: cluster size (all scenarios must have it; it is the action space size).
        episode_requests: M, requests (= decisions) per episode.
        state: observation layout; reward: reward definition.
        replica_set: ``(min, max)`` replicas: clusters of any size in that range (randomised ones drawn uniformly),
            observed in the replica-set layout padded to ``max`` slots
            (:meth:`StateBuilder.build_set`, for :class:`~rlserve.rl.actor_critic.ReplicaSetActorCritic`); the
            action space has ``max`` actions, of which the first ``n`` are valid. ``None``: the flat layout for
            exactly ``num_replicas``.
        holdout: randomised families never drawn (see :mod:`scenario_sampler`).
        lookahead_ttft_weight: the lookahead teacher's weight of first-token times.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, scenarios: Sequence[str] = (RANDOMIZED,), *, num_replicas: int = 4,
                 episode_requests: int = 1024, state: StateConfig | None = None,
                 reward: RewardConfig | None = None, replica_set: tuple[int, int] | None = None,
                 holdout: Sequence[str] = (), lookahead_ttft_weight: float = LOOKAHEAD_TTFT_WEIGHT) -> None:
        super().__init__()
        self.lookahead_ttft_weight = lookahead_ttft_weight
        self.replica_set = replica_set
        sizes = (num_replicas, num_replicas) if replica_set is None else replica_set
        self.sampler = ScenarioSampler(scenarios, sizes, holdout=holdout)
        self.num_replicas = num_replicas if replica_set is None else replica_set[1]
        self.episode_requests = episode_requests
        self._state_cfg = state
        self._builders: dict[int, StateBuilder] = {}
        self.state_builder = self._builder(sizes[0])
        self.reward_calculator = RewardCalculator(reward)
        if replica_set is None:
            dim = self.state_builder.get_state_dimension()
        else:
            dim = self.state_builder.set_dimension(self.num_replicas)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (dim,), np.float64)
        self.action_space = gym.spaces.Discrete(self.num_replicas)
        self.current: SampledScenario | None = None
        self.sim: ClusterSimulator | None = None
        self._routers: dict[str, Router] = {}
        self._snapshot: ClusterSnapshot | None = None
        self._request: Request | None = None

    def _builder(self, n: int) -> StateBuilder:
        """The state builder for clusters of ``n`` replicas (one per size, made on first use)."""
        if n not in self._builders:
            self._builders[n] = StateBuilder(n, self._state_cfg)
        return self._builders[n]

    @property
    def replica_set_layout(self) -> dict[str, Any] | None:
        """Widths and replica feature names of the replica-set observation (``None`` in the flat layout); the
        trainer builds a :class:`~rlserve.rl.actor_critic.ReplicaSetActorCritic` from it."""
        if self.replica_set is None:
            return None
        b = self.state_builder
        return {"global_dim": b.global_dimension(), "replica_dim": b.replica_dimension(), "slots": self.num_replicas,
                "replica_features": b.replica_feature_names()}

    @staticmethod
    def info_keys(reward: RewardConfig | None = None) -> list[str]:
        """Numeric info entries every step reports (reward components and system metrics), in a fixed order."""
        return [*RewardCalculator(reward).component_keys(), *SYSTEM_KEYS]

    # ------------------------------------------------------------------ gymnasium API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray,
                                                                                                 dict[str, Any]]:
        """Draw a scenario and a workload from the episode's seed; observe the first arrival."""
        super().reset(seed=seed)
        rng = self.np_random
        self.current = self.sampler.sample(rng, self.episode_requests)
        workload_seed = int(rng.integers(2**31 - 1))
        with warnings.catch_warnings():  # lognormal tails cut by the scenario's token caps, by design
            warnings.filterwarnings("ignore", message="token caps shortened")
            warnings.filterwarnings("ignore", message="prefix.prefix_tokens")  # short prompts share all they have
            workload = self.current.scenario.build_workload(workload_seed)
        self.sim = ClusterSimulator(self.current.scenario.cluster, workload, seed=workload_seed)
        self.state_builder = self._builder(len(self.current.scenario.cluster.replicas))
        self._routers = {}
        self._planner: LookaheadPlanner | None = None
        self._best: tuple[tuple[str | float, ...], str] | None = None
        self._router_seed = int(rng.integers(2**31 - 1))
        self.state_builder.reset()
        self.reward_calculator.reset()
        self._outstanding = 0
        self._no_token: list[int] = []  # dispatched requests still waiting for their first token
        self._ema_latency = self._ema_throughput = self._ema_qps = 0.0
        self._request = self.sim.peek_arrival()
        return self._observe(), {"scenario": dict(self.current.params)}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Dispatch the current request to replica ``action`` and advance to the next arrival."""
        sim = self.sim
        if sim is None or self._request is None:
            raise RuntimeError("call reset() before step()")  # gymnasium contract, not user input
        a = int(action)
        n = self.state_builder.num_replicas
        if not 0 <= a < n:
            raise ValueError(f"action {a} outside [0, {n}) (replicas of this episode's cluster)")
        rid = self._request.id
        t0 = sim.now
        sim.dispatch(a)
        table = sim.table
        if not table.rejected[rid]:
            self._outstanding += 1
            self._no_token.append(rid)
        nxt = sim.peek_arrival()
        t1 = nxt.arrival_s if nxt is not None else t0
        sim.advance_to(t1)
        self._request = nxt
        obs = self._observe()
        outcome = self._interval(t0, t1)
        reward, info = self.reward_calculator.calculate_reward(outcome)
        info.update(self._system_info(outcome))
        truncated = nxt is None
        return obs, float(reward), False, truncated, info

    # ------------------------------------------------------------------ internals
    def _observe(self) -> np.ndarray:
        assert self.sim is not None  # set by reset()
        self._snapshot = self.sim.snapshot(queue_k=self.state_builder.cfg.max_queue_requests_per_replica)
        if self.replica_set is None:
            return self.state_builder.build(self._snapshot, self._request)
        return self.state_builder.build_set(self._snapshot, self._request, self.num_replicas)

    def _interval(self, t0: float, t1: float) -> StepOutcome:
        """Request-seconds spent in the system and before the first token during ``[t0, t1]``."""
        assert self.sim is not None
        sim, table = self.sim, self.sim.table
        dt = t1 - t0
        finished = sim.pop_finished()
        finish = [table.finish[i] for i in finished]
        e2e_cost = self._outstanding * dt - sum(t1 - f for f in finish)
        self._outstanding -= len(finished)
        got_token_s, still_waiting = [], []
        for i in self._no_token:
            ft = table.first_token[i]
            if ft <= t1:  # NaN (no token yet) compares False
                got_token_s.append(ft)
            else:
                still_waiting.append(i)
        ttft_cost = len(self._no_token) * dt - sum(t1 - ft for ft in got_token_s)
        self._no_token = still_waiting
        e2e = np.array([table.finish[i] - table.arrival[i] for i in finished])
        assert self._snapshot is not None  # built at t1 by _observe() just before
        outstanding = np.array([r.outstanding for r in self._snapshot.replicas], np.float64)
        return StepOutcome(dt, max(e2e_cost, 0.0), max(ttft_cost, 0.0), e2e, outstanding)

    def _system_info(self, outcome: StepOutcome) -> dict[str, Any]:
        assert self._snapshot is not None and self.current is not None
        a = 0.05
        rate = len(outcome.finished_e2e_s) / outcome.dt_s if outcome.dt_s > 0 else 0.0
        qps = 1.0 / outcome.dt_s if outcome.dt_s > 0 else 0.0
        self._ema_throughput += a * (rate - self._ema_throughput)
        self._ema_qps += a * (qps - self._ema_qps)
        if len(outcome.finished_e2e_s):
            self._ema_latency += a * (float(outcome.finished_e2e_s.mean()) - self._ema_latency)
        cv = load_balance_cv(outcome.outstanding)
        target_qps = float(self.current.params.get("qps", self._ema_qps))
        return {
            "system/throughput_rps": self._ema_throughput, "system/latency_s": self._ema_latency,
            "system/queue_length": float(sum(r.num_waiting for r in self._snapshot.replicas)),
            "system/outstanding": float(outcome.outstanding.sum()), "system/balance_cv": cv,
            "system/qps": self._ema_qps,
            "pressure": {"current_qps": self._ema_qps, "target_qps": target_qps,
                         "current_latency_s": self._ema_latency,
                         "target_latency_s": self.reward_calculator.cfg.latency_threshold_s, "load_balance_cv": cv},
        }

    # ------------------------------------------------------------------ warm start
    @property
    def request(self) -> Request | None:
        """The request awaiting a decision (``None`` after the episode's last dispatch)."""
        return self._request

    @property
    def snapshot(self) -> ClusterSnapshot | None:
        """The snapshot the current observation was built from."""
        return self._snapshot

    def best_heuristic(self, candidates: Sequence[str], margin: float = 0.0) -> str:
        """The candidate whose routing of this episode's whole workload gives the lowest mean E2E + mean TTFT.

        Hindsight teacher selection: each candidate is simulated on the episode's cluster and workload once (cached
        for the episode). No single heuristic is best everywhere (the least-expected-latency estimate misjudges
        KV-bound clusters, request counting misjudges heterogeneous ones), so demonstrations follow whichever
        is best for the situation at hand. The first candidate is the default: another one replaces it only when
        its cost is lower by more than ``margin`` (a fraction), so near-ties (homogeneous clusters, where all
        heuristics are within noise) keep one consistent labeller instead of a coin flip between several.
        """
        if self.sim is None:
            raise RuntimeError("call reset() first")
        key: tuple[str | float, ...] = (*candidates, margin)
        if self._best is None or self._best[0] != key:
            costs = {}
            for name in candidates:
                summary = self._replay(name).summary()
                costs[name] = summary.e2e_s["mean"] + summary.ttft_s["mean"]
            best = min(costs, key=costs.__getitem__)
            default = candidates[0]
            self._best = (key, best if costs[best] < (1.0 - margin) * costs[default] else default)
        return str(self._best[1])

    def _replay(self, router: str) -> SimResult:
        """This episode's whole workload routed by ``router`` (a heuristic or the lookahead teacher)."""
        assert self.sim is not None
        if router == LOOKAHEAD_TEACHER:
            return simulate_lookahead(self.sim.cluster, self.sim.workload, ttft_weight=self.lookahead_ttft_weight)[0]
        return simulate(self.sim.cluster, self.sim.workload, make_router(router, seed=self._router_seed))

    def heuristic_action(self, router: str) -> int:
        """The replica the named heuristic router (or the ``lookahead`` teacher, which sees the simulator's future
        output lengths and so can only label demonstrations) would choose for the current request now."""
        if self._request is None or self._snapshot is None:
            raise RuntimeError("no request awaiting a decision; call reset()")
        if router == LOOKAHEAD_TEACHER:
            assert self.sim is not None
            if self._planner is None:
                self._planner = LookaheadPlanner(self.sim, self.lookahead_ttft_weight)
            return self._planner.choose()
        if router not in self._routers:
            self._routers[router] = make_router(router, seed=self._router_seed + len(self._routers))
        return int(self._routers[router].select(self._request, self._snapshot))
