"""One interface, two worlds: for equivalent cluster states the simulator and the proxy build the same snapshot,
so every router (the heuristics, and the shipped PPO router) makes the same choice in both.

The state: the four replicas of the ``heterogeneous`` scenario (2 x H100, 2 x A40; replica 0 capped at 2 in
flight), eight requests routed [0, 0, 2, 0, 2, 1, 3, 2] at t ~ 0, none finished. In the simulator each replica
has started its first iteration with the first request it got, and the others wait for the iteration boundary.
The proxy side is the same situation on real HTTP: fake vLLM servers that hold every request before its first
token and run one sequence at a time (``max_num_seqs=1`` on the fake engine, like the simulator's single-request
first iteration), so their /metrics report one running and the rest waiting; the proxy's admission gate holds
what is above the cap. Replica capabilities come from ``replica_spec_from_sim``, as ``rlserve serve --scenario``
sets them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses

import aiohttp
import numpy as np
import pytest
from serve_helpers import ScriptedRouter, fakes

from rlserve.policies import ROUTERS, make_router
from rlserve.scenario import load_scenario
from rlserve.serve import ProxyConfig, RouterProxy
from rlserve.serve.config import replica_spec_from_sim
from rlserve.serve.request_shape import request_sizes
from rlserve.sim import ClusterConfig, ClusterSimulator
from rlserve.snapshot import ClusterSnapshot
from rlserve.workload.request import Request, Workload

SCRIPT = [0, 0, 2, 0, 2, 1, 3, 2]
PROMPTS = [100, 250, 40, 333, 17, 70, 90, 123, 55]  # the last one is the request both worlds must route next
OUTPUTS = [20, 30, 40, 50, 60, 70, 80, 90, 100]
BLOCKS = [2000, 3000, 1500, 2500]
# Measured by the proxy only where the hardware is (NVML) or differing by construction (wall clock).
NOT_COMPARED = {"power_w", "energy_j", "busy_s", "queue"}


def _sim_snapshot(cluster: ClusterConfig) -> tuple[ClusterSnapshot, Request]:
    n = len(PROMPTS)
    # the true outputs are shorter than the declared max_tokens: the simulator must show only the declared sizes
    workload = Workload.from_arrays(np.arange(n) * 1e-6, np.array(PROMPTS), np.array(OUTPUTS) // 2,
                                    max_tokens=np.array(OUTPUTS))
    sim = ClusterSimulator(cluster, workload)
    for replica in SCRIPT:
        sim.dispatch(replica)
    request = sim.peek_arrival()
    assert request is not None
    return sim.snapshot(queue_k=4), request


async def _proxy_snapshot(cluster: ClusterConfig) -> tuple[ClusterSnapshot, Request]:
    async with contextlib.AsyncExitStack() as stack:
        servers = [(await stack.enter_async_context(fakes(1, max_num_seqs=1, ttft_delay_s=3.0, num_gpu_blocks=b)))[0]
                   for b in BLOCKS]
        specs = tuple(replica_spec_from_sim(f.base_url, c) for f, c in zip(servers, cluster.replicas, strict=True))
        config = ProxyConfig(replicas=specs, port=0, metrics_interval_s=0.02, health_interval_s=0.5, queue_k=4)
        async with RouterProxy(config, ScriptedRouter(SCRIPT)) as proxy, aiohttp.ClientSession() as http:
            bodies = [{"prompt": list(range(p)), "max_tokens": o} for p, o in zip(PROMPTS, OUTPUTS, strict=True)]
            tasks = []
            for body in bodies[:len(SCRIPT)]:  # one at a time, so both fakes see them in routing order
                tasks.append(asyncio.create_task(http.post(proxy.url + "/v1/completions", json=body)))
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.1)  # a /metrics scrape after the last arrival
            snapshot = proxy.snapshot()
            for t in tasks:
                t.cancel()
            for f in servers:  # let the fakes' queued requests finish at once, so they stop quickly
                f.config.ttft_delay_s = 0.0
            prompt, output, _ = request_sizes(bodies[-1], 4.0, 256)
            return snapshot, Request(id=len(SCRIPT), arrival_s=snapshot.time_s, prompt_tokens=prompt,
                                     max_tokens=output)


@pytest.fixture(scope="module")
def both_worlds() -> tuple[ClusterSnapshot, Request, ClusterSnapshot, Request]:
    """(simulator snapshot, its next request, proxy snapshot, its next request) for the same state."""
    replicas = load_scenario("heterogeneous").cluster.replicas
    cluster = ClusterConfig(tuple(dataclasses.replace(r, num_gpu_blocks=b, concurrency_cap=2 if i == 0 else None)
                                  for i, (r, b) in enumerate(zip(replicas, BLOCKS, strict=True))))
    sim_snap, sim_request = _sim_snapshot(cluster)
    proxy_snap, proxy_request = asyncio.run(_proxy_snapshot(cluster))
    return sim_snap, sim_request, proxy_snap, proxy_request


def test_equivalent_states_give_the_same_snapshot(both_worlds: tuple) -> None:  # type: ignore[type-arg]
    sim_snap, sim_request, proxy_snap, proxy_request = both_worlds
    assert proxy_snap.num_replicas == sim_snap.num_replicas
    assert proxy_snap.arrivals_total == sim_snap.arrivals_total == len(SCRIPT)
    assert (proxy_request.prompt_tokens, proxy_request.max_tokens) == (sim_request.prompt_tokens,
                                                                       sim_request.max_tokens)
    for sim_state, proxy_state in zip(sim_snap.replicas, proxy_snap.replicas, strict=True):
        sim_fields, proxy_fields = dataclasses.asdict(sim_state), dataclasses.asdict(proxy_state)
        for name in NOT_COMPARED:
            sim_fields.pop(name), proxy_fields.pop(name)
        assert proxy_fields == sim_fields
        # queue views agree except for the requests' ages (wall clock vs simulated clock)
        strip = [dict(dataclasses.asdict(v), age_s=None) for v in sim_state.queue]
        assert [dict(dataclasses.asdict(v), age_s=None) for v in proxy_state.queue] == strip
        assert (proxy_state.power_w, proxy_state.energy_j) == (None, None)  # not measured, rather than 0


@pytest.mark.parametrize("name", sorted(ROUTERS))
def test_every_router_decides_the_same_in_both_worlds(name: str, both_worlds: tuple) -> None:  # type: ignore[type-arg]
    sim_snap, sim_request, proxy_snap, proxy_request = both_worlds
    if name == "ppo":
        from rlserve.policies.ppo_router import DEFAULT_CHECKPOINT

        if not DEFAULT_CHECKPOINT.exists():
            pytest.skip(f"the shipped PPO checkpoint {DEFAULT_CHECKPOINT.name} is not in this checkout yet")
    assert make_router(name, seed=7).select(sim_request, sim_snap) == \
        make_router(name, seed=7).select(proxy_request, proxy_snap)


@pytest.mark.parametrize("queue_k", [0, 4])
def test_the_routing_observation_is_the_same_in_both_worlds(queue_k: int, both_worlds: tuple) -> None:  # type: ignore[type-arg]
    """The PPO router's state builder turns both snapshots into the same vector (queue ages aside: wall clock)."""
    from rlserve.envs.router_state import StateBuilder
    from rlserve.rl.config import StateConfig

    sim_snap, sim_request, proxy_snap, proxy_request = both_worlds
    cfg = StateConfig(max_queue_requests_per_replica=queue_k)
    sim_obs = StateBuilder(sim_snap.num_replicas, cfg).build(sim_snap, sim_request)
    proxy_obs = StateBuilder(proxy_snap.num_replicas, cfg).build(proxy_snap, proxy_request)
    names = StateBuilder(sim_snap.num_replicas, cfg).feature_names()
    differing = {names[i] for i in np.flatnonzero(~np.isclose(sim_obs, proxy_obs))}
    assert len(sim_obs) == len(proxy_obs) > 50
    assert {n for n in differing if not n.endswith("_age_s")} == set()
    assert bool(differing) == (queue_k > 0)  # the ages are the only difference, and only when they are features
