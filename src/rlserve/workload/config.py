"""The ``workload:`` section of a scenario file, validated, and the builder that turns it into a Workload.

YAML keys are the dataclass field names, one to one. Types and ranges are declared on the fields and checked by
:func:`rlserve.validation.parse_config` (one-line errors naming the file and the key); which keys a section
accepts depends on its ``kind`` (tables below); rules that involve several keys are in :func:`_check_combination`.
:func:`build_workload` is deterministic: the seed is split into independent streams for arrivals, lengths
and prefixes, so changing the length model leaves the arrival times of a seed unchanged.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import AfterValidator, Field

from rlserve.errors import ConfigError
from rlserve.validation import parse_config
from rlserve.workload import arrivals, lengths, loaders, prefixes
from rlserve.workload.lengths import Truncation
from rlserve.workload.request import EXACT_SOURCE, Workload

# kind -> (required keys, optional keys), besides "kind" itself.
ARRIVAL_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "poisson": (("qps",), ()),
    "gamma": (("qps", "burstiness"), ()),
    "constant": (("qps",), ()),
    "ramp": (("qps_start", "qps_end"), ()),
    "piecewise": (("rates_qps", "segment_s"), ()),
    "trace": ((), ("time_scale", "qps")),
}
LENGTH_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "fixed": (("prompt_tokens", "output_tokens"), ()),
    "uniform": (("prompt_min", "prompt_max", "output_min", "output_max"), ()),
    "lognormal": ((), tuple(f"{side}_{p}" for side in ("prompt", "output") for p in ("mean", "median", "mu", "sigma"))),
    "trace": (("path",), ("order",)),
    "azure": (("path",), ("order",)),
    "sharegpt": (("path",), ("order", "tokenizer")),
}
FILE_LOADERS: dict[str, Callable[..., loaders.TokenTrace]] = {
    "trace": loaders.load_splitwise_csv,
    "azure": loaders.load_azure_csv,
    "sharegpt": loaders.load_sharegpt_json,
}
MAX_TOKENS_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "fixed": (("tokens",), ()),
    "multiple": (("factor",), ()),
    "exact": ((), ()),
    "trace": ((), ()),
}
DEFAULT_MAX_TOKENS = 2048
"""The declared ``max_tokens`` of a scenario that does not say: a common chat-client setting (OpenAI-style clients
and UIs often send 1024-4096; vLLM itself defaults to the remaining context). Capped by the model length."""
Order = Literal["sample", "sequential"]
ORDERS: tuple[str, ...] = typing.get_args(Order)
# Warn when the prefix is cut to the prompt for more than this share of prefixed requests.
PREFIX_CUT_WARN_FRACTION = 0.1

# the ranges of the fields below (validated by rlserve.validation.parse_config: strict types, finite numbers)
_Positive = Annotated[float, Field(gt=0)]
_NonNegative = Annotated[float, Field(ge=0)]
_AtLeastOne = Annotated[float, Field(ge=1)]
_Count = Annotated[int, Field(ge=1)]


def _some_positive(rates: tuple[float, ...]) -> tuple[float, ...]:
    if not any(r > 0 for r in rates):
        raise ValueError("needs a rate > 0 (all are 0)")
    return rates


@dataclass(frozen=True)
class ArrivalConfig:
    """When requests arrive; see :data:`ARRIVAL_KEYS` for the keys each ``kind`` takes."""

    kind: str = "poisson"
    qps: _Positive | None = None
    burstiness: _Positive | None = None
    qps_start: _Positive | None = None
    qps_end: _Positive | None = None
    rates_qps: Annotated[tuple[_NonNegative, ...], Field(min_length=1), AfterValidator(_some_positive)] | None = None
    segment_s: _Positive | None = None
    time_scale: _Positive | None = None


@dataclass(frozen=True)
class LengthConfig:
    """How long prompts and outputs are; see :data:`LENGTH_KEYS` for the keys each ``kind`` takes.

    File kinds (``trace``, ``azure``, ``sharegpt``) take rows in file order with ``order: sequential`` and
    resample rows with replacement with ``order: sample`` (the default, unless arrivals replay the trace).
    """

    kind: str = "lognormal"
    prompt_tokens: _Count | None = None
    output_tokens: _Count | None = None
    prompt_min: _Count | None = None
    prompt_max: _Count | None = None
    output_min: _Count | None = None
    output_max: _Count | None = None
    prompt_mean: _Positive | None = None
    prompt_median: _Positive | None = None
    prompt_mu: float | None = None
    prompt_sigma: _NonNegative | None = None
    output_mean: _Positive | None = None
    output_median: _Positive | None = None
    output_mu: float | None = None
    output_sigma: _NonNegative | None = None
    path: Path | None = None
    order: Order | None = None
    tokenizer: Path | None = None  # a tokenizer.json

    def lognormal(self, side: str) -> lengths.LogNormal:
        """The prompt (``side="prompt"``) or output lognormal, from mean/median or mu/sigma."""
        mean, median = getattr(self, f"{side}_mean"), getattr(self, f"{side}_median")
        if mean is not None:
            return lengths.LogNormal.from_mean_median(mean, median)
        return lengths.LogNormal(getattr(self, f"{side}_mu"), getattr(self, f"{side}_sigma"))


@dataclass(frozen=True)
class PrefixConfig:
    """Shared prompt prefixes (system prompts) for prefix caching (:mod:`rlserve.workload.prefixes`).

    Each request, with probability ``share_fraction``, gets one of ``num_prefixes`` prefix ids, id ``j`` with
    probability proportional to ``1 / (j + 1) ** zipf_s`` (0, the default: uniform), whose first ``prefix_tokens``
    prompt tokens are shared by every request with that id. With ``prepend`` the shared prompt is put in front of
    the drawn prompt; otherwise it is the drawn prompt's start, and a prompt shorter than ``prefix_tokens`` shares
    all of its tokens (the prefix is cut to the prompt).
    """

    share_fraction: Annotated[float, Field(ge=0, le=1)]
    num_prefixes: _Count
    prefix_tokens: _Count
    zipf_s: _NonNegative = 0.0  # 0: uniform popularity
    prepend: bool = False


@dataclass(frozen=True)
class SessionConfig:
    """Multi-turn conversations (:func:`rlserve.workload.prefixes.sessions`): ``turns_mean`` turns per
    conversation on average (geometric), ``think_time_s`` mean think time between an answer and the next turn.
    The arrival process gives the conversations' start times at ``qps / turns_mean``, so requests still arrive at
    ``qps`` on average. With ShareGPT lengths the recorded conversations are replayed whole (sampled with
    replacement) and ``turns_mean``, optional there, defaults to their mean number of exchanges."""

    think_time_s: _Positive
    turns_mean: _AtLeastOne | None = None


@dataclass(frozen=True)
class MaxTokensConfig:
    """What each client declares as ``max_tokens`` (the only output size a router may see).

    - ``fixed``: every request declares ``tokens``;
    - ``multiple``: ``ceil(factor * true output)`` (a client that knows roughly how long answers are);
    - ``exact``: the true output length, an oracle no deployment has (results say so);
    - ``trace``: the lengths file's ``max_tokens`` column.

    Every kind is capped by the model length (``max_model_len - prompt``, as clients must: vLLM refuses longer
    requests), and the true output is cut to the declared size (generation stops at ``max_tokens``).
    """

    kind: str = "fixed"
    tokens: _Count | None = DEFAULT_MAX_TOKENS
    factor: _AtLeastOne | None = None  # max_tokens bounds the output, so >= 1

    def source(self) -> str:
        """The label results carry (:attr:`rlserve.workload.Workload.max_tokens_source`)."""
        if self.kind == "fixed":
            return f"fixed:{self.tokens}"
        if self.kind == "multiple":
            return f"multiple:{self.factor:g}"
        return EXACT_SOURCE if self.kind == "exact" else "trace"


@dataclass(frozen=True)
class WorkloadConfig:
    """A whole workload: how many requests, when they arrive, how long they are, caps and prefixes.

    ``num_requests`` may be left out only for file lengths taken in order; then every row is used.
    """

    num_requests: _Count | None
    arrival: ArrivalConfig
    lengths: LengthConfig
    max_prompt_tokens: _Count | None = None
    max_output_tokens: _Count | None = None
    max_total_tokens: Annotated[int, Field(ge=2)] | None = None
    prefix: PrefixConfig | None = None
    max_tokens: MaxTokensConfig = MaxTokensConfig()
    sessions: SessionConfig | None = None
    truncation: Truncation = "output_first"  # how max_total_tokens shortens a request

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, where: str, base_dir: str | Path = ".") -> WorkloadConfig:
        """Validate a ``workload:`` mapping; ``where`` names it in errors, e.g. ``"light.yaml: workload"``.

        Relative paths are resolved against ``base_dir`` (the scenario file's folder) and must exist.
        """
        if not isinstance(d, Mapping):
            raise ConfigError(f"{where}: expected a mapping of keys, got {type(d).__name__}")
        doc = _given(d)
        for key, table in (("arrival", ARRIVAL_KEYS), ("lengths", LENGTH_KEYS), ("max_tokens", MAX_TOKENS_KEYS)):
            if key in doc:  # a missing arrival or lengths: parse_config says so
                doc[key] = _kinded(doc[key], where, key, table)
        if "max_tokens" in doc:
            doc["max_tokens"] = {"tokens": None, **doc["max_tokens"]}  # a max_tokens section has no default cap
        for key in ("prefix", "sessions"):
            if isinstance(doc.get(key), Mapping):
                doc[key] = _given(doc[key])
        cfg = parse_config(cls, {"num_requests": None, **doc}, where)  # num_requests: see _check_combination
        lens = cfg.lengths
        for key in ("path", "tokenizer"):
            path = getattr(lens, key)
            if path is not None:
                path = Path(base_dir) / path.expanduser()
                if not path.is_file():
                    raise ConfigError(f"{where}: lengths.{key} {path} does not exist; fix the path "
                                      "(relative paths are relative to the scenario file)")
                lens = dataclasses.replace(lens, **{key: path})
        cfg = dataclasses.replace(cfg, lengths=lens)
        _check_combination(cfg, where)
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """The config as plain data (the keys :meth:`from_dict` accepts), for result files."""
        def plain(v: Any) -> Any:
            if isinstance(v, dict):
                return {k: plain(x) for k, x in v.items() if x is not None}
            if isinstance(v, tuple):
                return list(v)
            return str(v) if isinstance(v, Path) else v
        return plain(dataclasses.asdict(self))


def _given(d: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of a section that are set (YAML null means "not given", i.e. the default)."""
    return {k: v for k, v in d.items() if v is not None}


def _kinded(d: Any, where: str, section: str, table: dict[str, tuple[tuple[str, ...], tuple[str, ...]]]
            ) -> dict[str, Any]:
    """Check the keys of a section whose allowed keys depend on its ``kind``; values are checked by the
    section's dataclass."""
    kind = d.get("kind") if isinstance(d, Mapping) else None
    if not isinstance(kind, str) or kind not in table:
        got = repr(kind) if kind is None or isinstance(kind, str) else f"a {type(kind).__name__}"  # never a huge repr
        raise ConfigError(f"{where}: {section}.kind must be one of {', '.join(table)}, got {got}")
    required, optional = table[kind]
    allowed = ("kind", *required, *optional)
    unknown = [str(k) for k in d if k not in allowed]
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(f'{section}.{k}' for k in unknown)}; "
                          f"allowed here: {', '.join(allowed)}")
    given = _given(d)
    missing = [k for k in required if k not in given]
    if missing:
        raise ConfigError(f"{where}: missing key(s) {', '.join(f'{section}.{k}' for k in missing)}")
    return given


def _check_combination(cfg: WorkloadConfig, where: str) -> None:
    """Rules that involve more than one key."""
    arr, lens = cfg.arrival, cfg.lengths
    if lens.kind == "uniform":
        for side in ("prompt", "output"):
            if getattr(lens, f"{side}_min") > getattr(lens, f"{side}_max"):
                raise ConfigError(f"{where}: lengths.{side}_min must be <= lengths.{side}_max")
    if lens.kind == "lognormal":
        for side in ("prompt", "output"):
            given = [k for k in ("mean", "median", "mu", "sigma") if getattr(lens, f"{side}_{k}") is not None]
            if sorted(given) not in (["mean", "median"], ["mu", "sigma"]):
                raise ConfigError(f"{where}: lengths needs either {side}_mean and {side}_median or {side}_mu and "
                                  f"{side}_sigma, got {', '.join(f'{side}_{k}' for k in given) or 'neither'}")
            try:
                lens.lognormal(side)
            except ConfigError as e:
                raise ConfigError(f"{where}: lengths {side}: {e}") from None
    if arr.kind == "trace":
        if lens.kind not in ("trace", "azure"):
            raise ConfigError(f"{where}: arrival.kind trace replays the times of the lengths file, so "
                              f"lengths.kind must be trace or azure, not {lens.kind}")
        if arr.time_scale is not None and arr.qps is not None:
            raise ConfigError(f"{where}: give arrival.time_scale or arrival.qps, not both")
        if lens.order == "sample":
            raise ConfigError(f"{where}: lengths.order must be sequential when arrival.kind is trace "
                              "(each row's lengths belong to its arrival time)")
    if cfg.sessions is not None:
        if cfg.prefix is not None:
            raise ConfigError(f"{where}: give prefix or sessions, not both (a request has one shared prefix)")
        if arr.kind not in ("poisson", "gamma", "constant"):
            raise ConfigError(f"{where}: sessions start at arrival.qps / sessions.turns_mean, so arrival.kind must "
                              f"be poisson, gamma or constant, not {arr.kind}")
        if lens.kind in FILE_LOADERS and _order(cfg) == "sequential":
            raise ConfigError(f"{where}: sessions draw each turn's lengths, so a lengths file must use order: sample")
        if cfg.sessions.turns_mean is None and lens.kind != "sharegpt":
            raise ConfigError(f"{where}: sessions.turns_mean is required unless lengths.kind is sharegpt (whose "
                              "recorded conversations give the turns)")
    if cfg.max_tokens.kind == "trace" and lens.kind != "trace":
        raise ConfigError(f"{where}: max_tokens.kind trace reads the max_tokens column of a lengths file, so "
                          f"lengths.kind must be trace, not {lens.kind}")
    if cfg.num_requests is None and (lens.kind not in FILE_LOADERS or _order(cfg) != "sequential"):
        raise ConfigError(f"{where}: num_requests is required unless the lengths file is taken in order")


def _order(cfg: WorkloadConfig) -> str:
    if cfg.lengths.order is not None:
        return cfg.lengths.order
    return "sequential" if cfg.arrival.kind == "trace" else "sample"


@functools.lru_cache(maxsize=8)
def _load_cached(kind: str, path: Path, tokenizer: Path | None, mtime_ns: int, size: int,
                 all_turns: bool = False) -> loaders.TokenTrace:
    """Load a lengths file once per version of it: RL training rebuilds workloads every episode."""
    if kind == "sharegpt":
        return loaders.load_sharegpt_json(path, tokenizer, all_turns=all_turns)
    return FILE_LOADERS[kind](path)


def load_lengths_file(cfg: LengthConfig, all_turns: bool = False) -> loaders.TokenTrace:
    """The (cached, read-only) trace behind a file-based length config (``all_turns``: every exchange of each
    ShareGPT conversation, for sessions)."""
    if cfg.path is None:
        raise ConfigError(f"lengths.kind {cfg.kind} needs a path")
    try:
        st = cfg.path.stat()
    except OSError:
        st = None  # the loader reports the missing file
    return _load_cached(cfg.kind, cfg.path, cfg.tokenizer, st.st_mtime_ns if st else 0, st.st_size if st else 0,
                        all_turns)


def build_workload(cfg: WorkloadConfig, seed: int, max_model_len: int | None = None) -> Workload:
    """Draw the workload a config describes; the same config and seed give identical arrays.

    ``max_model_len`` (the cluster's smallest context length, when known) caps the declared ``max_tokens`` at
    ``max_model_len - prompt`` as a client must; the true output is then cut to the declared size.
    """
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ConfigError(f"seed must be an integer >= 0, got {seed!r}")
    arrival_rng, length_rng, prefix_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
    recorded = cfg.sessions is not None and cfg.lengths.kind == "sharegpt"
    trace = load_lengths_file(cfg.lengths, all_turns=recorded) if cfg.lengths.kind in FILE_LOADERS else None
    n = cfg.num_requests if cfg.num_requests is not None else len(trace)  # type: ignore[arg-type]
    trace_rows: slice | None = None
    if cfg.sessions is not None:
        s = cfg.sessions
        if recorded and trace is not None and trace.session_id is not None:
            conversations = prefixes.recorded_conversations(trace.session_id, trace.prompt_tokens,
                                                            trace.output_tokens, length_rng)
            turns_mean = s.turns_mean or len(trace) / len(np.unique(trace.session_id))
        else:
            turns_mean = s.turns_mean or 1.0
            conversations = prefixes.generated_conversations(
                turns_mean, lambda k: _draw_lengths(cfg, k, length_rng, trace)[:2], prefix_rng)
        starts = dataclasses.replace(cfg.arrival, qps=cfg.arrival.qps / turns_mean)  # type: ignore[operator]
        arrival_s, prompt, output, prefix_id = prefixes.sessions(
            n, s.think_time_s, cfg.max_total_tokens, conversations,
            lambda k: _draw_arrivals(starts, k, arrival_rng, None, None), prefix_rng)
    else:
        prompt, output, trace_rows = _draw_lengths(cfg, n, length_rng, trace)
        arrival_s = _draw_arrivals(cfg.arrival, n, arrival_rng, trace, trace_rows)
        prefix_id = np.full(n, -1, np.int64)
        if cfg.prefix is not None and cfg.prefix.share_fraction > 0:
            c = cfg.prefix
            prompt, prefix_id, _ = prefixes.shared_prompts(prompt, c.share_fraction, c.num_prefixes,
                                                           c.prefix_tokens, c.zipf_s, c.prepend, prefix_rng)
            _warn_cut_prefixes(c, prompt, prefix_id)
    prompt, output, _ = lengths.clip_lengths(
        prompt, output, max_prompt_tokens=cfg.max_prompt_tokens, max_output_tokens=cfg.max_output_tokens,
        max_total_tokens=cfg.max_total_tokens, truncation=cfg.truncation,
    )
    if cfg.sessions is not None:  # a turn's whole prompt lies on its conversation
        prefix_tokens = prompt.copy()
    elif cfg.prefix is not None:
        prefix_tokens = np.where(prefix_id >= 0, np.minimum(cfg.prefix.prefix_tokens, prompt), 0).astype(np.int64)
    else:
        prefix_tokens = np.zeros(n, np.int64)
    declared = declared_max_tokens(cfg.max_tokens, prompt, output, max_model_len,
                                   None if trace is None or trace_rows is None else trace.max_tokens)
    output = np.minimum(output, declared)
    return Workload(arrival_s, prompt, output, prefix_id, prefix_tokens, declared, cfg.max_tokens.source())


def declared_max_tokens(c: MaxTokensConfig, prompt: np.ndarray, output: np.ndarray, max_model_len: int | None,
                        trace_column: np.ndarray | None = None) -> np.ndarray:
    """Each request's declared ``max_tokens`` (see :class:`MaxTokensConfig`), capped by the model length."""
    n = len(prompt)
    if c.kind == "fixed":
        declared = np.full(n, c.tokens, np.int64)
    elif c.kind == "multiple":
        declared = np.ceil(c.factor * output).astype(np.int64)
    elif c.kind == "exact":
        declared = output.copy()
    else:
        if trace_column is None:
            raise ConfigError("max_tokens.kind trace needs a lengths file with a max_tokens column, taken in order "
                              "(lengths.order: sequential)")
        declared = np.asarray(trace_column[:n], np.int64)
    if max_model_len is not None and c.kind != "exact":
        declared = np.minimum(declared, np.maximum(max_model_len - prompt, 1))
    return np.maximum(declared, 1)


def _draw_lengths(
    cfg: WorkloadConfig, n: int, rng: np.random.Generator, trace: loaders.TokenTrace | None
) -> tuple[np.ndarray, np.ndarray, slice | None]:
    """Prompt and output lengths, plus the trace rows used when they were taken in order."""
    c = cfg.lengths
    if trace is not None:
        if _order(cfg) == "sample":
            return (*lengths.empirical(trace.prompt_tokens, trace.output_tokens, n, rng), None)
        if n > len(trace):
            raise ConfigError(f"num_requests is {n} but {trace.path} has only {len(trace)} rows; lower "
                              "num_requests or use lengths.order: sample")
        return trace.prompt_tokens[:n], trace.output_tokens[:n], slice(0, n)
    if c.kind == "fixed":
        return (*lengths.fixed(c.prompt_tokens, c.output_tokens, n), None)  # type: ignore[arg-type]
    if c.kind == "uniform":
        return (*lengths.uniform((c.prompt_min, c.prompt_max), (c.output_min, c.output_max), n, rng),  # type: ignore[arg-type]
                None)
    return (*lengths.lognormal(c.lognormal("prompt"), c.lognormal("output"), n, rng), None)


def _draw_arrivals(
    c: ArrivalConfig, n: int, rng: np.random.Generator, trace: loaders.TokenTrace | None, rows: slice | None
) -> np.ndarray:
    if c.kind == "trace":
        if trace is None or rows is None:
            raise ConfigError("arrival.kind trace needs lengths read in order from a trace or azure file")
        if trace.arrival_s is None:
            raise ConfigError(f"{trace.path} has no arrived_at column, which arrival.kind trace needs")
        times = trace.arrival_s[rows]
        if c.qps is not None:
            return arrivals.trace_replay(times, arrivals.time_scale_for_qps(times, c.qps))
        return arrivals.trace_replay(times, c.time_scale if c.time_scale is not None else 1.0)
    if c.kind == "poisson":
        return arrivals.poisson(c.qps, n, rng)  # type: ignore[arg-type]
    if c.kind == "gamma":
        return arrivals.gamma(c.qps, c.burstiness, n, rng)  # type: ignore[arg-type]
    if c.kind == "constant":
        return arrivals.constant(c.qps, n)  # type: ignore[arg-type]
    if c.kind == "ramp":
        return arrivals.ramp(c.qps_start, c.qps_end, n, rng)  # type: ignore[arg-type]
    return arrivals.piecewise_poisson(c.rates_qps, c.segment_s, n, rng)  # type: ignore[arg-type]


def _warn_cut_prefixes(c: PrefixConfig, prompt_tokens: np.ndarray, prefix_id: np.ndarray) -> None:
    shared = prefix_id >= 0
    cut = int(np.count_nonzero(shared & (prompt_tokens < c.prefix_tokens)))
    if cut > PREFIX_CUT_WARN_FRACTION * max(1, int(shared.sum())):
        warnings.warn(f"prefix.prefix_tokens={c.prefix_tokens} is longer than the prompt of {cut} of "
                      f"{int(shared.sum())} prefixed requests, whose shared prefix is cut to the prompt; "
                      "lower prefix_tokens if that is not intended", stacklevel=3)
