"""The proxy end to end over real HTTP on 127.0.0.1, in front of fake vLLM servers."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families
from serve_helpers import ScriptedRouter, dead_url, fake_process, fakes, proxy_at, proxy_over

pytestmark = pytest.mark.anyio

COMPLETION = {"model": "fake-model", "prompt": "hello there", "max_tokens": 5}


def _without_created(obj: dict) -> dict:
    return {k: v for k, v in obj.items() if k != "created"}


def _events(body: bytes) -> list[str]:
    return [line[6:] for line in body.decode().split("\n\n") if line.startswith("data: ")]


def _metric(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    raise KeyError(f"{name}{labels} not in /metrics")


async def test_non_streamed_and_streamed_answers_pass_through_unchanged() -> None:
    async with fakes(1) as (server,), proxy_over([server]) as proxy, aiohttp.ClientSession() as http:
        for path, body in (("/v1/completions", COMPLETION),
                           ("/v1/chat/completions", {"model": "fake-model", "max_tokens": 4,
                                                     "messages": [{"role": "user", "content": "hi"}]})):
            async with http.post(server.base_url + path, json=body) as r:
                direct = await r.json()
            async with http.post(proxy.url + path, json=body) as r:
                assert r.status == 200
                assert r.headers["X-Rlserve-Replica"] == "0"
                via_proxy = await r.json()
            assert _without_created(via_proxy) == _without_created(direct)
            stream_body = {**body, "stream": True, "stream_options": {"include_usage": True}}
            async with http.post(server.base_url + path, json=stream_body) as r:
                direct_events = _events(await r.read())
            async with http.post(proxy.url + path, json=stream_body) as r:
                assert r.headers["Content-Type"].startswith("text/event-stream")
                proxied_events = _events(await r.read())
            assert proxied_events[-1] == "[DONE]"
            assert [_without_created(json.loads(e)) for e in proxied_events[:-1]] == [
                _without_created(json.loads(e)) for e in direct_events[:-1]]


async def test_the_router_sees_where_prompt_prefixes_were_sent() -> None:
    """The proxy's prefix index: a chat that continues an earlier one shows its cached prefix on the replica that
    served the earlier turn (blocks of 16 tokens x 4 characters), and nothing elsewhere."""
    router = ScriptedRouter([1, 0, 0])
    system = {"role": "system", "content": "You are a terse assistant. " * 20}
    turn1 = [system, {"role": "user", "content": "Name three primes."}]
    turn2 = [*turn1, {"role": "assistant", "content": "2, 3, 5."}, {"role": "user", "content": "And three more?"}]
    async with fakes(2) as servers, proxy_over(servers, router) as proxy, aiohttp.ClientSession() as http:
        for messages in (turn1, turn2, [{"role": "user", "content": "unrelated " * 80}]):
            async with http.post(proxy.url + "/v1/chat/completions",
                                 json={"model": "fake-model", "messages": messages, "max_tokens": 2}) as r:
                assert r.status == 200
    first, second, third = ([s.prefix_hit_tokens for s in states] for states in router.states)
    assert first == [0, 0]
    assert second[0] == 0 and second[1] >= 16 * (len(system["content"]) // 64)  # turn 1's blocks, on replica 1
    assert third == [0, 0]


async def test_requests_go_where_the_router_says_and_it_sees_the_request_sizes() -> None:
    router = ScriptedRouter([1, 1, 0])
    async with fakes(2) as servers, proxy_over(servers, router) as proxy, aiohttp.ClientSession() as http:
        replicas = []
        for i in range(6):
            async with http.post(proxy.url + "/v1/completions",
                                 json={"prompt": list(range(10 + i)), "max_tokens": 3}) as r:
                assert r.status == 200
                replicas.append(int(r.headers["X-Rlserve-Replica"]))
        assert replicas == [1, 1, 0, 1, 1, 0]
        assert [s.counters.success for s in servers] == [2, 4]
        assert [(q.prompt_tokens, q.max_tokens) for q in router.requests] == [(10 + i, 3) for i in range(6)]
        assert [q.id for q in router.requests] == list(range(6))
        # the states the router saw: nothing outstanding between sequential requests, completions counted
        last = router.states[-1]
        assert [s.completed_total for s in last] == [1, 4]
        assert [s.outstanding for s in last] == [0, 0]
        assert [s.generated_tokens_total for s in last] == [3, 12]
        async with http.get(proxy.url + "/metrics") as r:
            text = await r.text()
        assert _metric(text, "rlserve_proxy_routed_requests_total", replica="1") == 4
        assert _metric(text, "rlserve_proxy_completed_requests_total", replica="0") == 2
        assert _metric(text, "rlserve_proxy_decision_seconds_count") == 6


async def test_snapshot_counts_in_flight_requests_and_reads_engine_metrics() -> None:
    async with fakes(1, ttft_delay_s=0.3, num_gpu_blocks=1000, block_size=32) as (server,), \
            proxy_over([server], replica_kw={"max_num_seqs": 64}) as proxy, aiohttp.ClientSession() as http:
        await asyncio.sleep(0.15)  # a metrics scrape has happened
        state = proxy.snapshot().replicas[0]
        assert (state.kv_blocks_total, state.block_size, state.kv_capacity_tokens) == (1000, 32, 32_000)
        assert state.max_num_seqs == state.concurrency_cap == 64

        async def one(stream: bool) -> None:
            async with http.post(proxy.url + "/v1/completions",
                                 json={"prompt": list(range(100)), "max_tokens": 7, "stream": stream}) as r:
                await r.read()

        tasks = [asyncio.create_task(one(i % 2 == 0)) for i in range(3)]
        await asyncio.sleep(0.15)
        state = proxy.snapshot().replicas[0]
        assert state.outstanding == 3
        assert state.pending_prefill_tokens == 300
        assert state.pending_decode_tokens == 21
        await asyncio.gather(*tasks)
        state = proxy.snapshot().replicas[0]
        assert (state.outstanding, state.pending_prefill_tokens, state.pending_decode_tokens) == (0, 0, 0)
        assert state.completed_total == 3 and state.generated_tokens_total == 21
        async with http.post(proxy.url + "/v1/completions", json={"prompt": "x", "max_tokens": 4, "stream": True,
                                                                     "stream_options": {"include_usage": True}}) as r:
            await r.read()
        assert proxy.snapshot().replicas[0].generated_tokens_total == 25  # the usage event is not a token
        assert 0.25 < state.recent_ttft_s < 1.0  # only the streamed requests show a first token
        assert 0.25 < state.recent_e2e_s < 1.0


async def test_concurrency_cap_is_honoured_and_changeable_at_run_time() -> None:
    async with fakes(1, ttft_delay_s=0.1) as (server,), proxy_over([server], replica_kw={"concurrency_cap": 2}) \
            as proxy, aiohttp.ClientSession() as http:
        peak = 0
        done = False

        async def watch() -> None:
            nonlocal peak
            while not done:
                peak = max(peak, server.counters.running)
                await asyncio.sleep(0.005)

        watcher = asyncio.create_task(watch())

        async def one() -> int:
            async with http.post(proxy.url + "/v1/completions", json=COMPLETION) as r:
                await r.read()
                return r.status

        statuses = await asyncio.gather(*(one() for _ in range(8)))
        assert statuses == [200] * 8
        assert peak == 2
        # raise the cap over HTTP; then everything runs at once
        async with http.put(proxy.url + "/admin/replicas/0/concurrency_cap", json={"cap": 8}) as r:
            assert r.status == 200 and (await r.json()) == {"replica": 0, "cap": 8}
        assert proxy.snapshot().replicas[0].concurrency_cap == 8
        peak = 0
        assert await asyncio.gather(*(one() for _ in range(8))) == [200] * 8
        assert peak == 8
        done = True
        await watcher


async def test_full_queue_gives_429_and_a_long_wait_503_never_a_hang() -> None:
    async with fakes(1, ttft_delay_s=1.0) as (server,), \
            proxy_over([server], replica_kw={"concurrency_cap": 1}, max_queue_per_replica=1, queue_timeout_s=0.3) \
            as proxy, aiohttp.ClientSession() as http:

        async def one() -> tuple[int, dict, str | None]:
            async with http.post(proxy.url + "/v1/completions", json=COMPLETION) as r:
                return r.status, await r.json(), r.headers.get("Retry-After")

        results = await asyncio.gather(*(one() for _ in range(3)))
        statuses = sorted(s for s, _, _ in results)
        assert statuses == [200, 429, 503]
        errors = {s: (body["error"], ra) for s, body, ra in results if s != 200}
        assert errors[429][0]["type"] == "queue_full" and errors[429][1] == "1"
        assert errors[503][0]["type"] == "queue_timeout" and "0.3 s" in errors[503][0]["message"]
        async with http.get(proxy.url + "/metrics") as r:
            text = await r.text()
        assert _metric(text, "rlserve_proxy_errors_total", kind="queue_full") == 1
        assert _metric(text, "rlserve_proxy_errors_total", kind="queue_timeout") == 1
        state = proxy.snapshot().replicas[0]
        assert state.outstanding == 0 and state.pending_decode_tokens == 0


async def test_a_failed_connection_is_retried_on_another_replica_and_counted() -> None:
    router = ScriptedRouter([0])  # always the dead replica
    async with fakes(1) as (server,), \
            proxy_at([dead_url(), server.base_url], router, health_interval_s=60.0) as proxy, \
            aiohttp.ClientSession() as http:
        # the health interval is long: the request itself must discover that replica 0 is down
        proxy.set_health(0, True)  # as if the start-up probe had missed the failure
        async with http.post(proxy.url + "/v1/completions", json=COMPLETION) as r:
            assert r.status == 200
            assert r.headers["X-Rlserve-Replica"] == "1"
        assert not proxy.books[0].healthy
        async with http.post(proxy.url + "/v1/completions", json=COMPLETION) as r:
            assert r.headers["X-Rlserve-Replica"] == "1"  # the router said 0, which is down: moved at once
        async with http.get(proxy.url + "/metrics") as r:
            text = await r.text()
        assert _metric(text, "rlserve_proxy_retries_total", replica="0") == 1
        assert _metric(text, "rlserve_proxy_replica_up", replica="0") == 0
        assert server.counters.success == 2


async def test_no_reachable_replica_gives_a_clear_503() -> None:
    async with proxy_at([dead_url(), dead_url()]) as proxy, aiohttp.ClientSession() as http:
        async with http.post(proxy.url + "/v1/completions", json=COMPLETION) as r:
            assert r.status == 503
            err = (await r.json())["error"]
        assert err["type"] == "no_replica" and "2 tried" in err["message"]
        async with http.get(proxy.url + "/health") as r:
            assert r.status == 503 and (await r.json())["replicas_up"] == 0


async def test_a_stream_broken_after_its_first_byte_ends_with_an_error_event() -> None:
    with fake_process("--inter-token-delay-s", "0.05") as (url, proc):
        async with fakes(1) as (survivor,), proxy_at([url, survivor.base_url], ScriptedRouter([0])) as proxy, \
                aiohttp.ClientSession() as http:
            async with http.post(proxy.url + "/v1/completions", json={"prompt": "x", "max_tokens": 100,
                                                                         "stream": True}) as r:
                assert r.status == 200
                await r.content.readany()
                proc.kill()  # replica 0 dies mid-answer
                events = _events(await r.read())
            assert events[-1] == "[DONE]"
            assert json.loads(events[-2])["error"]["type"] == "upstream_midstream"
            assert len(events) < 100
            assert not proxy.books[0].healthy
            # the next request is served by the survivor
            async with http.post(proxy.url + "/v1/completions", json=COMPLETION) as r:
                assert r.status == 200 and r.headers["X-Rlserve-Replica"] == "1"
            async with http.get(proxy.url + "/metrics") as r:
                assert _metric(await r.text(), "rlserve_proxy_errors_total", kind="upstream_midstream") == 1
            assert proxy.books[0].gate.in_flight == 0 and not proxy.books[0].outstanding


@contextlib.asynccontextmanager
async def _stream_held_open_after_done(release: asyncio.Event, after_done: bytes) -> AsyncIterator[str]:
    """A replica whose stream sends one event and ``[DONE]``, then keeps its body open until ``release`` is set
    and sends ``after_done`` before ending it (a real vLLM ends its body right after [DONE]; this one stalls)."""

    async def health(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def completions(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'data: {"choices":[{"index":0,"text":"a","finish_reason":"length"}],'
                         b'"usage":{"completion_tokens":1}}\n\ndata: [DONE]\n\n')
        await release.wait()
        await resp.write(after_done)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_post("/v1/completions", completions)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        release.set()
        await runner.cleanup()


async def test_a_stream_ends_for_the_client_at_done_without_waiting_for_the_replica(caplog) -> None:
    release = asyncio.Event()
    async with _stream_held_open_after_done(release, b"data: late\n\n") as url, \
            proxy_at([url], metrics_interval_s=0) as proxy, aiohttp.ClientSession() as http:
        async with http.post(proxy.url + "/v1/completions", json={"prompt": "x", "max_tokens": 1,
                                                                     "stream": True}) as r:
            body = await asyncio.wait_for(r.read(), 10)  # the replica's body is still open: a hang fails here
        assert _events(body)[-1] == "[DONE]" and b"late" not in body
        book = proxy.books[0]
        assert book.completed_total == 1 and book.generated_tokens_total == 1
        assert book.gate.in_flight == 1  # the proxy still reads the replica's body to its end (connection reuse)
        release.set()
        for _ in range(250):
            if not book.gate.in_flight:
                break
            await asyncio.sleep(0.02)
        assert book.gate.in_flight == 0 and book.healthy
        assert "sent 12 bytes after data: [DONE]; not forwarded" in caplog.text


async def test_a_non_streamed_request_whose_replica_dies_is_answered_by_another() -> None:
    with fake_process("--ttft-delay-s", "0.5") as (url, proc):
        async with fakes(1) as (survivor,), proxy_at([url, survivor.base_url], ScriptedRouter([0])) as proxy, \
                aiohttp.ClientSession() as http:
            task = asyncio.create_task(http.post(proxy.url + "/v1/completions", json=COMPLETION))
            await asyncio.sleep(0.2)
            assert proxy.books[0].gate.in_flight == 1
            proc.kill()
            r = await task
            assert r.status == 200 and r.headers["X-Rlserve-Replica"] == "1"
            assert (await r.json())["usage"]["completion_tokens"] == 5
            r.release()
            assert proxy.books[0].retried_total == 1 and proxy.books[1].completed_total == 1


async def test_a_replica_marked_down_comes_back_up() -> None:
    async with fakes(2) as servers, proxy_over(servers) as proxy, aiohttp.ClientSession() as http:
        port = servers[0].port
        await servers[0].stop()
        await asyncio.sleep(0.3)
        assert not proxy.books[0].healthy
        async with http.get(proxy.url + "/health") as r:
            assert r.status == 200 and (await r.json())["replicas_up"] == 1
        servers[0].port = port
        await servers[0].start()
        await asyncio.sleep(0.3)
        assert proxy.books[0].healthy
        statuses = []
        for _ in range(4):
            async with http.post(proxy.url + "/v1/completions", json=COMPLETION) as r:
                statuses.append((r.status, r.headers["X-Rlserve-Replica"]))
        assert sorted(statuses) == [(200, "0"), (200, "0"), (200, "1"), (200, "1")]


async def test_waiters_of_a_replica_that_goes_down_are_sent_elsewhere() -> None:
    async with fakes(2, ttft_delay_s=0.5) as servers, \
            proxy_over(servers, ScriptedRouter([0]), replica_kw={"concurrency_cap": 1}, health_interval_s=60.0) \
            as proxy, aiohttp.ClientSession() as http:

        async def one() -> tuple[int, str]:
            async with http.post(proxy.url + "/v1/completions", json=COMPLETION) as r:
                await r.read()
                return r.status, r.headers["X-Rlserve-Replica"]

        tasks = [asyncio.create_task(one()) for _ in range(3)]
        await asyncio.sleep(0.1)
        assert proxy.books[0].gate.queued == 2
        proxy.set_health(0, False, "test")
        results = await asyncio.gather(*tasks)
        assert sorted(results) == [(200, "0"), (200, "1"), (200, "1")]


async def test_client_hanging_up_releases_the_slot() -> None:
    async with fakes(1, inter_token_delay_s=0.05) as (server,), proxy_over([server]) as proxy:
        async with aiohttp.ClientSession() as http:
            r = await http.post(proxy.url + "/v1/completions", json={"prompt": "x", "max_tokens": 100,
                                                                      "stream": True})
            await r.content.readany()
            r.close()  # hang up mid-stream
        for _ in range(100):
            if not proxy.books[0].outstanding:
                break
            await asyncio.sleep(0.02)
        assert proxy.books[0].gate.in_flight == 0 and not proxy.books[0].outstanding
        assert proxy.books[0].completed_total == 0
        for _ in range(100):  # the proxy closed its upstream connection: the fake stops generating
            if server.counters.running == 0:
                break
            await asyncio.sleep(0.02)
        assert server.counters.running == 0


async def test_api_key_guards_the_api_but_not_health_and_metrics() -> None:
    async with fakes(1) as (server,), proxy_over([server], api_key="s3cret") as proxy, \
            aiohttp.ClientSession() as http:
        async with http.post(proxy.url + "/v1/completions", json=COMPLETION) as r:
            assert r.status == 401 and (await r.json())["error"]["type"] == "unauthorized"
        async with http.put(proxy.url + "/admin/replicas/0/concurrency_cap", json={"cap": 1}) as r:
            assert r.status == 401
        auth = {"Authorization": "Bearer s3cret"}
        async with http.post(proxy.url + "/v1/completions", json=COMPLETION, headers=auth) as r:
            assert r.status == 200
        async with http.get(proxy.url + "/v1/models", headers=auth) as r:
            assert r.status == 200
        for path in ("/health", "/metrics"):
            async with http.get(proxy.url + path) as r:
                assert r.status == 200


async def test_models_are_aggregated_over_replicas() -> None:
    async with fakes(1, model="a") as (a,), fakes(2, model="b") as (b1, b2), proxy_over([a, b1, b2]) as proxy, \
            aiohttp.ClientSession() as http:
        async with http.get(proxy.url + "/v1/models") as r:
            ids = [m["id"] for m in (await r.json())["data"]]
        assert sorted(ids) == ["a", "b"]


async def test_bad_requests_get_openai_style_errors() -> None:
    async with fakes(1) as (server,), proxy_over([server]) as proxy, aiohttp.ClientSession() as http:
        async with http.post(proxy.url + "/v1/completions", data=b"not json",
                             headers={"Content-Type": "application/json"}) as r:
            assert r.status == 400 and (await r.json())["error"]["type"] == "invalid_request"
        for index, body, status in (("5", {"cap": 1}, 404), ("x", {"cap": 1}, 404), ("0", {"cap": 0}, 400),
                                    ("0", {"cap": "8"}, 400), ("0", {}, 400)):
            async with http.put(proxy.url + f"/admin/replicas/{index}/concurrency_cap", json=body) as r:
                assert r.status == status, (index, body)
        async with http.put(proxy.url + "/admin/replicas/0/concurrency_cap", json={"cap": None}) as r:
            assert r.status == 200
        async with http.get(proxy.url + "/admin/replicas") as r:
            reps = (await r.json())["replicas"]
        assert reps[0]["cap"] is None and reps[0]["state"]["concurrency_cap"] == 256


async def test_upstream_http_errors_are_passed_through_not_retried() -> None:
    async with fakes(2) as servers, proxy_over(servers, ScriptedRouter([0])) as proxy, \
            aiohttp.ClientSession() as http:
        # the fake fails with HTTP 500 on a non-integer max_tokens: a complete answer, to be passed on as it is
        async with http.post(servers[0].base_url + "/v1/completions", json={"prompt": "x", "max_tokens": "x"}) as r:
            direct = (r.status, await r.read())
        async with http.post(proxy.url + "/v1/completions", json={"prompt": "x", "max_tokens": "x"}) as r:
            assert (r.status, await r.read()) == direct == (500, direct[1])
        assert proxy.books[1].routed_total == 0
        assert proxy.books[0].healthy


async def test_a_router_bug_is_a_500_not_a_crash() -> None:
    async with fakes(1) as (server,), proxy_over([server], ScriptedRouter([3])) as proxy, \
            aiohttp.ClientSession() as http:
        async with http.post(proxy.url + "/v1/completions", json=COMPLETION) as r:
            assert r.status == 500
            assert "chose replica 3" in (await r.json())["error"]["message"]
