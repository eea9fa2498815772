"""Loaders for recorded workloads: Vidur/Splitwise CSV, Azure LLM inference CSV, ShareGPT JSON.

Each returns a :class:`TokenTrace` (token counts, plus arrival times where the format records them).
Malformed input raises :class:`~rlserve.errors.InputError` with one line naming the file, the 1-based line
(CSV) or record (JSON) and what is wrong, so the CLI can print it without a traceback. Only the standard
library parses the files: no pandas at run time.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

from rlserve.errors import ConfigError, InputError

# Used when no tokenizer is given: English text averages about 4 characters per token with the BPE
# tokenizers of Llama/GPT-class models (OpenAI's rule of thumb; vLLM's random dataset uses the same ratio).
CHARS_PER_TOKEN = 4

TokenCounter = Callable[[str], int]


@dataclass(frozen=True)
class TokenTrace:
    """Per-request token counts read from a file, in file order.

    ``arrival_s`` is ``None`` for formats without times (ShareGPT, a two-column Splitwise CSV); otherwise it
    is non-decreasing seconds (Splitwise: as recorded; Azure: since the first row). ``max_tokens`` is the
    clients' declared output cap where the file records one (a ``max_tokens`` column), else ``None``. The arrays
    are read-only because loaded traces are cached and shared between workloads.
    """

    path: Path
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    arrival_s: np.ndarray | None = None
    max_tokens: np.ndarray | None = None
    session_id: np.ndarray | None = None  # conversation of each row (ShareGPT with all_turns), rows in order

    def __post_init__(self) -> None:
        for arr in (self.prompt_tokens, self.output_tokens, self.arrival_s, self.max_tokens, self.session_id):
            if arr is not None:
                arr.setflags(write=False)

    def __len__(self) -> int:
        return len(self.prompt_tokens)


# --- CSV ------------------------------------------------------------------------------------------------


def _open(path: Path) -> TextIO:
    """Open a text file, mapping OS errors to InputError."""
    try:
        return path.open(newline="", encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read the file ({e.strerror})") from None


def _read_csv(path: Path, required: list[str], optional: list[str]) -> tuple[dict[str, list[str]], list[int]]:
    """The named columns of a CSV file as strings, plus each data row's 1-based line number."""
    with _open(path) as f:
        reader = csv.reader(f)
        try:
            header = [h.strip() for h in next(reader, [])]
            if not any(header):
                raise InputError(f"{path}: file is empty; expected a header row with {', '.join(required)}")
            missing = [c for c in required if c not in header]
            if missing:
                raise InputError(
                    f"{path}: line 1: missing column(s) {', '.join(missing)}; the file has {', '.join(header)}"
                )
            index = {c: header.index(c) for c in required + optional if c in header}
            columns: dict[str, list[str]] = {c: [] for c in index}
            lines: list[int] = []
            for row in reader:
                if not any(field.strip() for field in row):
                    continue  # blank line
                if len(row) != len(header):
                    raise InputError(
                        f"{path}: line {reader.line_num}: expected {len(header)} fields, found {len(row)}"
                    )
                for c, i in index.items():
                    columns[c].append(row[i])
                lines.append(reader.line_num)
        except (csv.Error, UnicodeDecodeError) as e:
            raise InputError(f"{path}: near line {reader.line_num + 1}: not readable as UTF-8 CSV ({e})") from None
    if not lines:
        raise InputError(f"{path}: no data rows after the header")
    return columns, lines


def _numbers(path: Path, column: str, values: list[str], lines: list[int]) -> np.ndarray:
    """Parse a column of numbers, naming the first bad row."""
    out = np.empty(len(values), np.float64)
    for i, v in enumerate(values):
        try:
            out[i] = float(v)
        except ValueError:
            raise InputError(f"{path}: line {lines[i]}: {column} is {v.strip()!r}, not a number") from None
        if not math.isfinite(out[i]):
            raise InputError(f"{path}: line {lines[i]}: {column} is {v.strip()!r}, not a finite number")
    return out


def _first_bad(mask: np.ndarray) -> int | None:
    bad = np.flatnonzero(mask)
    return int(bad[0]) if len(bad) else None


def _token_counts(path: Path, column: str, values: list[str], lines: list[int]) -> np.ndarray:
    """Parse a token-count column: whole numbers >= 1."""
    x = _numbers(path, column, values, lines)
    for mask, problem in (
        (x < 0, "is negative"),
        (x != np.floor(x), "is not a whole number of tokens"),
        (x == 0, "is 0; every request needs at least 1 token"),
    ):
        i = _first_bad(mask)
        if i is not None:
            raise InputError(f"{path}: line {lines[i]}: {column} {values[i].strip()!r} {problem}")
    return x.astype(np.int64)


def _check_times(path: Path, column: str, t: np.ndarray, raw: list[str], lines: list[int]) -> np.ndarray:
    """Arrival times must be sorted and >= 0: replaying an unsorted trace would silently reorder requests."""
    i = _first_bad(np.diff(t) < 0)
    if i is not None:
        raise InputError(
            f"{path}: line {lines[i + 1]}: {column} goes back in time ({raw[i + 1].strip()!r} after "
            f"{raw[i].strip()!r}); sort the file by arrival time"
        )
    i = _first_bad(t < 0)
    if i is not None:
        raise InputError(f"{path}: line {lines[i]}: {column} {raw[i].strip()!r} is negative")
    return t


def load_splitwise_csv(path: str | Path) -> TokenTrace:
    """Load a Vidur/Splitwise trace: ``num_prefill_tokens,num_decode_tokens``, optional ``arrived_at`` (s) and
    optional ``max_tokens`` (what each client declared; must be >= ``num_decode_tokens``)."""
    path = Path(path)
    cols, lines = _read_csv(path, ["num_prefill_tokens", "num_decode_tokens"], ["arrived_at", "max_tokens"])
    arrival_s = None
    if "arrived_at" in cols:
        raw = cols["arrived_at"]
        arrival_s = _check_times(path, "arrived_at", _numbers(path, "arrived_at", raw, lines), raw, lines)
    output = _token_counts(path, "num_decode_tokens", cols["num_decode_tokens"], lines)
    max_tokens = None
    if "max_tokens" in cols:
        max_tokens = _token_counts(path, "max_tokens", cols["max_tokens"], lines)
        short = np.flatnonzero(max_tokens < output)
        if len(short):
            raise InputError(f"{path}: line {lines[short[0]]}: max_tokens {max_tokens[short[0]]} is below "
                             f"num_decode_tokens {output[short[0]]} (generation stops at max_tokens)")
    return TokenTrace(
        path=path,
        prompt_tokens=_token_counts(path, "num_prefill_tokens", cols["num_prefill_tokens"], lines),
        output_tokens=output,
        arrival_s=arrival_s,
        max_tokens=max_tokens,
    )


def _parse_timestamps(path: Path, values: list[str], lines: list[int]) -> np.ndarray:
    """Seconds since the first row from ISO-like datetime strings such as ``2023-11-16 18:15:46.6805900``.

    Python's parser keeps microseconds, so a 7th fractional digit (100 ns) is dropped; the times are
    differences, so a time zone suffix is fine as long as every row has one or none does.
    """
    out = np.empty(len(values), np.float64)
    first: dt.datetime | None = None
    for i, v in enumerate(values):
        try:
            stamp = dt.datetime.fromisoformat(v.strip())
            if first is None:
                first = stamp
            out[i] = (stamp - first).total_seconds()
        except ValueError:
            raise InputError(
                f"{path}: line {lines[i]}: TIMESTAMP {v.strip()!r} is not a date-time like 2023-11-16 18:15:46.68"
            ) from None
        except TypeError:
            raise InputError(
                f"{path}: line {lines[i]}: TIMESTAMP {v.strip()!r} mixes time-zone-aware and naive times"
            ) from None
    return _check_times(path, "TIMESTAMP", out, values, lines)


def load_azure_csv(path: str | Path) -> TokenTrace:
    """Load an Azure LLM inference trace: ``TIMESTAMP,ContextTokens,GeneratedTokens``."""
    path = Path(path)
    cols, lines = _read_csv(path, ["TIMESTAMP", "ContextTokens", "GeneratedTokens"], [])
    return TokenTrace(
        path=path,
        prompt_tokens=_token_counts(path, "ContextTokens", cols["ContextTokens"], lines),
        output_tokens=_token_counts(path, "GeneratedTokens", cols["GeneratedTokens"], lines),
        arrival_s=_parse_timestamps(path, cols["TIMESTAMP"], lines),
    )


# --- ShareGPT -----------------------------------------------------------------------------------------


def estimate_tokens(text: str) -> int:
    """Token count estimate without a tokenizer: ``ceil(len(text) / 4)``, at least 1."""
    return max(1, -(-len(text) // CHARS_PER_TOKEN))


def hf_tokenizer_counter(tokenizer_json: str | Path) -> TokenCounter:
    """A token counter from a local Hugging Face ``tokenizer.json`` (needs the ``tokenizers`` package)."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise ConfigError(
            "counting tokens with a tokenizer.json needs the 'tokenizers' package: pip install tokenizers"
        ) from None
    path = Path(tokenizer_json)
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # the Rust side raises a bare Exception for any unreadable file
        raise InputError(f"{path}: not a readable tokenizer.json ({e})") from None
    return lambda text: len(tok.encode(text, add_special_tokens=False).ids)


def _turn_text(path: Path, record: int, turn: object, want: str) -> str | None:
    """The text of a turn if it is from ``want``; validates the turn's shape."""
    if not (isinstance(turn, dict) and isinstance(turn.get("from"), str) and isinstance(turn.get("value"), str)):
        raise InputError(f"{path}: record {record}: each conversation turn needs string 'from' and 'value'")
    return turn["value"] if turn["from"] == want else None


def load_sharegpt_json(path: str | Path, tokenizer: TokenCounter | str | Path | None = None,
                       all_turns: bool = False) -> TokenTrace:
    """Load ShareGPT conversations: the first human turn is the prompt, the next gpt turn the output.

    ``tokenizer`` is a ``str -> int`` counter, a path to a local ``tokenizer.json``, or ``None`` for the
    :func:`estimate_tokens` estimate. Conversations without a human turn followed by a non-empty gpt turn
    are skipped, as benchmark clients do; a file where none qualifies is an error. Records are numbered
    from 1 in error messages.

    With ``all_turns`` every human -> gpt exchange of a conversation is a row, in order (prompt = that human
    message, output = the reply; a conversation ends at its first exchange with an empty side), and
    ``session_id`` numbers the conversations: the multi-turn sessions of :mod:`rlserve.workload.prefixes`.
    """
    path = Path(path)
    count = tokenizer if callable(tokenizer) else (
        estimate_tokens if tokenizer is None else hf_tokenizer_counter(tokenizer)
    )
    with _open(path) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: line {e.lineno} column {e.colno}: invalid JSON ({e.msg})") from None
        except UnicodeDecodeError as e:
            raise InputError(f"{path}: byte {e.start}: not UTF-8 text") from None
    if not isinstance(data, list):
        raise InputError(f"{path}: expected a JSON list of conversations, found {type(data).__name__}")
    prompts: list[int] = []
    outputs: list[int] = []
    sessions: list[int] = []
    for record, item in enumerate(data, start=1):
        turns = item.get("conversations") if isinstance(item, dict) else None
        if not isinstance(turns, list):
            raise InputError(f"{path}: record {record}: expected an object with a 'conversations' list")
        prompt = None
        for turn in turns:
            if prompt is None:
                prompt = _turn_text(path, record, turn, "human")
                continue
            output = _turn_text(path, record, turn, "gpt")
            if output is None:
                continue
            if not (prompt.strip() and output.strip()):
                break
            prompts.append(max(1, int(count(prompt))))
            outputs.append(max(1, int(count(output))))
            sessions.append(record)
            if not all_turns:
                break
            prompt = None
    if not prompts:
        raise InputError(f"{path}: no conversation has a human turn followed by a non-empty gpt turn")
    return TokenTrace(path=path, prompt_tokens=np.array(prompts, np.int64), output_tokens=np.array(outputs, np.int64),
                      session_id=np.array(sessions, np.int64) if all_turns else None)
