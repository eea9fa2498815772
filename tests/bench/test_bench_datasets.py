import json
from pathlib import Path

import numpy as np
import pytest

from rlserve.bench.datasets import DatasetConfig, prompt_text, sample_dataset
from rlserve.errors import ConfigError, InputError

SPLITWISE = Path("/work/shared/traces/splitwise_conv.csv")


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_random_fixed_lengths_and_token_range():
    ds = sample_dataset(DatasetConfig(num_prompts=5, random_input_len=40, random_output_len=7), rng())
    assert len(ds.requests) == 5 and ds.arrival_s is None
    for r in ds.requests:
        assert isinstance(r.prompt, tuple) and len(r.prompt) == r.prompt_tokens == 40 and r.output_tokens == 7
        assert all(100 <= t < 1000 for t in r.prompt)


def test_random_ranged_lengths_are_seeded():
    cfg = DatasetConfig(num_prompts=200, random_input_len=100, random_output_len=10, random_range_ratio_input=0.5,
                        random_range_ratio_output=0.5)
    a, b = sample_dataset(cfg, rng(1)), sample_dataset(cfg, rng(1))
    assert a == b
    p = np.array([r.prompt_tokens for r in a.requests])
    assert p.min() >= 50 and p.max() <= 150 and len(set(p)) > 10


def test_prefix_repetition_groups_share_their_prefix():
    cfg = DatasetConfig(name="prefix_repetition", num_prompts=50, prefix_repetition_prefix_len=16,
                        prefix_repetition_num_prefixes=3, prefix_repetition_suffix_len=4)
    ds = sample_dataset(cfg, rng())
    assert len(ds.requests) == 48  # 50 // 3 per prefix, as vLLM
    prefixes = {r.prompt[:16] for r in ds.requests}
    assert len(prefixes) == 3
    assert all(r.prompt_tokens == 20 for r in ds.requests)


def test_splitwise_trace_in_order_with_rebased_times():
    ds = sample_dataset(DatasetConfig(name="splitwise", path=SPLITWISE, num_prompts=10), rng())
    head = SPLITWISE.read_text().splitlines()[:11]
    cols = head[0].split(",")
    rows = [dict(zip(cols, line.split(","), strict=True)) for line in head[1:]]
    assert [r.prompt_tokens for r in ds.requests] == [int(row["num_prefill_tokens"]) for row in rows]
    assert [r.output_tokens for r in ds.requests] == [int(row["num_decode_tokens"]) for row in rows]
    assert ds.arrival_s is not None and ds.arrival_s[0] == 0.0 and np.all(np.diff(ds.arrival_s) >= 0)


def test_sharegpt_sends_the_human_turn_text(tmp_path):
    data = [
        {"conversations": [{"from": "human", "value": "first question here"}, {"from": "gpt", "value": "a" * 40}]},
        {"conversations": [{"from": "gpt", "value": "no human turn"}]},
        {"conversations": [{"from": "human", "value": "second one"}, {"from": "gpt", "value": "b" * 8}]},
    ]
    path = tmp_path / "sg.json"
    path.write_text(json.dumps(data))
    ds = sample_dataset(DatasetConfig(name="sharegpt", path=path, num_prompts=10), rng())
    by_text = {r.prompt: r for r in ds.requests}
    assert set(by_text) == {"first question here", "second one"}
    assert by_text["first question here"].output_tokens == 10  # 40 chars / 4
    assert by_text["second one"].output_tokens == 2
    fixed = sample_dataset(DatasetConfig(name="sharegpt", path=path, sharegpt_output_len=5), rng())
    assert {r.output_tokens for r in fixed.requests} == {5}


def test_bad_inputs():
    with pytest.raises(ConfigError, match="unknown --dataset-name"):
        sample_dataset(DatasetConfig(name="nope"), rng())
    with pytest.raises(ConfigError, match="--dataset-path"):
        sample_dataset(DatasetConfig(name="azure"), rng())
    with pytest.raises(ConfigError):
        DatasetConfig(random_range_ratio_input=1.5)
    with pytest.raises(InputError):
        sample_dataset(DatasetConfig(name="sharegpt", path=Path("/nonexistent.json")), rng())


def test_prompt_text_spells_ids_as_words():
    assert prompt_text("hello") == "hello"
    text = prompt_text((1, 2, 3))
    assert len(text.split()) == 3
