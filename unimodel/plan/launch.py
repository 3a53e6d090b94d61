"""The exact engine launch commands for a plan: ``vllm serve`` and the SGLang equivalent (argv lists).

Mistral checkpoints are served in Mistral's own format (``params.json``, ``consolidated*.safetensors``,
``tekken.json``): tokenizer, config and load format ``mistral``, Mistral's tool-call parser, and its reasoning
parser for the models that think. Attention backend for MLA models, from vLLM's backends: FlashAttention-MLA
(``FLASH_ATTN_MLA``, Mistral Small 4's model card) runs on Hopper only and only with a BF16 KV cache;
everything else (FP8 KV cache, Blackwell, where the card's NVFP4 recipe uses it, Ampere, Ada) gets
``TRITON_MLA``. FlashMLA and the Blackwell CUTLASS/FlashInfer MLA kernels are built for DeepSeek's
512 + 64 latent, not Small 4's 256 + 64. GQA models keep vLLM's own choice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from unimodel.plan.builtin import BUILTIN, HUB_IDS
from unimodel.plan.sizing import DEFAULT_CONCURRENCY_CAP, Sizing
from unimodel.plan.specs import ModelSpec

#: published checkpoints of the built-in flagship by weight precision (FP8 is the reference one)
CHECKPOINTS = {"fp8": "mistralai/Mistral-Small-4-119B-2603",
               "nvfp4": "mistralai/Mistral-Small-4-119B-2603-NVFP4"}
_MISTRAL_NAMES = ("mistral", "magistral", "devstral", "ministral", "pixtral", "codestral")
_THINKERS = ("mistral-small-4", "magistral")
#: pre-quantized checkpoints need no --quantization flag: vLLM reads the method from the checkpoint
_PREQUANTIZED = {("mistral-small-4", "fp8"), ("mistral-small-4", "nvfp4")}


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


def attention_backend(spec: ModelSpec, sizing: Sizing) -> Optional[str]:
    if spec.attention != "mla":
        return None
    return "FLASH_ATTN_MLA" if sizing.gpu.hopper and sizing.kv_dtype == "bf16" else "TRITON_MLA"


def quantization_flag(model: str, weights: str) -> Optional[str]:
    """``fp8`` quantizes a BF16 checkpoint online; the 4-bit formats need a pre-quantized checkpoint."""
    if weights == "fp8" and (model, weights) not in _PREQUANTIZED:
        return "fp8"
    return None


def vllm_argv(spec: ModelSpec, sizing: Sizing, model: str, *, served_model_name: Optional[str] = None,
              host: str = "127.0.0.1", port: int = 8000) -> list[str]:
    argv = ["vllm", "serve", checkpoint_for(model, sizing.weights)]
    if is_mistral(model):
        argv += ["--tokenizer-mode", "mistral", "--config-format", "mistral", "--load-format", "mistral"]
        if any(t in model.lower() for t in _THINKERS):
            argv += ["--reasoning-parser", "mistral"]
        argv += ["--tool-call-parser", "mistral", "--enable-auto-tool-choice"]
    argv += ["--tensor-parallel-size", str(sizing.gpus), "--max-model-len", str(sizing.max_model_len),
             "--gpu-memory-utilization", str(sizing.utilization), "--kv-cache-dtype",
             "fp8" if sizing.kv_dtype == "fp8" else "auto"]
    backend = attention_backend(spec, sizing)
    if backend:
        argv += ["--attention-backend", backend]
    quant = quantization_flag(model, sizing.weights)
    if quant:
        argv += ["--quantization", quant]
    argv += ["--max-num-seqs", str(max(1, min(sizing.concurrency, 4 * DEFAULT_CONCURRENCY_CAP))),
             "--served-model-name", served_model_name or model, "--host", host, "--port", str(port)]
    return argv


def sglang_argv(spec: ModelSpec, sizing: Sizing, model: str, *, served_model_name: Optional[str] = None,
                host: str = "127.0.0.1", port: int = 30000) -> list[str]:
    argv = ["python", "-m", "sglang.launch_server", "--model-path", checkpoint_for(model, sizing.weights),
            "--tp", str(sizing.gpus), "--context-length", str(sizing.max_model_len),
            "--mem-fraction-static", str(sizing.utilization)]
    if is_mistral(model):
        if any(t in model.lower() for t in _THINKERS):
            argv += ["--reasoning-parser", "mistral"]
        argv += ["--tool-call-parser", "mistral"]
    if sizing.kv_dtype == "fp8":
        argv += ["--kv-cache-dtype", "fp8_e4m3"]
    if spec.attention == "mla" and not sizing.gpu.hopper:
        argv += ["--attention-backend", "triton"]  # FlashInfer's MLA kernels expect DeepSeek's 512 latent
    quant = quantization_flag(model, sizing.weights)
    if quant:
        argv += ["--quantization", quant]
    argv += ["--max-running-requests", str(max(1, min(sizing.concurrency, 4 * DEFAULT_CONCURRENCY_CAP))),
             "--served-model-name", served_model_name or model, "--host", host, "--port", str(port)]
    return argv
