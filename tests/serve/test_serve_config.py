"""Proxy configuration: validation with actionable messages, the replicas file, the open-bind warning."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlserve.errors import ConfigError, InputError
from rlserve.serve import ProxyConfig, ReplicaSpec, load_replicas_file


def test_replica_url_is_normalised_and_validated() -> None:
    assert ReplicaSpec("http://h:8000/v1/").url == "http://h:8000"
    with pytest.raises(ConfigError, match="http://"):
        ReplicaSpec("h:8000")
    with pytest.raises(ConfigError, match="max_num_seqs"):
        ReplicaSpec("http://h:1", max_num_seqs=0)
    with pytest.raises(ConfigError, match="decode_tokens_per_s"):
        ReplicaSpec("http://h:1", decode_tokens_per_s=float("nan"))


def test_proxy_config_rejects_what_cannot_work() -> None:
    with pytest.raises(ConfigError, match="at least one replica"):
        ProxyConfig(replicas=())
    with pytest.raises(ConfigError, match="distinct"):
        ProxyConfig(replicas=(ReplicaSpec("http://h:1"), ReplicaSpec("http://h:1/")))
    with pytest.raises(ConfigError, match="queue_timeout_s"):
        ProxyConfig(replicas=(ReplicaSpec("http://h:1"),), queue_timeout_s=0)
    with pytest.raises(ConfigError, match="port"):
        ProxyConfig(replicas=(ReplicaSpec("http://h:1"),), port=70000)


def test_listening_beyond_loopback_without_a_key_warns() -> None:
    replicas = (ReplicaSpec("http://h:1"),)
    with pytest.warns(UserWarning, match="without an API key"):
        ProxyConfig(replicas=replicas, host="0.0.0.0")
    ProxyConfig(replicas=replicas, host="0.0.0.0", api_key="k")  # no warning (warnings are errors here)


def test_replicas_file(tmp_path: Path) -> None:
    good = tmp_path / "replicas.yaml"
    good.write_text("replicas:\n  - {url: 'http://a:1', decode_tokens_per_s: 95, max_num_seqs: 128}\n"
                    "  - {url: 'http://b:1', concurrency_cap: 4}\n")
    a, b = load_replicas_file(good)
    assert (a.url, a.decode_tokens_per_s, a.max_num_seqs, b.concurrency_cap) == ("http://a:1", 95, 128, 4)
    bad = tmp_path / "bad.yaml"
    bad.write_text("replicas:\n  - {url: 'http://a:1', speed: 3}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: replicas\[0\]: unknown key 'speed'; allowed: block_size"):
        load_replicas_file(bad)
    bad.write_text("replicas:\n  - {url: 'http://a:1'}\n  - {url: 'http://b:1', max_num_seqs: 'abc'}\n")
    with pytest.raises(ConfigError, match=r"replicas\[1\]: max_num_seqs: input should be a valid integer"):
        load_replicas_file(bad)
    bad.write_text("replicas:\n  - {url: 'http://a:1', max_num_seqs: .nan}\n")
    with pytest.raises(ConfigError, match="max_num_seqs"):
        load_replicas_file(bad)
    (tmp_path / "dir.yaml").mkdir()
    with pytest.raises(InputError, match="cannot read replicas file"):
        load_replicas_file(tmp_path / "dir.yaml")
    bad.write_text("- http://a:1\n")
    with pytest.raises(InputError, match="top-level 'replicas:'"):
        load_replicas_file(bad)
    with pytest.raises(InputError, match="cannot read"):
        load_replicas_file(tmp_path / "missing.yaml")
