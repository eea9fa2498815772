"""Generate a small random-weight Llama model directory that `vllm serve` can load.

There is no model hub here, so tests and benchmarks build their model locally: a config.json, random
weights in model.safetensors, and a BPE tokenizer trained on generated text (tokenizer.json +
tokenizer_config.json with a chat template, so /v1/chat/completions works). Everything is seeded, so the
same arguments give byte-identical files.

Run it with the vLLM virtualenv's interpreter (it needs torch, safetensors and tokenizers)::

    .cache/vllm-venv/bin/python scripts/make_tiny_model.py --out /tmp/tiny-llama
    .cache/vllm-venv/bin/python scripts/make_tiny_model.py --out /tmp/kv-llama --preset large

Presets:
  tiny   ~0.8 M parameters, KV cache 1 KiB/token: starts fast, generates thousands of tokens/s on one core.
  large  ~22 M parameters, KV cache 12 KiB/token: each decode step costs milliseconds, so requests overlap,
         stay resident long enough for a 0.5 s /metrics scrape to see them, and a small
         `--num-gpu-blocks-override` makes vLLM preempt.

The output head is scaled so logits are far from uniform and the rows of the special tokens are zero: a
random model then almost never samples end-of-sequence, so `max_tokens` decides the output length (clients
may still pass `ignore_eos`). Every other token decodes to non-empty text (no byte-fallback pieces), which
keeps per-token streaming timings meaningful.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>")
UNK_ID, BOS_ID, EOS_ID, PAD_ID = range(len(SPECIAL_TOKENS))

# Role markers are plain text, not special tokens: the template only has to be stable and parseable.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

# Enough distinct words for a BPE with a couple of thousand merges; the corpus is sampled from them.
WORDS = (
    "the of and to in is was for on that with as by at from his her they this which are be or an had "
    "not but what all were when we there can more if no out so said who up its about into than them "
    "time only could new some these two may first then do any like my now over such our man me even "
    "most made after also did many before must through back years where much your way well down should "
    "because each just those people how too little state good very make world still own see men work "
    "long get here between both life being under never day same another know while last might us great "
    "old year off come since against go came right used take three request server token cache block "
    "queue latency energy power policy router replica batch prompt decode prefill memory kernel model "
    "serving throughput schedule preempt clock watt joule second minute hour metric trace monitor "
    "router-proxy gpu cpu kv vllm llama attention layer head vector matrix tensor gradient reward agent "
    "action state observation episode value advantage entropy ratio clip update learn train evaluate "
    "0 1 2 3 4 5 6 7 8 9 10 16 32 64 128 256 512 1024 2048 , . ; : ? ! ( ) [ ] { } - + * / = % # @ & "
    "' \" < > | _ ~"
).split()
ALPHABET = [chr(c) for c in range(32, 127)]


@dataclass(frozen=True)
class Preset:
    """Shape of one generated model; head_dim 64 is supported by vLLM's CPU attention backend."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int


PRESETS = {
    "tiny": Preset(hidden_size=128, num_layers=2, num_heads=2, num_kv_heads=2, intermediate_size=256,
                   vocab_size=2048),
    "large": Preset(hidden_size=512, num_layers=6, num_heads=8, num_kv_heads=8, intermediate_size=1536,
                    vocab_size=2048),
}
HEAD_DIM = 64
MAX_POSITION = 4096
LOGIT_STD = 3.0  # a peaked next-token distribution, so the zeroed special tokens are (almost) never sampled


def make_corpus(rng: np.random.Generator, num_lines: int = 6000) -> list[str]:
    """Sentences of English and made-up words: deterministic tokenizer training text, no external data.

    The made-up words (random syllable strings, some capitalised) give BPE enough distinct pieces to
    reach a vocabulary of a couple of thousand tokens.
    """
    syllables = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"] + ["th", "st", "ng", "qu", "x"]
    made_up = ["".join(rng.choice(syllables, size=int(rng.integers(2, 5)))) for _ in range(3000)]
    made_up = [w.capitalize() if i % 5 == 0 else w for i, w in enumerate(made_up)]
    words = list(WORDS) + made_up
    # Zipf-like frequencies, as in real text, so frequent words become single tokens first.
    weights = 1.0 / np.arange(1, len(words) + 1)
    weights /= weights.sum()
    lines = []
    for _ in range(num_lines):
        length = int(rng.integers(4, 24))
        lines.append(" ".join(words[i] for i in rng.choice(len(words), size=length, p=weights)))
    return lines


def train_tokenizer(vocab_size: int, rng: np.random.Generator) -> Tokenizer:
    """A Metaspace BPE (SentencePiece-like): every non-special token is a non-empty printable string."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=ALPHABET + ["▁"],
        limit_alphabet=len(ALPHABET) + 1,
        show_progress=False,
    )
    tokenizer.train_from_iterator(make_corpus(rng), trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", BOS_ID)]
    )
    return tokenizer


def random_weights(preset: Preset, vocab_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Llama tensors under Hugging Face names, normal(0, 0.02) like a fresh `LlamaForCausalLM`."""

    def normal(*shape: int, std: float = 0.02) -> torch.Tensor:
        return (torch.randn(*shape, generator=generator) * std).to(torch.bfloat16)

    def ones(n: int) -> torch.Tensor:
        return torch.ones(n, dtype=torch.bfloat16)

    h, kv = preset.hidden_size, preset.num_kv_heads * HEAD_DIM
    tensors = {"model.embed_tokens.weight": normal(vocab_size, h, std=1.0), "model.norm.weight": ones(h)}
    for i in range(preset.num_layers):
        p = f"model.layers.{i}."
        tensors |= {
            p + "self_attn.q_proj.weight": normal(preset.num_heads * HEAD_DIM, h),
            p + "self_attn.k_proj.weight": normal(kv, h),
            p + "self_attn.v_proj.weight": normal(kv, h),
            p + "self_attn.o_proj.weight": normal(h, preset.num_heads * HEAD_DIM),
            p + "mlp.gate_proj.weight": normal(preset.intermediate_size, h),
            p + "mlp.up_proj.weight": normal(preset.intermediate_size, h),
            p + "mlp.down_proj.weight": normal(h, preset.intermediate_size),
            p + "input_layernorm.weight": ones(h),
            p + "post_attention_layernorm.weight": ones(h),
        }
    # The final RMSNorm output has unit scale per element, so std LOGIT_STD/sqrt(h) gives logits of std ~3.
    lm_head = normal(vocab_size, h, std=LOGIT_STD / math.sqrt(h))
    lm_head[: len(SPECIAL_TOKENS)] = 0
    tensors["lm_head.weight"] = lm_head
    return tensors


def llama_config(preset: Preset, vocab_size: int) -> dict[str, object]:
    """config.json for `LlamaForCausalLM`, the architecture vLLM's CPU backend supports best."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": preset.hidden_size,
        "intermediate_size": preset.intermediate_size,
        "num_hidden_layers": preset.num_layers,
        "num_attention_heads": preset.num_heads,
        "num_key_value_heads": preset.num_kv_heads,
        "head_dim": HEAD_DIM,
        "hidden_act": "silu",
        "max_position_embeddings": MAX_POSITION,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "vocab_size": vocab_size,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "pad_token_id": PAD_ID,
        "dtype": "bfloat16",
    }


def tokenizer_config() -> dict[str, object]:
    """tokenizer_config.json: fast tokenizer, special tokens, and the chat template."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
        "model_max_length": MAX_POSITION,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }


def write_model(out_dir: Path, preset_name: str, seed: int) -> Path:
    """Write the complete model directory and return it."""
    preset = PRESETS[preset_name]
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(preset.vocab_size, np.random.default_rng(seed))
    # BPE may stop short of the requested size on a small corpus; the model must match the real vocab.
    vocab_size = tokenizer.get_vocab_size()
    tokenizer.save(str(out_dir / "tokenizer.json"))
    generator = torch.Generator().manual_seed(seed)
    save_file(random_weights(preset, vocab_size, generator), str(out_dir / "model.safetensors"),
              metadata={"format": "pt"})
    files = {
        "config.json": llama_config(preset, vocab_size),
        "tokenizer_config.json": tokenizer_config(),
        "special_tokens_map.json": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                                    "pad_token": "<pad>"},
        "generation_config.json": {"bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "pad_token_id": PAD_ID},
    }
    for name, content in files.items():
        (out_dir / name).write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="directory to write (created if missing)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = write_model(args.out, args.preset, args.seed)
    print(f"wrote {args.preset} Llama model to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
