"""Benchmark datasets: what each request sends. ``sample_dataset(config, rng) -> Dataset``.

The names and knobs are ``vllm bench serve``'s (``--dataset-name``): ``random`` (range ratios, fixed prefix),
``sharegpt``, ``sonnet``, ``burstgpt``, ``prefix_repetition``, ``custom`` (JSONL), ``hf`` (a local file or
directory: there is no hub here), ``timed_trace`` (a JSONL trace replayed at its own times), plus ours:
``splitwise`` and ``azure`` traces. Every dataset is a pure function of its file, its flags and ``rng`` (the
seed), so the same seed sends the same requests; a malformed file is one :class:`InputError` line naming the file
and the line or record.

Lengths come from :mod:`rlserve.workload` (length models, trace and ShareGPT loaders) where it has them, so the
benchmark and the simulator draw requests the same way. Datasets that know only token counts send prompts as
**token ids** (``/v1/completions`` accepts a list of ints), which gives exact prompt lengths without a tokenizer;
ids are drawn from ``[token_id_low, token_id_high)``, a range every real vocabulary and the test models'
2,048-token vocabulary contain. Text datasets (ShareGPT, sonnet, custom, hf) send their text; their token counts
come from ``--tokenizer`` when it names a local ``tokenizer.json`` (or a directory holding one), else from the
4-characters-per-token estimate, and the result records the server's own count from the usage chunk. The chat
endpoint needs text, so token-id prompts are spelled as words there (:func:`prompt_text`).
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rlserve.errors import ConfigError, InputError
from rlserve.workload import lengths, loaders


@dataclass(frozen=True)
class SampleRequest:
    """One request to send: a text or token-id prompt and the number of tokens to generate."""

    prompt: str | tuple[int, ...]
    prompt_tokens: int  # exact for token ids, counted or estimated for text
    output_tokens: int  # sent as max_tokens


@dataclass(frozen=True)
class Dataset:
    """Requests in send order, plus recorded arrival times when the source has them (trace replay)."""

    requests: list[SampleRequest]
    arrival_s: np.ndarray | None = None


@dataclass(frozen=True)
class DatasetConfig:
    """Which dataset and its knobs (``rlserve bench`` flags, named as in ``vllm bench serve``)."""

    name: str = "random"
    path: Path | None = None
    num_prompts: int = 1000
    tokenizer: Path | None = None
    """A local ``tokenizer.json`` or a directory with one: exact token counts for text datasets."""
    shuffle: bool = True
    """``--disable-shuffle`` turns it off (file order)."""
    oversample: bool = True
    """Repeat samples (seeded) when the file has fewer than ``num_prompts``; ``--no-oversample`` turns it off."""
    random_input_len: int = 1024
    random_output_len: int = 128
    random_range_ratio_input: float = 0.0
    """Input lengths uniform in ``[len * (1 - r), len * (1 + r)]``; 0 = fixed."""
    random_range_ratio_output: float = 0.0
    random_prefix_len: int = 0
    """Token ids every random request starts with (the same for all)."""
    prefix_repetition_prefix_len: int = 256
    prefix_repetition_suffix_len: int = 256
    prefix_repetition_num_prefixes: int = 10
    prefix_repetition_output_len: int = 128
    sharegpt_output_len: int | None = None
    """Override ShareGPT output lengths (default: the recorded answer's length)."""
    sonnet_input_len: int = 550
    sonnet_output_len: int = 150
    sonnet_prefix_len: int = 200
    custom_output_len: int = 256
    """Output tokens of custom requests; -1 = the file's ``output_tokens``."""
    hf_output_len: int | None = None
    hf_split: str | None = None
    timed_trace_label_timestamp: str = "timestamp"
    timed_trace_label_input_length: str = "input_length"
    timed_trace_label_output_length: str = "output_length"
    timed_trace_label_hash_ids: str = "hash_ids"
    timed_trace_chunk_hash_size: int = 16
    timed_trace_sec_multiplier: float = 1.0
    token_id_low: int = 100
    token_id_high: int = 1000

    def __post_init__(self) -> None:
        if self.num_prompts < 1:
            raise ConfigError(f"--num-prompts must be >= 1, got {self.num_prompts}")
        for flag, r in (("input", self.random_range_ratio_input), ("output", self.random_range_ratio_output)):
            if not 0.0 <= r < 1.0:
                raise ConfigError(f"--random-range-ratio ({flag}) must be in [0, 1), got {r}")
        counts = {"--random-input-len": self.random_input_len, "--random-output-len": self.random_output_len,
                  "--prefix-repetition-output-len": self.prefix_repetition_output_len,
                  "--prefix-repetition-num-prefixes": self.prefix_repetition_num_prefixes,
                  "--sonnet-input-len": self.sonnet_input_len, "--sonnet-output-len": self.sonnet_output_len,
                  "--timed-trace-chunk-hash-size": self.timed_trace_chunk_hash_size}
        for flag, v in counts.items():
            if v < 1:
                raise ConfigError(f"{flag} must be >= 1, got {v}")
        nonneg = {"--random-prefix-len": self.random_prefix_len, "--sonnet-prefix-len": self.sonnet_prefix_len,
                  "--prefix-repetition-prefix-len": self.prefix_repetition_prefix_len,
                  "--prefix-repetition-suffix-len": self.prefix_repetition_suffix_len}
        for flag, v in nonneg.items():
            if v < 0:
                raise ConfigError(f"{flag} must be >= 0, got {v}")
        if self.custom_output_len < 1 and self.custom_output_len != -1:
            raise ConfigError(f"--custom-output-len must be >= 1 or -1 (the file's), got {self.custom_output_len}")
        if not self.timed_trace_sec_multiplier > 0:
            raise ConfigError(f"--timed-trace-sec-multiplier must be > 0, got {self.timed_trace_sec_multiplier}")
        if not 0 <= self.token_id_low < self.token_id_high:
            raise ConfigError(f"token id range [{self.token_id_low}, {self.token_id_high}) is empty")


def parse_range_ratio(text: str) -> tuple[float, float]:
    """``--random-range-ratio``: one float for input and output, or JSON ``{"input": r, "output": r}`` (vLLM)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise ConfigError(f"--random-range-ratio takes a number or {{\"input\": r, \"output\": r}}, got {text!r}") \
            from None
    if isinstance(value, dict) and set(value) <= {"input", "output"}:
        return float(value.get("input", 0.0)), float(value.get("output", 0.0))
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value), float(value)
    raise ConfigError(f"--random-range-ratio takes a number or {{\"input\": r, \"output\": r}}, got {text!r}")


# --- helpers ---------------------------------------------------------------------------------------------------


def _ids(rng: np.random.Generator, cfg: DatasetConfig, n: int) -> tuple[int, ...]:
    return tuple(int(x) for x in rng.integers(cfg.token_id_low, cfg.token_id_high, n))


def _ranged(length: int, ratio: float) -> tuple[int, int]:
    return max(1, int(length * (1 - ratio))), max(1, int(length * (1 + ratio)))


def _need_path(cfg: DatasetConfig, what: str) -> Path:
    if cfg.path is None:
        raise ConfigError(f"--dataset-name {cfg.name} needs --dataset-path {what}")
    if not cfg.path.exists():
        raise InputError(f"{cfg.path}: no such file or directory")
    return cfg.path


def token_counter(cfg: DatasetConfig) -> loaders.TokenCounter:
    """``--tokenizer`` (a tokenizer.json or a directory with one) when given, else the 4-characters estimate."""
    if cfg.tokenizer is None:
        return loaders.estimate_tokens
    path = cfg.tokenizer / "tokenizer.json" if cfg.tokenizer.is_dir() else cfg.tokenizer
    if not path.is_file():
        raise ConfigError(f"--tokenizer {cfg.tokenizer}: no tokenizer.json there (only local tokenizers work here)")
    return loaders.hf_tokenizer_counter(path)


def _pick(items: Sequence[Any], cfg: DatasetConfig, rng: np.random.Generator) -> list[Any]:
    """``num_prompts`` of ``items``: shuffled unless ``--disable-shuffle``, oversampled (seeded) when short unless
    ``--no-oversample`` (then fewer requests are sent, as vLLM does)."""
    order = rng.permutation(len(items)) if cfg.shuffle else np.arange(len(items))
    chosen = [items[int(i)] for i in order[: cfg.num_prompts]]
    short = cfg.num_prompts - len(chosen)
    if short > 0 and cfg.oversample:
        chosen += [items[int(i)] for i in rng.integers(0, len(items), short)]
    return chosen


def _read_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line; one error line for a bad one."""
    rows: list[tuple[int, dict[str, Any]]] = []
    try:
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise InputError(f"{path}: line {lineno}: invalid JSON ({e.msg})") from None
                if not isinstance(obj, dict):
                    raise InputError(f"{path}: line {lineno}: expected a JSON object, found {type(obj).__name__}")
                rows.append((lineno, obj))
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: byte {e.start}: not UTF-8 text") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, expected a JSONL file") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror})") from None
    if not rows:
        raise InputError(f"{path}: no requests in the file")
    return rows


def _count(path: Path, lineno: int, obj: dict[str, Any], key: str, minimum: int = 1) -> int:
    v = obj.get(key)
    if isinstance(v, bool) or not isinstance(v, int | float) or v != int(v) or int(v) < minimum:
        raise InputError(f"{path}: line {lineno}: {key!r} must be an integer >= {minimum}, got {v!r}")
    return int(v)


# --- datasets --------------------------------------------------------------------------------------------------


def sample_random(cfg: DatasetConfig, rng: np.random.Generator) -> Dataset:
    """Random token-id prompts (a fixed ``--random-prefix-len`` prefix, then fixed or ranged lengths)."""
    n = cfg.num_prompts
    if cfg.random_range_ratio_input == 0.0 and cfg.random_range_ratio_output == 0.0:
        prompt, output = lengths.fixed(cfg.random_input_len, cfg.random_output_len, n)
    else:
        prompt, output = lengths.uniform(_ranged(cfg.random_input_len, cfg.random_range_ratio_input),
                                         _ranged(cfg.random_output_len, cfg.random_range_ratio_output), n, rng)
    prefix = _ids(rng, cfg, cfg.random_prefix_len)
    return Dataset([SampleRequest(prefix + _ids(rng, cfg, int(p)), len(prefix) + int(p), int(o))
                    for p, o in zip(prompt, output, strict=True)])


def sample_prefix_repetition(cfg: DatasetConfig, rng: np.random.Generator) -> Dataset:
    """``num_prefixes`` shared prefixes, ``num_prompts // num_prefixes`` requests each (prefix + own suffix)."""
    per = cfg.num_prompts // cfg.prefix_repetition_num_prefixes
    if per == 0:
        raise ConfigError(f"--num-prompts ({cfg.num_prompts}) must be >= --prefix-repetition-num-prefixes "
                          f"({cfg.prefix_repetition_num_prefixes})")
    reqs = []
    for _ in range(cfg.prefix_repetition_num_prefixes):
        prefix = _ids(rng, cfg, cfg.prefix_repetition_prefix_len)
        for _ in range(per):
            prompt = prefix + _ids(rng, cfg, cfg.prefix_repetition_suffix_len)
            reqs.append(SampleRequest(prompt, len(prompt), cfg.prefix_repetition_output_len))
    order = rng.permutation(len(reqs)) if cfg.shuffle else range(len(reqs))
    return Dataset([reqs[int(i)] for i in order])


def _trace(cfg: DatasetConfig, load: Callable[[Path], loaders.TokenTrace]) -> Dataset:
    """Replay a trace file in order: its lengths, and its arrival times rebased to 0 when it has them."""
    trace = load(_need_path(cfg, "FILE.csv"))
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
    path = _need_path(cfg, "FILE.json")
    texts: list[str] = []
    count = token_counter(cfg)

    def capture(text: str) -> int:
        texts.append(text)
        return count(text)

    trace = loaders.load_sharegpt_json(path, tokenizer=capture)
    prompts = texts[0::2]
    out = cfg.sharegpt_output_len
    return Dataset([SampleRequest(prompts[i], int(trace.prompt_tokens[i]),
                                  int(out if out is not None else trace.output_tokens[i]))
                    for i in _pick(range(len(trace)), cfg, rng)])


def sample_sonnet(cfg: DatasetConfig, rng: np.random.Generator) -> Dataset:
    """Lines of a poem (``--dataset-path`` text file): a shared prefix of the first lines worth
    ``--sonnet-prefix-len`` tokens, then randomly drawn lines up to ``--sonnet-input-len`` tokens."""
    path = _need_path(cfg, "FILE.txt")
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except (UnicodeDecodeError, IsADirectoryError, OSError) as e:
        raise InputError(f"{path}: not a readable UTF-8 text file ({type(e).__name__})") from None
    if not lines:
        raise InputError(f"{path}: no non-empty lines")
    count = token_counter(cfg)
    if cfg.sonnet_prefix_len >= cfg.sonnet_input_len:
        raise ConfigError(f"--sonnet-prefix-len ({cfg.sonnet_prefix_len}) must be below --sonnet-input-len "
                          f"({cfg.sonnet_input_len})")
    prefix: list[str] = []
    used = 0
    for ln in lines:
        if used + count(ln) > cfg.sonnet_prefix_len:
            break
        prefix.append(ln)
        used += count(ln)
    reqs = []
    for _ in range(cfg.num_prompts):
        body, tokens = list(prefix), used
        while tokens < cfg.sonnet_input_len:
            ln = lines[int(rng.integers(0, len(lines)))]
            body.append(ln)
            tokens += count(ln)
        text = "\n".join(body)
        reqs.append(SampleRequest(text, count(text), cfg.sonnet_output_len))
    return Dataset(reqs)


BURSTGPT_COLUMNS = ("Model", "Request tokens", "Response tokens")


def sample_burstgpt(cfg: DatasetConfig, rng: np.random.Generator) -> Dataset:
    """BurstGPT CSV: GPT-4 rows with a positive response length (as vLLM keeps them), sampled by the seed;
    random token-id prompts of the recorded request length."""
    path = _need_path(cfg, "BurstGPT.csv")
    rows: list[tuple[int, int]] = []
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            missing = [c for c in BURSTGPT_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise InputError(f"{path}: not a BurstGPT CSV (missing columns {', '.join(missing)})")
            for lineno, row in enumerate(reader, start=2):
                try:
                    req, resp = int(float(row["Request tokens"])), int(float(row["Response tokens"]))
                except (TypeError, ValueError):
                    raise InputError(f"{path}: line {lineno}: token counts must be numbers") from None
                if row["Model"] == "GPT-4" and resp > 0 and req > 0:
                    rows.append((req, resp))
    except (UnicodeDecodeError, IsADirectoryError, OSError, csv.Error) as e:
        raise InputError(f"{path}: not a readable CSV file ({type(e).__name__})") from None
    if not rows:
        raise InputError(f"{path}: no GPT-4 row with positive request and response tokens")
    return Dataset([SampleRequest(_ids(rng, cfg, p), p, o) for p, o in _pick(rows, cfg, rng)])


def sample_custom(cfg: DatasetConfig, rng: np.random.Generator) -> Dataset:
    """JSONL, one ``{"prompt": str, "output_tokens": int (optional)}`` per line (vLLM's custom format)."""
    path = _need_path(cfg, "FILE.jsonl")
    count = token_counter(cfg)
    items = []
    for lineno, obj in _read_jsonl(path):
        prompt = obj.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise InputError(f"{path}: line {lineno}: needs a non-empty string 'prompt'")
        if cfg.custom_output_len == -1:
            out = _count(path, lineno, obj, "output_tokens")
        else:
            out = cfg.custom_output_len
        items.append(SampleRequest(prompt, count(prompt), out))
    return Dataset(_pick(items, cfg, rng))


HF_PROMPT_COLUMNS = ("prompt", "question", "instruction", "input", "text", "problem")
HF_CHAT_COLUMNS = ("conversations", "messages", "conversation")
HF_SUFFIXES = (".parquet", ".jsonl", ".json")


def _hf_files(path: Path, split: str | None) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.suffix in HF_SUFFIXES and p.is_file())
    if split:
        files = [p for p in files if split in p.name]
    if not files:
        raise InputError(f"{path}: no {'/'.join(HF_SUFFIXES)} files{f' for split {split!r}' if split else ''} "
                         "(hf datasets must be downloaded: this client does not reach the hub)")
    return files


def _hf_rows(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq
        try:
            return list(pq.read_table(path).to_pylist())
        except Exception as e:  # pyarrow raises ArrowInvalid/OSError subclasses for any unreadable file
            raise InputError(f"{path}: not a readable Parquet file ({type(e).__name__})") from None
    if path.suffix == ".jsonl":
        return [obj for _, obj in _read_jsonl(path)]
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, OSError) as e:
        raise InputError(f"{path}: not a readable JSON file ({type(e).__name__})") from None
    if not isinstance(data, list):
        raise InputError(f"{path}: expected a JSON list of records")
    return data


def _hf_prompt(row: Any) -> tuple[str, str | None] | None:
    """(prompt, reference answer or None) from a record with a prompt-like or a chat column."""
    if not isinstance(row, dict):
        return None
    for col in HF_PROMPT_COLUMNS:
        if isinstance(row.get(col), str) and row[col].strip():
            answer = next((row[c] for c in ("output", "response", "answer", "completion", "solution")
                           if isinstance(row.get(c), str)), None)
            return row[col], answer
    for col in HF_CHAT_COLUMNS:
        turns = row.get(col)
        if isinstance(turns, list):
            texts = [(t.get("role") or t.get("from"), t.get("content") or t.get("value"))
                     for t in turns if isinstance(t, dict)]
            user = next((i for i, (r, c) in enumerate(texts) if r in ("user", "human") and isinstance(c, str)), None)
            if user is not None:
                nxt = texts[user + 1][1] if user + 1 < len(texts) else None
                return str(texts[user][1]), nxt if isinstance(nxt, str) else None
    return None


def sample_hf(cfg: DatasetConfig, rng: np.random.Generator) -> Dataset:
    """A Hugging Face dataset already on disk (Parquet / JSONL / JSON file, or a snapshot directory filtered by
    ``--hf-split``): the first prompt-like column (``prompt``, ``question``, ``instruction``...) or the first user
    turn of a chat column; outputs from ``--hf-output-len``, else the reference answer's length, else 256."""
    path = _need_path(cfg, "FILE_OR_DIR (a local copy)")
    count = token_counter(cfg)
    items = []
    for f in _hf_files(path, cfg.hf_split):
        for row in _hf_rows(f):
            found = _hf_prompt(row)
            if found is None:
                continue
            prompt, answer = found
            out = cfg.hf_output_len or (count(answer) if answer else 256)
            items.append(SampleRequest(prompt, count(prompt), out))
    if not items:
        raise InputError(f"{path}: no record has a prompt column ({', '.join(HF_PROMPT_COLUMNS)}) or a chat "
                         f"column ({', '.join(HF_CHAT_COLUMNS)})")
    return Dataset(_pick(items, cfg, rng))


def _hash_block(cfg: DatasetConfig, seed: int, hash_id: int, size: int) -> tuple[int, ...]:
    """The token ids a trace's hash id stands for: the same id gives the same block (prefix caching works as in
    the traced system), derived from the seed with a stable hash (Python's ``hash`` is salted per process)."""
    digest = hashlib.blake2b(f"{seed}:{hash_id}".encode(), digest_size=8).digest()
    return _ids(np.random.default_rng(int.from_bytes(digest, "little")), cfg, size)


def sample_timed_trace(cfg: DatasetConfig, rng: np.random.Generator) -> Dataset:
    """A JSONL trace (Mooncake-style): timestamp, input and output length, and optional block hash ids; sent at
    the trace's own times (x ``--timed-trace-sec-multiplier``), in file order."""
    path = _need_path(cfg, "FILE.jsonl")
    seed = int(rng.integers(0, 2**31))
    reqs, times = [], []
    for lineno, obj in _read_jsonl(path)[: cfg.num_prompts]:
        t = obj.get(cfg.timed_trace_label_timestamp)
        if isinstance(t, bool) or not isinstance(t, int | float):
            raise InputError(f"{path}: line {lineno}: {cfg.timed_trace_label_timestamp!r} must be a number")
        n_in = _count(path, lineno, obj, cfg.timed_trace_label_input_length)
        n_out = _count(path, lineno, obj, cfg.timed_trace_label_output_length)
        hashes = obj.get(cfg.timed_trace_label_hash_ids) or []
        if not isinstance(hashes, list) or not all(isinstance(h, int) for h in hashes):
            raise InputError(f"{path}: line {lineno}: {cfg.timed_trace_label_hash_ids!r} must be a list of integers")
        prompt: tuple[int, ...] = ()
        for h in hashes:
            if len(prompt) >= n_in:
                break
            prompt += _hash_block(cfg, seed, h, min(cfg.timed_trace_chunk_hash_size, n_in - len(prompt)))
        prompt += _ids(rng, cfg, n_in - len(prompt))
        reqs.append(SampleRequest(prompt, n_in, n_out))
        times.append(float(t) * cfg.timed_trace_sec_multiplier)
    arr = np.asarray(times)
    if np.any(np.diff(arr) < 0):
        raise InputError(f"{path}: timestamps must not decrease (line order is send order)")
    return Dataset(reqs, arr - arr[0])


DATASETS: dict[str, Callable[[DatasetConfig, np.random.Generator], Dataset]] = {
    "random": sample_random,
    "sharegpt": sample_sharegpt,
    "sonnet": sample_sonnet,
    "burstgpt": sample_burstgpt,
    "prefix_repetition": sample_prefix_repetition,
    "custom": sample_custom,
    "hf": sample_hf,
    "timed_trace": sample_timed_trace,
    "splitwise": lambda cfg, rng: _trace(cfg, loaders.load_splitwise_csv),
    "azure": lambda cfg, rng: _trace(cfg, loaders.load_azure_csv),
}


def sample_dataset(cfg: DatasetConfig, rng: np.random.Generator) -> Dataset:
    """Build the dataset named by ``cfg.name`` (one of :data:`DATASETS`)."""
    if cfg.name not in DATASETS:
        raise ConfigError(f"unknown --dataset-name {cfg.name!r}; choose one of {', '.join(DATASETS)}")
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
