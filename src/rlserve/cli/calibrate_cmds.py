"""``rlserve calibrate``: fit the simulator's perf-model knobs to a live vLLM server and write a calibration file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rlserve.bench.calibrate import calibrate_server, model_spec
from rlserve.bench.profile import ProfileDesign
from rlserve.cli.app import app, console, err_console
from rlserve.errors import ConfigError


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"--{what} must be comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise ConfigError(f"--{what} must list positive integers, got {text!r}")
    return values


@app.command()
def calibrate(
    url: Annotated[str, typer.Option("--url", help="Base URL of a live OpenAI-compatible vLLM server.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Calibration file to write (JSON).")],
    model: Annotated[str, typer.Option(help="The served model's architecture: a catalogue name, a HF config.json "
                                            "or a model directory.")],
    gpu: Annotated[str | None, typer.Option(help="Catalogue GPU the server runs on; omit for a CPU server "
                                                 "(fitted on a nominal CPU device).")] = None,
    tp: Annotated[int, typer.Option(help="Tensor-parallel degree of the server.")] = 1,
    served_model: Annotated[str | None, typer.Option(help="Served model name (default: the first listed).")] = None,
    budget_s: Annotated[float, typer.Option(help="Upper bound on the profiling time, seconds.")] = 180.0,
    prefill_sizes: Annotated[str, typer.Option(help="Lone-prefill prompt sizes.")] = "16,64,128,256,512,768,1024,1536",
    decode_batches: Annotated[str, typer.Option(help="Decode batch sizes (<= the server's max_num_seqs).")]
    = "1,2,4,8,16",
    decode_contexts: Annotated[str, typer.Option(help="Decode prompt lengths.")] = "32,256,1024",
    decode_tokens: Annotated[int, typer.Option(help="Tokens generated per decode request.")] = 64,
    repeats: Annotated[int, typer.Option(help="Repeats of every measurement.")] = 3,
    max_model_len: Annotated[int, typer.Option(help="The server's max_model_len (caps the sizes).")] = 2048,
    request_timeout_s: Annotated[float, typer.Option(help="Give up on a request after this many seconds.")] = 60.0,
    seed: Annotated[int, typer.Option(help="Seed of the random prompts.")] = 0,
) -> None:
    """Profile a live server (lone prefills, decode batches, KV config from /metrics), fit the perf model by least
    squares, print the fit error per term and write a calibration file for a scenario's ``perf:`` section."""
    if budget_s <= 0 or repeats < 1 or decode_tokens < 8:
        raise ConfigError("--budget-s must be > 0, --repeats >= 1 and --decode-tokens >= 8")
    design = ProfileDesign(prefill_sizes=_ints(prefill_sizes, "prefill-sizes"), prefill_repeats=repeats,
                           decode_batches=_ints(decode_batches, "decode-batches"),
                           decode_contexts=_ints(decode_contexts, "decode-contexts"), decode_tokens=decode_tokens,
                           decode_repeats=repeats, max_model_len=max_model_len, budget_s=budget_s,
                           request_timeout_s=request_timeout_s, seed=seed)
    spec = model_spec(model)
    console.print(f"profiling {url}: {design.steps()} measurements, at most {budget_s:g} s", highlight=False)
    cal = calibrate_server(url.rstrip("/"), spec, gpu=gpu, tp=tp, served_model=served_model, design=design,
                           progress=lambda line: console.print(line, highlight=False))
    if cal.fit is None:
        raise ConfigError(f"only {len(cal.profile.prefills)} prefill and {len(cal.profile.decodes)} decode points "
                          f"measured in {budget_s:g} s: too few to fit; raise --budget-s. Nothing written")
    console.print(cal.fit.table(), highlight=False)
    source = f"rlserve calibrate --url {url} --model {model}" + (f" --gpu {gpu}" if gpu else " (CPU device)")
    if not cal.profile.complete:
        partial = out.with_name(out.stem + ".partial.json")
        cal.write(partial, source)
        err_console.print(f"error: the design was not finished in {budget_s:g} s (missing: "
                          f"{', '.join(cal.profile.missing[:5])}{'...' if len(cal.profile.missing) > 5 else ''}); "
                          f"partial fit written to {partial} marked incomplete; raise --budget-s", highlight=False)
        raise typer.Exit(1)
    cal.write(out, source)
    console.print(f"wrote {out} (block_size={cal.profile.block_size}, num_gpu_blocks={cal.profile.num_gpu_blocks}); "
                  f"reference it as perf: {{calibration: {out}}}", highlight=False)
