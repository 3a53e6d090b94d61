"""``unimodel plan``: parse flags, make the plan, print it (rich table, or ``--json``). Nothing else.

``register(app)`` adds the command to a typer app (the CLI's, or a test's). Bad input (an unknown GPU, zero
GPUs, a negative length, a config that is not a decoder, ...) ends with one line on stderr and exit code 2.
"""

from __future__ import annotations

import json
from typing import Optional

import typer

from unimodel.plan.planner import make_plan
from unimodel.plan.report import render

ERROR_PREFIX = "unimodel: error: "


def _fail(message: str) -> None:
    typer.echo(ERROR_PREFIX + " ".join(message.split()), err=True)
    raise typer.Exit(2)


def register(app: typer.Typer) -> None:
    @app.command()
    def plan(
        model: str = typer.Option("mistral-small-4", help="Built-in name, checkpoint dir or config.json, or hub id."),
        gpu: str = typer.Option("h200", help="h100 | h100-nvl | h200 | b200 | a100-80g | l40s | rtx-4090 | ..."),
        gpus: int = typer.Option(2, help="GPUs (tensor-parallel size)."),
        weights: str = typer.Option("fp8", help="bf16 | fp8 | nvfp4 | int4"),
        kv_cache: str = typer.Option("auto", help="auto (= the model's BF16) | bf16 | fp8"),
        max_model_len: Optional[int] = typer.Option(
            None, help="Context length to plan for (default: the model's, at most 262144)."),
        gpu_memory_utilization: float = typer.Option(0.9, help="Share of GPU memory vLLM may use."),
        concurrency: Optional[int] = typer.Option(
            None, help="Sequences decoded together (default: what fits, at most 256)."),
        price_per_gpu_hour: Optional[float] = typer.Option(None, help="USD per GPU-hour (default: the catalog's)."),
        compare_four: bool = typer.Option(False, "--compare-four",
                                          help="Also price four single-purpose servers sized the same way."),
        as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    ) -> None:
        """Size the hardware from the model's config.json, price it, and print the vLLM/SGLang command."""
        try:
            result = make_plan(model, gpu, gpus, weights, kv_cache, max_model_len,  # type: ignore[arg-type]
                               gpu_memory_utilization, concurrency, price_per_gpu_hour, compare_four)
        except ValueError as exc:  # SpecError included
            _fail(str(exc))
            return
        if as_json:
            typer.echo(json.dumps(result.to_dict(), indent=2))
        else:
            render(result)
