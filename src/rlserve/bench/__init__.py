"""Benchmark client for OpenAI-compatible servers (vLLM): datasets x request functions x arrival schedule x runner
x metrics, with telemetry recorded into one result JSON. ``rlserve bench`` is the command-line front end."""

from rlserve.bench.datasets import DATASETS, Dataset, DatasetConfig, SampleRequest, sample_dataset
from rlserve.bench.metrics import BenchmarkMetrics, calculate_metrics, parse_goodput
from rlserve.bench.request import REQUEST_FUNCS, RequestOutput, SseParser
from rlserve.bench.result import build_result, load_result, save_result, validate_result
from rlserve.bench.runner import BenchRun, RunnerConfig, arrival_schedule, run_benchmark

__all__ = [
    "DATASETS", "REQUEST_FUNCS", "BenchRun", "BenchmarkMetrics", "Dataset", "DatasetConfig", "RequestOutput",
    "RunnerConfig", "SampleRequest", "SseParser", "arrival_schedule", "build_result", "calculate_metrics",
    "load_result", "parse_goodput", "run_benchmark", "sample_dataset", "save_result", "validate_result",
]
