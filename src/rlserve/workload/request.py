"""The request, the one unit of work both worlds (simulator and real servers) share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from rlserve.errors import InputError


class Request(NamedTuple):
    """One inference request as the router sees it when it arrives.

    ``output_tokens`` is the number of tokens the request will generate. The simulator knows it exactly; in the
    real world it is the request's ``max_tokens`` (an upper bound), which is what a proxy can see.
    ``prefix_id`` groups requests that share their first ``prefix_tokens`` prompt tokens (a system prompt, a
    conversation history); the simulator's prefix cache uses it. ``-1`` means no shared prefix.
    A NamedTuple rather than a dataclass: one is built per routing decision, and tuples build ~4x faster.
    """

    id: int
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    prefix_id: int = -1
    prefix_tokens: int = 0


@dataclass(frozen=True)
class Workload:
    """A whole workload as columns (fast to build, slice and feed to the simulator).

    All arrays have one entry per request, sorted by ``arrival_s``. Build one with
    :func:`rlserve.workload.build_workload` or directly from arrays.
    """

    arrival_s: np.ndarray  # float64, non-decreasing, seconds since the start of the run
    prompt_tokens: np.ndarray  # int64, >= 1
    output_tokens: np.ndarray  # int64, >= 1
    prefix_id: np.ndarray  # int64, -1 = no shared prefix
    prefix_tokens: np.ndarray  # int64, 0 when prefix_id == -1

    def __post_init__(self) -> None:
        n = len(self.arrival_s)
        for name in ("prompt_tokens", "output_tokens", "prefix_id", "prefix_tokens"):
            if len(getattr(self, name)) != n:
                raise InputError(f"workload column {name!r} has {len(getattr(self, name))} rows, expected {n}")
        if n and np.any(np.diff(self.arrival_s) < 0):
            raise InputError("workload arrival times must be non-decreasing")
        if n and (self.prompt_tokens.min() < 1 or self.output_tokens.min() < 1):
            raise InputError("every request needs >= 1 prompt token and >= 1 output token")

    @classmethod
    def from_arrays(
        cls,
        arrival_s: np.ndarray,
        prompt_tokens: np.ndarray,
        output_tokens: np.ndarray,
        prefix_id: np.ndarray | None = None,
        prefix_tokens: np.ndarray | None = None,
    ) -> Workload:
        """Build a workload, filling the optional prefix columns with "no prefix"."""
        n = len(arrival_s)
        return cls(
            arrival_s=np.asarray(arrival_s, dtype=np.float64),
            prompt_tokens=np.asarray(prompt_tokens, dtype=np.int64),
            output_tokens=np.asarray(output_tokens, dtype=np.int64),
            prefix_id=np.full(n, -1, np.int64) if prefix_id is None else np.asarray(prefix_id, np.int64),
            prefix_tokens=np.zeros(n, np.int64) if prefix_tokens is None else np.asarray(prefix_tokens, np.int64),
        )

    def __len__(self) -> int:
        return len(self.arrival_s)

    def request(self, i: int) -> Request:
        """The ``i``-th request as an object (ids are positions in the workload)."""
        return Request(
            id=i,
            arrival_s=float(self.arrival_s[i]),
            prompt_tokens=int(self.prompt_tokens[i]),
            output_tokens=int(self.output_tokens[i]),
            prefix_id=int(self.prefix_id[i]),
            prefix_tokens=int(self.prefix_tokens[i]),
        )

    def head(self, n: int) -> Workload:
        """The first ``n`` requests."""
        return Workload(
            self.arrival_s[:n], self.prompt_tokens[:n], self.output_tokens[:n], self.prefix_id[:n],
            self.prefix_tokens[:n],
        )
