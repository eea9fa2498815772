"""Iteration time and energy of one vLLM replica (one model on ``tp`` GPUs) from a roofline over its parts.

Each part of an iteration costs ``max(compute time, memory time)`` on every GPU of the replica (tensor
parallelism shards the work evenly), and the parts run one after another:

==================  =========================================  ==============================================
part                compute                                    memory
==================  =========================================  ==============================================
linear layers       2 x linear params / tp per token           weights / tp once + activations per token
LM head             2 x vocab x hidden / tp per sequence       vocab x hidden / tp once + logits per sequence
attention, decode   4 x layers x q_dim / tp per context token  KV bytes / tp per context token
attention, prefill  4 x layers x q_dim / tp per (query, key)   KV of the context + Q/O of the new tokens
elementwise         (none)                                     norms, rotary, SiLU-mul, cache writes per token
all-reduce (tp>1)   (none)                                     2 per layer: latency + ring transfer per token
overhead            fixed per layer (small-kernel gaps) + CPU scheduling per iteration and per sequence
==================  =========================================  ==============================================

Energy of a part = ``P_awake t + P_compute t_compute + P_mem t_memory`` (powers at the clock the part runs at,
see :meth:`ReplicaPerfModel._energy`), so a decode-only iteration is exactly ``t0 + t1 S`` seconds and
``e0 + e1 S`` joules: the only S-dependent part is decode attention, whose compute and memory times are both
proportional to S. Iterations with prefill are capped at the board limit x time in total (a decode-only one
is not: a cap on its average would not be linear in S; docs/perf_model.md shows why that is also closer to the
measurements). Rates and powers at the current clock are folded into per-token coefficients once per clock
change; hot methods are a few float operations.
"""

from __future__ import annotations

import operator

from rlserve.errors import ConfigError, InputError
from rlserve.perf import frequency as fq
from rlserve.perf.gpus import GpuSpec
from rlserve.perf.models import ModelSpec

GIB = 1024**3
NON_TORCH_BYTES = int(0.75 * GIB)  # CUDA context, cuBLAS workspaces, CUDA graphs (vLLM's "non-torch" memory)
NCCL_BYTES = int(0.25 * GIB)  # extra per GPU for NCCL buffers when tp > 1
DEFAULT_ITERATION_OVERHEAD_S = 1.5e-3  # vLLM scheduler, input preparation, sampling, output processing
DEFAULT_PER_SEQ_OVERHEAD_S = 10e-6  # the same, per running sequence
CAPABILITY_DECODE_CONTEXT = 1024
CAPABILITY_PREFILL_TOKENS = 2048


def _positive_int(value: object, what: str, error: type[Exception]) -> int:
    """``value`` as a plain int (numpy integers welcome); ``error`` unless it is an integer >= 1."""
    try:
        n = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        n = 0
    if isinstance(value, bool) or n < 1:
        raise error(f"{what} must be a positive integer, got {value!r}")
    return n


class ReplicaPerfModel:
    """Time and energy of vLLM iterations for one model on ``tp`` GPUs of one kind at a settable SM clock.

    Construction is pure arithmetic (microseconds): no profiling run, no training data.
    ``iteration_overhead_s`` and ``per_seq_overhead_s`` model the serving engine's CPU work per iteration (the
    GPU waits, clocked up); ``max_num_batched_tokens`` sizes the activation memory vLLM's profiler reserves.
    """

    def __init__(self, gpu: GpuSpec, model: ModelSpec, tp: int = 1, sm_clock_mhz: float | None = None, *,
                 iteration_overhead_s: float = DEFAULT_ITERATION_OVERHEAD_S,
                 per_seq_overhead_s: float = DEFAULT_PER_SEQ_OVERHEAD_S,
                 frontend_latency_s: float = 0.0, frontend_per_inflight_s: float = 0.0) -> None:
        tp = _positive_int(tp, "tensor parallel degree", ConfigError)
        if model.num_heads % tp:
            raise ConfigError(f"{model.name}: {model.num_heads} attention heads cannot be split over tp={tp}; "
                              "use a tp that divides them")
        kvh = model.num_kv_heads
        if (kvh >= tp and kvh % tp) or (kvh < tp and tp % kvh):
            raise ConfigError(f"{model.name}: {kvh} KV heads cannot be split or replicated over tp={tp}")
        if min(iteration_overhead_s, per_seq_overhead_s, frontend_latency_s, frontend_per_inflight_s) < 0:
            raise ConfigError("iteration_overhead_s, per_seq_overhead_s, frontend_latency_s and "
                              "frontend_per_inflight_s must be >= 0")
        self.gpu = gpu
        self.model = model
        self.tp = tp
        self.iteration_overhead_s = float(iteration_overhead_s)
        self.per_seq_overhead_s = float(per_seq_overhead_s)
        # outside the engine (HTTP, detokenise, stream): the simulator adds base + slope x requests in flight at
        # arrival to TTFT and E2E; it occupies no engine time
        self.frontend_latency_s = float(frontend_latency_s)
        self.frontend_per_inflight_s = float(frontend_per_inflight_s)
        self.idle_power_w = gpu.idle_power_w * tp
        self.max_power_w = gpu.max_power_w * tp
        self._init_work()
        self._clock = gpu.sm_clock_max_mhz if sm_clock_mhz is None else gpu.snap_clock(sm_clock_mhz)
        self._decode_cache: dict[int, tuple[float, float, float, float]] = {}
        self.decode_tokens_per_s = 0.0
        self.prefill_tokens_per_s = 0.0
        self._at_clock()

    # ------------------------------------------------------------------------------------------ structure
    def _init_work(self) -> None:
        """Per-GPU FLOPs and bytes per unit of work: clock-independent, computed once."""
        m, tp, dt = self.model, self.tp, self.model.dtype_bytes
        L, h, hd = m.num_layers, m.hidden_size, m.head_dim
        q, kv, i = m.q_dim / tp, max(1, m.num_kv_heads // tp) * hd, m.intermediate_size / tp
        self._kv_dim_gpu = kv
        lin_params = L * m.linear_params_per_layer / tp
        self._lin_flops_tok = 2.0 * lin_params
        self._lin_weight_bytes = lin_params * dt
        self._lin_act_bytes_tok = L * (4 * h + 2 * q + 2 * kv + 3 * i) * dt  # GEMM inputs + outputs
        lm_params = m.vocab_size * h / tp
        self._lm_flops_seq = 2.0 * lm_params
        self._lm_weight_bytes = lm_params * dt
        self._lm_act_bytes_seq = (h + m.vocab_size / tp) * dt
        self._elem_bytes_tok = L * (8 * h + 2 * q + 6 * kv + 3 * i) * dt  # add+norm x2, rotary, cache write, SiLU
        self._attn_flops_pair = 4.0 * L * q  # QK^T and PV per (query token, key token)
        self._attn_kv_bytes_tok = 2.0 * L * kv * dt
        self._attn_qo_bytes_tok = 2.0 * L * q * dt
        ring = 2.0 * (tp - 1) / tp
        self._ar_bytes_tok = 2 * L * h * dt * ring  # bytes each GPU sends per token over 2 all-reduces/layer
        self._ar_calls = 2 * L if tp > 1 else 0
        embed = m.vocab_size * h * (1 if m.tie_word_embeddings else 2) / tp
        self.weight_bytes_per_gpu = int((lin_params + embed) * dt + (2 * L + 1) * h * dt)
        self.kv_bytes_per_token_gpu = int(2 * L * kv * dt)

    def _at_clock(self) -> None:
        """Fold rates and powers at the current clock into per-unit time and energy coefficients."""
        g, cal, tp = self.gpu, self.gpu.calibration, self.tp
        x = self._clock / g.sm_clock_max_mhz
        xc = min(x, fq.sustained_compute_fraction(g))
        mem_scale = fq.mem_bandwidth_scale(x)
        bw = g.mem_bandwidth_gbps * 1e9 * mem_scale
        r_lin = g.peak_tflops * 1e12 * cal.eff_compute_linear * xc
        r_att = g.peak_tflops * 1e12 * cal.eff_compute_attn * xc
        eff_lin_dec = cal.eff_compute_linear if cal.eff_compute_linear_decode is None else cal.eff_compute_linear_decode
        eff_att_dec = cal.eff_compute_attn if cal.eff_compute_attn_decode is None else cal.eff_compute_attn_decode
        r_lin_dec = g.peak_tflops * 1e12 * eff_lin_dec * xc
        r_att_dec = g.peak_tflops * 1e12 * eff_att_dec * xc
        bw_lin, bw_att, bw_el = bw * cal.eff_mem_linear, bw * cal.eff_mem_attn, bw * cal.eff_mem_elementwise
        # powers are affine in the clock power factor c = x V(x)^2 of the clock a part runs at (all TP GPUs)
        self._x, self._xc = x, xc
        self._pa0, self._pa1 = g.idle_power_w * tp, (cal.awake_power_w - g.idle_power_w) * tp
        self._pc1 = fq.dyn_compute_power_max_w(g) * tp
        share = fq.MEM_POWER_FIXED_SHARE
        self._pm0 = cal.dyn_mem_power_w * share * mem_scale * tp
        self._pm1 = cal.dyn_mem_power_w * (1.0 - share) * tp
        self._p_at_x = self._powers(fq.clock_power_factor(x))  # memory-bound parts run at the set clock
        self._p_at_xc = self._powers(fq.clock_power_factor(xc))  # compute-bound parts at the sustained one
        self._lin_c, self._lin_w, self._lin_a = (self._lin_flops_tok / r_lin, self._lin_weight_bytes / bw_lin,
                                                 self._lin_act_bytes_tok / bw_lin)
        self._lm_c, self._lm_w, self._lm_a = (self._lm_flops_seq / r_lin, self._lm_weight_bytes / bw_lin,
                                              self._lm_act_bytes_seq / bw_lin)
        # decode-only iterations: their own GEMM efficiency (small-M GEMMs reach less of the peak)
        self._lin_c_dec, self._lm_c_dec = self._lin_flops_tok / r_lin_dec, self._lm_flops_seq / r_lin_dec
        self._el = self._elem_bytes_tok / bw_el
        self._ap_c = self._attn_flops_pair / r_att
        self._ap_kv = self._attn_kv_bytes_tok / bw_att
        self._ap_qo = self._attn_qo_bytes_tok / bw_att
        link = (g.link_bandwidth_gbps * cal.link_efficiency if cal.allreduce_bandwidth_gbps is None
                else cal.allreduce_bandwidth_gbps) * 1e9
        self._ar0 = self._ar_calls * cal.allreduce_latency_s
        self._ar1 = self._ar_bytes_tok / link if self._ar_calls else 0.0
        self._fixed = self.model.num_layers * cal.layer_overhead_s + self.iteration_overhead_s
        # decode attention: compute and memory both proportional to S, so its cost per context token is exact
        ap_c_dec = self._attn_flops_pair / r_att_dec
        self._t1 = max(ap_c_dec, self._ap_kv)
        self._e1 = self._energy(self._t1, ap_c_dec, self._ap_kv)
        self._decode_cache.clear()
        t0, t1, _, _ = self.decode_coeffs(1)
        self.decode_tokens_per_s = 1.0 / (t0 + t1 * CAPABILITY_DECODE_CONTEXT)
        n = CAPABILITY_PREFILL_TOKENS
        self.prefill_tokens_per_s = n / self.step_cost([(n, 0)], 0, 0)[0]

    def _powers(self, c: float) -> tuple[float, float, float]:
        """(awake, compute, memory) watts of the replica at clock power factor ``c``."""
        return self._pa0 + self._pa1 * c, self._pc1 * c, self._pm0 + self._pm1 * c

    def _energy(self, t: float, t_compute: float, t_mem: float) -> float:
        """Joules of a part that takes ``t`` s, with ``t_compute`` s of tensor-core work at the compute clock
        ``min(x, x_sustained)`` and ``t_mem`` s of memory streaming.

        The power limiter averages over milliseconds, so a part's compute only slows to the sustained clock in
        proportion to how compute-dominated it is: the part runs at ``x - (x - x_c) r^2`` with
        ``r = t_compute / t`` (1 for compute-bound parts, ~0 for memory-bound ones, whose time the clock does
        not change). Time is unaffected: ``t = max(t_compute, t_mem)`` either way.
        """
        x, xc = self._x, self._xc
        if t_compute <= 0.0 or x <= xc:
            pa, pc, pm = self._p_at_x
        elif t_compute >= t:
            pa, pc, pm = self._p_at_xc
        else:  # _powers(c) inlined: this branch is hot for memory-bound GEMMs above the sustained clock
            r = t_compute / t
            xe = x - (x - xc) * r * r
            c = fq.clock_power_factor(xe)
            t_compute *= xc / xe
            return self._pa0 * t + self._pm0 * t_mem + c * (self._pa1 * t + self._pc1 * t_compute + self._pm1 * t_mem)
        return pa * t + pc * t_compute + pm * t_mem

    def _parts(self, tokens: int, seqs: int, decode_only: bool) -> tuple[tuple[str, float, float, float], ...]:
        """(name, time, compute-busy time, memory-busy time) of every part that does not depend on S.

        The reference for :meth:`breakdown`; :meth:`_fixed_cost` is the same arithmetic inlined for speed
        (tests/perf checks that breakdowns add up to step_cost).
        """
        lin, lm = (self._lin_c_dec, self._lm_c_dec) if decode_only else (self._lin_c, self._lm_c)
        lin_c, lin_m = tokens * lin, self._lin_w + tokens * self._lin_a
        lm_c, lm_m = seqs * lm, self._lm_w + seqs * self._lm_a
        el = tokens * self._el
        ar_m = tokens * self._ar1
        fixed = self._fixed + seqs * self.per_seq_overhead_s
        return (("linear", max(lin_c, lin_m), lin_c, lin_m), ("lm_head", max(lm_c, lm_m), lm_c, lm_m),
                ("elementwise", el, 0.0, el), ("allreduce", self._ar0 + ar_m, 0.0, ar_m),
                ("overhead", fixed, 0.0, 0.0))

    def _fixed_cost(self, tokens: int, seqs: int, decode_only: bool) -> tuple[float, float]:
        """(seconds, joules) of all parts that do not depend on S: :meth:`_parts`, summed, without the calls."""
        energy = self._energy
        lin, lm = (self._lin_c_dec, self._lm_c_dec) if decode_only else (self._lin_c, self._lm_c)
        tc, tm = tokens * lin, self._lin_w + tokens * self._lin_a
        t_lin = tc if tc > tm else tm
        e = energy(t_lin, tc, tm)
        tc, tm = seqs * lm, self._lm_w + seqs * self._lm_a
        t_lm = tc if tc > tm else tm
        e += energy(t_lm, tc, tm)
        streaming = tokens * (self._el + self._ar1)  # elementwise kernels + all-reduce transfers
        waiting = self._ar0 + self._fixed + seqs * self.per_seq_overhead_s  # all-reduce latency + overheads
        pa, _, pm = self._p_at_x
        return t_lin + t_lm + streaming + waiting, e + (pa + pm) * streaming + pa * waiting

    def _prefill_attention(self, new_tokens: int, cached: int) -> tuple[float, float, float]:
        """(time, compute time, memory time) of causal attention for one prefill chunk (inlined in step_cost)."""
        pairs = new_tokens * cached + new_tokens * (new_tokens + 1) * 0.5
        tc = pairs * self._ap_c
        tm = (cached + new_tokens) * self._ap_kv + new_tokens * self._ap_qo
        return max(tc, tm), tc, tm

    # ------------------------------------------------------------------------------------------ clock
    @property
    def sm_clock_mhz(self) -> float:
        """Current SM clock (MHz), one of the GPU's supported clocks."""
        return self._clock

    @sm_clock_mhz.setter
    def sm_clock_mhz(self, mhz: float) -> None:
        self.set_sm_clock(mhz)

    def set_sm_clock(self, mhz: float) -> None:
        """Change the SM clock (snapped to the GPU's step; ConfigError outside its range)."""
        clock = self.gpu.snap_clock(mhz)
        if clock != self._clock:
            self._clock = clock
            self._at_clock()

    # ------------------------------------------------------------------------------------------ hot path
    def decode_coeffs(self, batch_size: int) -> tuple[float, float, float, float]:
        """(t0, t1, e0, e1): a decode-only iteration of ``batch_size`` sequences attending to S tokens in total
        takes ``t0 + t1 S`` seconds and ``e0 + e1 S`` joules (all GPUs of the replica, idle power included)."""
        c = self._decode_cache.get(batch_size)
        if c is None:
            b = _positive_int(batch_size, "decode batch size", InputError)  # plain int: results stay floats
            t0, e0 = self._fixed_cost(b, b, True)
            c = self._decode_cache[batch_size] = (t0, self._t1, e0, self._e1)
        return c

    def step_cost(self, prefill: list[tuple[int, int]], num_decode: int,
                  decode_context_sum: int) -> tuple[float, float]:
        """(seconds, joules) of one iteration: prefill chunks ``(new_tokens, cached_context_before)`` plus
        ``num_decode`` decoding sequences attending to ``decode_context_sum`` tokens in total."""
        if not prefill:
            t0, t1, e0, e1 = self.decode_coeffs(num_decode)
            return t0 + t1 * decode_context_sum, e0 + e1 * decode_context_sum
        t = self._t1 * decode_context_sum
        e = self._e1 * decode_context_sum
        tokens = num_decode
        ap_c, ap_kv, ap_qo, energy = self._ap_c, self._ap_kv, self._ap_qo, self._energy
        for n, c in prefill:  # causal attention of each chunk: see _prefill_attention
            tokens += n
            tc = (n * c + n * (n + 1) * 0.5) * ap_c
            tm = (c + n) * ap_kv + n * ap_qo
            ta = tc if tc > tm else tm
            t += ta
            e += energy(ta, tc, tm)
        tf, ef = self._fixed_cost(tokens, num_decode + len(prefill), False)
        t += tf
        e += ef
        return t, min(e, self.max_power_w * t)

    # ------------------------------------------------------------------------------------------ inspection
    def breakdown(self, prefill: list[tuple[int, int]], num_decode: int,
                  decode_context_sum: int) -> dict[str, tuple[float, float]]:
        """Per-part (seconds, joules) of the same iteration as :meth:`step_cost` (for docs and calibration)."""
        tokens = num_decode + sum(n for n, _ in prefill)
        parts = {name: (t, self._energy(t, tc, tm))
                 for name, t, tc, tm in self._parts(tokens, num_decode + len(prefill), not prefill)}
        ta = ea = 0.0
        for n, c in prefill:
            t, tc, tm = self._prefill_attention(n, c)
            ta += t
            ea += self._energy(t, tc, tm)
        parts["attention_prefill"] = (ta, ea)
        parts["attention_decode"] = (self._t1 * decode_context_sum, self._e1 * decode_context_sum)
        if prefill:
            t = sum(v[0] for v in parts.values())
            e = sum(v[1] for v in parts.values())
            parts["power_limit"] = (0.0, min(0.0, self.max_power_w * t - e))
        return parts

    def kv_capacity_blocks(self, block_size: int, gpu_memory_utilization: float = 0.9, *,
                           max_num_batched_tokens: int = 8192) -> int:
        """KV-cache blocks vLLM would allocate: memory x utilisation minus weights, the activation peak of a
        ``max_num_batched_tokens`` profiling pass and non-torch memory, divided by the bytes of one block."""
        block_size = _positive_int(block_size, "block_size", ConfigError)
        if not 0.0 < gpu_memory_utilization <= 1.0:
            raise ConfigError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
        m, tp = self.model, self.tp
        act_tok = (4 * m.hidden_size + (m.q_dim + 2 * m.kv_dim + 3 * m.intermediate_size) / tp) * m.dtype_bytes
        reserved = (self.weight_bytes_per_gpu + max_num_batched_tokens * act_tok + NON_TORCH_BYTES
                    + (NCCL_BYTES if tp > 1 else 0))
        free = self.gpu.memory_bytes * gpu_memory_utilization - reserved
        blocks = int(free // (block_size * self.kv_bytes_per_token_gpu))
        if blocks < 1:
            raise ConfigError(
                f"{m.name} does not fit on {tp} x {self.gpu.name} at gpu_memory_utilization="
                f"{gpu_memory_utilization}: {self.weight_bytes_per_gpu / GIB:.1f} GiB of weights per GPU of "
                f"{self.gpu.memory_gib:.1f} GiB; use a larger tp, a bigger GPU or a higher utilisation")
        return blocks

    def __repr__(self) -> str:
        return (f"ReplicaPerfModel(gpu={self.gpu.name!r}, model={self.model.name!r}, tp={self.tp}, "
                f"sm_clock_mhz={self._clock:g})")
