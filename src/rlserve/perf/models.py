"""Model catalogue by architecture numbers (from each model's public config.json), and a config.json loader.

Only dense decoder-only transformers with a gated (SwiGLU) MLP are modelled — the Llama family and its
relatives. Parameter counts are derived from the architecture, so a catalogue entry and a loaded config of the
same model give identical results.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlserve.errors import ConfigError, InputError


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A dense decoder-only transformer, as the performance model sees it."""

    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int  # per branch of the gated MLP (gate and up each have this width)
    vocab_size: int
    dtype_bytes: int = 2
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 4096

    @property
    def q_dim(self) -> int:
        """Width of the query projection (heads x head_dim)."""
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """Width of each of the key and value projections."""
        return self.num_kv_heads * self.head_dim

    @property
    def linear_params_per_layer(self) -> int:
        """Weights of one layer's matmuls: QKV, output projection, gate+up, down."""
        h = self.hidden_size
        return h * (self.q_dim + 2 * self.kv_dim) + self.q_dim * h + 3 * h * self.intermediate_size

    @property
    def num_params(self) -> int:
        """All parameters (embedding, layers, norms, LM head unless tied)."""
        h = self.hidden_size
        embed = self.vocab_size * h
        per_layer = self.linear_params_per_layer + 2 * h
        return embed * (1 if self.tie_word_embeddings else 2) + self.num_layers * per_layer + h

    @property
    def kv_bytes_per_token(self) -> int:
        """KV-cache bytes one token occupies over all layers (whole model, before tensor-parallel sharding)."""
        return 2 * self.num_layers * self.kv_dim * self.dtype_bytes


def _spec(name: str, layers: int, hidden: int, heads: int, kv_heads: int, inter: int, vocab: int,
          max_pos: int) -> ModelSpec:
    return ModelSpec(name=name, num_layers=layers, hidden_size=hidden, num_heads=heads, num_kv_heads=kv_heads,
                     head_dim=hidden // heads, intermediate_size=inter, vocab_size=vocab,
                     max_position_embeddings=max_pos)


# Values of each model's config.json on the Hugging Face hub (docs/perf_model.md lists the repositories).
_MODELS: dict[str, ModelSpec] = {
    m.name: m for m in (
        _spec("llama-2-7b", 32, 4096, 32, 32, 11008, 32000, 4096),
        _spec("llama-2-13b", 40, 5120, 40, 40, 13824, 32000, 4096),
        _spec("llama-2-70b", 80, 8192, 64, 8, 28672, 32000, 4096),
        _spec("llama-3-8b", 32, 4096, 32, 8, 14336, 128256, 8192),
        _spec("llama-3-70b", 80, 8192, 64, 8, 28672, 128256, 8192),
        _spec("codellama-34b", 48, 8192, 64, 8, 22016, 32000, 16384),
        # Qwen-7B (v1) writes intermediate_size=22016 for the *sum* of its two MLP branches (11008 each).
        _spec("qwen-7b", 32, 4096, 32, 32, 11008, 151936, 8192),
        _spec("mistral-7b", 32, 4096, 32, 8, 14336, 32000, 32768),
    )
}

_MODEL_ALIASES = {
    "llama-2-7b-hf": "llama-2-7b", "llama-2-7b-chat-hf": "llama-2-7b", "llama2-7b": "llama-2-7b",
    "llama-2-13b-hf": "llama-2-13b", "llama-2-13b-chat-hf": "llama-2-13b", "llama2-13b": "llama-2-13b",
    "llama-2-70b-hf": "llama-2-70b", "llama-2-70b-chat-hf": "llama-2-70b", "llama2-70b": "llama-2-70b",
    "meta-llama-3-8b": "llama-3-8b", "meta-llama-3-8b-instruct": "llama-3-8b", "llama3-8b": "llama-3-8b",
    "meta-llama-3-70b": "llama-3-70b", "meta-llama-3-70b-instruct": "llama-3-70b", "llama3-70b": "llama-3-70b",
    "codellama-34b-hf": "codellama-34b", "codellama-34b-instruct-hf": "codellama-34b",
    "qwen-7b-chat": "qwen-7b",
    "mistral-7b-v0.1": "mistral-7b", "mistral-7b-instruct-v0.1": "mistral-7b",
}


def get_model(name: str) -> ModelSpec:
    """The catalogue entry for ``name`` (case-insensitive; Hugging Face ids like 'meta-llama/Llama-2-7b-hf' work)."""
    key = name.strip().lower().replace("_", "-").rsplit("/", 1)[-1]
    key = _MODEL_ALIASES.get(key, key)
    try:
        return _MODELS[key]
    except KeyError:
        raise ConfigError(
            f"unknown model {name!r}; known: {', '.join(sorted(_MODELS))} (or give a path to a config.json)"
        ) from None


def model_names() -> list[str]:
    """Canonical names of the catalogued models."""
    return sorted(_MODELS)


# vLLM's dtype="auto" serves float32 checkpoints in 16 bits, so every float dtype below costs 2 bytes.
_DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "half": 2, "float32": 2, "float": 2}
_MOE_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_intermediate_size")


def load_hf_config(path: str | Path) -> ModelSpec:
    """Build a ModelSpec from a Hugging Face ``config.json`` of a Llama-like model.

    Required: hidden_size, num_hidden_layers, num_attention_heads, intermediate_size, vocab_size.
    Optional: num_key_value_heads (default: attention heads, i.e. no GQA), head_dim, torch_dtype/dtype,
    tie_word_embeddings, max_position_embeddings. Raises InputError naming the file and what is wrong.
    """
    p = Path(path)
    try:
        cfg: Any = json.loads(p.read_text())
    except FileNotFoundError:
        raise InputError(f"{p}: no such model config file; give the path of a Hugging Face config.json") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{p}: cannot read model config ({exc}); check the path and permissions") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{p}: not valid JSON (line {exc.lineno}: {exc.msg}); fix or re-download it") from None
    if not isinstance(cfg, dict):
        raise InputError(f"{p}: a model config must be a JSON object, got {type(cfg).__name__}")
    moe = [k for k in _MOE_KEYS if cfg.get(k)]
    if moe:
        raise InputError(f"{p}: mixture-of-experts models ({moe[0]}) are not modelled; use a dense model config")
    required = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
    missing = [k for k in required if k not in cfg]
    if missing:
        raise InputError(f"{p}: missing field(s) {', '.join(missing)}; a Llama-like config.json has all of "
                         f"{', '.join(required)}")

    def positive_int(key: str, default: int | None = None) -> int:
        v = cfg.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise InputError(f"{p}: field {key} must be a positive integer, got {v!r}")
        return v

    hidden = positive_int("hidden_size")
    heads = positive_int("num_attention_heads")
    kv_heads = positive_int("num_key_value_heads", heads)
    if "head_dim" in cfg and cfg["head_dim"] is not None:
        head_dim = positive_int("head_dim")
    elif hidden % heads:
        raise InputError(f"{p}: hidden_size {hidden} is not divisible by num_attention_heads {heads}; "
                         "add head_dim to the config")
    else:
        head_dim = hidden // heads
    if heads % kv_heads:
        raise InputError(f"{p}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}")
    inter = positive_int("intermediate_size")
    if cfg.get("model_type") == "qwen":  # Qwen v1 stores the two MLP branches' total width
        inter //= 2
    dtype = cfg.get("torch_dtype", cfg.get("dtype", "bfloat16"))
    if dtype not in _DTYPE_BYTES:
        raise InputError(f"{p}: unsupported torch_dtype {dtype!r}; expected one of {', '.join(_DTYPE_BYTES)}")
    name = str(cfg.get("_name_or_path") or p.parent.name or p.stem)
    return ModelSpec(
        name=name, num_layers=positive_int("num_hidden_layers"), hidden_size=hidden, num_heads=heads,
        num_kv_heads=kv_heads, head_dim=head_dim, intermediate_size=inter, vocab_size=positive_int("vocab_size"),
        dtype_bytes=_DTYPE_BYTES[dtype], tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        max_position_embeddings=positive_int("max_position_embeddings", 4096),
    )
