"""The exact engine launch commands for a plan: ``vllm serve`` and the SGLang equivalent (argv lists)."""

from __future__ import annotations

from typing import Optional

from unimodel.plan.sizing import Sizing
from unimodel.plan.specs import ModelSpec

#: published checkpoints of the built-in flagship by weight precision
CHECKPOINTS = {"fp8": "mistralai/Mistral-Small-4-119B-2603",
               "nvfp4": "mistralai/Mistral-Small-4-119B-2603-NVFP4"}


def checkpoint_for(model: str, weights: str) -> str:
    if model == "mistral-small-4":
        return CHECKPOINTS.get(weights, CHECKPOINTS["fp8"])
    return model


def _is_mistral(spec: ModelSpec, model: str) -> bool:
    return model == "mistral-small-4" or spec.attention == "mla" or "mistral" in model.lower()


def vllm_command(spec: ModelSpec, sizing: Sizing, model: str, *, served_model_name: Optional[str] = None,
                 host: str = "127.0.0.1", port: int = 8000) -> list[str]:
    argv = ["vllm", "serve", checkpoint_for(model, sizing.weights)]
    if _is_mistral(spec, model):
        argv += ["--tokenizer-mode", "mistral", "--config-format", "mistral", "--load-format", "mistral",
                 "--reasoning-parser", "mistral", "--tool-call-parser", "mistral", "--enable-auto-tool-choice"]
    argv += ["--tensor-parallel-size", str(sizing.gpus), "--max-model-len", str(sizing.max_model_len),
             "--gpu-memory-utilization", str(sizing.utilization)]
    if sizing.kv_dtype == "fp8":
        argv += ["--kv-cache-dtype", "fp8"]
    if spec.attention == "mla":
        # FlashMLA needs Hopper or newer; Ampere/Ada fall back to the Triton MLA kernels
        argv += ["--attention-backend", "FLASHMLA" if sizing.gpu.fp8 and sizing.gpu.memory_gb >= 80 else "TRITON_MLA"]
    if sizing.weights == "fp8" and model != "mistral-small-4":
        argv += ["--quantization", "fp8"]  # online FP8 of a BF16 checkpoint
    if sizing.concurrency:
        argv += ["--max-num-seqs", str(max(1, min(sizing.concurrency, 1024)))]
    argv += ["--served-model-name", served_model_name or model, "--host", host, "--port", str(port)]
    return argv


def sglang_command(spec: ModelSpec, sizing: Sizing, model: str, *, served_model_name: Optional[str] = None,
                   host: str = "127.0.0.1", port: int = 30000) -> list[str]:
    argv = ["python", "-m", "sglang.launch_server", "--model-path", checkpoint_for(model, sizing.weights),
            "--tp", str(sizing.gpus), "--context-length", str(sizing.max_model_len),
            "--mem-fraction-static", str(sizing.utilization)]
    if _is_mistral(spec, model):
        argv += ["--reasoning-parser", "mistral", "--tool-call-parser", "mistral"]
    if sizing.kv_dtype == "fp8":
        argv += ["--kv-cache-dtype", "fp8_e4m3"]
    if sizing.weights == "fp8" and model != "mistral-small-4":
        argv += ["--quantization", "fp8"]
    argv += ["--served-model-name", served_model_name or model, "--host", host, "--port", str(port)]
    return argv
