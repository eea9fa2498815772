"""CPU monitor tests. RAPL is absent on this machine (no /sys/class/powercap), so the RAPL tests build a fake
powercap directory in tmp_path with the kernel's file layout and drive its counters by hand."""

import math
import os
from pathlib import Path

import pytest

from rlserve.errors import TelemetryUnavailable
from rlserve.telemetry.cpu import CpuMonitor, RaplEnergy, cpu_power_stats, discover_rapl_zones

MAX_UJ = 262_143_328_850


def make_zone(root: Path, name: str, zone_dir: str, energy_uj: int, max_uj: int = MAX_UJ) -> Path:
    d = root / zone_dir
    d.mkdir(parents=True)
    (d / "name").write_text(name + "\n")
    (d / "energy_uj").write_text(f"{energy_uj}\n")
    (d / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return d / "energy_uj"


@pytest.fixture
def powercap(tmp_path: Path) -> dict[str, Path]:
    root = tmp_path / "powercap"
    return {
        "root": root,
        "package-0": make_zone(root, "package-0", "intel-rapl:0", 1_000_000),
        "core": make_zone(root, "core", "intel-rapl:0:0", 500_000),
        "dram-0": make_zone(root, "dram", "intel-rapl:0:1", 2_000_000),
        "psys": make_zone(root, "psys", "intel-rapl:1", 9_000_000),
    }


def test_discovers_package_and_dram_only(powercap):
    zones = discover_rapl_zones(powercap["root"])
    assert [z.label for z in zones] == ["package-0", "dram-0"]
    assert zones[0].max_energy_range_uj == MAX_UJ


def test_counter_wraparound_is_corrected(powercap):
    f = powercap["package-0"]
    f.write_text(f"{MAX_UJ - 3_000_000}\n")
    energy = RaplEnergy(discover_rapl_zones(powercap["root"]))
    f.write_text("2_000_000\n".replace("_", ""))  # wrapped: 3 J to the top, then 2 J more
    assert energy.read_j()["package-0"] == pytest.approx(5.0)
    f.write_text("4000000\n")
    assert energy.read_j()["package-0"] == pytest.approx(7.0)


def test_missing_powercap_says_unavailable(tmp_path):
    with pytest.raises(TelemetryUnavailable, match="does not exist"):
        discover_rapl_zones(tmp_path / "nope")
    mon = CpuMonitor(powercap_root=tmp_path / "nope")
    assert mon.power_source == "unavailable"
    s = mon.sample_now()
    assert s is not None and math.isnan(s.power_w) and math.isnan(s.energy_j)
    assert 0.0 <= s.util_pct <= 100.0 or math.isnan(s.util_pct)
    mon.begin_window("w")
    assert mon.end_window("w").cpu_energy_j is None
    stats = cpu_power_stats(mon.trace(), mon.gaps(), mon.interval_s, 0.0, mon.static_info())
    assert stats["cpu_power_source"] == "unavailable" and stats["avg_power_w"] is None
    assert "does not exist" in stats["unavailable_reason"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read a file whatever its mode")
def test_unreadable_counters_explain_root_only(powercap):
    powercap["package-0"].chmod(0)
    with pytest.raises(TelemetryUnavailable, match="root-only"):
        discover_rapl_zones(powercap["root"])


def test_power_and_window_energy_from_rapl(powercap):
    mon = CpuMonitor(powercap_root=powercap["root"])
    assert mon.power_source == "rapl"
    mon._sample(1.0)
    mon.begin_window("w")
    powercap["package-0"].write_text("31000000\n")  # +30 J
    powercap["dram-0"].write_text("4000000\n")  # +2 J
    s = mon._sample(2.0)
    m = mon.end_window("w")
    assert s.power_w == pytest.approx(32.0) and s.energy_j == pytest.approx(32.0)
    assert m.cpu_energy_j == pytest.approx(32.0) and m.energy_by_device_j == pytest.approx(
        {"package-0": 30.0, "dram-0": 2.0})
    assert m.gpu_energy_j is None
