"""``rlserve serve``: run a routing policy in front of real vLLM replicas."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import typer

from rlserve.cli.app import app, console
from rlserve.errors import ConfigError
from rlserve.scenario import load_scenario
from rlserve.serve import ProxyConfig, ReplicaSpec, RouterProxy, load_replicas_file, run_proxy
from rlserve.serve.config import replica_spec_from_sim


@app.command()
def serve(
    replica: list[str] = typer.Option(None, "--replica", help="Base URL of a vLLM server (repeat per replica)."),
    replicas_file: Path | None = typer.Option(
        None, help="YAML with 'replicas: [{url: ..., decode_tokens_per_s: ..., max_num_seqs: ...}]' (capabilities "
        "of heterogeneous replicas)."),
    scenario: str | None = typer.Option(
        None, help="Scenario name or YAML whose cluster the --replica URLs run, in order: capabilities (speed, "
        "clock, max_num_seqs) then match what a policy trained on it saw in simulation."),
    router: str = typer.Option("least_outstanding", help="Router registry name (round_robin, least_outstanding, "
                               "least_kv, ...; a wrong name lists them all) or ppo:CHECKPOINT."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on; anything but loopback should use --api-key."),
    port: int = typer.Option(8000, help="Port to listen on."),
    api_key: str | None = typer.Option(None, envvar="RLSERVE_API_KEY",
                                       help="Require 'Authorization: Bearer KEY' on /v1/* and /admin/*."),
    upstream_api_key: str | None = typer.Option(None, envvar="RLSERVE_UPSTREAM_API_KEY",
                                                help="Bearer token the replicas expect (vllm serve --api-key)."),
    max_num_seqs: int | None = typer.Option(None, help="The replicas' --max-num-seqs (for --replica URLs; default "
                                           "the scenario's, else vLLM's 256)."),
    concurrency_cap: int | None = typer.Option(None, help="Initial per-replica admission cap (default: none)."),
    max_queue_per_replica: int = typer.Option(1024, help="Requests that may wait for a capped replica; then 429."),
    queue_timeout_s: float = typer.Option(30.0, help="Longest wait for an admission slot; then 503."),
    max_attempts: int = typer.Option(3, help="Replicas tried per request when attempts fail before the first byte."),
    first_byte_timeout_s: float = typer.Option(
        60.0, help="Longest wait for a replica's first byte (a non-streamed answer's whole response); a replica "
        "missing it while answering nothing else is taken out until a probe completion succeeds, the request retried "
        "elsewhere; a slow replica that still answers keeps the request."),
    client_timeout_s: float = typer.Option(30.0, help="Longest a client may take to send a request (head or "
                                           "body); also the idle keep-alive time of client connections."),
    health_interval_s: float = typer.Option(1.0, help="Period of the replicas' /health probe."),
    metrics_interval_s: float = typer.Option(1.0, help="Period of the replicas' /metrics scrape (0 = off)."),
    queue_k: int = typer.Option(0, help="Requests per replica listed in the snapshot's queue view."),
    seed: int = typer.Option(0, help="Seed of the router's tie-breaking."),
    event_loop: str = typer.Option("auto", help="auto (uvloop when installed), asyncio or uvloop."),
    log_level: str = typer.Option("warning", help="Python log level (debug, info, warning, error)."),
) -> None:
    """Run an OpenAI-compatible proxy that routes every request with an rlserve policy."""
    if log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError(f"--log-level must be one of debug, info, warning, error, critical; got {log_level!r}")
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    urls = replica or []
    overrides: dict[str, Any] = {k: v for k, v in (("max_num_seqs", max_num_seqs),
                                                   ("concurrency_cap", concurrency_cap)) if v is not None}
    if scenario is not None:
        cluster = load_scenario(scenario).cluster
        if len(urls) != len(cluster.replicas):
            raise ConfigError(f"scenario {scenario!r} has {len(cluster.replicas)} replicas but {len(urls)} --replica "
                              "URLs were given; give one URL per simulated replica, in the scenario's order")
        specs = [replica_spec_from_sim(url, cfg, **overrides) for url, cfg in zip(urls, cluster.replicas, strict=True)]
    else:
        specs = [ReplicaSpec(url, **overrides) for url in urls]
    if replicas_file is not None:
        specs += load_replicas_file(replicas_file)
    if not specs:
        raise ConfigError("give at least one replica: --replica http://HOST:PORT (repeatable) or --replicas-file")
    config = ProxyConfig(replicas=tuple(specs), router=router, seed=seed, host=host, port=port, api_key=api_key,
                         upstream_api_key=upstream_api_key, max_queue_per_replica=max_queue_per_replica,
                         queue_timeout_s=queue_timeout_s, max_attempts=max_attempts,
                         first_byte_timeout_s=first_byte_timeout_s, client_timeout_s=client_timeout_s,
                         health_interval_s=health_interval_s, metrics_interval_s=metrics_interval_s, queue_k=queue_k)

    def started(proxy: RouterProxy) -> None:
        up = sum(b.healthy for b in proxy.books)
        loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
        console.print(f"rlserve proxy on [bold]{proxy.url}[/] (router {proxy.router.name}, {up}/{len(proxy.books)} "
                      f"replicas up, {loop} event loop); Ctrl-C to stop", highlight=False)

    run_proxy(config, on_started=started, event_loop=event_loop)
