"""Length models: how many prompt tokens each request brings and how many output tokens it generates.

Every model returns ``(prompt_tokens, output_tokens)`` as two int64 arrays of ``n`` entries, each >= 1.
Token caps (a model's context length, a benchmark's ``max_tokens``) are applied afterwards by
:func:`clip_lengths`, which reports how many requests it had to shorten.
"""

from __future__ import annotations

import math
import typing
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np

from rlserve.errors import ConfigError

LengthArrays = tuple[np.ndarray, np.ndarray]

# Clipping more than this share of requests changes the workload enough that the user should hear about it.
CLIP_WARN_FRACTION = 0.01
# How max_total_tokens shortens a request: the output first (a server stops generating at the context limit), or
# both sides in proportion to their lengths (what Vidur's trace generators do).
Truncation = Literal["output_first", "proportional"]
TRUNCATION_RULES: tuple[str, ...] = typing.get_args(Truncation)


def _tokens(x: np.ndarray) -> np.ndarray:
    """Round real-valued draws to whole tokens, at least 1."""
    return np.maximum(np.rint(x), 1).astype(np.int64)


def _check_count(name: str, value: int, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


def fixed(prompt_tokens: int, output_tokens: int, n: int) -> LengthArrays:
    """Every request has the same prompt and output length."""
    _check_count("prompt_tokens", prompt_tokens)
    _check_count("output_tokens", output_tokens)
    _check_count("n", n)
    return np.full(n, prompt_tokens, np.int64), np.full(n, output_tokens, np.int64)


def uniform(
    prompt_range: tuple[int, int], output_range: tuple[int, int], n: int, rng: np.random.Generator
) -> LengthArrays:
    """Prompt and output lengths drawn independently and uniformly from inclusive ``(lo, hi)`` ranges."""
    _check_count("n", n)
    out = []
    for name, (lo, hi) in (("prompt", prompt_range), ("output", output_range)):
        _check_count(f"{name} minimum", lo)
        _check_count(f"{name} maximum", hi, minimum=lo)
        out.append(rng.integers(lo, hi, n, endpoint=True, dtype=np.int64))
    return out[0], out[1]


@dataclass(frozen=True)
class LogNormal:
    """A lognormal token-count distribution: ``exp(mu + sigma * Z)``.

    Papers and traces usually report a mean and a median; :meth:`from_mean_median` converts them
    (median = ``exp(mu)``, mean = ``exp(mu + sigma^2 / 2)``). The Splitwise conversation trace is close to
    ``LogNormal.from_mean_median(1155, 1020)`` for prompts and ``(211, 129)`` for outputs.
    """

    mu: float
    sigma: float

    def __post_init__(self) -> None:
        finite = all(isinstance(v, int | float) and math.isfinite(v) for v in (self.mu, self.sigma))
        if not finite or self.sigma < 0:
            raise ConfigError(f"lognormal needs finite mu and sigma >= 0, got mu={self.mu}, sigma={self.sigma}")

    @classmethod
    def from_mean_median(cls, mean: float, median: float) -> LogNormal:
        """The lognormal with this mean and median (a lognormal's mean is never below its median)."""
        if not (median > 0 and mean >= median and math.isfinite(mean)):
            raise ConfigError(f"lognormal needs mean >= median > 0, got mean={mean}, median={median}")
        return cls(mu=math.log(median), sigma=math.sqrt(2.0 * math.log(mean / median)))

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` whole-token draws, each >= 1."""
        return _tokens(rng.lognormal(self.mu, self.sigma, n))


def lognormal(prompt: LogNormal, output: LogNormal, n: int, rng: np.random.Generator) -> LengthArrays:
    """Independent lognormal prompt and output lengths."""
    _check_count("n", n)
    return prompt.sample(n, rng), output.sample(n, rng)


def empirical(
    prompt_pool: np.ndarray, output_pool: np.ndarray, n: int, rng: np.random.Generator
) -> LengthArrays:
    """``n`` (prompt, output) pairs resampled with replacement from recorded pairs, e.g. a loaded trace.

    Pairs stay together, so the correlation between prompt and output length in the data survives.
    """
    _check_count("n", n)
    if len(prompt_pool) != len(output_pool) or len(prompt_pool) == 0:
        raise ConfigError("empirical lengths need two non-empty pools of equal length")
    idx = rng.integers(0, len(prompt_pool), n)
    return np.asarray(prompt_pool, np.int64)[idx], np.asarray(output_pool, np.int64)[idx]


def clip_lengths(
    prompt_tokens: np.ndarray,
    output_tokens: np.ndarray,
    *,
    max_prompt_tokens: int | None = None,
    max_output_tokens: int | None = None,
    max_total_tokens: int | None = None,
    truncation: str = "output_first",
) -> tuple[np.ndarray, np.ndarray, int]:
    """Apply token caps; return the new arrays and how many requests were shortened.

    ``max_total_tokens`` (a model's context length) is enforced by shortening the output first, as a server
    would stop generation at the context limit; a prompt that alone exceeds it is cut to leave one output
    token. ``truncation="proportional"`` instead removes the excess from both sides in proportion to their
    lengths (the prompt's share rounded up, at least one token kept on each side), as Vidur does. Warns when more
    than 1%
    of requests are clipped, since the length distribution then differs noticeably from the one asked for.
    """
    if truncation not in TRUNCATION_RULES:
        raise ConfigError(f"truncation must be one of {TRUNCATION_RULES}, got {truncation!r}")
    prompt = np.asarray(prompt_tokens, np.int64)
    output = np.asarray(output_tokens, np.int64)
    if max_prompt_tokens is not None:
        _check_count("max_prompt_tokens", max_prompt_tokens)
        prompt = np.minimum(prompt, max_prompt_tokens)
    if max_output_tokens is not None:
        _check_count("max_output_tokens", max_output_tokens)
        output = np.minimum(output, max_output_tokens)
    if max_total_tokens is not None:
        _check_count("max_total_tokens", max_total_tokens, minimum=2)
        if truncation == "proportional":
            total = prompt + output
            excess = np.maximum(total - max_total_tokens, 0)
            cut_prompt = np.ceil(excess * prompt / total).astype(np.int64)
            prompt = np.maximum(prompt - cut_prompt, 1)
            output = np.maximum(np.minimum(output, max_total_tokens - prompt), 1)
        else:
            prompt = np.minimum(prompt, max_total_tokens - 1)
            output = np.minimum(output, max_total_tokens - prompt)
    clipped = int(np.count_nonzero((prompt != prompt_tokens) | (output != output_tokens)))
    if len(prompt) and clipped > CLIP_WARN_FRACTION * len(prompt):
        warnings.warn(
            f"token caps shortened {clipped} of {len(prompt)} requests ({clipped / len(prompt):.1%}); "
            "raise the caps if the length distribution should be kept",
            stacklevel=2,
        )
    return prompt, output, clipped
