"""Property tests: every loader of a user-supplied file either returns a well-formed result or raises an
``RlserveError`` with a one-line message -- never another exception, never a hang -- on arbitrary (hypothesis-made)
bytes and on near-valid mutations of good files (trace CSV, Azure CSV, ShareGPT JSON, scenario, training and
replicas YAML, checkpoints).

Bounded: a few dozen examples per loader, no deadline jitter (the machine is shared), so the suite stays cheap.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlserve.errors import RlserveError

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
                    derandomize=True)

GOOD = {
    "trace.csv": b"num_prefill_tokens,num_decode_tokens,arrived_at\n100,20,0.0\n200,30,0.5\n50,5,1.25\n",
    "azure.csv": b"TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,374,44\n"
                 b"2023-11-16 18:15:50.9951690,396,109\n",
    "sharegpt.json": b'[{"id": "a", "conversations": [{"from": "human", "value": "hello there"}, '
                     b'{"from": "gpt", "value": "hi, how can I help"}]}]',
    "scenario.yaml": b"name: s\ncluster:\n  defaults: {model: llama-2-7b, gpu: a100-80gb}\n  replicas: [{count: 2}]\n"
                     b"workload:\n  num_requests: 20\n  arrival: {kind: poisson, qps: 5}\n"
                     b"  lengths: {kind: fixed, prompt_tokens: 100, output_tokens: 20}\nslo: {ttft_s: 1.0}\n",
    "train.yaml": b"total_updates: 3\nppo: {lr: 0.001, num_envs: 2, max_grad_norm: 0.5}\n"
                  b"monitoring: {enable_tensorboard: false}\n",
    "energy.yaml": b"validation_seeds: 1\nenv: {scenarios: [energy_steady], caps: [8, 16]}\n"
                   b"dqn: {total_steps: 100, hidden_sizes: [16]}\n",
    "replicas.yaml": b"replicas:\n  - {url: 'http://127.0.0.1:8001', max_num_seqs: 64}\n",
}


def _loaders() -> dict[str, Callable[[Path], Any]]:
    from rlserve.envs.energy_train import load_train_config
    from rlserve.rl.config import load_config
    from rlserve.scenario import load_scenario
    from rlserve.serve.config import load_replicas_file
    from rlserve.workload.loaders import load_azure_csv, load_sharegpt_json, load_splitwise_csv

    return {"trace.csv": load_splitwise_csv, "azure.csv": load_azure_csv, "sharegpt.json": load_sharegpt_json,
            "scenario.yaml": load_scenario, "train.yaml": load_config, "energy.yaml": load_train_config,
            "replicas.yaml": load_replicas_file}


def _check(name: str, data: bytes) -> None:
    """Load ``data`` as file ``name``: a result, or an RlserveError whose message is one line."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / name
        path.write_bytes(data)
        try:
            _loaders()[name](path)
        except RlserveError as exc:
            assert "\n" not in str(exc) and str(exc), repr(str(exc))


def _mutate(good: bytes, position: int, replacement: bytes, cut: bool) -> bytes:
    i = position % (len(good) + 1)
    return good[:i] if cut else good[:i] + replacement + good[i + len(replacement):]


@pytest.mark.parametrize("name", sorted(GOOD))
def test_the_good_files_load(name: str) -> None:
    _loaders()[name]  # noqa: B018 (the loader exists)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / name
        path.write_bytes(GOOD[name])
        assert _loaders()[name](path) is not None


@pytest.mark.parametrize("name", sorted(GOOD))
@SETTINGS
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes_are_a_result_or_a_clear_error(name: str, data: bytes) -> None:
    _check(name, data)


YAML_JUNK = st.sampled_from([b"-1", b"0", b"nan", b".inf", b"'no'", b"abc", b"[]", b"{}", b"null", b"[0]",
                             b"1e400", b"&a [*a]", b"!!python/object:os.system", b"\xff", b":", b"- -", b"\"\\x\""])


@pytest.mark.parametrize("name", sorted(GOOD))
@SETTINGS
@given(position=st.integers(0, 400), replacement=YAML_JUNK | st.binary(min_size=1, max_size=8), cut=st.booleans())
def test_near_valid_files_are_a_result_or_a_clear_error(name: str, position: int, replacement: bytes,
                                                        cut: bool) -> None:
    _check(name, _mutate(GOOD[name], position, replacement, cut))


@SETTINGS
@given(position=st.integers(0, 10_000), value=st.sampled_from([float("nan"), float("inf"), -float("inf")]) |
       st.binary(min_size=1, max_size=4))
def test_corrupted_checkpoints_are_refused_clearly(position: int, value: Any) -> None:
    from rlserve.rl.checkpoints import load_checkpoint, save_checkpoint

    with tempfile.TemporaryDirectory() as d:
        path = save_checkpoint(Path(d) / "ck.pt", {"model": torch.nn.Linear(4, 3).state_dict(), "step": 1},
                               kind="unit")
        if isinstance(value, float):  # a weight becomes non-finite: the file is valid, its numbers are not
            sd = torch.load(path, weights_only=True)
            sd["model"]["weight"].view(-1)[position % 12] = value
            buf = io.BytesIO()
            torch.save(sd, buf)
            path.write_bytes(buf.getvalue())
        else:  # bytes overwritten somewhere in the file
            raw = bytearray(path.read_bytes())
            i = position % len(raw)
            raw[i:i + len(value)] = value
            path.write_bytes(bytes(raw))
        try:
            data = load_checkpoint(path, kind="unit")
        except RlserveError as exc:
            assert "\n" not in str(exc)
            return
        assert all(bool(torch.isfinite(t).all()) for t in data["model"].values())  # loaded: then finite
        assert np.isfinite(float(data["step"]))
