"""Measure one NVIDIA GPU's time, power and energy on LLM-shaped work, for calibrating rlserve.perf.

Reads settings and counters only: it never changes a clock, power limit, application clock or any other GPU
setting (no nvmlDeviceSet*, no nvidia-smi -lgc/-pl/-r). It measures the card as it finds it, at its default
(boost) clock, so the clock that each test actually ran at is recorded next to the result.

What it records (JSON, one file):
  * GPU identity, memory, power limits, max/current clocks, the supported SM clocks (read-only query);
  * idle power before any CUDA context exists, and with a context but no work;
  * an "awake floor": a one-SM spin kernel back to back (clocks up, almost no work);
  * compute-bound: large bf16 matmuls; memory-bound: a large device copy and batch-1..8 GEMVs;
  * a GEMM sweep over the token count M on Llama-2-7B's four linear shapes (the roofline's knee);
  * attention alone (causal prefill, decode over a KV cache) through scaled_dot_product_attention;
  * a random-weight Llama-2-7B-shaped transformer (built here in plain torch, no hub): decode steps at several
    (batch, context) points replayed from CUDA graphs, one eager decode for launch overhead, and prefills.
Energy of every timed window comes from the NVML total-energy counter (mJ); sampled power (and the
instantaneous power field where the driver has it) and SM clocks are summarised alongside.

Usage:  python3 measure_gpu.py --out measurements.json        (on the GPU machine)
        python3 measure_gpu.py --out /tmp/m.json --quick       (tiny shapes; runs on a CPU to test the script)
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

SCHEMA_VERSION = 1
LLAMA2_7B = {"layers": 32, "hidden": 4096, "heads": 32, "kv_heads": 32, "intermediate": 11008, "vocab": 32000}
TINY = {"layers": 2, "hidden": 256, "heads": 4, "kv_heads": 4, "intermediate": 512, "vocab": 1000}


# ----------------------------------------------------------------------------------------------------------
# NVML (read-only)
# ----------------------------------------------------------------------------------------------------------
class Nvml:
    """Read-only NVML access for GPU 0; every reading returns None when NVML or the query is unavailable."""

    def __init__(self) -> None:
        self.nv: Any = None
        self.handle: Any = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self.nv = pynvml
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception as exc:  # no driver / no GPU: the script still runs (CPU smoke test)
            print(f"NVML unavailable: {exc}", file=sys.stderr)

    @property
    def ok(self) -> bool:
        return self.handle is not None

    def _q(self, fn_name: str, *args: Any) -> Any:
        if not self.ok or not hasattr(self.nv, fn_name):
            return None
        try:
            return getattr(self.nv, fn_name)(self.handle, *args)
        except Exception:
            return None

    def energy_mj(self) -> int | None:
        return self._q("nvmlDeviceGetTotalEnergyConsumption")

    def power_w(self) -> float | None:
        mw = self._q("nvmlDeviceGetPowerUsage")
        return None if mw is None else mw / 1000.0

    def instant_power_w(self) -> float | None:
        """NVML_FI_DEV_POWER_INSTANT (field 186): not averaged over ~1 s like nvmlDeviceGetPowerUsage."""
        if not self.ok:
            return None
        try:
            fid = getattr(self.nv, "NVML_FI_DEV_POWER_INSTANT", 186)
            vals = self.nv.nvmlDeviceGetFieldValues(self.handle, [fid])
            v = vals[0]
            if getattr(v, "nvmlReturn", 0) != 0:
                return None
            return float(v.value.uiVal) / 1000.0
        except Exception:
            return None

    def sm_clock(self) -> int | None:
        return self._q("nvmlDeviceGetClockInfo", self.nv.NVML_CLOCK_SM) if self.ok else None

    def mem_clock(self) -> int | None:
        return self._q("nvmlDeviceGetClockInfo", self.nv.NVML_CLOCK_MEM) if self.ok else None

    def temp_c(self) -> int | None:
        return self._q("nvmlDeviceGetTemperature", self.nv.NVML_TEMPERATURE_GPU) if self.ok else None

    def clock_event_reasons(self) -> int | None:
        r = self._q("nvmlDeviceGetCurrentClocksEventReasons")
        return r if r is not None else self._q("nvmlDeviceGetCurrentClocksThrottleReasons")

    def info(self) -> dict[str, Any]:
        """Static facts about the GPU (identity, memory, limits, clocks), all read-only queries."""
        if not self.ok:
            return {"nvml": False}
        nv = self.nv
        name = self._q("nvmlDeviceGetName")
        if isinstance(name, bytes):
            name = name.decode()
        driver = None
        try:
            driver = nv.nvmlSystemGetDriverVersion()
            driver = driver.decode() if isinstance(driver, bytes) else driver
        except Exception:
            pass
        mem = self._q("nvmlDeviceGetMemoryInfo")
        mem_clocks = self._q("nvmlDeviceGetSupportedMemoryClocks") or []
        graphics: dict[str, list[int]] = {}
        for mclk in mem_clocks:
            g = self._q("nvmlDeviceGetSupportedGraphicsClocks", mclk)
            if g is not None:
                graphics[str(mclk)] = sorted(int(x) for x in g)

        def mw(fn: str) -> float | None:
            v = self._q(fn)
            return None if v is None else v / 1000.0

        return {
            "nvml": True,
            "name": name,
            "driver": driver,
            "memory_total_bytes": None if mem is None else int(mem.total),
            "power_limit_w": mw("nvmlDeviceGetPowerManagementLimit"),
            "power_limit_default_w": mw("nvmlDeviceGetPowerManagementDefaultLimit"),
            "power_limit_enforced_w": mw("nvmlDeviceGetEnforcedPowerLimit"),
            "max_sm_clock_mhz": self._q("nvmlDeviceGetMaxClockInfo", nv.NVML_CLOCK_SM),
            "max_mem_clock_mhz": self._q("nvmlDeviceGetMaxClockInfo", nv.NVML_CLOCK_MEM),
            "app_sm_clock_mhz": self._q("nvmlDeviceGetApplicationsClock", nv.NVML_CLOCK_SM),
            "default_app_sm_clock_mhz": self._q("nvmlDeviceGetDefaultApplicationsClock", nv.NVML_CLOCK_SM),
            "current_sm_clock_mhz": self.sm_clock(),
            "current_mem_clock_mhz": self.mem_clock(),
            "supported_mem_clocks_mhz": sorted(int(x) for x in mem_clocks),
            "supported_sm_clocks_mhz_by_mem_clock": graphics,
            "persistence_mode": self._q("nvmlDeviceGetPersistenceMode"),
            "temperature_c": self.temp_c(),
        }


class Sampler:
    """Background thread sampling power and clocks every `interval_s`; `window()` summarises a time span."""

    def __init__(self, nvml: Nvml, interval_s: float = 0.01) -> None:
        self.nvml = nvml
        self.interval_s = interval_s
        self.samples: list[tuple[float, float | None, float | None, int | None, int | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        if self.nvml.ok:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        n = self.nvml
        while not self._stop.is_set():
            self.samples.append((time.perf_counter(), n.power_w(), n.instant_power_w(), n.sm_clock(), n.mem_clock()))
            time.sleep(self.interval_s)

    def window(self, t0: float, t1: float) -> dict[str, Any]:
        rows = [s for s in list(self.samples) if t0 <= s[0] <= t1]

        def summ(vals: list[float]) -> dict[str, float] | None:
            if not vals:
                return None
            return {"mean": statistics.fmean(vals), "median": statistics.median(vals), "min": min(vals),
                    "max": max(vals)}

        return {
            "n_samples": len(rows),
            "power_w": summ([r[1] for r in rows if r[1] is not None]),
            "instant_power_w": summ([r[2] for r in rows if r[2] is not None]),
            "sm_clock_mhz": summ([float(r[3]) for r in rows if r[3] is not None]),
            "mem_clock_mhz": summ([float(r[4]) for r in rows if r[4] is not None]),
        }


# ----------------------------------------------------------------------------------------------------------
# Timing + energy of one test
# ----------------------------------------------------------------------------------------------------------
class Bench:
    """Runs a step function repeatedly for a minimum time and records time, energy, power and clocks."""

    def __init__(self, nvml: Nvml, sampler: Sampler, device: torch.device, quick: bool) -> None:
        self.nvml = nvml
        self.sampler = sampler
        self.device = device
        self.cuda = device.type == "cuda"
        self.quick = quick
        self.results: list[dict[str, Any]] = []
        self.errors: list[dict[str, str]] = []
        self.t_start = time.perf_counter()

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t_start

    def energy_window(self, label: str, seconds: float, params: dict[str, Any], body: Callable[[], int]) -> dict:
        """Run `body` (which returns an iteration count) between two energy-counter reads."""
        self.sync()
        temp0 = self.nvml.temp_c()
        e0 = self.nvml.energy_mj()
        w0 = time.perf_counter()
        iters = body()
        self.sync()
        w1 = time.perf_counter()
        e1 = self.nvml.energy_mj()
        wall = w1 - w0
        energy_j = None if e0 is None or e1 is None else (e1 - e0) / 1000.0
        rec = {
            "name": label,
            "params": params,
            "iterations": iters,
            "wall_s": wall,
            "energy_j": energy_j,
            "avg_power_w": None if energy_j is None else energy_j / wall,
            "temperature_c": [temp0, self.nvml.temp_c()],
            "clock_event_reasons": self.nvml.clock_event_reasons(),
            **self.sampler.window(w0, w1),
        }
        return rec

    def run(self, label: str, step: Callable[[], Any], *, seconds: float, params: dict[str, Any] | None = None,
            flops: float | None = None, bytes_moved: float | None = None, warmup: int = 3) -> dict | None:
        """Time `step` (GPU time from CUDA events) for at least `seconds`; attach energy and derived rates."""
        params = params or {}
        try:
            for _ in range(warmup):
                step()
            self.sync()
            t0 = time.perf_counter()
            for _ in range(3):
                step()
            self.sync()
            est = max((time.perf_counter() - t0) / 3, 1e-6)
            n = max(3, math.ceil(seconds / est))
            if self.cuda:
                ev0 = torch.cuda.Event(enable_timing=True)
                ev1 = torch.cuda.Event(enable_timing=True)

            def body() -> int:
                if self.cuda:
                    ev0.record()
                for _ in range(n):
                    step()
                if self.cuda:
                    ev1.record()
                return n

            rec = self.energy_window(label, seconds, params, body)
            gpu_s = ev0.elapsed_time(ev1) / 1000.0 if self.cuda else rec["wall_s"]
            rec["gpu_s"] = gpu_s
            rec["time_per_iter_s"] = gpu_s / n
            if rec["energy_j"] is not None:
                rec["energy_per_iter_j"] = rec["energy_j"] / n
            if flops is not None:
                rec["flops_per_iter"] = flops
                rec["achieved_tflops"] = flops / rec["time_per_iter_s"] / 1e12
            if bytes_moved is not None:
                rec["bytes_per_iter"] = bytes_moved
                rec["achieved_gbps"] = bytes_moved / rec["time_per_iter_s"] / 1e9
            self.results.append(rec)
            print(f"[{self.elapsed():6.1f}s] {label} {params}: {rec['time_per_iter_s'] * 1e3:.3f} ms/iter"
                  + (f", {rec['achieved_tflops']:.1f} TFLOP/s" if flops else "")
                  + (f", {rec['achieved_gbps']:.0f} GB/s" if bytes_moved else "")
                  + (f", {rec['avg_power_w']:.0f} W" if rec["avg_power_w"] is not None else ""), flush=True)
            return rec
        except Exception as exc:
            self.errors.append({"test": label, "params": json.dumps(params), "error": repr(exc),
                                "trace": traceback.format_exc(limit=3)})
            print(f"FAILED {label} {params}: {exc!r}", file=sys.stderr, flush=True)
            return None

    def idle(self, label: str, seconds: float) -> None:
        """Measure power with nothing submitted for `seconds`."""
        rec = self.energy_window(label, seconds, {"seconds": seconds}, lambda: (time.sleep(seconds), 0)[1])
        self.results.append(rec)
        print(f"[{self.elapsed():6.1f}s] {label}: {rec['avg_power_w']} W", flush=True)


# ----------------------------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------------------------
def matmul_tests(b: Bench, dt: torch.dtype, sizes: list[int], seconds: float) -> None:
    """Large square bf16 matmuls: the compute-bound ceiling and its power draw."""
    for n in sizes:
        a = torch.randn(n, n, device=b.device, dtype=dt)
        w = torch.randn(n, n, device=b.device, dtype=dt)
        out = torch.empty(n, n, device=b.device, dtype=dt)
        b.run("matmul", lambda a=a, w=w, out=out: torch.matmul(a, w, out=out), seconds=seconds,
              params={"m": n, "n": n, "k": n}, flops=2.0 * n**3, bytes_moved=3.0 * n * n * a.element_size())
        del a, w, out


def memory_tests(b: Bench, dt: torch.dtype, copy_bytes: int, gemv_shape: tuple[int, int], seconds: float) -> None:
    """Device copy and small-batch GEMV: the memory-bound ceiling and its power draw."""
    esz = torch.tensor([], dtype=dt).element_size()
    src = torch.empty(copy_bytes // esz, device=b.device, dtype=dt).normal_()
    dst = torch.empty_like(src)
    b.run("copy", lambda: dst.copy_(src), seconds=seconds, params={"bytes": copy_bytes},
          bytes_moved=2.0 * copy_bytes)
    n_out, k = gemv_shape
    ws = [torch.randn(n_out, k, device=b.device, dtype=dt) for _ in range(4)]  # rotate: defeat the L2 cache
    for batch in (1, 8):
        x = torch.randn(batch, k, device=b.device, dtype=dt)
        state = {"i": 0}

        def step(x: torch.Tensor = x, state: dict = state) -> torch.Tensor:
            state["i"] = (state["i"] + 1) % len(ws)
            return x @ ws[state["i"]].t()

        b.run("gemv", step, seconds=seconds, params={"batch": batch, "n": n_out, "k": k},
              flops=2.0 * batch * n_out * k, bytes_moved=float(n_out * k * esz + batch * (n_out + k) * esz))


def gemm_sweep(b: Bench, dt: torch.dtype, cfg: dict[str, int], ms: list[int]) -> None:
    """Time (no energy) each Llama linear shape over token counts M: locates the memory/compute knee."""
    h, i = cfg["hidden"], cfg["intermediate"]
    shapes = {"qkv": (3 * h, h), "o": (h, h), "gate_up": (2 * i, h), "down": (h, i)}
    esz = torch.tensor([], dtype=dt).element_size()
    for name, (n_out, k) in shapes.items():
        copies = max(1, math.ceil(256e6 / (n_out * k * esz))) if b.cuda else 1
        ws = [torch.randn(n_out, k, device=b.device, dtype=dt) for _ in range(copies)]
        for m in ms:
            x = torch.randn(m, k, device=b.device, dtype=dt)
            state = {"i": 0}

            def step(x: torch.Tensor = x, ws: list = ws, state: dict = state) -> torch.Tensor:
                state["i"] = (state["i"] + 1) % len(ws)
                return x @ ws[state["i"]].t()

            b.run("gemm_sweep", step, seconds=0.05, warmup=2,
                  params={"shape": name, "m": m, "n": n_out, "k": k},
                  flops=2.0 * m * n_out * k, bytes_moved=float((n_out * k + m * (n_out + k)) * esz))
        del ws


def attention_tests(b: Bench, dt: torch.dtype, cfg: dict[str, int], quick: bool, seconds: float) -> None:
    """scaled_dot_product_attention alone: causal prefill FLOP rate and decode KV-read bandwidth."""
    nh, hd = cfg["heads"], cfg["hidden"] // cfg["heads"]
    esz = torch.tensor([], dtype=dt).element_size()
    for bsz, n in ([(1, 128)] if quick else [(1, 2048), (4, 2048), (1, 8192)]):
        q, k, v = (torch.randn(bsz, nh, n, hd, device=b.device, dtype=dt) for _ in range(3))
        flops = 4.0 * bsz * nh * hd * n * (n + 1) / 2  # causal: QK^T and PV over the lower triangle
        b.run("attn_prefill", lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
              seconds=seconds, params={"batch": bsz, "tokens": n, "heads": nh, "head_dim": hd}, flops=flops,
              bytes_moved=4.0 * bsz * nh * n * hd * esz)
        del q, k, v
    for bsz, ctx in ([(2, 64)] if quick else [(32, 2048), (128, 512), (8, 8192)]):
        q = torch.randn(bsz, nh, 1, hd, device=b.device, dtype=dt)
        k, v = (torch.randn(bsz, nh, ctx, hd, device=b.device, dtype=dt) for _ in range(2))
        b.run("attn_decode", lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v), seconds=seconds,
              params={"batch": bsz, "context": ctx, "heads": nh, "head_dim": hd},
              flops=4.0 * bsz * nh * hd * ctx, bytes_moved=2.0 * bsz * nh * ctx * hd * esz)
        del q, k, v


class RandomLlama:
    """A Llama-shaped decoder with random weights (no hub, no tokenizer): the matmuls, norms, SiLU-gated MLP,
    attention with a KV cache and an LM head of the real architecture. RoPE is left out (elementwise, ~0.1% of
    the time); the KV cache is dense per sequence rather than paged."""

    def __init__(self, cfg: dict[str, int], device: torch.device, dt: torch.dtype, max_kv_tokens: int) -> None:
        self.cfg = cfg
        h, i, nh, kvh = cfg["hidden"], cfg["intermediate"], cfg["heads"], cfg["kv_heads"]
        self.hd = h // nh
        std = 0.02

        def w(*shape: int) -> torch.Tensor:
            return torch.empty(*shape, device=device, dtype=dt).normal_(0.0, std)

        self.layers = []
        for _ in range(cfg["layers"]):
            self.layers.append({
                "ln1": torch.ones(h, device=device, dtype=dt), "ln2": torch.ones(h, device=device, dtype=dt),
                "qkv": w((nh + 2 * kvh) * self.hd, h), "o": w(h, nh * self.hd),
                "gate_up": w(2 * i, h), "down": w(h, i),
                "kv": torch.empty(2 * max_kv_tokens * kvh * self.hd, device=device, dtype=dt),
            })
        self.embed = w(cfg["vocab"], h)
        self.lm_head = w(cfg["vocab"], h)
        self.ln_f = torch.ones(h, device=device, dtype=dt)
        self.max_kv_tokens = max_kv_tokens

    def n_params(self) -> int:
        per = sum(t.numel() for k, t in self.layers[0].items() if k != "kv")
        return per * len(self.layers) + self.embed.numel() + self.lm_head.numel() + self.ln_f.numel()

    def _kv_views(self, layer: dict, bsz: int, ctx: int) -> tuple[torch.Tensor, torch.Tensor]:
        kvh, hd = self.cfg["kv_heads"], self.hd
        n = bsz * kvh * ctx * hd
        buf = layer["kv"]
        return buf[:n].view(bsz, kvh, ctx, hd), buf[n:2 * n].view(bsz, kvh, ctx, hd)

    def _block(self, layer: dict, x: torch.Tensor, attn: Callable[[torch.Tensor, dict], torch.Tensor]) -> torch.Tensor:
        h = F.rms_norm(x, (x.shape[-1],), layer["ln1"])
        qkv = h @ layer["qkv"].t()
        x = x + attn(qkv, layer) @ layer["o"].t()
        h = F.rms_norm(x, (x.shape[-1],), layer["ln2"])
        gu = h @ layer["gate_up"].t()
        g, u = gu.chunk(2, dim=-1)
        return x + (F.silu(g) * u) @ layer["down"].t()

    def decode(self, x: torch.Tensor, ctx: int) -> torch.Tensor:
        """One decode step for x [B, hidden]: every sequence attends to `ctx` keys (its new token included)."""
        bsz = x.shape[0]
        nh, kvh, hd = self.cfg["heads"], self.cfg["kv_heads"], self.hd

        def attn(qkv: torch.Tensor, layer: dict) -> torch.Tensor:
            q, k, v = qkv.split([nh * hd, kvh * hd, kvh * hd], dim=-1)
            kc, vc = self._kv_views(layer, bsz, ctx)
            kc[:, :, ctx - 1] = k.view(bsz, kvh, hd)
            vc[:, :, ctx - 1] = v.view(bsz, kvh, hd)
            o = F.scaled_dot_product_attention(q.view(bsz, nh, 1, hd), kc, vc, enable_gqa=kvh != nh)
            return o.reshape(bsz, nh * hd)

        for layer in self.layers:
            x = self._block(layer, x, attn)
        return F.rms_norm(x, (x.shape[-1],), self.ln_f) @ self.lm_head.t()

    def prefill(self, x: torch.Tensor, bsz: int, n: int) -> torch.Tensor:
        """Prefill x [B*n, hidden] (B sequences of n new tokens, empty cache): causal attention, KV written."""
        nh, kvh, hd = self.cfg["heads"], self.cfg["kv_heads"], self.hd

        def attn(qkv: torch.Tensor, layer: dict) -> torch.Tensor:
            q, k, v = qkv.view(bsz, n, -1).split([nh * hd, kvh * hd, kvh * hd], dim=-1)
            q = q.view(bsz, n, nh, hd).transpose(1, 2)
            k = k.view(bsz, n, kvh, hd).transpose(1, 2)
            v = v.view(bsz, n, kvh, hd).transpose(1, 2)
            kc, vc = self._kv_views(layer, bsz, n)
            kc.copy_(k)
            vc.copy_(v)
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=kvh != nh)
            return o.transpose(1, 2).reshape(bsz * n, nh * hd)

        for layer in self.layers:
            x = self._block(layer, x, attn)
        last = x.view(bsz, n, -1)[:, -1]
        return F.rms_norm(last, (last.shape[-1],), self.ln_f) @ self.lm_head.t()


def transformer_tests(b: Bench, dt: torch.dtype, cfg: dict[str, int], quick: bool, seconds: float) -> None:
    """Decode (CUDA-graph replay, plus one eager) and prefill of a random-weight Llama: real layer mixes."""
    decode_points = [(1, 64), (2, 128)] if quick else [(1, 1024), (8, 1024), (32, 512), (32, 2048),
                                                       (64, 1024), (128, 512), (256, 256)]
    prefill_points = [(1, 64)] if quick else [(1, 512), (1, 2048), (4, 2048), (1, 8192)]
    max_kv = max(max(bs * c for bs, c in decode_points), max(bs * n for bs, n in prefill_points))
    t0 = time.perf_counter()
    model = RandomLlama(cfg, b.device, dt, max_kv)
    b.sync()
    n_params = model.n_params()
    esz = torch.tensor([], dtype=dt).element_size()
    print(f"[{b.elapsed():6.1f}s] built random llama: {n_params / 1e9:.2f} B params in "
          f"{time.perf_counter() - t0:.1f}s", flush=True)
    h, kvh, hd, layers = cfg["hidden"], cfg["kv_heads"], model.hd, cfg["layers"]
    weight_bytes = (n_params - model.embed.numel()) * esz  # the embedding table is gathered, not streamed
    kv_bytes_per_token = 2 * layers * kvh * hd * esz
    linear_params = n_params - model.embed.numel() - model.lm_head.numel()
    common = {"model": "llama-2-7b-shaped" if not quick else "tiny", "n_params": n_params,
              "weight_bytes": weight_bytes, "kv_bytes_per_token": kv_bytes_per_token,
              "linear_params_per_token": linear_params}
    with torch.inference_mode():
        for bsz, ctx in decode_points:
            x = torch.randn(bsz, h, device=b.device, dtype=dt)
            step: Callable[[], Any] = lambda x=x, ctx=ctx: model.decode(x, ctx)  # noqa: E731
            graph_used = False
            if b.cuda:
                try:
                    s = torch.cuda.Stream()
                    s.wait_stream(torch.cuda.current_stream())
                    with torch.cuda.stream(s):
                        for _ in range(2):
                            model.decode(x, ctx)
                    torch.cuda.current_stream().wait_stream(s)
                    g = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(g):
                        model.decode(x, ctx)
                    step = g.replay
                    graph_used = True
                except Exception as exc:
                    b.errors.append({"test": "decode_graph_capture", "params": f"{bsz},{ctx}", "error": repr(exc),
                                     "trace": traceback.format_exc(limit=3)})
            s_tokens = bsz * ctx
            flops = 2.0 * (linear_params + model.lm_head.numel()) * bsz + 4.0 * layers * h * s_tokens
            bytes_moved = float(weight_bytes + kv_bytes_per_token * s_tokens)
            b.run("llama_decode", step, seconds=seconds, flops=flops, bytes_moved=bytes_moved,
                  params={**common, "batch": bsz, "context": ctx, "context_sum": s_tokens,
                          "cuda_graph": graph_used})
            if graph_used:
                del g
        if not quick:
            x = torch.randn(8, h, device=b.device, dtype=dt)
            b.run("llama_decode", lambda: model.decode(x, 1024), seconds=seconds,
                  params={**common, "batch": 8, "context": 1024, "context_sum": 8192, "cuda_graph": False},
                  flops=2.0 * (linear_params + model.lm_head.numel()) * 8 + 4.0 * layers * h * 8192,
                  bytes_moved=float(weight_bytes + kv_bytes_per_token * 8192))
        for bsz, n in prefill_points:
            x = torch.randn(bsz * n, h, device=b.device, dtype=dt)
            tokens = bsz * n
            flops = (2.0 * linear_params * tokens + 2.0 * model.lm_head.numel() * bsz
                     + 4.0 * layers * h * bsz * n * (n + 1) / 2)
            b.run("llama_prefill", lambda x=x, bsz=bsz, n=n: model.prefill(x, bsz, n), seconds=seconds,
                  flops=flops, bytes_moved=float(weight_bytes + kv_bytes_per_token * tokens),
                  params={**common, "batch": bsz, "new_tokens": n, "tokens": tokens})


def awake_floor(b: Bench, seconds: float) -> None:
    """Back-to-back one-block spin kernels: the GPU is 'busy' at its boost clock but does almost no work."""
    if not b.cuda or not hasattr(torch.cuda, "_sleep"):
        return
    cycles = 2_000_000  # ~1 ms at 2 GHz
    b.run("awake_spin", lambda: torch.cuda._sleep(cycles), seconds=seconds, params={"cycles": cycles})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output JSON path")
    p.add_argument("--quick", action="store_true", help="tiny shapes and short windows (smoke test, CPU ok)")
    p.add_argument("--seconds", type=float, default=None, help="minimum seconds per energy-measured test")
    p.add_argument("--budget-s", type=float, default=330.0, help="skip remaining sections after this many s")
    args = p.parse_args(argv)

    quick = args.quick
    secs = args.seconds if args.seconds is not None else (0.05 if quick else 2.0)
    nvml = Nvml()
    sampler = Sampler(nvml)
    sampler.start()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    b = Bench(nvml, sampler, device, quick)
    report: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "started_unix_s": time.time(),
                              "host": platform.node(), "python": platform.python_version(),
                              "torch": torch.__version__, "cuda": torch.version.cuda,
                              "gpu": nvml.info()}
    # Idle first: before this process creates a CUDA context (torch initialises CUDA lazily).
    b.idle("idle_no_context", 0.2 if quick else 5.0)
    if b.cuda:
        props = torch.cuda.get_device_properties(0)
        report["torch_device"] = {"name": props.name, "sm_count": props.multi_processor_count,
                                  "total_memory_bytes": props.total_memory,
                                  "capability": f"{props.major}.{props.minor}"}
        torch.zeros(1, device=device)
        b.sync()
    b.idle("idle_with_context", 0.2 if quick else 3.0)
    dt = torch.bfloat16
    cfg = TINY if quick else LLAMA2_7B
    sections: list[tuple[str, Callable[[], None]]] = [
        ("awake_floor", lambda: awake_floor(b, secs)),
        ("matmul", lambda: matmul_tests(b, dt, [256] if quick else [8192, 4096], secs)),
        ("memory", lambda: memory_tests(b, dt, (1 << 20) if quick else (2 << 30),
                                        (256, 256) if quick else (2 * 11008, 4096), secs)),
        ("gemm_sweep", lambda: gemm_sweep(b, dt, cfg, [1, 16, 64] if quick else
                                          [1, 8, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192])),
        ("attention", lambda: attention_tests(b, dt, cfg, quick, secs)),
        ("transformer", lambda: transformer_tests(b, dt, cfg, quick, secs)),
    ]
    for name, fn in sections:
        if b.elapsed() > args.budget_s:
            b.errors.append({"test": name, "params": "", "error": "skipped: time budget", "trace": ""})
            continue
        try:
            fn()
        except Exception as exc:
            b.errors.append({"test": name, "params": "", "error": repr(exc), "trace": traceback.format_exc(limit=4)})
            print(f"SECTION FAILED {name}: {exc!r}", file=sys.stderr, flush=True)
        if b.cuda:
            torch.cuda.empty_cache()
    b.idle("idle_after", 0.2 if quick else 3.0)
    sampler.stop()
    report["results"] = b.results
    report["errors"] = b.errors
    report["total_s"] = b.elapsed()
    report["final_clock_event_reasons"] = nvml.clock_event_reasons()
    with open(args.out, "w") as fh:
        json.dump(report, fh, indent=1)
    print(f"wrote {args.out}: {len(b.results)} results, {len(b.errors)} errors, {b.elapsed():.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
