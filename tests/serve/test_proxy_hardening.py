"""The proxy against broken replicas and hostile clients, over real HTTP on 127.0.0.1.

Stand-in replicas (``rlserve.testing.fake_openai_server``; a real vLLM cannot be made to wedge or lie on demand)
wedge, close streams without ``[DONE]`` and answer garbage ``/metrics``; clients send malformed, deeply nested, huge
and half-sent requests. The contract: every accepted request gets a complete answer or an OpenAI-shaped error,
``/health`` reflects what a request would meet, and no request waits past its deadline.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time

import aiohttp
import pytest
from serve_helpers import ScriptedRouter, dead_url, fakes, proxy_at, proxy_over

from rlserve.policies import make_router

pytestmark = pytest.mark.anyio

COMPLETION = {"model": "fake-model", "prompt": "hello there", "max_tokens": 5}


def _is_openai_error(body: dict, status: int) -> bool:
    err = body.get("error")
    return isinstance(err, dict) and err.get("code") == status and isinstance(err.get("message"), str) \
        and isinstance(err.get("type"), str)


async def _errors(http: aiohttp.ClientSession, url: str) -> dict[str, float]:
    async with http.get(url + "/metrics") as r:
        text = await r.text()
    out = {}
    for line in text.splitlines():
        if line.startswith("rlserve_proxy_errors_total{"):
            kind = line.split('kind="', 1)[1].split('"', 1)[0]
            out[kind] = float(line.rsplit(" ", 1)[1])
    return out


@pytest.mark.parametrize("metrics", ["off", "garbage", "error"])
async def test_least_kv_routes_by_what_it_knows_when_kv_sizes_are_unknown(metrics: str) -> None:
    kw = {"metrics_interval_s": 0} if metrics == "off" else {}
    async with fakes(2, metrics_mode="ok" if metrics == "off" else metrics) as servers, \
            proxy_over(servers, make_router("least_kv"), **kw) as proxy, aiohttp.ClientSession() as http:
        await asyncio.sleep(0.3)  # several failed scrapes
        for _ in range(4):
            async with http.post(proxy.url + "/v1/completions", json=COMPLETION) as r:
                assert r.status == 200, await r.text()
        async with http.get(proxy.url + "/health") as r:
            health = await r.json()
        assert r.status == 200
        expected = "off" if metrics == "off" else "unknown"
        assert [d["metrics"] for d in health["replica_detail"]] == [expected, expected]
        assert health["status"] == ("ok" if metrics == "off" else "degraded")


async def test_a_scrape_with_nan_usage_is_not_believed() -> None:
    async with fakes(1) as (server,), proxy_over([server]) as proxy:
        await asyncio.sleep(0.2)
        assert proxy.books[0].engine is not None
        server.config.metrics_mode = "garbage"
        await asyncio.sleep(0.4)
        assert proxy.books[0].engine is None  # stale numbers are dropped, not kept forever


async def test_health_is_503_while_the_router_fails_and_200_once_it_routes_again() -> None:
    router = ScriptedRouter([5, 0])
    async with fakes(1) as (server,), proxy_over([server], router) as proxy, aiohttp.ClientSession() as http:
        async with http.post(proxy.url + "/v1/completions", json=COMPLETION) as r:
            assert r.status == 500
        async with http.get(proxy.url + "/health") as r:
            assert r.status == 503 and (await r.json())["status"] == "router_failing"
        async with http.post(proxy.url + "/v1/completions", json=COMPLETION) as r:
            assert r.status == 200
        async with http.get(proxy.url + "/health") as r:
            assert r.status == 200 and (await r.json())["status"] == "ok"


@pytest.mark.parametrize("stream", [False, True])
async def test_a_wedged_replica_is_taken_out_and_the_request_served_elsewhere(stream: bool) -> None:
    async with fakes(2) as servers, proxy_over(servers, ScriptedRouter([0]), first_byte_timeout_s=0.4) as proxy, \
            aiohttp.ClientSession() as http:
        servers[0].config.completions_mode = "wedge"  # /health still answers 200
        t0 = time.monotonic()
        async with http.post(proxy.url + "/v1/completions", json={**COMPLETION, "stream": stream}) as r:
            assert r.status == 200 and r.headers["X-Rlserve-Replica"] == "1"
            await r.read()
        assert time.monotonic() - t0 < 2.0  # the deadline, not the 600 s idle timeout
        await asyncio.sleep(0.5)  # ten health intervals: /health answers, but the replica stays out
        assert not proxy.books[0].healthy
        async with http.get(proxy.url + "/health") as r:
            detail = (await r.json())["replica_detail"]
        assert detail[0]["stalled"] and not detail[0]["up"]
        assert (await _errors(http, proxy.url))["upstream_first_byte_timeout"] == 1
        servers[0].config.completions_mode = "ok"  # it serves again: a probe completion brings it back
        for _ in range(40):
            if proxy.books[0].healthy:
                break
            await asyncio.sleep(0.05)
        assert proxy.books[0].healthy


async def test_a_slow_replica_that_still_answers_keeps_its_request() -> None:
    """Past the first-byte deadline, a replica that is answering other requests is overloaded, not wedged: the
    request waits for it (moving it would turn overload into errors elsewhere) and the replica stays in rotation."""
    async with fakes(2, inter_token_delay_s=0.01) as servers, \
            proxy_over(servers, ScriptedRouter([0]), first_byte_timeout_s=0.4) as proxy, \
            aiohttp.ClientSession() as http:
        stop = asyncio.Event()

        async def quick_answers() -> None:  # replica 0 keeps answering short requests (progress)
            while not stop.is_set():
                async with http.post(proxy.url + "/v1/completions", json={**COMPLETION, "max_tokens": 3}) as r:
                    assert r.status == 200
                await asyncio.sleep(0.05)

        background = asyncio.create_task(quick_answers())
        await asyncio.sleep(0.1)
        async with http.post(proxy.url + "/v1/completions", json={**COMPLETION, "max_tokens": 100}) as r:
            assert r.status == 200 and r.headers["X-Rlserve-Replica"] == "0"  # ~1 s, past the 0.4 s deadline
            assert (await r.json())["usage"]["completion_tokens"] == 100
        stop.set()
        await background
        assert proxy.books[0].healthy and proxy.books[1].routed_total == 0
        assert "upstream_first_byte_timeout" not in await _errors(http, proxy.url)


async def test_a_stream_without_done_is_an_error_to_the_client() -> None:
    async with fakes(1, completions_mode="no_done") as (server,), proxy_over([server]) as proxy, \
            aiohttp.ClientSession() as http:
        async with http.post(proxy.url + "/v1/completions", json={**COMPLETION, "stream": True}) as r:
            assert r.status == 200
            events = [e[6:] for e in (await r.read()).decode().split("\n\n") if e.startswith("data: ")]
        assert events[-1] == "[DONE]"
        assert json.loads(events[-2])["error"]["type"] == "upstream_truncated"
        assert proxy.books[0].completed_total == 0  # not counted as a complete answer
        assert (await _errors(http, proxy.url))["upstream_truncated"] == 1


async def test_crafted_bodies_get_counted_openai_errors_and_one_short_log_line(caplog) -> None:
    bodies = [b"[" * 200_000 + b"]" * 200_000, b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
              json.dumps({"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]})
              .encode(), json.dumps({"prompt": {"x": 1}}).encode(), b"\xff\xfe"]
    async with fakes(1) as (server,), proxy_over([server]) as proxy, aiohttp.ClientSession() as http:
        with caplog.at_level(logging.DEBUG, logger="rlserve"):
            for body in bodies:
                async with http.post(proxy.url + "/v1/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"}) as r:
                    assert r.status == 400 and _is_openai_error(await r.json(), 400)
        assert (await _errors(http, proxy.url))["invalid_request"] == len(bodies)
        assert len(caplog.text) < 2000  # no traceback per crafted request
        async with http.post(proxy.url + "/v1/completions", json=COMPLETION) as r:
            assert r.status == 200  # still serving


async def test_unknown_paths_wrong_methods_and_huge_bodies_are_openai_errors() -> None:
    async with fakes(1) as (server,), proxy_over([server]) as proxy, aiohttp.ClientSession() as http:
        async with http.get(proxy.url + "/v1/nope") as r:
            assert r.status == 404 and _is_openai_error(await r.json(), 404)
        async with http.get(proxy.url + "/v1/completions") as r:
            assert r.status == 405 and _is_openai_error(await r.json(), 405)
        async with http.post(proxy.url + "/v1/completions", data=io.BytesIO(b"x" * (65 * 2**20)),
                             headers={"Content-Type": "application/json"}) as r:
            assert r.status == 413 and _is_openai_error(await r.json(), 413)
        errors = await _errors(http, proxy.url)
        assert errors["not_found"] == 1 and errors["method_not_allowed"] == 1 and errors["request_too_large"] == 1


async def test_credentials_and_replica_addresses_never_reach_clients_or_metrics() -> None:
    async with fakes(1) as (server,):
        host_port = server.base_url.split("//", 1)[1]
        secret_url = f"http://admin:hunter2@{host_port}/?token=s3cret"
        async with proxy_at([secret_url, dead_url()], ScriptedRouter([1]), max_attempts=1) as proxy, \
                aiohttp.ClientSession() as http:
            async with http.get(proxy.url + "/metrics") as r:
                metrics = await r.text()
            assert "hunter2" not in metrics and "s3cret" not in metrics and host_port in metrics
            async with http.get(proxy.url + "/admin/replicas") as r:
                assert "hunter2" not in await r.text()
            async with http.post(proxy.url + "/v1/completions", json=COMPLETION) as r:
                body = await r.text()
            assert r.status in (502, 503) and _is_openai_error(json.loads(body), r.status)
            assert "127.0.0.1" not in body and "Connect" not in body and "Errno" not in body


async def test_half_sent_heads_are_closed_and_half_sent_bodies_time_out() -> None:
    async with fakes(1) as (server,), proxy_over([server], client_timeout_s=0.5) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Ty")
        await writer.drain()
        t0 = time.monotonic()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the proxy
        assert time.monotonic() - t0 < 3
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"prompt\": ")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(4096), 5)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 408") and b'"request_timeout"' in answer


async def test_a_port_in_use_is_a_clear_error() -> None:
    from rlserve.errors import ConfigError

    async with fakes(1) as (server,), proxy_over([server]) as first:
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{first.port}"):
            async with proxy_over([server], port=first.port):
                pass
