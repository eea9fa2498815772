"""What the proxy needs to know: the replicas (where they are, what they can do) and how to treat traffic.

Two small value objects:

- :class:`ReplicaSpec` -- one upstream vLLM server. Only ``url`` is required. The *capability* fields
  (``decode_tokens_per_s``, ``prefill_tokens_per_s``, ``max_num_seqs``, ``sm_clock_mhz``...) are what the
  simulator knows from its performance model; a real server cannot report them, so they come from here and
  reach the policy through the same :class:`~rlserve.snapshot.ReplicaState` fields. Leave them at their
  defaults for a homogeneous cluster (relative features are then all equal, which is the truth); set them for a
  heterogeneous one so a policy trained on heterogeneous simulations sees the same differences.
  ``block_size`` and ``kv_blocks_total`` default to ``None`` = "read ``vllm:cache_config_info`` from /metrics".

- :class:`ProxyConfig` -- listening address, optional API key, admission queue bounds, retry and health-check
  timing, and how a request body is turned into a :class:`~rlserve.workload.request.Request` (the proxy has no
  tokenizer: prompt tokens are estimated as ``characters / chars_per_token``, exact for token-id prompts).

Example::

    cfg = ProxyConfig(replicas=(ReplicaSpec("http://127.0.0.1:8001"), ReplicaSpec("http://127.0.0.1:8002")),
                      router="least_outstanding", port=9000)

Replicas can also be listed in a YAML file (:func:`load_replicas_file`)::

    replicas:
      - url: http://10.0.0.1:8000
        decode_tokens_per_s: 95
        max_num_seqs: 128
      - url: http://10.0.0.2:8000
        decode_tokens_per_s: 60
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from yarl import URL

from rlserve.errors import ConfigError, InputError
from rlserve.validation import parse_config

if TYPE_CHECKING:
    from rlserve.sim.config import ReplicaConfig


def _positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0
    if isinstance(value, bool) or not math.isfinite(value) or not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{name} must be a finite number {bound}, got {value!r}")


def _positive_int(name: str, value: int | None, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")


@dataclass(frozen=True)
class ReplicaSpec:
    """One upstream OpenAI-compatible server (normally ``vllm serve``) and its capabilities."""

    url: str
    """Base URL without the ``/v1`` suffix, e.g. ``http://127.0.0.1:8000``."""
    name: str | None = None
    """Label in the proxy's /metrics; defaults to the replica's index."""
    max_num_seqs: int = 256
    """The server's ``--max-num-seqs`` (vLLM's default is 256); also the cap reported when uncapped."""
    concurrency_cap: int | None = None
    """Initial admission cap (requests in flight to this replica); ``None`` = uncapped."""
    block_size: int | None = None
    """KV block size in tokens; ``None`` = read from the server's /metrics (``vllm:cache_config_info``)."""
    kv_blocks_total: int | None = None
    """KV blocks of the server; ``None`` = read from /metrics."""
    decode_tokens_per_s: float = 100.0
    """Capability: single-sequence decode speed (only ratios between replicas matter to a policy)."""
    prefill_tokens_per_s: float = 10_000.0
    """Capability: prefill throughput."""
    sm_clock_mhz: float = 0.0
    """SM clock the replica runs at; 0 = unknown."""
    num_stages: int = 1
    """Pipeline-parallel stages."""

    def __post_init__(self) -> None:
        if not isinstance(self.url, str) or not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"replica url must start with http:// or https://, got {self.url!r}")
        object.__setattr__(self, "url", self.url.rstrip("/").removesuffix("/v1"))
        _positive_int("max_num_seqs", self.max_num_seqs)
        _positive_int("concurrency_cap", self.concurrency_cap, optional=True)
        _positive_int("block_size", self.block_size, optional=True)
        _positive_int("kv_blocks_total", self.kv_blocks_total, optional=True)
        _positive_int("num_stages", self.num_stages)
        _positive("decode_tokens_per_s", self.decode_tokens_per_s)
        _positive("prefill_tokens_per_s", self.prefill_tokens_per_s)
        _positive("sm_clock_mhz", self.sm_clock_mhz, allow_zero=True)

    @property
    def public_url(self) -> str:
        """``url`` without credentials or query (``http://user:key@host/?token=..`` -> ``http://host``): the form
        that may appear in /metrics labels, admin answers and logs."""
        return public_url(self.url)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ReplicaSpec:
        """Build from a mapping (YAML); unknown keys are an error that lists the known ones."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown replica keys {sorted(unknown)}; allowed: {', '.join(sorted(known))}")
        if "url" not in d:
            raise ConfigError("every replica needs a 'url'")
        return cls(**d)


def public_url(url: str) -> str:
    """``url`` with any user, password and query removed (they may hold credentials)."""
    return str(URL(url).with_user(None).with_query(None))


def replica_spec_from_sim(url: str, replica: ReplicaConfig, **overrides: Any) -> ReplicaSpec:
    """The spec of a real server running what ``replica`` simulates (same GPU, model, TP, clock, limits).

    Capabilities come from the simulator's performance model, so a policy trained on that configuration sees the
    same capability features in both worlds. KV geometry is left to the server's /metrics (the real truth).
    """
    from rlserve.sim import build_perf_model

    perf = build_perf_model(replica)
    fields_ = dict(max_num_seqs=replica.max_num_seqs, concurrency_cap=replica.concurrency_cap,
                   decode_tokens_per_s=perf.decode_tokens_per_s, prefill_tokens_per_s=perf.prefill_tokens_per_s,
                   sm_clock_mhz=perf.sm_clock_mhz)
    return ReplicaSpec(url=url, **{**fields_, **overrides})


def load_replicas_file(path: str | Path) -> tuple[ReplicaSpec, ...]:
    """Read ``replicas: [{url: ..., ...}, ...]`` from a YAML file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        why = str(exc).replace("\n", " ")
        raise InputError(f"cannot read replicas file {path}: {why}") from None
    items = data.get("replicas") if isinstance(data, dict) else None
    if not isinstance(items, list) or not items or not all(isinstance(x, dict) for x in items):
        raise InputError(f"{path}: expected a top-level 'replicas:' list of mappings, each with a 'url'")
    return tuple(parse_config(ReplicaSpec, x, f"{path}: replicas[{i}]") for i, x in enumerate(items))


@dataclass(frozen=True)
class ProxyConfig:
    """How the proxy listens, admits, retries and checks health."""

    replicas: tuple[ReplicaSpec, ...]
    router: str = "round_robin"
    """Router spec for :func:`rlserve.policies.make_router` (a registry name or ``ppo:CHECKPOINT``)."""
    seed: int | None = 0
    """Seed of the router (random tie-breaks); the proxy itself draws no random numbers."""
    host: str = "127.0.0.1"
    port: int = 8000
    """0 = pick a free port (tests)."""
    api_key: str | None = None
    """When set, /v1/* and /admin/* need ``Authorization: Bearer <api_key>``; /health and /metrics stay open."""
    upstream_api_key: str | None = None
    """Sent to the replicas as a bearer token. When neither key is set, the client's Authorization is forwarded."""
    max_queue_per_replica: int = 1024
    """Requests that may wait for a capped replica's slot; one more gets HTTP 429."""
    queue_timeout_s: float = 30.0
    """Longest wait for a slot; then HTTP 503 (the request was never sent upstream)."""
    max_attempts: int = 3
    """Replicas tried for one request when attempts fail before the first byte (1 = no retries)."""
    connect_timeout_s: float = 3.0
    upstream_idle_timeout_s: float = 600.0
    """Longest silence from a replica while reading its response; then the attempt counts as failed."""
    first_byte_timeout_s: float = 60.0
    """Longest wait for a replica's first byte after the request was sent: a streamed answer's first event, or a
    non-streamed answer's response (which vLLM sends only when generation ends, so long non-streamed generations
    need a larger value). A replica that misses it and answered nothing else for as long is wedged: taken out of
    rotation until a probe completion succeeds on it, the request retried on another replica (up to
    ``max_attempts``). One that answered something meanwhile is slow, not wedged: the request keeps waiting."""
    client_timeout_s: float = 30.0
    """Longest a client may take to send a request's head (then the connection is closed) or its body (then HTTP
    408); also how long an idle keep-alive connection from a client stays open."""
    health_interval_s: float = 1.0
    """Period of the GET /health probe of every replica."""
    health_timeout_s: float = 2.0
    metrics_interval_s: float = 1.0
    """Period of the vLLM /metrics scrape (KV usage, running/waiting, preemptions); 0 = do not scrape."""
    chars_per_token: float = 4.0
    """Prompt-size estimate for text prompts (token-id prompts are counted exactly)."""
    default_max_tokens: int = 256
    """Output-size estimate for requests that set no ``max_tokens``."""
    queue_k: int = 0
    """Requests per replica listed in ``ReplicaState.queue`` (oldest first); 0 = none (cheapest)."""
    prefix_index_blocks: int = 31_250
    """Prompt-block hashes the prefix index keeps per replica (LRU; ~100 bytes each); 0 = no prefix index."""
    prefix_index_ttl_s: float | None = None
    """Age after which an indexed block no longer counts as cached (None = only LRU eviction)."""
    router_kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments passed to the router's constructor."""

    def __post_init__(self) -> None:
        if not self.replicas:
            raise ConfigError("the proxy needs at least one replica (--replica URL)")
        object.__setattr__(self, "replicas", tuple(self.replicas))
        urls = [r.url for r in self.replicas]
        if len(set(urls)) != len(urls):
            raise ConfigError(f"replica urls must be distinct, got {urls}")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be an integer in [0, 65535], got {self.port!r}")
        if self.api_key is not None and not self.api_key:
            raise ConfigError("api_key must be a non-empty string (or unset)")
        _positive_int("max_queue_per_replica", self.max_queue_per_replica)
        _positive_int("max_attempts", self.max_attempts)
        _positive_int("default_max_tokens", self.default_max_tokens)
        for name in ("queue_timeout_s", "connect_timeout_s", "upstream_idle_timeout_s", "first_byte_timeout_s",
                     "client_timeout_s", "health_interval_s", "health_timeout_s", "chars_per_token"):
            _positive(name, getattr(self, name))
        _positive("metrics_interval_s", self.metrics_interval_s, allow_zero=True)
        if isinstance(self.prefix_index_blocks, bool) or not isinstance(self.prefix_index_blocks, int) or \
                self.prefix_index_blocks < 0:
            raise ConfigError(f"prefix_index_blocks must be an integer >= 0, got {self.prefix_index_blocks!r}")
        if self.prefix_index_ttl_s is not None:
            _positive("prefix_index_ttl_s", self.prefix_index_ttl_s)
        if isinstance(self.queue_k, bool) or not isinstance(self.queue_k, int) or self.queue_k < 0:
            raise ConfigError(f"queue_k must be an integer >= 0, got {self.queue_k!r}")
        if self.api_key is None and self.host not in ("127.0.0.1", "localhost", "::1"):
            warnings.warn(f"the proxy listens on {self.host} without an API key: anyone who can reach it can use "
                          "the replicas and change their caps; set api_key (--api-key)", stacklevel=2)
