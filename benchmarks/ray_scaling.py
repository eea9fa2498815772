"""Scale-out on Ray: evaluation-sweep wall time and PPO rollout throughput against one process, same run.

1. Evaluation sweep: the static (cap x clock) grid search of ``rlserve evaluate energy`` on energy_steady (shortened
   to ``--requests``), in this process (the baseline) and as Ray tasks on a local Ray with W CPUs; the results must be
   identical (checked). Ray's start is reported apart; the timed sweep includes the workers' first imports.
2. Training rollouts: the shipped PPO router recipe (configs/train/ppo_router.yaml, no validation, short
   stabilisation) with ``--envs`` environments, in this process and with W rollout workers. Reported: decisions per
   second over the PPO updates after the first (warm), split into collection and learner update time.
3. What the scaling estimate in docs/scaling.md needs: single-worker decisions/s, learner update time, weights and
   rollout-segment sizes, and a Ray actor round trip (why workers run the policy instead of a batching learner).

Prints ``key=value`` lines; ``ray_eval_speedup_2_workers`` and ``ray_rollout_speedup_2_workers`` last (the latter
against 1 rollout worker, as issue 14 defines it; against one process is printed too). Also the load average.

Usage: python benchmarks/ray_scaling.py [--workers 1,2] [--requests 300] [--grid-seeds 1] [--envs 8] [--updates 4]
       [--repeat 1]   (16 cores: --workers 1,4,8,16 --envs 16)
"""

from __future__ import annotations

import argparse
import os
import pickle
import time
import warnings
from typing import Any

import numpy as np
import torch

from rlserve.envs.energy_env import build_action_space
from rlserve.envs.energy_eval import default_grid_caps, grid_search_static
from rlserve.envs.energy_train import CONFIG_DIR, load_train_config
from rlserve.envs.router_training import make_env, train_router
from rlserve.parallel import Parallel, ensure_ray
from rlserve.rl.config import load_config
from rlserve.rl.ppo import PPOTrainer
from rlserve.rl.rollout_buffer import RolloutBuffer
from rlserve.rl.rollout_workers import SEGMENT_FIELDS, RolloutWorkers
from rlserve.scenario import load_scenario

warnings.filterwarnings("ignore", message="token caps shortened")


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# ------------------------------------------------------------------------------------------------ evaluation sweep
def sweep(parallel: Parallel, requests: int, grid_seeds: int) -> tuple[float, Any, int]:
    scn = load_scenario("energy_steady").with_num_requests(requests)
    env_cfg = load_train_config("energy").env
    space = build_action_space(scn, env_cfg)
    caps = default_grid_caps(space, scn)
    t0 = time.perf_counter()
    res = grid_search_static(scn, range(500_000, 500_000 + grid_seeds), caps=caps, clocks_mhz=space.sm_clocks_mhz,
                             action_space=space, interval_s=env_cfg.interval_s, parallel=parallel)
    return time.perf_counter() - t0, res, len(caps) * len(space.sm_clocks_mhz) * grid_seeds


# ------------------------------------------------------------------------------------------------ rollouts
class _Timed:
    """Accumulates the learner's update time (PPOTrainer.update) during a training run."""

    def __init__(self) -> None:
        self.update_s: list[float] = []
        self._orig = PPOTrainer.update

    def __enter__(self) -> _Timed:
        orig, sink = self._orig, self.update_s

        def timed(trainer: PPOTrainer, *args: Any, **kwargs: Any) -> dict[str, float]:
            t0 = time.perf_counter()
            out = orig(trainer, *args, **kwargs)
            sink.append(time.perf_counter() - t0)
            return out

        PPOTrainer.update = timed  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        PPOTrainer.update = self._orig  # type: ignore[method-assign]


def router_cfg(envs: int, updates: int) -> Any:
    return load_config(CONFIG_DIR / "ppo_router.yaml", {
        "total_updates": updates, "ppo": {"num_envs": envs},
        "warm_start": {"stabilization_steps": 64, "bc_epochs": 1},
        "checkpoints": {"validation_interval": 0, "checkpoint_interval": 1000},
        "monitoring": {"enable_tensorboard": False, "stdout": False}})


def rollouts(workers: int | None, envs: int, updates: int) -> dict[str, float]:
    """Warm decisions/s (updates after the first) and its split into collection and learner time."""
    cfg = router_cfg(envs, updates)
    spec = RolloutWorkers(workers, Parallel(workers=workers)) if workers else None
    with _Timed() as timed:
        res = train_router(cfg, None, rollout_workers=spec)
    walls = [h["time/wall_s"] for h in res.history]
    per_update = np.diff(walls)  # updates 2..N: warm (actors started, numba caches loaded)
    decisions = cfg.ppo.num_envs * cfg.ppo.num_steps
    learn = np.asarray(timed.update_s[1:])
    return {"decisions_per_s": decisions / float(per_update.mean()),
            "collect_decisions_per_s": decisions / float((per_update - learn).mean()),
            "update_s": float(learn.mean()), "update_wall_s": float(per_update.mean())}


def transfer_sizes(envs: int, workers: int) -> dict[str, float]:
    cfg = router_cfg(envs, 1)
    env = make_env(cfg)
    obs_dim, actions = int(env.observation_space.shape[0]), int(env.action_space.n)  # type: ignore[index,attr-defined]
    from rlserve.rl.ppo import _build_model

    model = _build_model(cfg, obs_dim, actions)
    weights = len(pickle.dumps({k: v for k, v in model.state_dict().items()}))
    per_worker = -(-envs // workers)
    buf = RolloutBuffer(cfg.ppo.num_steps, per_worker, obs_dim, actions, (cfg.network.gru_layers,
                        cfg.network.hidden_size), cfg.ppo.gamma, cfg.ppo.gae_lambda)
    segment = len(pickle.dumps({k: getattr(buf, k) for k in SEGMENT_FIELDS}))
    return {"weights_bytes": weights, "segment_bytes_per_worker": segment, "obs_dim": obs_dim}


def round_trip_ms(ray: Any) -> float:
    @ray.remote(num_cpus=0)
    class Echo:
        def ping(self, x: Any) -> Any:
            return x

    echo = Echo.remote()
    obs = np.zeros(64)
    ray.get(echo.ping.remote(obs))
    t0 = time.perf_counter()
    for _ in range(200):
        ray.get(echo.ping.remote(obs))
    ray.kill(echo)
    return (time.perf_counter() - t0) / 200 * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts (the speedups print for 2)")
    ap.add_argument("--requests", type=int, default=300, help="requests per grid-search simulation")
    ap.add_argument("--grid-seeds", type=int, default=1)
    ap.add_argument("--envs", type=int, default=8, help="PPO environments (>= the largest worker count)")
    ap.add_argument("--updates", type=int, default=4, help="PPO updates per run (the first is not timed)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per measurement, the best kept (a shared machine's "
                    "load only ever slows a run down)")
    args = ap.parse_args()
    best_sweep = lambda par: min((sweep(par, args.requests, args.grid_seeds) for _ in range(args.repeat)),  # noqa: E731
                                 key=lambda r: r[0])
    best_rollouts = lambda w: max((rollouts(w, args.envs, args.updates) for _ in range(args.repeat)),  # noqa: E731
                                  key=lambda r: r["decisions_per_s"])
    counts = sorted({1, *(int(w) for w in args.workers.split(","))})
    torch.set_num_threads(1)
    print(f"cpus={os.cpu_count()} load_before={load()}", flush=True)

    base_s, base_res, cells = best_sweep(Parallel())
    print(f"eval_cells={cells} eval_single_process_s={base_s:.2f} ({cells / base_s:.2f} cells/s)", flush=True)
    sizes = transfer_sizes(args.envs, max(counts))
    print(" ".join(f"{k}={v:.0f}" for k, v in sizes.items()), flush=True)
    single = best_rollouts(None)
    print("rollout_single_process " + " ".join(f"{k}={v:.4g}" for k, v in single.items()) + f" load={load()}",
          flush=True)

    eval_speedup: dict[int, float] = {}
    per_workers: dict[int, dict[str, float]] = {}
    for w in counts:  # each count on its own local Ray of w CPUs, as `--workers w` runs it
        t0 = time.perf_counter()
        ray = ensure_ray(Parallel(workers=w))
        print(f"ray_{w}_init_s={time.perf_counter() - t0:.2f} ray_version={ray.__version__}", flush=True)
        warm_s, _, _ = sweep(Parallel(workers=w), 20, 1)  # worker processes start and import rlserve
        start_s = time.perf_counter() - t0
        if w == counts[0]:
            print(f"ray_actor_round_trip_ms={round_trip_ms(ray):.3f}", flush=True)
        ray_s, ray_res, _ = best_sweep(Parallel(workers=w))
        assert ray_res == base_res, "Ray results differ from the single-process results"
        eval_speedup[w] = base_s / ray_s
        print(f"eval_ray_{w}_workers_s={ray_s:.2f} eval_speedup_{w}_workers={eval_speedup[w]:.2f} "
              f"(vs 1 worker {base_s / ray_s / eval_speedup[counts[0]]:.2f}; with Ray start and worker warm-up "
              f"{start_s:.1f} s: {base_s / (ray_s + start_s):.2f}) identical_results=True load={load()}", flush=True)
        per_workers[w] = best_rollouts(w)
        print(f"rollout_{w}_workers " + " ".join(f"{k}={v:.4g}" for k, v in per_workers[w].items())
              + f" speedup_vs_1_worker={per_workers[w]['decisions_per_s'] / per_workers[1]['decisions_per_s']:.2f}"
              + f" speedup_vs_single_process={per_workers[w]['decisions_per_s'] / single['decisions_per_s']:.2f}"
              + f" load={load()}", flush=True)
        ray.shutdown()
    print(f"load_after={load()}")
    if 2 in eval_speedup:
        print(f"ray_eval_speedup_2_workers={eval_speedup[2]:.2f}")
    if 2 in per_workers:
        ratio = per_workers[2]["decisions_per_s"] / per_workers[1]["decisions_per_s"]
        print(f"ray_rollout_speedup_2_workers={ratio:.2f}")


if __name__ == "__main__":
    main()
