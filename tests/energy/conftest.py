from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rlserve.scenario import SCENARIO_DIR


@pytest.fixture
def small_scenario(tmp_path: Path) -> Path:
    """energy_steady with 300 requests (~30 s): the real scenario, shortened for unit tests."""
    doc = yaml.safe_load((SCENARIO_DIR / "energy_steady.yaml").read_text())
    doc["workload"]["num_requests"] = 300
    doc["name"] = "energy_small"
    path = tmp_path / "energy_small.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path
