"""Prompts that share prefixes: system prompts with skewed popularity, and multi-turn conversations.

Both give each request a ``prefix_id`` (which token sequence its prompt starts with) and ``prefix_tokens`` (how
many of its first tokens are that sequence's), the simulator's prefix cache and prefix index read nothing else:

- **shared system prompts**: ``num_prefixes`` prompts, request ``i`` uses prompt ``j`` with probability
  proportional to ``1 / (j + 1) ** zipf_s`` (Zipf; 0 = uniform). With ``prepend`` the system prompt comes in front of
  the drawn prompt (``prompt = prefix_tokens + drawn``), else it is the drawn prompt's first tokens.
- **sessions** (multi-turn chat): each conversation's turn ``k`` sends ``prompt_k = prompt_{k-1} + answer_{k-1} +
  user_k``, where ``user_k`` and ``answer_k`` are drawn from the length model; its whole prompt lies on the
  conversation's sequence (``prefix_id`` = session, ``prefix_tokens`` = prompt), so a turn can hit the previous
  turn's prompt in cache. Turns are ``1 + Geometric`` with mean ``turns_mean``; a conversation also ends before a
  turn whose prompt plus answer would pass ``max_total_tokens``. Turn ``k + 1`` arrives ``answer_k /
  STREAM_TOKENS_PER_S`` (reading the answer as it streams) plus an exponential think time (mean ``think_time_s``)
  after turn ``k``: the schedule is fixed up front, as a benchmark client's is, so it cannot wait for the real
  answer. Recorded conversations (ShareGPT: every human -> assistant exchange, in order) can replace the drawn ones
  (:func:`recorded_conversations`).

Every draw comes from the generators passed in, so a seed gives the same workload.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

STREAM_TOKENS_PER_S = 50.0
"""Nominal answer streaming speed used to space a conversation's turns (a user reads while it streams)."""


def zipf_choice(num: int, zipf_s: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` indices in ``[0, num)`` with probability proportional to ``1 / (j + 1) ** zipf_s``."""
    weights = 1.0 / np.arange(1, num + 1, dtype=np.float64) ** zipf_s
    return rng.choice(num, size=n, p=weights / weights.sum())


def shared_prompts(prompt_tokens: np.ndarray, share_fraction: float, num_prefixes: int, prefix_tokens: int,
                   zipf_s: float, prepend: bool, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray,
                                                                                   np.ndarray]:
    """``(prompt_tokens, prefix_id, prefix_tokens)`` with shared system prompts (see module docstring)."""
    n = len(prompt_tokens)
    shared = rng.random(n) < share_fraction
    prefix_id = np.where(shared, zipf_choice(num_prefixes, zipf_s, n, rng), -1).astype(np.int64)
    prompt = prompt_tokens + prefix_tokens * shared if prepend else prompt_tokens.copy()
    return prompt, prefix_id, np.where(shared, np.minimum(prefix_tokens, prompt), 0).astype(np.int64)


Conversations = Callable[[int], tuple[np.ndarray, np.ndarray, np.ndarray]]
"""``draw(m)`` -> (turns of each of ``m`` conversations, user-text tokens and answer tokens of all their turns)."""


def generated_conversations(turns_mean: float, draw_lengths: Callable[[int], tuple[np.ndarray, np.ndarray]],
                            rng: np.random.Generator) -> Conversations:
    """Conversations of ``Geometric(1 / turns_mean)`` turns whose lengths come from a length model."""
    def draw(m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        turns = rng.geometric(1.0 / turns_mean, size=m).astype(np.int64)
        user, answer = draw_lengths(int(turns.sum()))
        return turns, user, answer
    return draw


def recorded_conversations(session_id: np.ndarray, user_tokens: np.ndarray, answer_tokens: np.ndarray,
                           rng: np.random.Generator) -> Conversations:
    """Whole recorded conversations (rows of one ``session_id`` in order), sampled with replacement."""
    starts = np.flatnonzero(np.r_[True, session_id[1:] != session_id[:-1]])
    ends = np.r_[starts[1:], len(session_id)]

    def draw(m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pick = rng.integers(0, len(starts), size=m)
        rows = np.concatenate([np.arange(starts[j], ends[j]) for j in pick])
        return (ends - starts)[pick], user_tokens[rows], answer_tokens[rows]
    return draw


def sessions(n: int, think_time_s: float, max_total_tokens: int | None, draw_conversations: Conversations,
             draw_starts: Callable[[int], np.ndarray], rng: np.random.Generator
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``n`` requests of multi-turn conversations: ``(arrival_s, prompt_tokens, output_tokens, session_id)``,
    sorted by arrival (see module docstring).

    ``draw_conversations`` gives conversations (:data:`Conversations`); ``draw_starts(s)`` the start times of
    ``s`` conversations. Conversations are drawn until they hold ``2 n`` turns and the ``n`` earliest turns are
    kept, so the end of the run still has conversations starting, not only late turns of old ones.
    """
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    total = 0
    while total < 2 * n:
        parts.append(draw_conversations(max(n // 4, 1)))
        total += int(parts[-1][0].sum())
    counts = np.concatenate([c for c, _, _ in parts])
    user = np.concatenate([u for _, u, _ in parts])
    answer = np.concatenate([a for _, _, a in parts])
    starts = draw_starts(len(counts))
    think = rng.exponential(think_time_s, size=len(user))
    arrival, prompt, output, session = [], [], [], []
    j = 0
    for s, (k, t) in enumerate(zip(counts.tolist(), starts.tolist(), strict=True)):
        context = 0
        for turn in range(k):
            p = context + int(user[j + turn])
            o = int(answer[j + turn])
            if max_total_tokens is not None and p + o > max_total_tokens and turn > 0:
                break  # the conversation would outgrow the context: it ends here
            arrival.append(t)
            prompt.append(p)
            output.append(o)
            session.append(s)
            context = p + o
            t += o / STREAM_TOKENS_PER_S + float(think[j + turn])
        j += k
    order = np.argsort(np.asarray(arrival), kind="stable")[:n]
    return (np.asarray(arrival)[order], np.asarray(prompt, np.int64)[order], np.asarray(output, np.int64)[order],
            np.asarray(session, np.int64)[order])
