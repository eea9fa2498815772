"""Replica and cluster configuration (what a scenario's ``cluster:`` section holds)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from rlserve.errors import ConfigError
from rlserve.perf.config import PerfConfig
from rlserve.validation import parse_config

Batching = Literal["chunked", "prefill_priority"]
BATCHING_MODES: tuple[str, ...] = ("chunked", "prefill_priority")


@dataclass(frozen=True)
class ReplicaConfig:
    """One model replica (one vLLM engine, possibly tensor-parallel over ``tp`` GPUs).

    Defaults follow vLLM: ``max_num_seqs`` 256, block size 16, watermark 1% (V0), GPU memory utilisation 0.9.
    ``max_num_batched_tokens`` defaults to 8192 in ``chunked`` mode (vLLM V1 online default order of magnitude)
    and to the model's context length in ``prefill_priority`` mode (vLLM V0 without chunked prefill requires a
    whole prompt to fit one batch).
    """

    gpu: str = "a100-80gb"
    model: str = "llama-2-7b"  # catalogue name or path to a HF config.json
    tp: int = 1
    sm_clock_mhz: float | None = None  # None = the GPU's maximum
    max_num_seqs: int = 256
    max_num_batched_tokens: int | None = None
    block_size: int = 16
    watermark: float = 0.01
    gpu_memory_utilization: float = 0.9
    num_gpu_blocks: int | None = None  # like vLLM's --num-gpu-blocks-override
    batching: Batching = "chunked"
    enable_prefix_caching: bool = False  # vLLM V1 turns it on by default; prefix scenarios set it
    concurrency_cap: int | None = None  # admission cap (energy controller); None = max_num_seqs
    max_model_len: int = 16384
    power_split: str = "default"  # rlserve.perf.frequency.POWER_SPLITS: how decode power follows the SM clock
    # semantics of other tools, off by default (docs/simulator.md): Vidur's vLLM scheduler counts a prefill batch
    # as (requests x longest prompt) against the token budget; vLLM V0's chunked prefill keeps the watermark free
    prefill_budget: Literal["sum", "padded"] = "sum"
    chunked_watermark: bool = False
    perf: PerfConfig = field(default_factory=PerfConfig)  # perf-model knobs and calibration file

    def __post_init__(self) -> None:
        positive = ("tp", "max_num_seqs", "block_size", "max_model_len")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"replica {name} must be >= 1, got {getattr(self, name)!r}")
        if self.prefill_budget not in ("sum", "padded"):
            raise ConfigError(f"replica prefill_budget must be 'sum' or 'padded', got {self.prefill_budget!r}")
        if self.batching not in BATCHING_MODES:
            raise ConfigError(f"replica batching must be one of {BATCHING_MODES}, got {self.batching!r}")
        if not 0 <= self.watermark < 1:
            raise ConfigError(f"replica watermark must be in [0, 1), got {self.watermark!r}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ConfigError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization!r}")
        if self.num_gpu_blocks is not None and self.num_gpu_blocks < 1:
            raise ConfigError(f"num_gpu_blocks must be >= 1, got {self.num_gpu_blocks!r}")
        if self.concurrency_cap is not None and not 1 <= self.concurrency_cap <= self.max_num_seqs:
            raise ConfigError(f"concurrency_cap must be in [1, max_num_seqs={self.max_num_seqs}]")
        if self.max_num_batched_tokens is not None and self.max_num_batched_tokens < self.max_num_seqs:
            raise ConfigError("max_num_batched_tokens must be >= max_num_seqs (every running sequence decodes "
                              "one token per iteration)")

    @property
    def token_budget(self) -> int:
        """Tokens one iteration may process (``max_num_batched_tokens`` with its mode-dependent default)."""
        if self.max_num_batched_tokens is not None:
            return self.max_num_batched_tokens
        default = 8192 if self.batching == "chunked" else self.max_model_len
        return max(default, self.max_num_seqs)


@dataclass(frozen=True)
class ClusterConfig:
    """An ordered list of replicas; the replica index is the router's action."""

    replicas: tuple[ReplicaConfig, ...] = field(default_factory=lambda: (ReplicaConfig(),))

    def __post_init__(self) -> None:
        if not self.replicas:
            raise ConfigError("a cluster needs at least one replica")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, where: str = "cluster", base_dir: Path | str = ".",
                  perf: PerfConfig | None = None) -> ClusterConfig:
        """Parse ``{"defaults": {...}, "replicas": [{"count": 2, "gpu": ..., ...}, ...]}``.

        ``defaults`` apply to every replica group; ``count`` repeats a group (default 1). A ``perf`` mapping
        in a group overrides the one in ``defaults``, which overrides ``perf`` (the scenario's top-level
        section); relative calibration paths are resolved against ``base_dir``.
        """
        allowed = {"defaults", "replicas"}
        unknown = set(d) - allowed
        if unknown:
            raise ConfigError(f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}")
        defaults = _replica_kwargs(d.get("defaults") or {}, f"{where}.defaults")
        base_perf = PerfConfig.from_dict(defaults.pop("perf", None), where=f"{where}.defaults.perf",
                                         base_dir=base_dir).over(perf or PerfConfig())
        groups = d.get("replicas")
        if not isinstance(groups, list) or not groups:
            raise ConfigError(f"{where}.replicas must be a non-empty list of replica groups")
        replicas: list[ReplicaConfig] = []
        for i, group in enumerate(groups):
            if not isinstance(group, Mapping):
                raise ConfigError(f"{where}.replicas[{i}] must be a mapping")
            group = dict(group)
            count = group.pop("count", 1)
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ConfigError(f"{where}.replicas[{i}].count must be a positive integer")
            kwargs = {**defaults, **_replica_kwargs(group, f"{where}.replicas[{i}]")}
            kwargs.pop("perf", None)  # validated by PerfConfig.from_dict below
            perf = PerfConfig.from_dict(group.get("perf"), where=f"{where}.replicas[{i}].perf",
                                        base_dir=base_dir).over(base_perf)
            cfg = replace(parse_config(ReplicaConfig, kwargs, f"{where}.replicas[{i}]"), perf=perf)
            replicas.extend([cfg] * count)
        return cls(tuple(replicas))

    def with_replicas(self, **changes: Any) -> ClusterConfig:
        """Copy with the same changes applied to every replica (e.g. ``batching="prefill_priority"``)."""
        return ClusterConfig(tuple(replace(r, **changes) for r in self.replicas))


def _replica_kwargs(d: Mapping[str, Any], where: str) -> dict[str, Any]:
    names = {f.name for f in fields(ReplicaConfig)}
    unknown = set(d) - names
    if unknown:
        raise ConfigError(f"{where}: unknown replica keys {sorted(unknown)}; allowed: {sorted(names)}")
    return dict(d)
