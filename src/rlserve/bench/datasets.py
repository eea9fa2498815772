"""Benchmark datasets: what each request sends. ``sample_dataset(config, rng) -> Dataset``.

Lengths come from :mod:`rlserve.workload` (length models, trace and ShareGPT loaders), so the benchmark and the
simulator draw requests the same way. Datasets that know only token counts (random, shared-prefix, Splitwise and
Azure traces) send prompts as **token ids** (``/v1/completions`` accepts a list of ints), which gives exact prompt
lengths without a tokenizer; ids are drawn from ``[token_id_low, token_id_high)``, a range every real vocabulary
and the test models' 2,048-token vocabulary contain. ShareGPT sends the conversation's real text. The chat
endpoint needs text, so token-id prompts are spelled as words there (:func:`prompt_text`); their token counts
are then estimates and the result records the server's own count from the usage chunk.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rlserve.errors import ConfigError
from rlserve.workload import lengths, loaders


@dataclass(frozen=True)
class SampleRequest:
    """One request to send: a text or token-id prompt and the number of tokens to generate."""

    prompt: str | tuple[int, ...]
    prompt_tokens: int  # exact for token ids, estimated for text
    output_tokens: int  # sent as max_tokens


@dataclass(frozen=True)
class Dataset:
    """Requests in send order, plus recorded arrival times when the source has them (trace replay)."""

    requests: list[SampleRequest]
    arrival_s: np.ndarray | None = None


@dataclass(frozen=True)
class DatasetConfig:
    """Which dataset and its knobs (CLI flags of ``rlserve bench``, named like ``vllm bench serve``)."""

    name: str = "random"
    path: Path | None = None
    num_prompts: int = 1000
    random_input_len: int = 1024
    random_output_len: int = 128
    random_range_ratio: float = 0.0
    """Lengths uniform in ``[len * (1 - r), len * (1 + r)]``; 0 = fixed lengths."""
    prefix_len: int = 256
    """Shared-prefix dataset: tokens every request of one prefix group shares."""
    num_prefixes: int = 8
    sharegpt_output_len: int | None = None
    """Override ShareGPT output lengths (default: the recorded answer's estimated length)."""
    token_id_low: int = 100
    token_id_high: int = 1000

    def __post_init__(self) -> None:
        if self.num_prompts < 1:
            raise ConfigError(f"--num-prompts must be >= 1, got {self.num_prompts}")
        if not 0.0 <= self.random_range_ratio < 1.0:
            raise ConfigError(f"--random-range-ratio must be in [0, 1), got {self.random_range_ratio}")
        if not 0 <= self.token_id_low < self.token_id_high:
            raise ConfigError(f"token id range [{self.token_id_low}, {self.token_id_high}) is empty")


def _ids(rng: np.random.Generator, cfg: DatasetConfig, n: int) -> tuple[int, ...]:
    return tuple(int(x) for x in rng.integers(cfg.token_id_low, cfg.token_id_high, n))


def _ranged(length: int, ratio: float) -> tuple[int, int]:
    return max(1, int(length * (1 - ratio))), max(1, int(length * (1 + ratio)))


def sample_random(cfg: DatasetConfig, rng: np.random.Generator) -> Dataset:
    """Random token-id prompts with fixed or uniformly ranged lengths."""
    n = cfg.num_prompts
    if cfg.random_range_ratio == 0.0:
        prompt, output = lengths.fixed(cfg.random_input_len, cfg.random_output_len, n)
    else:
        prompt, output = lengths.uniform(_ranged(cfg.random_input_len, cfg.random_range_ratio),
                                         _ranged(cfg.random_output_len, cfg.random_range_ratio), n, rng)
    return Dataset([SampleRequest(_ids(rng, cfg, int(p)), int(p), int(o)) for p, o in zip(prompt, output,
                                                                                         strict=True)])


def sample_shared_prefix(cfg: DatasetConfig, rng: np.random.Generator) -> Dataset:
    """``num_prefixes`` groups; each request = its group's ``prefix_len`` ids + ``random_input_len`` own ids."""
    if cfg.num_prefixes < 1 or cfg.prefix_len < 1:
        raise ConfigError("shared-prefix dataset needs --num-prefixes >= 1 and --prefix-len >= 1")
    prefixes = [_ids(rng, cfg, cfg.prefix_len) for _ in range(cfg.num_prefixes)]
    group = rng.integers(0, cfg.num_prefixes, cfg.num_prompts)
    reqs = []
    for g in group:
        prompt = prefixes[int(g)] + _ids(rng, cfg, cfg.random_input_len)
        reqs.append(SampleRequest(prompt, len(prompt), cfg.random_output_len))
    return Dataset(reqs)


def _trace(cfg: DatasetConfig, load: Callable[[Path], loaders.TokenTrace]) -> Dataset:
    """Replay a trace file in order: its lengths, and its arrival times rebased to 0 when it has them."""
    if cfg.path is None:
        raise ConfigError(f"--dataset-name {cfg.name} needs --dataset-path FILE")
    trace = load(cfg.path)
    n = min(cfg.num_prompts, len(trace))
    rng = np.random.default_rng(0)  # prompt content only; lengths and times come from the file
    reqs = [SampleRequest(_ids(rng, cfg, int(p)), int(p), int(o))
            for p, o in zip(trace.prompt_tokens[:n], trace.output_tokens[:n], strict=True)]
    times = None if trace.arrival_s is None else np.asarray(trace.arrival_s[:n]) - float(trace.arrival_s[0])
    return Dataset(reqs, times)


def sample_sharegpt(cfg: DatasetConfig, rng: np.random.Generator) -> Dataset:
    """ShareGPT conversations (first human turn -> prompt text), shuffled with ``rng``.

    The texts are captured through the loader's token-counting hook (it counts each kept conversation's prompt,
    then its answer), so the file is parsed and validated by exactly one piece of code.
    """
    if cfg.path is None:
        raise ConfigError("--dataset-name sharegpt needs --dataset-path FILE.json")
    texts: list[str] = []

    def capture(text: str) -> int:
        texts.append(text)
        return loaders.estimate_tokens(text)

    trace = loaders.load_sharegpt_json(cfg.path, tokenizer=capture)
    prompts = texts[0::2]
    order = rng.permutation(len(trace))[: cfg.num_prompts]
    out = cfg.sharegpt_output_len
    return Dataset([SampleRequest(prompts[i], int(trace.prompt_tokens[i]),
                                  int(out if out is not None else trace.output_tokens[i])) for i in order])


DATASETS: dict[str, Callable[[DatasetConfig, np.random.Generator], Dataset]] = {
    "random": sample_random,
    "sharegpt": sample_sharegpt,
    "splitwise": lambda cfg, rng: _trace(cfg, loaders.load_splitwise_csv),
    "azure": lambda cfg, rng: _trace(cfg, loaders.load_azure_csv),
    "shared-prefix": sample_shared_prefix,
}


def sample_dataset(cfg: DatasetConfig, rng: np.random.Generator) -> Dataset:
    """Build the dataset named by ``cfg.name`` (one of :data:`DATASETS`)."""
    if cfg.name not in DATASETS:
        raise ConfigError(f"unknown --dataset-name {cfg.name!r}; choose one of {sorted(DATASETS)}")
    return DATASETS[cfg.name](cfg, rng)


# Short common words: most BPE vocabularies have each as one token (with its leading space).
_WORDS = ("the of and to in is was for on are with as at be by this from or have an they which one you were "
          "all we when there can more if no out so said what up its about into than them only new some could "
          "time these two may first then do any like my now over such our man me even most made after also "
          "did many before must through back years where much your way well down should because each just "
          "those people how too little state good very make world still own see men work long get here "
          "between both life being under never day same another know while last might us great old year off "
          "come since against go came right used take three").split()


def prompt_text(prompt: str | tuple[int, ...]) -> str:
    """The prompt as text: itself, or token ids spelled as one common word each (for the chat endpoint)."""
    if isinstance(prompt, str):
        return prompt
    return " ".join(_WORDS[i % len(_WORDS)] for i in prompt)
