"""The bad-input corpus: what a careless or hostile user gives the CLI, and a runner that classifies the outcome.

Used by the test suite (tests/cli/test_cli_bad_inputs.py) and by ``benchmarks/fault_matrix.py``.

Each case is ``(name, argv, files)``: ``files`` maps names under the case's directory to their contents (``None``
= a directory of that name), and ``{d}`` in ``argv`` is that directory. The contract for every case: exit code 2,
one ``error:`` line, no traceback, within the time limit, and no output file left behind partially written.
:func:`run_cli` runs ``rlserve`` in-process through :func:`rlserve.cli.main.main` (the console script's entry),
so a traceback is an exception that escapes it.
"""

from __future__ import annotations

import contextlib
import io
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

GOOD_SCENARIO = ("name: tiny\ncluster:\n  defaults: {model: llama-2-7b, gpu: a100-80gb}\n  replicas: [{count: 2}]\n"
                 "workload:\n  num_requests: 20\n  arrival: {kind: poisson, qps: 5}\n"
                 "  lengths: {kind: fixed, prompt_tokens: 100, output_tokens: 20}\n")
# YAML aliases expand exponentially when the value is turned into text: 9 levels of 10 = 10**9 leaves
_LEVELS = ["&a [" + ", ".join(["x"] * 10) + "]"] + [
    f"&{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 10) + "]" for i in range(8)]
ANCHOR_BOMB = GOOD_SCENARIO.replace("name: tiny", "name: [" + ", ".join(_LEVELS) + "]")
SIM = ["simulate", "--num-requests", "20"]
_BOMB = "[" + ", ".join(_LEVELS) + "]"
_ARRIVAL = "arrival: {kind: poisson, qps: 5}"

# a wrong type, an out-of-range value, an unknown key and an alias bomb in each scenario section:
# name -> (scenario text, what the one error line must hold after the file name: the section and the key)
SECTION_CASES: dict[str, tuple[str, str]] = {
    "scenario workload qps a string": (GOOD_SCENARIO.replace("qps: 5", "qps: fast"),
                                       "workload: arrival.qps: input should be a valid number"),
    "scenario workload negative requests": (GOOD_SCENARIO.replace("num_requests: 20", "num_requests: -20"),
                                            "workload: num_requests: input should be greater than or equal to 1"),
    "scenario workload unknown key": (GOOD_SCENARIO.replace(_ARRIVAL, "arrival: {kind: poisson, qps: 5, rate: 2}"),
                                      "workload: unknown key(s) arrival.rate; allowed here: kind, qps"),
    "scenario workload anchor bomb": (GOOD_SCENARIO.replace(_ARRIVAL, "arrival: {kind: piecewise, segment_s: 1, "
                                                                      f"rates_qps: {_BOMB}}}"),
                                      "workload: the document expands to more than"),
    "scenario perf a string": (GOOD_SCENARIO + "perf: {eff_mem_attn: fast}\n",
                               "perf: eff_mem_attn: input should be a valid number"),
    "scenario perf out of range": (GOOD_SCENARIO + "perf: {eff_mem_attn: 2}\n",
                                   "perf: eff_mem_attn: input should be less than or equal to 1"),
    "scenario perf unknown key": (GOOD_SCENARIO + "perf: {gemm: 0.5}\n", "perf: unknown key 'gemm'; allowed: "),
    "scenario perf anchor bomb": (GOOD_SCENARIO + f"perf: {{layer_overhead_s: {_BOMB}}}\n",
                                  "perf: the document expands to more than"),
    "scenario clock_transition a string": (GOOD_SCENARIO + "clock_transition: {stall_s: slow}\n",
                                           "clock_transition: stall_s: input should be a valid number"),
    "scenario clock_transition negative": (GOOD_SCENARIO + "clock_transition: {stall_s: -1}\n",
                                           "clock_transition: stall_s: input should be greater than or equal to 0"),
    "scenario clock_transition unknown key": (GOOD_SCENARIO + "clock_transition: {delay: 1}\n",
                                              "clock_transition: unknown key 'delay'; allowed: energy_j, latency_s"),
    "scenario clock_transition anchor bomb": (GOOD_SCENARIO + f"clock_transition: {{energy_j: {_BOMB}}}\n",
                                              "clock_transition: the document expands to more than"),
}
_SECTION_ROWS: list[tuple[str, list[str], dict[str, str | None]]] = [
    (name, [*SIM, "-s", "{d}/x.yaml"], {"x.yaml": text}) for name, (text, _) in SECTION_CASES.items()]

# (name, argv, files)
CASES: list[tuple[str, list[str], dict[str, str | None]]] = [
    # scenarios
    ("scenario missing", [*SIM, "-s", "{d}/nope.yaml"], {}),
    ("scenario is a directory", [*SIM, "-s", "{d}/x.yaml"], {"x.yaml": None}),
    ("scenario not yaml", [*SIM, "-s", "{d}/x.yaml"], {"x.yaml": "a: [1,\n"}),
    ("scenario binary", [*SIM, "-s", "{d}/x.yaml"], {"x.yaml": "\udcff\udcfe garbage"}),
    ("scenario a list", [*SIM, "-s", "{d}/x.yaml"], {"x.yaml": "- 1\n- 2\n"}),
    ("scenario tp abc", [*SIM, "-s", "{d}/x.yaml"],
     {"x.yaml": GOOD_SCENARIO.replace("gpu: a100-80gb", "gpu: a100-80gb, tp: abc")}),
    ("scenario description anchor bomb", [*SIM, "-s", "{d}/x.yaml"],
     {"x.yaml": ANCHOR_BOMB.replace("name: [", "name: ok\ndescription: [")}),
    ("scenario count true", [*SIM, "-s", "{d}/x.yaml"], {"x.yaml": GOOD_SCENARIO.replace("count: 2", "count: true")}),
    ("scenario slo not a number", [*SIM, "-s", "{d}/x.yaml"], {"x.yaml": GOOD_SCENARIO + "slo: {ttft_s: abc}\n"}),
    ("scenario slo negative", [*SIM, "-s", "{d}/x.yaml"], {"x.yaml": GOOD_SCENARIO + "slo: {ttft_s: -1}\n"}),
    ("scenario qps nan", [*SIM, "-s", "{d}/x.yaml"], {"x.yaml": GOOD_SCENARIO.replace("qps: 5", "qps: .nan")}),
    ("scenario lengths file missing", [*SIM, "-s", "{d}/x.yaml"],
     {"x.yaml": GOOD_SCENARIO.replace("{kind: fixed, prompt_tokens: 100, output_tokens: 20}",
                                      "{kind: trace, path: nope.csv}")}),
    ("scenario lengths file garbage", [*SIM, "-s", "{d}/x.yaml"],
     {"x.yaml": GOOD_SCENARIO.replace("{kind: fixed, prompt_tokens: 100, output_tokens: 20}",
                                      "{kind: trace, path: t.csv}"), "t.csv": "a,b\n1,2\n"}),
    ("scenario anchor bomb", [*SIM, "-s", "{d}/x.yaml"], {"x.yaml": ANCHOR_BOMB}),
    *_SECTION_ROWS,
    ("scenario unknown router", [*SIM, "-r", "nope"], {}),
    ("simulate negative requests", ["simulate", "--num-requests", "-5"], {}),
    ("simulate zero qps", [*SIM, "--qps", "0"], {}),
    ("simulate nan qps", [*SIM, "--qps", "nan"], {}),
    ("simulate negative seed", [*SIM, "--seed", "-1"], {}),
    ("simulate bad batching", [*SIM, "--batching", "fast"], {}),
    ("simulate output is a file", [*SIM, "-o", "{d}/f"], {"f": "x"}),
    ("simulate output under a file", [*SIM, "-o", "{d}/f/out"], {"f": "x"}),
    ("compare duplicate routers", ["compare", "--routers", "round_robin,round_robin", "--seeds", "1",
                                   "--num-requests", "20"], {}),
    ("compare zero seeds", ["compare", "--seeds", "0"], {}),
    ("compare json is a directory", ["compare", "--routers", "round_robin", "--seeds", "1", "--num-requests", "20",
                                     "--json", "{d}/out"], {"out": None}),
    # training
    ("train router config missing", ["train", "router", "-o", "{d}/run", "-c", "{d}/nope.yaml"], {}),
    ("train router config is a directory", ["train", "router", "-o", "{d}/run", "-c", "{d}/c.yaml"],
     {"c.yaml": None}),
    ("train router epochs 0", ["train", "router", "-o", "{d}/run", "-c", "{d}/c.yaml"],
     {"c.yaml": "ppo: {epochs: 0}\n"}),
    ("train router checkpoint_interval 0", ["train", "router", "-o", "{d}/run", "-c", "{d}/c.yaml"],
     {"c.yaml": "checkpoints: {checkpoint_interval: 0}\n"}),
    ("train router max_grad_norm -1", ["train", "router", "-o", "{d}/run", "-c", "{d}/c.yaml"],
     {"c.yaml": "ppo: {max_grad_norm: -1}\n"}),
    ("train router anchor bomb", ["train", "router", "-o", "{d}/run", "-c", "{d}/c.yaml"],
     {"c.yaml": "env: {scenarios: [" + ", ".join(_LEVELS) + "]}\n"}),
    ("train router bool as string", ["train", "router", "-o", "{d}/run", "-c", "{d}/c.yaml"],
     {"c.yaml": "monitoring: {enable_tensorboard: 'no'}\n"}),
    ("train router out is a file", ["train", "router", "-o", "{d}/run"], {"run": "x"}),
    ("train router resume without run", ["train", "router", "-o", "{d}/run", "--resume"], {}),
    ("train router zero updates", ["train", "router", "-o", "{d}/run", "--updates", "0"], {}),
    ("train energy validation_seeds -1", ["train", "energy", "-o", "{d}/run", "-c", "{d}/c.yaml"],
     {"c.yaml": "validation_seeds: -1\n"}),
    ("train energy hidden_sizes 0", ["train", "energy", "-o", "{d}/run", "-c", "{d}/c.yaml"],
     {"c.yaml": "dqn: {hidden_sizes: [0]}\n"}),
    ("train energy bool as string", ["train", "energy", "-o", "{d}/run", "-c", "{d}/c.yaml"],
     {"c.yaml": "factored_advantage: 'no'\n"}),
    ("train energy existing run", ["train", "energy", "-o", "{d}/run"], {"run": None, "run/checkpoint.pt": "x"}),
    ("train energy unknown config", ["train", "energy", "-o", "{d}/run", "-c", "nope"], {}),
    ("train energy negative steps", ["train", "energy", "-o", "{d}/run", "--total-steps", "-3"], {}),
    # evaluation
    ("evaluate energy zero seeds", ["evaluate", "energy", "--seeds", "0", "--no-grid"], {}),
    ("evaluate energy garbage checkpoint", ["evaluate", "energy", "--checkpoint", "{d}/p.pt", "--seeds", "1"],
     {"p.pt": "not a checkpoint"}),
    ("evaluate router zero seeds", ["evaluate", "router", "--seeds", "0"], {}),
    ("evaluate router garbage checkpoint", ["evaluate", "router", "--checkpoint", "{d}/p.pt", "--seeds", "1"],
     {"p.pt": "not a checkpoint"}),
    ("evaluate router json under a file", ["evaluate", "router", "--seeds", "1", "--num-requests", "20",
                                           "--json", "{d}/f/x.json"], {"f": "x"}),
    # energy
    ("energy run bad gpu ids", ["energy", "run", "--url", "http://127.0.0.1:9", "--gpu-ids", "a,b",
                                "--controller", "static"], {}),
    ("energy run both controllers", ["energy", "run", "--url", "http://127.0.0.1:9", "--gpu-ids", "0",
                                     "--controller", "static", "--checkpoint", "{d}/p.pt"], {}),
    ("energy sweep bad block sizes", ["energy", "sweep", "-o", "{d}/s", "--block-sizes", "16,abc"], {}),
    ("energy sweep zero block size", ["energy", "sweep", "-o", "{d}/s", "--block-sizes", "0"], {}),
    # serve
    ("serve no replica", ["serve"], {}),
    ("serve bad url", ["serve", "--replica", "ftp://x"], {}),
    ("serve replicas file is a directory", ["serve", "--replicas-file", "{d}/r.yaml"], {"r.yaml": None}),
    ("serve replicas file bad type", ["serve", "--replicas-file", "{d}/r.yaml"],
     {"r.yaml": "replicas: [{url: 'http://a:1', max_num_seqs: abc}]\n"}),
    ("serve bad port", ["serve", "--replica", "http://127.0.0.1:9", "--port", "70000"], {}),
    ("serve bad log level", ["serve", "--replica", "http://127.0.0.1:9", "--log-level", "loud"], {}),
    ("serve bad event loop", ["serve", "--replica", "http://127.0.0.1:9", "--event-loop", "tokio"], {}),
    ("serve zero first-byte timeout", ["serve", "--replica", "http://127.0.0.1:9", "--first-byte-timeout-s", "0"],
     {}),
    # telemetry
    ("monitor bad interval", ["monitor", "--url", "http://127.0.0.1:9", "--interval-s", "0"], {}),
    ("monitor not a url", ["monitor", "--url", "not a url"], {}),
    ("state of a dead server", ["state", "--url", "http://127.0.0.1:9", "--window-s", "0.3"], {}),
    ("train energy zero block size", ["train", "energy", "-o", "{d}/run", "--block-size", "0"], {}),
    ("train energy unknown scenario", ["train", "energy", "-o", "{d}/run", "--scenario", "nope"], {}),
    ("train router unknown scenario", ["train", "router", "-o", "{d}/run", "--scenario", "nope"], {}),
    ("simulate garbage ppo checkpoint", [*SIM, "-r", "ppo:{d}/p.pt"], {"p.pt": "garbage"}),
    ("serve garbage ppo checkpoint", ["serve", "--replica", "http://127.0.0.1:9", "--router", "ppo:{d}/p.pt"],
     {"p.pt": "garbage"}),
]


@dataclass
class Outcome:
    """How one run of the CLI ended."""

    code: int | None
    stdout: str
    stderr: str
    exception: BaseException | None
    wall_s: float
    timed_out: bool = False

    def error_lines(self) -> list[str]:
        """The ``error:`` lines printed (stderr)."""
        return [line for line in self.stderr.splitlines() if line.startswith("error:")]


class _Timeout(BaseException):
    """Raised in the main thread by SIGALRM when a case runs past its limit."""


@contextlib.contextmanager
def _alarm(seconds: float) -> Iterator[None]:
    def fire(*_: object) -> None:
        raise _Timeout

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def materialise(files: dict[str, str | None], root: Path) -> None:
    """Create the case's files under ``root`` (``None`` = a directory)."""
    for name, content in files.items():
        path = root / name
        if content is None:
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content.encode("utf-8", "surrogateescape"))


def run_cli(argv: list[str], timeout_s: float = 60.0) -> Outcome:
    """Run ``rlserve argv`` in-process as the console script does; never raises."""
    from rlserve.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    code: int | None = 0
    exception: BaseException | None = None
    timed_out = False
    old_argv = sys.argv
    sys.argv = ["rlserve", *argv]
    t0 = time.perf_counter()
    try:
        # the CLI's rich consoles write to whatever sys.stdout / sys.stderr are at the time
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), _alarm(timeout_s):
            main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except _Timeout:
        code, timed_out = None, True
    except BaseException as exc:  # noqa: BLE001 (a traceback: the outcome being classified)
        code, exception = None, exc
    finally:
        sys.argv = old_argv
    return Outcome(code, out.getvalue(), err.getvalue(), exception, time.perf_counter() - t0, timed_out)


def classify(outcome: Outcome) -> str:
    """``clear error`` (exit 2, one error: line), ``traceback``, ``hang``, or ``wrong result`` (anything else)."""
    if outcome.timed_out:
        return "hang"
    if outcome.exception is not None or "Traceback" in outcome.stderr:
        return "traceback"
    if outcome.code == 2 and (len(outcome.error_lines()) == 1 or "Error" in outcome.stderr):
        return "clear error"
    return "wrong result"


def snapshot(root: Path) -> dict[Path, bytes | None]:
    """Every path under ``root`` with its contents (``None`` for directories)."""
    return {p: (None if p.is_dir() else p.read_bytes()) for p in root.rglob("*")}


def damage(before: dict[Path, bytes | None], root: Path) -> list[str]:
    """What a refused command did to ``root``: files changed or removed (data lost) and files it left behind."""
    after = snapshot(root)
    lost = [f"changed or removed: {p}" for p, content in before.items() if after.get(p, b"\0gone") != content]
    left = [f"left behind: {p}" for p in after if p not in before and after[p] is not None]
    return lost + left
