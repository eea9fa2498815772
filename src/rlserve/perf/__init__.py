"""Performance and power model of LLM inference replicas: GPU and model catalogues, a roofline over each
iteration's parts with SM-clock scaling, and energy from an idle + awake + compute + memory power split.

Usage::

    from rlserve.perf import ReplicaPerfModel, get_gpu, get_model
    perf = ReplicaPerfModel(get_gpu("a100-80gb"), get_model("codellama-34b"), tp=2)
    t0, t1, e0, e1 = perf.decode_coeffs(batch_size=32)      # decode step: t0 + t1 * S seconds
    seconds, joules = perf.step_cost([(512, 0)], num_decode=8, decode_context_sum=8_000)

See docs/perf_model.md for the formulas, every constant and its source.
"""

from rlserve.perf.gpus import GpuCalibration, GpuSpec, get_gpu, gpu_names
from rlserve.perf.models import ModelSpec, get_model, load_hf_config, model_names
from rlserve.perf.roofline import ReplicaPerfModel

__all__ = [
    "GpuCalibration",
    "GpuSpec",
    "ModelSpec",
    "ReplicaPerfModel",
    "get_gpu",
    "get_model",
    "gpu_names",
    "load_hf_config",
    "model_names",
]
