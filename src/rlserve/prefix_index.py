"""Which replica probably holds a request's prompt prefix in its KV cache: one bounded index, both worlds.

A proxy cannot see the engines' caches, but it knows every prompt it sent where. Like llm-d's approximate prefix
scorer (``prefix-cache-scorer``: ``blockSizeTokens`` 16, ``maxPrefixBlocksToMatch`` 256, ``lruCapacityPerServer``
31,250), it splits each routed prompt into fixed-size blocks, hashes each block chained to the one before it (so a
block's hash stands for the whole prefix up to it, as vLLM's block hashes do), and remembers per replica the
hashes it sent there. For the next request, a replica's expected cached prefix is the run of leading blocks whose
hashes it holds: :attr:`~rlserve.snapshot.ReplicaState.prefix_hit_tokens`.

Bounds (memory cap): at most ``capacity_blocks`` hashes per replica, least recently routed evicted first (LRU);
an entry older than ``ttl_s`` (when set) no longer counts, as the engine has probably evicted it by then. A hash
entry costs about 100 bytes in CPython (dict slot + int key + float time), so the default 31,250 blocks (500k
tokens of 16) cost ~3 MB per replica. Only full blocks are hashed and at most ``max_blocks`` per prompt.

One implementation for both worlds; only the block contents differ:

- the proxy hashes the rendered prompt: ``block_size`` token ids per block for token-id prompts, ``block_size x
  chars_per_token`` characters for text (the proxy has no tokenizer), see :func:`text_block_hashes`;
- the simulator hashes prefix ids (:func:`prefix_block_hashes`): a request's first ``prefix_tokens`` tokens are its
  prefix sequence's, the rest are its own, so requests share exactly the blocks their prompts share.

The index is approximate on purpose: it does not know what the engine evicted under memory pressure or whether a
routed request has finished prefilling. It is what a proxy can know.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

DEFAULT_BLOCK_SIZE = 16
"""Tokens per hashed block: vLLM's default KV block size (llm-d's ``blockSizeTokens`` default)."""
DEFAULT_MAX_BLOCKS = 256
"""Leading blocks of a prompt considered (llm-d ``maxPrefixBlocksToMatch``): 4,096 tokens of 16."""
DEFAULT_CAPACITY_BLOCKS = 31_250
"""Hashes remembered per replica (llm-d ``lruCapacityPerServer``)."""

_ROOT = 0x5EED  # parent of the first block of every chain


def prefix_block_hashes(request_id: int, prompt_tokens: int, prefix_id: int, prefix_tokens: int,
                        block_size: int = DEFAULT_BLOCK_SIZE, max_blocks: int = DEFAULT_MAX_BLOCKS) -> list[int]:
    """Chained hashes of the full blocks of a simulated prompt: blocks inside the first ``prefix_tokens`` tokens
    belong to prefix ``prefix_id`` (shared by every request with that id), the others to the request alone."""
    n = min(prompt_tokens // block_size, max_blocks)
    shared = min(prefix_tokens // block_size, n) if prefix_id >= 0 else 0
    out = []
    h = _ROOT
    for i in range(shared):
        h = hash((h, 0, prefix_id, i))  # ints hash the same in every process: runs are reproducible
        out.append(h)
    for i in range(shared, n):
        h = hash((h, 1, request_id, i))
        out.append(h)
    return out


def text_block_hashes(prompt: str | Sequence[int], block_size: int = DEFAULT_BLOCK_SIZE,
                      chars_per_token: float = 4.0, max_blocks: int = DEFAULT_MAX_BLOCKS) -> list[int]:
    """Chained hashes of the full blocks of a rendered prompt as the proxy sees it: ``block_size`` token ids per
    block for a token-id prompt, ``round(block_size * chars_per_token)`` characters for text.

    Python's ``hash`` of a string is salted per process; the index lives in one process, so that is fine.
    """
    width = block_size if not isinstance(prompt, str) else max(1, round(block_size * chars_per_token))
    n = min(len(prompt) // width, max_blocks)
    out = []
    h = _ROOT
    for i in range(n):
        chunk = prompt[i * width:(i + 1) * width]
        h = hash((h, chunk if isinstance(chunk, str) else tuple(chunk)))
        out.append(h)
    return out


class PrefixIndex:
    """Per-replica LRU sets of the block hashes routed to each replica (see module docstring)."""

    def __init__(self, num_replicas: int, block_size: int = DEFAULT_BLOCK_SIZE,
                 capacity_blocks: int = DEFAULT_CAPACITY_BLOCKS, ttl_s: float | None = None) -> None:
        if block_size < 1 or capacity_blocks < 1 or (ttl_s is not None and ttl_s <= 0):
            raise ValueError("block_size and capacity_blocks must be >= 1 and ttl_s > 0 (or None)")
        self.block_size = block_size
        self.capacity_blocks = capacity_blocks
        self.ttl_s = ttl_s
        self._sets: list[OrderedDict[int, float]] = [OrderedDict() for _ in range(num_replicas)]

    def __len__(self) -> int:
        """Hashes held over all replicas."""
        return sum(len(s) for s in self._sets)

    def matched_tokens(self, hashes: Sequence[int], now_s: float) -> list[int]:
        """Per replica, the tokens of the longest run of leading blocks of ``hashes`` it holds (unexpired)."""
        oldest = -float("inf") if self.ttl_s is None else now_s - self.ttl_s
        out = []
        for entries in self._sets:
            n = 0
            for h in hashes:
                t = entries.get(h)
                if t is None or t < oldest:
                    break
                n += 1
            out.append(n * self.block_size)
        return out

    def record(self, replica: int, hashes: Sequence[int], now_s: float) -> None:
        """``hashes`` were routed to ``replica`` at ``now_s``: insert or refresh them, evict the least recent."""
        entries = self._sets[replica]
        for h in reversed(hashes):  # the first blocks end most recent: evicted last, as their chains need them
            entries[h] = now_s
            entries.move_to_end(h)
        while len(entries) > self.capacity_blocks:
            entries.popitem(last=False)
