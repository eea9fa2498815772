"""The request, the one unit of work both worlds (simulator and real servers) share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from rlserve.errors import InputError

EXACT_SOURCE = "exact (oracle)"
"""``Workload.max_tokens_source`` when the declared sizes are the true output lengths."""


class Request(NamedTuple):
    """One inference request as the router sees it when it arrives: only what a proxy can read from the request.

    ``max_tokens`` is what the client declared (an upper bound on the output), never the true output length: a
    proxy cannot know that, so neither may a router in simulation. The simulator keeps the true lengths in its
    own table (:class:`~rlserve.sim.replica.RequestTable`) and never hands them to a policy.
    Which prompts share a prefix is not here either: a proxy sees prompt text, not prefix ids. Routers learn it the
    way a proxy does, from each replica's ``ReplicaState.prefix_hit_tokens`` (the prefix index of the prompts routed
    so far); the workload's prefix ids stay in the simulator.
    A NamedTuple rather than a dataclass: one is built per routing decision, and tuples build ~4x faster.
    """

    id: int
    arrival_s: float
    prompt_tokens: int
    max_tokens: int


@dataclass(frozen=True)
class Workload:
    """A whole workload as columns (fast to build, slice and feed to the simulator).

    All arrays have one entry per request, sorted by ``arrival_s``. Build one with
    :func:`rlserve.workload.build_workload` or directly from arrays.

    ``output_tokens`` is the truth the simulator executes; ``max_tokens`` is what each client declared, the only
    output size a router, state builder or controller may see (``output_tokens <= max_tokens``: generation stops
    at ``max_tokens``). ``max_tokens_source`` says where the declared sizes came from (``"fixed:2048"``,
    ``"multiple:2"``, ``"trace"``, ``"exact (oracle)"``) so every result can carry it.
    """

    arrival_s: np.ndarray  # float64, non-decreasing, seconds since the start of the run
    prompt_tokens: np.ndarray  # int64, >= 1
    output_tokens: np.ndarray  # int64, >= 1, the true output length (simulator only)
    prefix_id: np.ndarray  # int64, -1 = no shared prefix
    prefix_tokens: np.ndarray  # int64, 0 when prefix_id == -1
    max_tokens: np.ndarray  # int64, >= output_tokens, what the client declared
    max_tokens_source: str = EXACT_SOURCE

    def __post_init__(self) -> None:
        n = len(self.arrival_s)
        for name in ("prompt_tokens", "output_tokens", "prefix_id", "prefix_tokens", "max_tokens"):
            if len(getattr(self, name)) != n:
                raise InputError(f"workload column {name!r} has {len(getattr(self, name))} rows, expected {n}")
        if n and np.any(np.diff(self.arrival_s) < 0):
            raise InputError("workload arrival times must be non-decreasing")
        if n and (self.prompt_tokens.min() < 1 or self.output_tokens.min() < 1):
            raise InputError("every request needs >= 1 prompt token and >= 1 output token")
        if n and np.any(self.max_tokens < self.output_tokens):
            raise InputError("max_tokens must be >= the true output length of every request (generation stops at "
                             "max_tokens); clip output_tokens first")

    @classmethod
    def from_arrays(
        cls,
        arrival_s: np.ndarray,
        prompt_tokens: np.ndarray,
        output_tokens: np.ndarray,
        prefix_id: np.ndarray | None = None,
        prefix_tokens: np.ndarray | None = None,
        max_tokens: np.ndarray | None = None,
        max_tokens_source: str | None = None,
    ) -> Workload:
        """Build a workload, filling the optional prefix columns with "no prefix".

        Without ``max_tokens`` the declared sizes are the true ones: an oracle, labelled ``"exact (oracle)"``.
        """
        n = len(arrival_s)
        output = np.asarray(output_tokens, dtype=np.int64)
        if max_tokens_source is None:
            max_tokens_source = EXACT_SOURCE if max_tokens is None else "given"
        return cls(
            arrival_s=np.asarray(arrival_s, dtype=np.float64),
            prompt_tokens=np.asarray(prompt_tokens, dtype=np.int64),
            output_tokens=output,
            prefix_id=np.full(n, -1, np.int64) if prefix_id is None else np.asarray(prefix_id, np.int64),
            prefix_tokens=np.zeros(n, np.int64) if prefix_tokens is None else np.asarray(prefix_tokens, np.int64),
            max_tokens=output.copy() if max_tokens is None else np.asarray(max_tokens, np.int64),
            max_tokens_source=max_tokens_source,
        )

    @property
    def oracle(self) -> bool:
        """Whether the declared sizes are the true ones (information no deployment has)."""
        return self.max_tokens_source == EXACT_SOURCE

    def __len__(self) -> int:
        return len(self.arrival_s)

    def request(self, i: int) -> Request:
        """The ``i``-th request as a router sees it (ids are positions in the workload)."""
        return Request(
            id=i,
            arrival_s=float(self.arrival_s[i]),
            prompt_tokens=int(self.prompt_tokens[i]),
            max_tokens=int(self.max_tokens[i]),
        )

    def head(self, n: int) -> Workload:
        """The first ``n`` requests."""
        return Workload(
            self.arrival_s[:n], self.prompt_tokens[:n], self.output_tokens[:n], self.prefix_id[:n],
            self.prefix_tokens[:n], self.max_tokens[:n], self.max_tokens_source,
        )
