"""Running the proxy: on a background thread (caps set from the caller's thread) and as ``rlserve serve``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from serve_helpers import ScriptedRouter, dead_url, fast_config

from rlserve.serve import proxy_in_thread
from rlserve.testing.fake_openai_server import FakeServerConfig, serve_in_thread

COMPLETION = {"prompt": "hello", "max_tokens": 3}


def test_proxy_in_thread_serves_and_takes_caps_from_the_callers_thread() -> None:
    with serve_in_thread(FakeServerConfig()) as server, \
            proxy_in_thread(fast_config([server.base_url]), ScriptedRouter([0])) as proxy:
        r = httpx.post(proxy.url + "/v1/completions", json=COMPLETION)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
        proxy.set_concurrency_cap(0, 5)
        assert proxy.books[0].gate.cap == 5
        assert proxy.snapshot().replicas[0].concurrency_cap == 5
        assert httpx.get(proxy.url + "/admin/replicas").json()["replicas"][0]["cap"] == 5


def test_rlserve_serve_runs_until_sigterm() -> None:
    with serve_in_thread(FakeServerConfig()) as server:
        port = dead_url().rsplit(":", 1)[1]
        proc = subprocess.Popen([sys.executable, "-m", "rlserve.cli.main", "serve", "--replica", server.base_url,
                                 "--router", "round_robin", "--port", port, "--health-interval-s", "0.2"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(url + "/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert proc.poll() is None and time.monotonic() < deadline, "rlserve serve did not start"
                time.sleep(0.1)
            r = httpx.post(url + "/v1/completions", json=COMPLETION)
            assert r.status_code == 200 and r.headers["x-rlserve-replica"] == "0"
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        assert proc.returncode == 0, out.decode()
        assert f"rlserve proxy on http://127.0.0.1:{port}" in out.decode()


def test_rlserve_serve_without_replicas_is_a_one_line_error() -> None:
    out = subprocess.run([sys.executable, "-m", "rlserve.cli.main", "serve"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2
    assert "error: give at least one replica" in out.stderr and "Traceback" not in out.stderr


def test_rlserve_serve_scenario_needs_one_url_per_simulated_replica() -> None:
    out = subprocess.run([sys.executable, "-m", "rlserve.cli.main", "serve", "--scenario", "heterogeneous",
                          "--replica", "http://127.0.0.1:1"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "has 4 replicas but 1 --replica" in " ".join(out.stderr.split())


def test_rlserve_serve_refuses_a_router_that_cannot_route_the_replicas(flat_ppo_checkpoint: Path) -> None:
    """A flat PPO checkpoint routes over 4 replicas: in front of 2 it is refused at start-up in one line (it used to
    start, report healthy and answer HTTP 500 to every request). The shipped replica-set one routes any size."""
    port = dead_url().rsplit(":", 1)[1]
    out = subprocess.run([sys.executable, "-m", "rlserve.cli.main", "serve", "--router", f"ppo:{flat_ppo_checkpoint}",
                          "--port", port,
                          "--replica", "http://127.0.0.1:1", "--replica", "http://127.0.0.1:2"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    message = " ".join(out.stderr.split())  # one message (the console wraps it at the terminal width)
    assert message.startswith("error: router 'ppo' routes over 4 replicas only; this cluster has 2")
    assert message.count("error:") == 1
    assert "Traceback" not in out.stderr and "rlserve proxy on" not in out.stdout
