"""Workloads: when requests arrive and how long they are, generated from a seed or loaded from traces.

The public API is re-exported here; see ``docs/workloads.md`` for every arrival and length kind.
"""

from rlserve.workload import arrivals, lengths
from rlserve.workload.config import (
    ArrivalConfig,
    LengthConfig,
    PrefixConfig,
    WorkloadConfig,
    build_workload,
    load_lengths_file,
)
from rlserve.workload.lengths import LogNormal, clip_lengths
from rlserve.workload.loaders import (
    TokenTrace,
    estimate_tokens,
    hf_tokenizer_counter,
    load_azure_csv,
    load_sharegpt_json,
    load_splitwise_csv,
)
from rlserve.workload.request import Request, Workload

__all__ = [
    "ArrivalConfig",
    "LengthConfig",
    "LogNormal",
    "PrefixConfig",
    "Request",
    "TokenTrace",
    "Workload",
    "WorkloadConfig",
    "arrivals",
    "build_workload",
    "clip_lengths",
    "estimate_tokens",
    "hf_tokenizer_counter",
    "lengths",
    "load_azure_csv",
    "load_lengths_file",
    "load_sharegpt_json",
    "load_splitwise_csv",
]
