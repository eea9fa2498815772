"""`rlserve energy run` against a real vLLM CPU server behind the rlserve proxy, in dry-run mode.

Real: vLLM (its /metrics feed the observation), the proxy (admission caps), HTTP, the CLI. Not real: clocks —
there is no GPU here, so the actuator runs as a dry run (it logs decisions and never calls a setter).
"""

from __future__ import annotations

import threading

import httpx
from typer.testing import CliRunner

from rlserve.cli.main import app
from rlserve.serve import ProxyConfig, ReplicaSpec, proxy_in_thread
from rlserve.testing.vllm_server import VllmServer


def test_energy_run_drives_caps_of_a_real_vllm_server(vllm_server: VllmServer) -> None:
    cfg = ProxyConfig(replicas=(ReplicaSpec(vllm_server.url, max_num_seqs=vllm_server.max_num_seqs),), port=0,
                      health_interval_s=0.2, metrics_interval_s=0.2, health_timeout_s=5.0)
    stop = threading.Event()
    done: list[int] = []
    caps_seen: list[int | None] = []  # the proxy's cap while the controller runs
    with proxy_in_thread(cfg) as proxy:
        def watch_cap() -> None:
            with httpx.Client(timeout=10) as http:
                while not stop.is_set():
                    caps_seen.append(http.get(proxy.url + "/admin/replicas").json()["replicas"][0]["cap"])
                    stop.wait(0.2)

        def client() -> None:
            with httpx.Client(timeout=120) as http:
                while not stop.is_set():
                    r = http.post(proxy.url + "/v1/completions", json={
                        "model": vllm_server.model_name, "prompt": "the quick brown fox", "max_tokens": 32,
                        "ignore_eos": True, "temperature": 0.0})
                    done.append(r.status_code)

        threads = [threading.Thread(target=client, daemon=True) for _ in range(4)]
        threads.append(threading.Thread(target=watch_cap, daemon=True))
        for t in threads:
            t.start()
        try:
            result = CliRunner().invoke(app, ["energy", "run", "--url", proxy.url, "--gpu-ids", "0",
                                              "--controller", "clipper", "--interval-s", "0.5", "--duration-s", "6"])
            admin = httpx.get(proxy.url + "/admin/replicas", timeout=10).json()["replicas"][0]
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=120)
    assert result.exit_code == 0, result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith("t=")]
    assert len(lines) >= 8 and all("(dry run)" in ln for ln in lines)
    assert "clocks restored (none were changed)" in result.output
    # Clipper's cap went to the proxy while it ran (never above the engine's max_num_seqs), and the cap the
    # replica had before (none) is back after the run: a controller that exits leaves no cap behind
    applied = [c for c in caps_seen if c is not None]
    assert applied and all(1 <= c <= vllm_server.max_num_seqs for c in applied)
    assert admin["cap"] is None
    assert any("running=" in ln and "running=0" not in ln for ln in lines)  # the observation saw vLLM's work
    assert done and set(done) == {200}
