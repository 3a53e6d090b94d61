"""Every engine setting given on the command line reaches the engine that serves, for each engine kind.

The flags go through the real CLI (``unimodel serve``, with the server's run replaced by a recorder) and the
real composition root; then the engine set it built is read back. The extra upstreams (fallbacks, canary,
named ones) share the primary's upstream settings, so they are checked too.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.serve_cli import serve_settings
from unimodel.compose import compose
from unimodel.engines.options import UpstreamOptions
from unimodel.engines.upstream import UpstreamEngine
from unimodel.images.decode import ImageLimits

BIN = Path(__file__).resolve().parents[1] / "support" / "bin"  # a stand-in `vllm` on PATH

UPSTREAM_FLAGS = ["--upstream-api-key", "sk-up", "--upstream-parse", "gateway", "--model-family", "think-tags",
                  "--model-families", json.dumps({"other-model": "mistral"}),
                  "--upstream-connect-timeout-s", "2.5", "--upstream-read-timeout-s", "42",
                  "--upstream-max-connections", "7", "--fallback-upstream", "http://127.0.0.1:9/v1",
                  "--canary-upstream", "http://127.0.0.1:9/v2", "--no-request-log"]
EXPECTED = UpstreamOptions(api_key="sk-up", parse_mode="gateway", family="think-tags",
                           families={"other-model": "mistral"}, connect_timeout_s=2.5, read_timeout_s=42.0,
                           max_connections=7)


settings_from = serve_settings


def check_extras(engines: object) -> None:
    extras = getattr(engines, "extras")
    assert sorted(extras) == ["canary", "fallback-1"]
    for engine in extras.values():
        assert isinstance(engine, UpstreamEngine) and engine.options == EXPECTED


def test_upstream(monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings_from(monkeypatch, "--engine", "upstream", "--upstream", "http://127.0.0.1:9/v1", "--model", "up",
                      "--served-model-name", "served", *UPSTREAM_FLAGS)
    engines = compose(s).engines
    primary = engines.primary
    assert isinstance(primary, UpstreamEngine) and primary.options == EXPECTED
    assert (primary.base_url, primary.upstream_model, primary.served_model_name) == \
        ("http://127.0.0.1:9/v1", "up", "served")
    check_extras(engines)


def test_vllm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", f"{BIN}:{__import__('os').environ['PATH']}")
    s = settings_from(monkeypatch, "--engine", "vllm", "--vllm-gpu", "h200", "--vllm-gpus", "2",
                      "--vllm-port", "18123", "--served-model-name", "small4", "--max-model-len", "8192",
                      "--vllm-arg=--max-num-seqs=64", *UPSTREAM_FLAGS)
    engines = compose(s).engines
    vllm = engines.primary
    assert vllm.kind == "vllm"
    upstream = getattr(vllm, "upstream")
    assert isinstance(upstream, UpstreamEngine) and upstream.options == EXPECTED  # was 600 s and 256 whatever
    assert upstream.base_url == "http://127.0.0.1:18123/v1" and upstream.served_model_name == "small4"
    argv = getattr(vllm, "argv")
    assert "--max-num-seqs" in argv and argv[argv.index("--max-num-seqs") + 1] == "64"
    assert argv[argv.index("--port") + 1] == "18123" and argv[argv.index("--max-model-len") + 1] == "8192"
    assert argv[argv.index("--tensor-parallel-size") + 1] == "2"
    check_extras(engines)


def test_local(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    s = settings_from(monkeypatch, "--engine", "local", "--model", "tiny-random", "--served-model-name", "tiny",
                      "--device", "cpu", "--dtype", "float32", "--max-model-len", "256", "--max-num-seqs", "3",
                      "--max-queue", "5", "--queue-timeout", "7", "--max-prefill-tokens", "32",
                      "--kv-memory-gb", "0.5", "--cpu-threads", "1", "--max-image-bytes", "2048",
                      "--max-image-pixels", "4096", "--max-images-per-request", "2",
                      "--cache-dir", str(tmp_path), *UPSTREAM_FLAGS)
    engines = compose(s).engines
    local = engines.primary
    assert local.kind == "local"
    got = {name: getattr(local, name) for name in (
        "model_name", "served_model_name", "device", "dtype", "requested_max_model_len", "max_num_seqs",
        "max_queue", "queue_timeout_s", "max_prefill_tokens", "kv_memory_gb", "cpu_threads", "image_limits",
        "model_family", "cache_dir")}
    assert got == {"model_name": "tiny-random", "served_model_name": "tiny", "device": "cpu", "dtype": "float32",
                   "requested_max_model_len": 256, "max_num_seqs": 3, "max_queue": 5, "queue_timeout_s": 7.0,
                   "max_prefill_tokens": 32, "kv_memory_gb": 0.5, "cpu_threads": 1,
                   "image_limits": ImageLimits(max_bytes=2048, max_pixels=4096, max_images=2),
                   "model_family": "think-tags", "cache_dir": tmp_path}
    check_extras(engines)
