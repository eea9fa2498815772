"""The router proxy in front of real vLLM CPU servers: routing as the policy says, answers passed through,
admission caps honoured at the engine, and a replica killed under load without a lost request."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from rlserve.policies import make_router
from rlserve.serve import ProxyConfig, ReplicaSpec, RouterProxy
from rlserve.snapshot import ClusterSnapshot
from rlserve.testing.vllm_server import VllmServer
from rlserve.workload.request import Request

pytestmark = pytest.mark.anyio
TIMEOUT = httpx.Timeout(180.0)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Script:
    """A router that follows a fixed list of replicas, cycling (to check routing is obeyed exactly)."""

    name = "script"

    def __init__(self, replicas: list[int]) -> None:
        self.replicas, self.calls = replicas, 0

    def reset(self, seed: int | None = None) -> None:
        self.calls = 0

    def select(self, request: Request, snapshot: ClusterSnapshot) -> int:
        self.calls += 1
        return self.replicas[(self.calls - 1) % len(self.replicas)]


def _config(servers: list[VllmServer], **kw: object) -> ProxyConfig:
    specs = tuple(ReplicaSpec(s.url, max_num_seqs=s.max_num_seqs) for s in servers)
    base: dict[str, object] = dict(port=0, health_interval_s=0.2, metrics_interval_s=0.2, health_timeout_s=5.0)
    return ProxyConfig(replicas=specs, **{**base, **kw})  # type: ignore[arg-type]


def _body(server: VllmServer, max_tokens: int = 16, **kw: object) -> dict[str, object]:
    return {"model": server.model_name, "prompt": "the quick brown fox jumps over the lazy dog",
            "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0.0, **kw}


def _success_total(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=TIMEOUT).text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "vllm:request_success_total")


def _proxy_metric(text: str, name: str, **labels: str) -> float:
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


async def test_traffic_follows_the_router_and_answers_pass_through(
        vllm_servers_pair: tuple[VllmServer, VllmServer]) -> None:
    servers = list(vllm_servers_pair)
    before = [_success_total(s.url) for s in servers]
    async with RouterProxy(_config(servers), Script([1, 0, 1])) as proxy, \
            httpx.AsyncClient(timeout=TIMEOUT) as http:
        replicas = []
        for _ in range(6):
            r = await http.post(proxy.url + "/v1/completions", json=_body(servers[0], 8))
            assert r.status_code == 200, r.text
            assert r.json()["usage"]["completion_tokens"] == 8
            replicas.append(int(r.headers["x-rlserve-replica"]))
        assert replicas == [1, 0, 1, 1, 0, 1]
        after = [_success_total(s.url) for s in servers]
        assert [a - b for a, b in zip(after, before, strict=True)] == [2, 4]

        # streamed completions and chat come through as vLLM sent them
        async with http.stream("POST", proxy.url + "/v1/completions",
                               json=_body(servers[0], 6, stream=True)) as r:
            events = [line[6:] async for line in r.aiter_lines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        assert json.loads(events[-2])["choices"][0]["finish_reason"] == "length"
        chat = {"model": servers[0].model_name, "max_tokens": 5, "ignore_eos": True,
                "messages": [{"role": "user", "content": "hello"}]}
        r = await http.post(proxy.url + "/v1/chat/completions", json=chat)
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["role"] == "assistant"
        r = await http.get(proxy.url + "/v1/models")
        assert [m["id"] for m in r.json()["data"]] == [servers[0].model_name]

        # the snapshot reads the engines' KV geometry from their /metrics
        await asyncio.sleep(0.5)
        states = proxy.snapshot().replicas
        # 6 x 8 tokens, the 6-token stream (vLLM may merge tokens into one event: counted right anyway), chat's 5
        assert sum(s.generated_tokens_total for s in states) == 6 * 8 + 6 + 5
        for state, server in zip(states, servers, strict=True):
            assert state.block_size == server.block_size
            assert state.kv_blocks_total > 0 and state.kv_capacity_tokens == state.kv_blocks_total * 32
            assert state.completed_total >= 1 and state.healthy


class Recording:
    """Wraps a real router and records, per decision, the outstanding counts it saw and what it chose."""

    def __init__(self, router: object) -> None:
        self.router, self.name, self.seen = router, "recording", []

    def reset(self, seed: int | None = None) -> None:
        self.router.reset(seed)  # type: ignore[attr-defined]

    def select(self, request: Request, snapshot: ClusterSnapshot) -> int:
        choice = self.router.select(request, snapshot)  # type: ignore[attr-defined]
        self.seen.append(([r.outstanding for r in snapshot.replicas], choice))
        return choice


async def test_least_outstanding_spreads_concurrent_load_by_its_rule(
        vllm_servers_pair: tuple[VllmServer, VllmServer]) -> None:
    servers = list(vllm_servers_pair)
    router = Recording(make_router("least_outstanding", seed=0))
    async with RouterProxy(_config(servers), router) as proxy, httpx.AsyncClient(timeout=TIMEOUT) as http:
        responses = await asyncio.gather(*(http.post(proxy.url + "/v1/completions", json=_body(servers[0], 24))
                                           for _ in range(12)))
        assert all(r.status_code == 200 for r in responses)
    assert len(router.seen) == 12
    for outstanding, choice in router.seen:  # the proxy's live counts fed the rule; the rule was obeyed
        assert outstanding[choice] == min(outstanding)
    assert max(max(o) for o, _ in router.seen) >= 2  # requests really overlapped
    counts = [sum(r.headers["x-rlserve-replica"] == str(i) for r in responses) for i in range(2)]
    assert min(counts) >= 4  # and the load spread over both replicas


async def test_admission_cap_is_honoured_at_the_engine(vllm_servers_pair: tuple[VllmServer, VllmServer]) -> None:
    servers = list(vllm_servers_pair)
    async with RouterProxy(_config(servers), Script([0])) as proxy, httpx.AsyncClient(timeout=TIMEOUT) as http:
        proxy.set_concurrency_cap(0, 2)
        peak_engine, peak_queued = 0.0, 0
        done = asyncio.Event()

        async def watch() -> None:
            nonlocal peak_engine, peak_queued
            while not done.is_set():
                text = (await http.get(servers[0].url + "/metrics")).text
                running = _proxy_metric(text, "vllm:num_requests_running")
                waiting = _proxy_metric(text, "vllm:num_requests_waiting")
                peak_engine = max(peak_engine, running + waiting)
                peak_queued = max(peak_queued, proxy.books[0].gate.queued)
                await asyncio.sleep(0.05)

        watcher = asyncio.create_task(watch())
        responses = await asyncio.gather(*(http.post(proxy.url + "/v1/completions", json=_body(servers[0], 48))
                                           for _ in range(8)))
        done.set()
        await watcher
        assert [r.status_code for r in responses] == [200] * 8
        assert peak_engine <= 2  # vLLM never saw more than the cap
        assert peak_queued >= 4  # the rest waited at the proxy


async def test_a_replica_killed_under_load_loses_no_request(
        vllm_server: VllmServer, vllm_server_factory: object, tmp_path: Path) -> None:
    victim = vllm_server_factory()  # type: ignore[operator]  # private: this test kills it
    servers = [vllm_server, victim]
    async with RouterProxy(_config(servers, max_attempts=2), make_router("round_robin")) as proxy, \
            httpx.AsyncClient(timeout=TIMEOUT) as http:

        async def one(i: int) -> tuple[int, int, int]:
            await asyncio.sleep(0.05 * i)  # a steady stream of arrivals
            r = await http.post(proxy.url + "/v1/completions", json=_body(vllm_server, 32))
            tokens = r.json()["usage"]["completion_tokens"] if r.status_code == 200 else -1
            return r.status_code, int(r.headers.get("x-rlserve-replica", -1)), tokens

        async def kill_soon() -> None:
            while proxy.books[1].gate.in_flight < 2:  # kill while the victim is busy with requests
                await asyncio.sleep(0.01)
            victim.kill()

        async def streamed(i: int) -> str:
            """'complete' or 'error' (a stream cut after its first byte must say so; it cannot be retried)."""
            await asyncio.sleep(0.1 * i)
            async with http.stream("POST", proxy.url + "/v1/completions",
                                   json=_body(vllm_server, 32, stream=True)) as r:
                assert r.status_code == 200
                events = [line[6:] async for line in r.aiter_lines() if line.startswith("data: ")]
            assert events[-1] == "[DONE]"  # never a silently truncated stream
            if "error" in json.loads(events[-2]):
                return "error"
            assert json.loads(events[-2])["choices"][0]["finish_reason"] == "length"
            return "complete"

        killer = asyncio.create_task(kill_soon())
        results, streams = await asyncio.gather(asyncio.gather(*(one(i) for i in range(40))),
                                                asyncio.gather(*(streamed(i) for i in range(20))))
        await killer
        assert [status for status, _, _ in results] == [200] * 40  # zero lost requests
        assert all(tokens == 32 for _, _, tokens in results)  # every answer complete
        metrics = (await http.get(proxy.url + "/metrics")).text
        retried = _proxy_metric(metrics, "rlserve_proxy_retries_total", replica="1")
        cut = _proxy_metric(metrics, "rlserve_proxy_errors_total", kind="upstream_midstream")
        assert cut == streams.count("error")  # every cut stream said so, and was counted
        assert retried + cut >= 1  # the victim died busy: its requests were retried (counted) or cut (counted)
        assert _proxy_metric(metrics, "rlserve_proxy_replica_up", replica="1") == 0
        r = await http.get(proxy.url + "/health")
        assert r.json()["replicas_up"] == 1
