import json
from pathlib import Path

import numpy as np
import pytest

from rlserve.bench.datasets import DatasetConfig, parse_range_ratio, prompt_text, sample_dataset
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


def test_random_prefix_and_separate_range_ratios():
    cfg = DatasetConfig(num_prompts=50, random_input_len=20, random_output_len=10, random_prefix_len=5,
                        random_range_ratio_input=0.5, random_range_ratio_output=0.0)
    ds = sample_dataset(cfg, rng(2))
    assert len({r.prompt[:5] for r in ds.requests}) == 1  # one fixed prefix for every request
    assert {r.output_tokens for r in ds.requests} == {10}
    assert all(15 <= r.prompt_tokens <= 35 and r.prompt_tokens == len(r.prompt) for r in ds.requests)
    assert parse_range_ratio("0.25") == (0.25, 0.25)
    assert parse_range_ratio('{"input": 0.1, "output": 0.3}') == (0.1, 0.3)
    with pytest.raises(ConfigError):
        parse_range_ratio('{"inputs": 0.1}')


def test_sonnet_shares_its_prefix_and_fills_the_length(tmp_path):
    poem = tmp_path / "sonnet.txt"
    poem.write_text("\n".join(f"line number {i} of the poem" for i in range(40)))  # 7 tokens a line (estimate)
    cfg = DatasetConfig(name="sonnet", path=poem, num_prompts=20, sonnet_input_len=100, sonnet_prefix_len=30,
                        sonnet_output_len=9)
    a, b = sample_dataset(cfg, rng(4)), sample_dataset(cfg, rng(4))
    assert a == b and len(a.requests) == 20
    heads = {r.prompt.split("\n")[:4] == [f"line number {i} of the poem" for i in range(4)] for r in a.requests}
    assert heads == {True}
    # lines are added until their counts reach the input length; the joined text is counted again (newlines merge)
    assert all(isinstance(r.prompt, str) and 90 <= r.prompt_tokens <= 110 and r.output_tokens == 9
               for r in a.requests)
    with pytest.raises(InputError, match="no non-empty lines"):
        (tmp_path / "empty.txt").write_text("\n\n")
        sample_dataset(DatasetConfig(name="sonnet", path=tmp_path / "empty.txt"), rng())


def test_burstgpt_keeps_gpt4_rows_with_answers(tmp_path):
    path = tmp_path / "burst.csv"
    path.write_text("Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
                    "1,ChatGPT,100,10,110,Conversation log\n"
                    "2,GPT-4,200,20,220,Conversation log\n"
                    "3,GPT-4,300,0,300,Conversation log\n"
                    "4,GPT-4,400,40,440,API log\n")
    ds = sample_dataset(DatasetConfig(name="burstgpt", path=path, num_prompts=6), rng())
    assert {(r.prompt_tokens, r.output_tokens) for r in ds.requests} == {(200, 20), (400, 40)}
    assert len(ds.requests) == 6  # oversampled from two rows, seeded
    short = sample_dataset(DatasetConfig(name="burstgpt", path=path, num_prompts=6, oversample=False), rng())
    assert len(short.requests) == 2
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="not a BurstGPT CSV"):
        sample_dataset(DatasetConfig(name="burstgpt", path=tmp_path / "bad.csv"), rng())


def test_custom_jsonl(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"prompt": "What is the capital of India?", "output_tokens": 10}\n\n'
                    '{"prompt": "And of Iran?", "output_tokens": 3}\n')
    ds = sample_dataset(DatasetConfig(name="custom", path=path, num_prompts=2, custom_output_len=-1,
                                      shuffle=False), rng())
    assert [(r.prompt, r.output_tokens) for r in ds.requests] == [("What is the capital of India?", 10),
                                                                  ("And of Iran?", 3)]
    fixed = sample_dataset(DatasetConfig(name="custom", path=path, num_prompts=2), rng())
    assert {r.output_tokens for r in fixed.requests} == {256}
    path.write_text('{"prompt": "ok"}\n{"prompt": 5}\n')
    with pytest.raises(InputError, match=r"c.jsonl: line 2: needs a non-empty string 'prompt'"):
        sample_dataset(DatasetConfig(name="custom", path=path), rng())
    path.write_text('{"prompt": "ok"}\nnot json\n')
    with pytest.raises(InputError, match="line 2: invalid JSON"):
        sample_dataset(DatasetConfig(name="custom", path=path), rng())


def test_hf_local_parquet_and_chat_jsonl(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    snap = tmp_path / "snap" / "data"
    snap.mkdir(parents=True)
    pq.write_table(pa.table({"instruction": ["write a poem", "sum 2 and 2"], "output": ["x" * 40, "4"]}),
                   snap / "train-00000-of-00001.parquet")
    pq.write_table(pa.table({"instruction": ["test only"], "output": ["y"]}), snap / "test-00000-of-00001.parquet")
    ds = sample_dataset(DatasetConfig(name="hf", path=tmp_path / "snap", hf_split="train", num_prompts=2,
                                      shuffle=False), rng())
    assert [(r.prompt, r.output_tokens) for r in ds.requests] == [("write a poem", 10), ("sum 2 and 2", 1)]
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"messages": [{"role": "system", "content": "be brief"},
                                             {"role": "user", "content": "hello there"},
                                             {"role": "assistant", "content": "hi"}]}) + "\n")
    [req] = sample_dataset(DatasetConfig(name="hf", path=chat, num_prompts=1, hf_output_len=7), rng()).requests
    assert (req.prompt, req.output_tokens) == ("hello there", 7)
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(InputError, match="not a readable Parquet file"):
        sample_dataset(DatasetConfig(name="hf", path=tmp_path / "junk.parquet"), rng())


def test_timed_trace_replays_its_times_and_shares_hashed_blocks(tmp_path):
    path = tmp_path / "trace.jsonl"
    rows = [{"timestamp": 1000, "input_length": 40, "output_length": 5, "hash_ids": [1, 2, 3]},
            {"timestamp": 1500, "input_length": 20, "output_length": 6, "hash_ids": [1, 7]},
            {"timestamp": 4000, "input_length": 8, "output_length": 1}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = DatasetConfig(name="timed_trace", path=path, timed_trace_sec_multiplier=0.001)
    ds = sample_dataset(cfg, rng(3))
    assert ds.arrival_s is not None and ds.arrival_s.tolist() == pytest.approx([0.0, 0.5, 3.0])
    a, b, c = ds.requests
    assert (len(a.prompt), len(b.prompt), len(c.prompt)) == (40, 20, 8)
    assert a.prompt[:16] == b.prompt[:16] and a.prompt[16:32] != b.prompt[16:32]  # hash id 1 is one block
    assert sample_dataset(cfg, rng(3)).requests == ds.requests
    assert sample_dataset(cfg, rng(4)).requests != ds.requests
    path.write_text(json.dumps({"timestamp": 5, "input_length": 0, "output_length": 1}) + "\n")
    with pytest.raises(InputError, match="'input_length' must be an integer >= 1"):
        sample_dataset(cfg, rng())
    path.write_text('{"timestamp": 5, "input_length": 3, "output_length": 1}\n'
                    '{"timestamp": 4, "input_length": 3, "output_length": 1}\n')
    with pytest.raises(InputError, match="must not decrease"):
        sample_dataset(cfg, rng())


def test_timed_trace_is_self_timed_by_default():
    from rlserve.bench.runner import RunnerConfig
    from rlserve.bench.session import BenchSpec

    spec = BenchSpec(DatasetConfig(name="timed_trace"), RunnerConfig())
    assert spec.timed and not BenchSpec(DatasetConfig(), RunnerConfig()).timed
    assert not BenchSpec(DatasetConfig(name="timed_trace"), RunnerConfig(), self_timed=False).timed
