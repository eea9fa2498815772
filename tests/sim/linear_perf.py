"""A deterministic stand-in perf model with round numbers, for closed-form simulator tests.

It honours the perf-model contract exactly (decode cost linear in the attended context) so that expected
latencies can be written down by hand; the real roofline model is tested in tests/perf/.
"""

from __future__ import annotations


class LinearPerf:
    """Iteration time = overhead + per-token costs; energy = power x time."""

    def __init__(self, overhead_s: float = 0.01, prefill_token_s: float = 1e-4, decode_seq_s: float = 1e-4,
                 ctx_token_s: float = 1e-6, kv_blocks: int = 1000, power_w: float = 400.0,
                 idle_power_w: float = 100.0, sm_clock_mhz: float = 1410.0) -> None:
        self.overhead_s = overhead_s
        self.prefill_token_s = prefill_token_s
        self.decode_seq_s = decode_seq_s
        self.ctx_token_s = ctx_token_s
        self.kv_blocks = kv_blocks
        self.power_w = power_w
        self.idle_power_w = idle_power_w
        self.sm_clock_mhz = sm_clock_mhz
        self.decode_tokens_per_s = 1.0 / (overhead_s + decode_seq_s)
        self.prefill_tokens_per_s = 1.0 / prefill_token_s

    def set_sm_clock(self, mhz: float) -> None:
        self.sm_clock_mhz = mhz

    def decode_coeffs(self, batch_size: int) -> tuple[float, float, float, float]:
        t0 = self.overhead_s + self.decode_seq_s * batch_size
        return t0, self.ctx_token_s, t0 * self.power_w, self.ctx_token_s * self.power_w

    def step_cost(self, prefill: list[tuple[int, int]], num_decode: int,
                  decode_context_sum: int) -> tuple[float, float]:
        dt = self.overhead_s + self.prefill_token_s * sum(n for n, _ in prefill)
        if num_decode:
            dt += self.decode_seq_s * num_decode + self.ctx_token_s * decode_context_sum
        return dt, dt * self.power_w

    def kv_capacity_blocks(self, block_size: int, gpu_memory_utilization: float = 0.9) -> int:
        return self.kv_blocks
