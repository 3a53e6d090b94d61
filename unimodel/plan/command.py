"""``unimodel plan``: parse flags, make the plan, print it (rich table, or ``--json``)."""

from __future__ import annotations

import json
from typing import Optional

import typer

from unimodel.plan.planner import make_plan
from unimodel.plan.report import render


def register(app: typer.Typer) -> None:
    @app.command()
    def plan(
        model: str = typer.Option("mistral-small-4", help="Built-in name, checkpoint path, or hub id."),
        gpu: str = typer.Option("h200", help="h100 | h200 | b200 | a100-80g | l40s | rtx-4090 | ..."),
        gpus: int = typer.Option(2, help="GPUs (tensor-parallel size)."),
        weights: str = typer.Option("fp8", help="bf16 | fp8 | nvfp4 | int4"),
        kv_cache: str = typer.Option("auto", help="auto | bf16 | fp8"),
        max_model_len: Optional[int] = typer.Option(None, help="Context length to plan for (default: the model's)."),
        gpu_memory_utilization: float = typer.Option(0.9, help="Share of GPU memory vLLM may use."),
        concurrency: Optional[int] = typer.Option(None, help="Sequences decoded together, for the speed bound."),
        price_per_gpu_hour: Optional[float] = typer.Option(None, help="USD per GPU-hour (default: catalog)."),
        compare_four: bool = typer.Option(False, "--compare-four", help="Price the four-server setup too."),
        as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    ) -> None:
        """Size the hardware, price it, and print the exact vLLM/SGLang launch command."""
        if weights not in ("bf16", "fp8", "nvfp4", "int4"):
            raise typer.BadParameter(f"'{weights}' is not one of bf16, fp8, nvfp4, int4", param_hint="--weights")
        if kv_cache not in ("auto", "bf16", "fp8"):
            raise typer.BadParameter(f"'{kv_cache}' is not one of auto, bf16, fp8", param_hint="--kv-cache")
        try:
            result = make_plan(model, gpu, gpus, weights, kv_cache, max_model_len,  # type: ignore[arg-type]
                               gpu_memory_utilization, concurrency, price_per_gpu_hour, compare_four)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from exc
        if as_json:
            typer.echo(json.dumps(result.to_dict(), indent=2))
        else:
            render(result)
