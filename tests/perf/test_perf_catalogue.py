import json

import pytest

from rlserve.errors import ConfigError, InputError
from rlserve.perf import get_gpu, get_model, gpu_names, load_hf_config, model_names
from rlserve.perf.calibration import DATA_DIR


def _h200_measurements() -> dict:
    return json.loads((DATA_DIR / "measurements_h200.json").read_text())


@pytest.mark.parametrize("alias,name", [
    ("A100-80GB", "a100-80gb"), ("NVIDIA A100-SXM4-80GB", "a100-80gb"), ("h100", "h100-sxm"),
    ("NVIDIA H100 80GB HBM3", "h100-sxm"), ("NVIDIA H200", "h200"), ("nvidia_l40s", "l40s"), ("NVIDIA A40", "a40"),
    ("Tesla V100-SXM2-32GB", "v100"),
])
def test_gpu_aliases_resolve_case_insensitively(alias, name):
    assert get_gpu(alias).name == name


def test_unknown_gpu_is_a_config_error_listing_known_names():
    with pytest.raises(ConfigError, match="known: .*h200"):
        get_gpu("rtx-4090")


@pytest.mark.parametrize("alias,name", [
    ("meta-llama/Llama-2-7b-hf", "llama-2-7b"), ("CodeLlama-34b", "codellama-34b"),
    ("meta-llama/Meta-Llama-3-70B-Instruct", "llama-3-70b"), ("mistralai/Mistral-7B-v0.1", "mistral-7b"),
    ("Qwen/Qwen-7B", "qwen-7b"),
])
def test_model_aliases_resolve(alias, name):
    assert get_model(alias).name == name


def test_unknown_model_is_a_config_error():
    with pytest.raises(ConfigError, match="config.json"):
        get_model("gpt-5")


@pytest.mark.parametrize("name,billions", [
    ("llama-2-7b", 6.74), ("llama-2-13b", 13.02), ("llama-2-70b", 68.98), ("llama-3-8b", 8.03),
    ("llama-3-70b", 70.55), ("codellama-34b", 33.74), ("mistral-7b", 7.24), ("qwen-7b", 7.72),
])
def test_parameter_counts_match_the_published_model_sizes(name, billions):
    assert get_model(name).num_params / 1e9 == pytest.approx(billions, rel=0.005)


def test_llama_2_7b_parameter_count_equals_the_measured_random_model():
    # measure_gpu.py built the same architecture with torch and counted its tensors on the GPU
    llama = next(r for r in _h200_measurements()["results"] if r["name"] == "llama_decode")
    assert get_model("llama-2-7b").num_params == llama["params"]["n_params"]
    assert get_model("llama-2-7b").kv_bytes_per_token == llama["params"]["kv_bytes_per_token"]


def test_h200_clock_table_matches_the_clocks_nvml_reported():
    measured = _h200_measurements()["gpu"]["supported_sm_clocks_mhz_by_mem_clock"]["3201"]
    assert get_gpu("h200").supported_clocks_mhz() == [float(c) for c in measured]


def test_h200_memory_matches_nvml():
    assert get_gpu("h200").memory_bytes == _h200_measurements()["gpu"]["memory_total_bytes"]


@pytest.mark.parametrize("name", gpu_names())
def test_every_gpu_has_consistent_clock_and_power_numbers(name):
    g = get_gpu(name)
    clocks = g.supported_clocks_mhz()
    assert clocks[0] == g.sm_clock_min_mhz and clocks[-1] == g.sm_clock_max_mhz
    assert 0 < g.idle_power_w < g.calibration.awake_power_w < g.max_power_w
    assert g.sm_clock_min_mhz < g.calibration.sustained_gemm_clock_mhz <= g.sm_clock_max_mhz
    for f in ("eff_compute_linear", "eff_compute_attn", "eff_mem_linear", "eff_mem_attn", "eff_mem_elementwise"):
        assert 0 < getattr(g.calibration, f) <= 1


def test_snap_clock_rounds_to_the_step_and_rejects_out_of_range():
    h = get_gpu("h200")
    assert h.snap_clock(1000) == 1005.0
    assert h.snap_clock(1982) == 1980.0
    assert get_gpu("a100").snap_clock(1007.4) == 1005.0
    with pytest.raises(ConfigError, match="345-1980"):
        h.snap_clock(2100)
    with pytest.raises(ConfigError):
        h.snap_clock(100)


# ---------------------------------------------------------------------------------------------- config.json
LLAMA2_7B_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008,
    "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 32, "vocab_size": 32000,
    "max_position_embeddings": 4096, "torch_dtype": "float16", "tie_word_embeddings": False,
    "_name_or_path": "meta-llama/Llama-2-7b-hf",
}


def _write(tmp_path, cfg, name="config.json"):
    p = tmp_path / name
    p.write_text(cfg if isinstance(cfg, str) else json.dumps(cfg))
    return p


def test_hf_config_gives_the_catalogue_architecture(tmp_path):
    spec = load_hf_config(_write(tmp_path, LLAMA2_7B_CONFIG))
    cat = get_model("llama-2-7b")
    assert spec.name == "meta-llama/Llama-2-7b-hf"
    for field in ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim", "intermediate_size",
                  "vocab_size", "dtype_bytes", "num_params", "kv_bytes_per_token"):
        assert getattr(spec, field) == getattr(cat, field), field


def test_hf_config_defaults_kv_heads_to_attention_heads_and_reads_head_dim(tmp_path):
    cfg = {k: v for k, v in LLAMA2_7B_CONFIG.items() if k != "num_key_value_heads"}
    assert load_hf_config(_write(tmp_path, cfg)).num_kv_heads == 32
    spec = load_hf_config(_write(tmp_path, {**cfg, "num_key_value_heads": 8, "head_dim": 256}))
    assert (spec.num_kv_heads, spec.head_dim, spec.q_dim) == (8, 256, 8192)


def test_hf_config_qwen_v1_halves_its_summed_intermediate_size(tmp_path):
    cfg = {"model_type": "qwen", "hidden_size": 4096, "intermediate_size": 22016, "num_attention_heads": 32,
           "num_hidden_layers": 32, "vocab_size": 151936, "max_position_embeddings": 8192}
    assert load_hf_config(_write(tmp_path, cfg)).num_params == get_model("qwen-7b").num_params


@pytest.mark.parametrize("cfg,match", [
    ({k: v for k, v in LLAMA2_7B_CONFIG.items() if k != "vocab_size"}, "missing field.*vocab_size"),
    ({**LLAMA2_7B_CONFIG, "num_hidden_layers": 0}, "num_hidden_layers must be a positive integer"),
    ({**LLAMA2_7B_CONFIG, "hidden_size": "4096"}, "hidden_size must be a positive integer"),
    ({**LLAMA2_7B_CONFIG, "num_key_value_heads": 5}, "not a multiple of num_key_value_heads"),
    ({**LLAMA2_7B_CONFIG, "hidden_size": 4095}, "add head_dim"),
    ({**LLAMA2_7B_CONFIG, "torch_dtype": "int4"}, "unsupported torch_dtype"),
    ({**LLAMA2_7B_CONFIG, "num_local_experts": 8}, "mixture-of-experts"),
    ([1, 2, 3], "JSON object"),
    ("{not json", "not valid JSON"),
])
def test_bad_hf_configs_give_one_line_input_errors_naming_the_file(tmp_path, cfg, match):
    p = _write(tmp_path, cfg)
    with pytest.raises(InputError, match=match) as err:
        load_hf_config(p)
    assert str(p) in str(err.value) and "\n" not in str(err.value)


def test_missing_hf_config_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="no such model config"):
        load_hf_config(tmp_path / "absent" / "config.json")


def test_every_catalogue_model_is_a_valid_hf_config(tmp_path):
    for name in model_names():
        m = get_model(name)
        cfg = {"hidden_size": m.hidden_size, "intermediate_size": m.intermediate_size,
               "num_attention_heads": m.num_heads, "num_key_value_heads": m.num_kv_heads,
               "num_hidden_layers": m.num_layers, "vocab_size": m.vocab_size, "torch_dtype": "bfloat16"}
        assert load_hf_config(_write(tmp_path, cfg)).num_params == m.num_params
