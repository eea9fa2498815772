"""Fit rlserve.perf calibration constants to measure_gpu.py's output and print model-vs-measurement tables.

Usage:  python scripts/calibrate/fit_calibration.py src/rlserve/perf/data/measurements_h200.json [--gpu h200]

Prints the fitted constants (to copy, rounded, into src/rlserve/perf/gpus.py) and markdown tables of measured
vs modelled time and power for the fitted values and for the catalogue's values (docs/perf_model.md).
The fitting itself is rlserve.perf.calibration.fit_calibration.
"""

from __future__ import annotations

import argparse

from rlserve.perf import get_gpu
from rlserve.perf.calibration import comparison_table, fit_calibration, load_measurements


def main() -> None:
    ap = argparse.ArgumentParser(description="fit rlserve.perf calibration constants to GPU measurements")
    ap.add_argument("measurements", help="JSON written by scripts/calibrate/measure_gpu.py")
    ap.add_argument("--gpu", default=None, help="catalogue name (default: the measured GPU's NVML name)")
    args = ap.parse_args()
    meas = load_measurements(args.measurements)
    gpu = get_gpu(args.gpu or meas["gpu"]["name"])
    cal = fit_calibration(meas, gpu)
    print(f"# fitted calibration for {gpu.name} from {args.measurements}")
    for k, v in cal.items():
        print(f"{k} = {v:.6g}")
    print("\n## model with the fitted values\n")
    print(comparison_table(meas, gpu, **cal))
    print("\n## model with the catalogue's values\n")
    print(comparison_table(meas, gpu))


if __name__ == "__main__":
    main()
