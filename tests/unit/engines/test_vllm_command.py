"""``--vllm-command`` and ``--vllm-gpu cpu``: the argv and the environment the vLLM supervisor would launch,
built from real ``unimodel serve`` flags by the real composition root (nothing is launched).

The machine's own CPU never decides a test: ``/proc/cpuinfo`` is replaced by a fake file (``CPUINFO``), and
vLLM's Python by an executable file in the test's directory.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.serve_cli import serve_settings
from unimodel.compose import build_engine
from unimodel.engines.vllm import VllmEngine
from unimodel.errors import ConfigError

BIN = Path(__file__).resolve().parents[2] / "support" / "bin"  # a stand-in `vllm` on PATH
MODULE = "vllm.entrypoints.openai.api_server"
X86_AVX512 = ("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Xeon\n"
              "flags\t\t: fpu vme de pse tsc msr sse sse2 ssse3 avx avx2 fma avx512f avx512dq avx512bw\n\n"
              "processor\t: 1\nflags\t\t: fpu sse avx avx2 avx512f\n")
X86_AVX2 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu vme sse sse2 ssse3 avx avx2 fma bmi2\n"
ARM = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics\n"
GPU_ONLY = ("--gpu-memory-utilization", "--kv-cache-dtype", "--tensor-parallel-size", "--attention-backend",
            "--quantization")


@pytest.fixture()
def cpuinfo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], Path]:
    """Point the CPU check at a fake ``/proc/cpuinfo`` (an x86 CPU with AVX-512 unless a test writes another)."""
    def write(text: str) -> Path:
        path = tmp_path / "cpuinfo"
        path.write_text(text)
        monkeypatch.setattr("unimodel.plan.cpu.CPUINFO", path)
        return path

    write(X86_AVX512)
    return write


@pytest.fixture()
def vllm_python(tmp_path: Path) -> Path:
    """An executable file where vLLM's Python would be."""
    exe = tmp_path / "vllm venv" / "bin" / "python"  # a space: the command is split like a shell would
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    return exe


def module_command(exe: Path) -> str:
    return f"'{exe}' -m {MODULE}"


def launched(monkeypatch: pytest.MonkeyPatch, *flags: str) -> VllmEngine:
    engine = build_engine(serve_settings(monkeypatch, "--engine", "vllm", "--no-request-log", *flags))
    assert isinstance(engine, VllmEngine)
    return engine


def flag(argv: list[str], name: str) -> str:
    assert argv.count(name) == 1, (name, argv)
    return argv[argv.index(name) + 1]


def test_the_cpu_command_of_the_end_to_end_test(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                cpuinfo: Callable[[str], Path], vllm_python: Path) -> None:
    """`serve --engine vllm --model DIR --vllm-gpu cpu --vllm-command "PY -m vllm...api_server" --max-model-len
    1024`: vLLM's CPU build as its module, the model as --model (the module ignores a positional one), BF16,
    no GPU flag, the KV cache in its environment."""
    model = tmp_path / "model"
    model.mkdir()
    engine = launched(monkeypatch, "--model", str(model), "--vllm-gpu", "cpu", "--vllm-command",
                      module_command(vllm_python), "--max-model-len", "1024", "--vllm-port", "18124")
    assert engine.argv == [str(vllm_python), "-m", MODULE, "--model", str(model), "--dtype", "bfloat16",
                           "--max-model-len", "1024", "--enable-prompt-tokens-details", "--shutdown-timeout", "30",
                           "--served-model-name", str(model), "--host", "127.0.0.1", "--port", "18124"]
    assert engine.env == {"VLLM_CPU_KVCACHE_SPACE": "1"}
    assert engine.upstream.base_url == "http://127.0.0.1:18124/v1"


def test_cpu_keeps_the_mistral_flags_and_takes_its_kv_cache_and_a_default_length(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cpuinfo: Callable[[str], Path],
        vllm_python: Path) -> None:
    model = tmp_path / "magistral-small"  # a thinking Mistral model in Mistral's format
    model.mkdir()
    (model / "params.json").write_text("{}")
    engine = launched(monkeypatch, "--model", str(model), "--vllm-gpu", "CPU", "--vllm-command",
                      module_command(vllm_python), "--vllm-cpu-kv-gib", "3", "--served-model-name", "mag")
    argv = engine.argv
    for name in ("--tokenizer-mode", "--config-format", "--load-format", "--reasoning-parser",
                 "--tool-call-parser"):
        assert flag(argv, name) == "mistral"
    assert "--enable-auto-tool-choice" in argv
    assert flag(argv, "--max-model-len") == "4096" and flag(argv, "--dtype") == "bfloat16"
    assert flag(argv, "--served-model-name") == "mag" and flag(argv, "--model") == str(model)
    assert not [f for f in GPU_ONLY if f in argv]
    assert engine.env == {"VLLM_CPU_KVCACHE_SPACE": "3"}


def test_cpu_with_vllm_serve_puts_the_model_after_serve(monkeypatch: pytest.MonkeyPatch,
                                                        cpuinfo: Callable[[str], Path]) -> None:
    monkeypatch.setenv("PATH", f"{BIN}{os.pathsep}{os.environ['PATH']}")
    engine = launched(monkeypatch, "--model", "some/model", "--vllm-gpu", "cpu", "--max-model-len", "2048")
    assert engine.argv[:3] == ["vllm", "serve", "some/model"] and "--model" not in engine.argv
    assert flag(engine.argv, "--max-model-len") == "2048"


@pytest.mark.parametrize("text", [X86_AVX2, "processor\t: 0\nflags\t\t:\n"])
def test_cpu_without_avx512_is_refused_at_start(monkeypatch: pytest.MonkeyPatch, cpuinfo: Callable[[str], Path],
                                                vllm_python: Path, text: str) -> None:
    fake = cpuinfo(text)
    with pytest.raises(ConfigError, match="no AVX-512") as info:
        launched(monkeypatch, "--model", "m", "--vllm-gpu", "cpu", "--vllm-command", module_command(vllm_python))
    assert str(fake) in str(info.value) and "--vllm-gpu cpu" in str(info.value)


@pytest.mark.parametrize("text", [ARM, None])
def test_cpu_flags_that_cannot_be_read_do_not_refuse(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                     cpuinfo: Callable[[str], Path], vllm_python: Path,
                                                     text: str | None) -> None:
    """Not x86 (Arm lists `Features`), or no /proc/cpuinfo: nothing to judge by, vLLM says what it lacks."""
    if text is None:
        monkeypatch.setattr("unimodel.plan.cpu.CPUINFO", tmp_path / "absent")
    else:
        cpuinfo(text)
    engine = launched(monkeypatch, "--model", "m", "--vllm-gpu", "cpu", "--vllm-command",
                      module_command(vllm_python))
    assert engine.env == {"VLLM_CPU_KVCACHE_SPACE": "1"}


@pytest.mark.parametrize("flags,fragment", [
    (["--vllm-gpus", "2"], "--vllm-gpus 2 does not apply to --vllm-gpu cpu"),
    (["--vllm-kv-cache", "fp8"], "--vllm-kv-cache fp8 does not apply to --vllm-gpu cpu"),
])
def test_gpu_only_settings_are_refused_on_cpu(monkeypatch: pytest.MonkeyPatch, cpuinfo: Callable[[str], Path],
                                              vllm_python: Path, flags: list[str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        launched(monkeypatch, "--model", "m", "--vllm-gpu", "cpu", "--vllm-command", module_command(vllm_python),
                 *flags)


def test_a_gpu_plan_with_the_module_command(monkeypatch: pytest.MonkeyPatch, vllm_python: Path) -> None:
    engine = launched(monkeypatch, "--vllm-gpu", "h200", "--vllm-gpus", "2", "--max-model-len", "65536",
                      "--vllm-command", module_command(vllm_python))
    argv = engine.argv
    assert argv[:5] == [str(vllm_python), "-m", MODULE, "--model", "mistralai/Mistral-Small-4-119B-2603"]
    assert flag(argv, "--tensor-parallel-size") == "2" and flag(argv, "--gpu-memory-utilization") == "0.8"
    assert "serve" not in argv and engine.env is None


def test_vllm_arg_overrides_still_merge(monkeypatch: pytest.MonkeyPatch, cpuinfo: Callable[[str], Path],
                                        vllm_python: Path) -> None:
    """Overrides replace planned flags (--model included in the module form) and never touch the command,
    even one with words that look like flags."""
    command = f"'{vllm_python}' --launcher-opt x -m {MODULE}"
    engine = launched(monkeypatch, "--model", "m", "--vllm-gpu", "cpu", "--vllm-command", command,
                      "--vllm-arg=--dtype=float32", "--vllm-arg=--model=/elsewhere", "--vllm-arg=--launcher-opt=y",
                      "--vllm-arg=--enforce-eager")
    argv = engine.argv
    assert argv[:5] == [str(vllm_python), "--launcher-opt", "x", "-m", MODULE]
    assert argv.count("--launcher-opt") == 2 and argv[argv.index("--launcher-opt", 2) + 1] == "y"
    assert flag(argv, "--dtype") == "float32" and flag(argv, "--model") == "/elsewhere"
    assert flag(argv, "--max-model-len") == "4096" and argv[-1] == "--enforce-eager"
    gpu = launched(monkeypatch, "--vllm-gpu", "h200", "--vllm-gpus", "2", "--vllm-command",
                   module_command(vllm_python), "--vllm-arg=--max-num-seqs=64", "--vllm-arg=--enforce-eager")
    assert flag(gpu.argv, "--max-num-seqs") == "64" and "--enforce-eager" in gpu.argv


def test_the_supervised_vllm_drains_and_is_given_the_time_to(monkeypatch: pytest.MonkeyPatch,
                                                              cpuinfo: Callable[[str], Path],
                                                              vllm_python: Path) -> None:
    """The plan's --shutdown-timeout reaches the supervised vLLM (GPU and CPU), and the supervisor waits that
    long plus vLLM's teardown before SIGKILL, an override included."""
    gpu = launched(monkeypatch, "--vllm-gpu", "h200", "--vllm-gpus", "2", "--vllm-command", module_command(vllm_python))
    cpu = launched(monkeypatch, "--model", "m", "--vllm-gpu", "cpu", "--vllm-command", module_command(vllm_python))
    for engine in (gpu, cpu):
        assert flag(engine.argv, "--shutdown-timeout") == "30" and engine.stop_grace_s == 60.0
    longer = launched(monkeypatch, "--vllm-gpu", "h200", "--vllm-gpus", "2", "--vllm-command",
                      module_command(vllm_python), "--vllm-arg=--shutdown-timeout=90")
    assert flag(longer.argv, "--shutdown-timeout") == "90" and longer.stop_grace_s == 120.0


def test_the_command_must_exist(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, vllm_python: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    gpu = ["--vllm-gpu", "h200", "--vllm-gpus", "2"]
    with pytest.raises(ConfigError, match=r"--vllm-command starts with vllm, which is not a program on PATH") as e:
        launched(monkeypatch, *gpu)
    assert "unimodel[vllm]" in str(e.value) and "-m vllm.entrypoints.openai.api_server" in str(e.value)
    missing = tmp_path / "no" / "python"
    with pytest.raises(ConfigError, match=f"starts with {missing}, which is not an executable file"):
        launched(monkeypatch, *gpu, "--vllm-command", f"{missing} -m {MODULE}")
    vllm_python.chmod(stat.S_IRUSR | stat.S_IWUSR)  # there, but not executable
    with pytest.raises(ConfigError, match="not an executable file"):
        launched(monkeypatch, *gpu, "--vllm-command", module_command(vllm_python))
    vllm_python.chmod(0o755)
    assert launched(monkeypatch, *gpu, "--vllm-command", module_command(vllm_python)).argv[0] == str(vllm_python)
    monkeypatch.setenv("PATH", str(vllm_python.parent))  # a bare name is looked up on PATH
    assert launched(monkeypatch, *gpu, "--vllm-command", f"python -m {MODULE}").argv[:2] == ["python", "-m"]


@pytest.mark.parametrize("value,fragment", [("", "vllm_command"), ("   ", "empty"),
                                            ("'/opt/vllm/bin/python -m x", "not a shell-style command")])
def test_a_command_that_is_not_one_is_a_settings_error(monkeypatch: pytest.MonkeyPatch, value: str,
                                                       fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        serve_settings(monkeypatch, "--engine", "vllm", "--vllm-command", value)


def test_the_default_command_is_vllm_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", f"{BIN}{os.pathsep}{os.environ['PATH']}")
    engine = launched(monkeypatch, "--vllm-gpu", "h200", "--vllm-gpus", "2", "--max-model-len", "65536")
    assert engine.argv[:3] == ["vllm", "serve", "mistralai/Mistral-Small-4-119B-2603"] and engine.env is None


def test_a_built_test_checkpoint_is_served_by_name(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                   cpuinfo: Callable[[str], Path], vllm_python: Path) -> None:
    """`--model tiny-scripted` builds the checkpoint (Mistral's native format) into the cache and hands vLLM its
    directory under the name; its v15 tokenizer thinks, so vLLM gets the reasoning parser too."""
    engine = launched(monkeypatch, "--model", "tiny-scripted", "--cache-dir", str(tmp_path), "--vllm-gpu", "cpu",
                      "--vllm-command", module_command(vllm_python))
    model = Path(flag(engine.argv, "--model"))
    assert model.parent == tmp_path and (model / "params.json").is_file()
    assert flag(engine.argv, "--served-model-name") == "tiny-scripted"
    assert flag(engine.argv, "--reasoning-parser") == "mistral"
    with pytest.raises(ConfigError, match="use tiny-random-native or tiny-scripted"):
        launched(monkeypatch, "--model", "tiny-random", "--cache-dir", str(tmp_path), "--vllm-gpu", "cpu",
                 "--vllm-command", module_command(vllm_python))
