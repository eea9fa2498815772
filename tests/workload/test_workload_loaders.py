import json
import sys
from pathlib import Path

import numpy as np
import pytest

from rlserve.errors import ConfigError, InputError
from rlserve.workload import load_azure_csv, load_sharegpt_json, load_splitwise_csv
from rlserve.workload.loaders import estimate_tokens

REAL_TRACE = Path(__file__).resolve().parents[2].parent / "shared" / "traces" / "splitwise_conv.csv"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_splitwise_with_arrivals(tmp_path):
    trace = load_splitwise_csv(write(tmp_path, "t.csv", "arrived_at,num_prefill_tokens,num_decode_tokens\n"
                                                         "0.5,100,10\n1.5,200,20\n\n2.0,300,30\n"))
    assert trace.prompt_tokens.tolist() == [100, 200, 300]
    assert trace.output_tokens.tolist() == [10, 20, 30]
    assert trace.arrival_s.tolist() == [0.5, 1.5, 2.0]
    assert len(trace) == 3
    with pytest.raises(ValueError):  # loaded traces are shared through a cache, so they are read-only
        trace.prompt_tokens[0] = 1


def test_splitwise_token_columns_only_in_any_order(tmp_path):
    trace = load_splitwise_csv(write(tmp_path, "t.csv", "num_decode_tokens,num_prefill_tokens\n5,50\n6.0,60\n"))
    assert trace.prompt_tokens.tolist() == [50, 60] and trace.output_tokens.tolist() == [5, 6]
    assert trace.arrival_s is None


def test_azure_timestamps_become_seconds_since_first_row(tmp_path):
    trace = load_azure_csv(write(tmp_path, "azure.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n"
                                                        "2023-11-16 18:15:46.6805900,374,44\n"
                                                        "2023-11-16 18:15:50.9951690,396,109\n"
                                                        "2023-11-16 18:16:00,879,55\n"))
    np.testing.assert_allclose(trace.arrival_s, [0.0, 4.314579, 13.31941], atol=1e-6)
    assert trace.prompt_tokens.tolist() == [374, 396, 879]
    assert trace.output_tokens.tolist() == [44, 109, 55]


def test_azure_with_time_zone(tmp_path):
    trace = load_azure_csv(write(tmp_path, "azure.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n"
                                                        "2024-05-10 00:00:00.009930+00:00,10,1\n"
                                                        "2024-05-10 01:00:00.009930+01:00,10,1\n"))
    assert trace.arrival_s.tolist() == [0.0, 0.0]


SHAREGPT = [
    {"id": "a", "conversations": [{"from": "human", "value": "x" * 40}, {"from": "gpt", "value": "y" * 9}]},
    {"id": "b", "conversations": [{"from": "human", "value": "only a question"}]},  # no reply: skipped
    {"id": "c", "conversations": [{"from": "system", "value": "be brief"}, {"from": "human", "value": "hi"},
                                  {"from": "gpt", "value": "hello there"}, {"from": "human", "value": "z" * 99}]},
    {"id": "d", "conversations": [{"from": "human", "value": "   "}, {"from": "gpt", "value": "empty prompt"}]},
]


def test_sharegpt_first_human_then_next_gpt_with_estimate(tmp_path):
    trace = load_sharegpt_json(write(tmp_path, "sg.json", json.dumps(SHAREGPT)))
    assert trace.prompt_tokens.tolist() == [10, 1]  # ceil(40/4), ceil(2/4) -> at least 1
    assert trace.output_tokens.tolist() == [3, 3]  # ceil(9/4), ceil(11/4)
    assert trace.arrival_s is None
    assert estimate_tokens("") == 1 and estimate_tokens("abcde") == 2


def test_sharegpt_with_a_tokenizer_callable(tmp_path):
    trace = load_sharegpt_json(write(tmp_path, "sg.json", json.dumps(SHAREGPT)), tokenizer=lambda s: len(s.split()))
    assert trace.prompt_tokens.tolist() == [1, 1]
    assert trace.output_tokens.tolist() == [1, 2]


def test_sharegpt_tokenizer_file_without_tokenizers_package(tmp_path, monkeypatch):
    # Stands in for a machine without the optional 'tokenizers' package (None in sys.modules blocks import).
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    path = write(tmp_path, "sg.json", json.dumps(SHAREGPT))
    with pytest.raises(ConfigError, match="pip install tokenizers"):
        load_sharegpt_json(path, tokenizer=write(tmp_path, "tokenizer.json", "{}"))


HEADER = "arrived_at,num_prefill_tokens,num_decode_tokens\n"
BAD_CSV = [
    ("", "file is empty"),
    (HEADER, "no data rows"),
    ("arrived_at,prompt,num_decode_tokens\n1,2,3\n", "line 1: missing column(s) num_prefill_tokens; the file has"),
    (HEADER + "0,10,1\n1,abc,2\n", "line 3: num_prefill_tokens is 'abc', not a number"),
    (HEADER + "0,10,1\n1,,2\n", "line 3: num_prefill_tokens is '', not a number"),
    (HEADER + "0,-10,1\n", "line 2: num_prefill_tokens '-10' is negative"),
    (HEADER + "0,10,1\n1,10,0\n", "line 3: num_decode_tokens '0' is 0"),
    (HEADER + "0,10.5,1\n", "line 2: num_prefill_tokens '10.5' is not a whole number"),
    (HEADER + "0,nan,1\n", "line 2: num_prefill_tokens is 'nan', not a finite number"),
    (HEADER + "-1,10,1\n", "line 2: arrived_at '-1' is negative"),
    (HEADER + "0,10,1\n2,10,1\n\n1,10,1\n", "line 5: arrived_at goes back in time ('1' after '2')"),
    (HEADER + "0,10,1\n1,10\n", "line 3: expected 3 fields, found 2"),
]


@pytest.mark.parametrize(("text", "message"), BAD_CSV)
def test_bad_splitwise_csv(tmp_path, text, message):
    path = write(tmp_path, "bad_trace.csv", text)
    with pytest.raises(InputError) as err:
        load_splitwise_csv(path)
    assert str(err.value).startswith(f"{path}: ")
    assert message in str(err.value)
    assert "\n" not in str(err.value)


AZURE = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
BAD_AZURE = [
    (AZURE + "2023-11-16 18:15:46.68,10,1\nyesterday,10,1\n", "line 3: TIMESTAMP 'yesterday' is not a date-time"),
    (AZURE + "2023-11-16 18:15:46,10,1\n2023-11-16 18:15:45,10,1\n", "line 3: TIMESTAMP goes back in time"),
    (AZURE + "2023-11-16 18:15:46,10,1\n2023-11-16 18:15:47+00:00,10,1\n",
     "line 3: TIMESTAMP '2023-11-16 18:15:47+00:00' mixes time-zone-aware and naive"),
    ("TIMESTAMP,ContextTokens\n2023-11-16 18:15:46,10\n", "missing column(s) GeneratedTokens"),
]


@pytest.mark.parametrize(("text", "message"), BAD_AZURE)
def test_bad_azure_csv(tmp_path, text, message):
    path = write(tmp_path, "azure_bad.csv", text)
    with pytest.raises(InputError, match="azure_bad.csv") as err:
        load_azure_csv(path)
    assert message in str(err.value)


BAD_JSON = [
    ('[{"id": "a", "conversations": [}]', "line 1 column 32: invalid JSON"),
    ('{"conversations": []}', "expected a JSON list of conversations, found dict"),
    ('[{"id": "a", "conversations": []}, {"id": "b"}]', "record 2: expected an object with a 'conversations' list"),
    ('[{"conversations": [{"from": "human"}]}]', "record 1: each conversation turn needs string 'from' and 'value'"),
    ('[{"conversations": [{"from": "gpt", "value": "x"}]}]', "no conversation has a human turn followed by"),
    ("", "invalid JSON"),
]


@pytest.mark.parametrize(("text", "message"), BAD_JSON)
def test_bad_sharegpt_json(tmp_path, text, message):
    path = write(tmp_path, "sharegpt_bad.json", text)
    with pytest.raises(InputError, match="sharegpt_bad.json") as err:
        load_sharegpt_json(path)
    assert message in str(err.value)


@pytest.mark.parametrize("loader", [load_splitwise_csv, load_azure_csv, load_sharegpt_json])
def test_missing_file(tmp_path, loader):
    with pytest.raises(InputError, match=r"nope\.\w+: file not found"):
        loader(tmp_path / ("nope.json" if loader is load_sharegpt_json else "nope.csv"))


@pytest.mark.skipif(not REAL_TRACE.is_file(), reason=f"public Splitwise trace not found at {REAL_TRACE}")
def test_real_splitwise_conversation_trace():
    trace = load_splitwise_csv(REAL_TRACE)
    assert len(trace) == 19_366
    assert trace.prompt_tokens.mean() == pytest.approx(1155, rel=0.01)
    assert np.median(trace.prompt_tokens) == 1020
    assert trace.output_tokens.mean() == pytest.approx(211, rel=0.01)
    assert np.median(trace.output_tokens) == 129
    assert trace.arrival_s[0] == 0.0 and np.all(np.diff(trace.arrival_s) >= 0)
