"""The NVML clock actuator, against a FAKE NVML (tests/energy/fake_nvml.py): no GPU here, and tests must never
change a real GPU's clocks. What is real: signals, subprocesses, atexit, exceptions."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from fake_nvml import FakeNvml

from rlserve.errors import BackendError, TelemetryUnavailable
from rlserve.serve.clock_actuator import ClockActuator

HERE = Path(__file__).parent


def test_dry_run_never_sets_clocks_but_snaps() -> None:
    nvml = FakeNvml()
    with ClockActuator([0, 1], nvml=nvml) as act:
        assert act.set_sm_clock(1000.0) == 990.0  # highest supported clock <= request
    assert not [c for c in nvml.calls if c[0] in ("set", "reset")]
    assert [c.applied for c in act.changes] == [False, False]


def test_dry_run_without_nvml_just_logs() -> None:
    act = ClockActuator([0], nvml=None)
    act._nvml = None  # as on a machine without nvidia-ml-py
    with act:
        assert act.set_sm_clock(1234.0) == 1234.0
    with pytest.raises(TelemetryUnavailable, match="needs NVML"):
        a = ClockActuator([0], apply=True)
        a._nvml = None
        a.start()


def test_apply_sets_and_restores_on_exit_and_on_exception() -> None:
    nvml = FakeNvml()
    with ClockActuator([0, 1], apply=True, nvml=nvml) as act:
        act.set_sm_clock(1500.0)
        assert nvml.locked == {0: 1500, 1: 1500}
    assert nvml.locked == {0: None, 1: None}

    nvml = FakeNvml()
    with pytest.raises(RuntimeError, match="boom"), ClockActuator([1], apply=True, nvml=nvml) as act:
        act.set_sm_clock(700.0)
        raise RuntimeError("boom")
    assert nvml.locked[1] is None and ("reset", 1) in nvml.calls


def test_restore_only_touches_gpus_it_locked_and_is_idempotent() -> None:
    nvml = FakeNvml()
    act = ClockActuator([0], apply=True, nvml=nvml).start()
    act.restore()
    act.set_sm_clock(1200.0)
    act.restore()
    act.restore()
    assert [c for c in nvml.calls if c[0] == "reset"] == [("reset", 0)]


def test_permission_error_says_what_to_do() -> None:
    with pytest.raises(BackendError, match="run as root or after `nvidia-smi -acp UNRESTRICTED`"), \
            ClockActuator([0], apply=True, nvml=FakeNvml(permitted=False)) as act:
        act.set_sm_clock(1200.0)


def test_signal_handlers_are_put_back() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with ClockActuator([0], apply=True, nvml=FakeNvml()) as act:
        assert signal.getsignal(signal.SIGTERM) == act._on_signal
    assert signal.getsignal(signal.SIGTERM) == before


def test_sigterm_restores_clocks(tmp_path: Path) -> None:
    log = tmp_path / "nvml.log"
    script = tmp_path / "victim.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(HERE)!r})
        from fake_nvml import FakeNvml
        from rlserve.serve.clock_actuator import ClockActuator
        act = ClockActuator([0, 1], apply=True, nvml=FakeNvml(log_path=__import__('pathlib').Path({str(log)!r})))
        act.start()
        act.set_sm_clock(900.0)
        print("ready", flush=True)
        time.sleep(60)
    """))
    with subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert rc == 128 + signal.SIGTERM
    lines = log.read_text().splitlines()
    assert lines[-2:] == ["reset 0", "reset 1"] and "set 0 900 900" in lines


def test_atexit_restores_when_the_program_just_ends(tmp_path: Path) -> None:
    log = tmp_path / "nvml.log"
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(HERE)!r})
        from pathlib import Path
        from fake_nvml import FakeNvml
        from rlserve.serve.clock_actuator import ClockActuator
        ClockActuator([0], apply=True, nvml=FakeNvml(log_path=Path({str(log)!r}))).set_sm_clock(1200.0)
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert log.read_text().splitlines()[-1] == "reset 0"
