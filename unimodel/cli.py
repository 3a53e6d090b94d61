"""The ``unimodel`` command: parse flags, build settings, call the library, print. Nothing else."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import List, Optional

import typer
from typer.exceptions import TyperException

from unimodel.config import ConfigError, Settings
from unimodel.server.run import StartFailed, run_server
from unimodel.server.workers import run_workers

app = typer.Typer(
    name="unimodel",
    help="One unified model (chat, reasoning, vision, code) behind one OpenAI-compatible endpoint.",
    invoke_without_command=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(ctx: typer.Context) -> None:
    """One unified model (chat, reasoning, vision, code) behind one OpenAI-compatible endpoint."""
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())


@app.command()
def serve(
    model: Optional[str] = typer.Option(None, help="Hub id, local path, or the upstream's model name."),
    engine: Optional[str] = typer.Option(None, help="local | upstream | vllm"),
    upstream: Optional[str] = typer.Option(None, help="Base URL of an OpenAI-compatible server, e.g. http://gpu:8000/v1"),
    upstream_parse: Optional[str] = typer.Option(None, help="auto | upstream | gateway: who splits reasoning/tool calls"),
    upstream_api_key: Optional[str] = typer.Option(None, help="Bearer key sent to the upstream."),
    model_family: Optional[str] = typer.Option(None, help="Output format family: mistral | think-tags"),
    host: Optional[str] = typer.Option(None, help="Bind address (default 127.0.0.1)."),
    port: Optional[int] = typer.Option(None, help="Port (default 8000)."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML settings file (flags and UNIMODEL_* env win)."),
    served_model_name: Optional[str] = typer.Option(None, help="The model name clients send."),
    api_key: Optional[List[str]] = typer.Option(None, "--api-key", help="Accepted client key (repeatable)."),
    max_request_bytes: Optional[int] = typer.Option(None, help="Largest accepted request body."),
    shutdown_grace_s: Optional[float] = typer.Option(None, help="Seconds in-flight requests get on SIGTERM."),
    workers: Optional[int] = typer.Option(None, help="Gateway processes sharing the port (--engine upstream; "
                                                     "with limits or idempotency, --redis)."),
    log_level: Optional[str] = typer.Option(None, help="debug | info | warning | error"),
    device: Optional[str] = typer.Option(None, help="local engine: auto | cpu | cuda"),
    dtype: Optional[str] = typer.Option(None, help="local engine: auto | bfloat16 | float16 | float32"),
    max_model_len: Optional[int] = typer.Option(None, help="Context length (default: the model's)."),
    max_num_seqs: Optional[int] = typer.Option(None, help="local engine: sequences decoded together."),
    max_queue: Optional[int] = typer.Option(None, help="local engine: requests waiting beyond the free slots "
                                                       "before 503."),
    queue_timeout_s: Optional[float] = typer.Option(None, "--queue-timeout",
                                                    help="local engine: seconds a request may wait for a slot "
                                                         "(then 503 with Retry-After)."),
    max_prefill_tokens: Optional[int] = typer.Option(None, help="local engine: longer prompts are prefilled in "
                                                                "chunks of this many tokens, between decode steps."),
    kv_memory_gb: Optional[float] = typer.Option(None, help="local engine: KV cache budget in GB; requests beyond "
                                                            "it wait (default: 90% of free CUDA memory; none on "
                                                            "CPU)."),
    cpu_threads: Optional[int] = typer.Option(None, help="local engine on CPU: PyTorch's kernel threads (default: "
                                                         "the cores less one, so the server keeps a core)."),
    unknown_fields: Optional[str] = typer.Option(None, help="drop | reject: request fields unimodel does not "
                                                            "know (reject: 400 naming the field)."),
    upstream_extra_field: Optional[List[str]] = typer.Option(None, "--upstream-extra-field",
                                                             help="A request field forwarded to the upstream "
                                                                  "as-is (repeatable)."),
    allow_image_urls: Optional[bool] = typer.Option(None, "--allow-image-urls/--no-allow-image-urls",
                                                    help="Fetch http(s) image_url parts (data: URIs always work)."),
    default_max_tokens: Optional[int] = typer.Option(None, help="max_tokens for requests that give none."),
    redis: Optional[str] = typer.Option(None, help="redis://host:6379/0: rate limits and idempotency keys shared "
                                                   "by every replica (default: in this process's memory)."),
    # limits and quotas (per key, per user, high reasoning, in flight)
    rpm: Optional[int] = typer.Option(None, help="Requests per minute per key (a key's own value wins)."),
    tpm: Optional[int] = typer.Option(None, help="Tokens (prompt + completion) per minute per key."),
    user_rpm: Optional[int] = typer.Option(None, help="Requests per minute per end user (the request's user)."),
    user_tpm: Optional[int] = typer.Option(None, help="Tokens per minute per end user."),
    high_reasoning_rpm: Optional[int] = typer.Option(None, help="Requests per minute per key at or above "
                                                                "--high-reasoning-effort."),
    high_reasoning_tpm: Optional[int] = typer.Option(None, help="Tokens per minute per key for those requests."),
    high_reasoning_effort: Optional[str] = typer.Option(None, help="none | minimal | low | medium | high: the "
                                                                   "lowest effort counted as high (high)."),
    max_concurrent: Optional[int] = typer.Option(None, help="Requests in flight per key."),
    rate_limit_window_s: Optional[float] = typer.Option(None, help="The 'minute' of the limits, in seconds (60)."),
    limits_on_redis_failure: Optional[str] = typer.Option(None, help="open | closed: with Redis down, admit "
                                                                     "unchecked (open) or answer 503 (closed)."),
    # idempotency (the Idempotency-Key header)
    idempotency: Optional[bool] = typer.Option(None, "--idempotency/--no-idempotency",
                                               help="Honour the Idempotency-Key header (default on)."),
    idempotency_ttl_s: Optional[float] = typer.Option(None, "--idempotency-ttl",
                                                      help="Seconds a stored response is replayed (86400)."),
    idempotency_in_flight: Optional[str] = typer.Option(None, help="wait | conflict: a repeat while the first "
                                                                   "request still runs waits for it, or gets 409."),
    idempotency_wait_s: Optional[float] = typer.Option(None, help="Longest such wait, then 409 with Retry-After "
                                                                  "(60)."),
    idempotency_max_bytes: Optional[int] = typer.Option(None, help="Largest response stored for replay (4 MiB)."),
    max_json_depth: Optional[int] = typer.Option(None, help="Deepest JSON nesting a request may have (64)."),
    max_images_per_request: Optional[int] = typer.Option(None, help="Images one request may carry (8)."),
    max_image_bytes: Optional[int] = typer.Option(None, help="Largest image, in bytes (10 MiB)."),
    max_image_pixels: Optional[int] = typer.Option(None, help="Largest image, in pixels (40,000,000)."),
    image_fetch_timeout_s: Optional[float] = typer.Option(None, help="Deadline of one image URL fetch (10 s)."),
    vllm_gpu: Optional[str] = typer.Option(None, help="vllm engine: GPU kind (default: nvidia-smi's)."),
    vllm_gpus: Optional[int] = typer.Option(None, help="vllm engine: GPUs to use (tensor parallel)."),
    vllm_weights: Optional[str] = typer.Option(None, help="vllm engine: bf16 | fp8 | nvfp4 | int4"),
    vllm_kv_cache: Optional[str] = typer.Option(None, help="vllm engine: auto | bf16 | fp8"),
    vllm_arg: Optional[List[str]] = typer.Option(None, "--vllm-arg",
                                                 help="vllm engine: a flag to add or override, e.g. "
                                                      "--vllm-arg=--max-num-seqs=64 (repeatable)."),
    # resilience (timeouts, retries, circuit breakers, fallback and canary upstreams)
    retries: Optional[int] = typer.Option(None, help="Tries again on one upstream for a retryable failure "
                                                     "before its first token (2)."),
    retry_backoff_s: Optional[float] = typer.Option(None, help="Base of the exponential backoff with full jitter "
                                                               "(0.2 s)."),
    retry_max_wait_s: Optional[float] = typer.Option(None, help="Longest single wait between tries; an upstream "
                                                                "Retry-After beyond it is not waited for (5 s)."),
    first_token_timeout_s: Optional[float] = typer.Option(None, help="Seconds a try may wait for its first token "
                                                                     "(default: no limit but the read timeout)."),
    total_timeout_s: Optional[float] = typer.Option(None, help="Seconds a whole request may take, stream included "
                                                               "(default: no limit)."),
    breaker_failures: Optional[int] = typer.Option(None, help="Upstream failures in a row that open its circuit "
                                                              "breaker (5; 0: no breaker)."),
    breaker_window_s: Optional[float] = typer.Option(None, help="... within this many seconds (30)."),
    breaker_cooldown_s: Optional[float] = typer.Option(None, help="Seconds a circuit stays open before one probe "
                                                                  "request (30)."),
    fallback_upstream: Optional[List[str]] = typer.Option(None, "--fallback-upstream",
                                                          help="An OpenAI-compatible URL tried when the primary "
                                                               "fails or its circuit is open (repeatable, in "
                                                               "order)."),
    canary_upstream: Optional[str] = typer.Option(None, help="An OpenAI-compatible URL that gets a share of the "
                                                             "requests first (--canary-weight)."),
    canary_weight: Optional[float] = typer.Option(None, help="The share of requests sent to the canary (0.05)."),
    # the request log (one redacted row per request; `unimodel logs`)
    request_log: Optional[bool] = typer.Option(None, "--request-log/--no-request-log",
                                               help="Keep the request log (default on)."),
    data_dir: Optional[Path] = typer.Option(None, help="Where the request log, its secret and spill file live "
                                                       "(default: UNIMODEL_DATA_DIR or ~/.local/share/unimodel)."),
    log_db: Optional[str] = typer.Option(None, help="postgresql://user@host/db, sqlite:///path or a file "
                                                    "(default: requests.db in the data dir)."),
    log_prompts: Optional[bool] = typer.Option(None, "--log-prompts/--no-log-prompts",
                                               help="Also store prompts and answers, redacted (default off)."),
    prompt_retention_days: Optional[float] = typer.Option(None, "--prompt-retention",
                                                          help="Days stored prompts and answers are kept (30)."),
    log_secret: Optional[str] = typer.Option(None, help="HMAC key of the stored user hash (prefer "
                                                        "UNIMODEL_LOG_SECRET; default: generated once, kept "
                                                        "beside the database)."),
    log_buffer_rows: Optional[int] = typer.Option(None, help="Rows held in memory while the log database is "
                                                             "down, before they spill to a file (10000)."),
    log_spill_path: Optional[Path] = typer.Option(None, help="The spill file (default: beside the database)."),
    # metrics (GET /metrics for Prometheus)
    metrics: Optional[bool] = typer.Option(None, "--metrics/--no-metrics", help="Serve GET /metrics (default on)."),
    metrics_key: Optional[str] = typer.Option(None, help="A bearer key /metrics requires (prefer "
                                                         "UNIMODEL_METRICS_KEY; default: open, as Prometheus "
                                                         "scrapes)."),
    # the dashboard (GET /dashboard) and alerts (rules: `alerts:` in the --config file)
    dashboard: Optional[bool] = typer.Option(None, "--dashboard/--no-dashboard",
                                             help="Serve GET /dashboard (default on)."),
    admin_key: Optional[str] = typer.Option(None, help="The one key the dashboard accepts (prefer "
                                                       "UNIMODEL_ADMIN_KEY; default: the API keys)."),
    alert_webhook_url: Optional[str] = typer.Option(None, help="Where firing and resolved alerts are POSTed as "
                                                               "JSON (a rule's own `webhook` wins)."),
) -> None:
    """Serve the OpenAI-compatible endpoint."""
    settings = Settings.load(
        config, model=model, engine=engine, upstream=upstream, upstream_parse=upstream_parse,
        upstream_api_key=upstream_api_key, model_family=model_family, host=host, port=port,
        served_model_name=served_model_name, api_keys=api_key or None,
        max_request_bytes=max_request_bytes, shutdown_grace_s=shutdown_grace_s, workers=workers,
        log_level=log_level,
        device=device, dtype=dtype, max_model_len=max_model_len, max_num_seqs=max_num_seqs,
        max_queue=max_queue, queue_timeout_s=queue_timeout_s, max_prefill_tokens=max_prefill_tokens,
        kv_memory_gb=kv_memory_gb, cpu_threads=cpu_threads, unknown_fields=unknown_fields,
        upstream_extra_fields=upstream_extra_field or None, allow_image_urls=allow_image_urls,
        redis=redis, rpm=rpm, tpm=tpm, user_rpm=user_rpm, user_tpm=user_tpm, high_reasoning_rpm=high_reasoning_rpm,
        high_reasoning_tpm=high_reasoning_tpm, high_reasoning_effort=high_reasoning_effort,
        max_concurrent=max_concurrent, rate_limit_window_s=rate_limit_window_s,
        limits_on_redis_failure=limits_on_redis_failure, idempotency=idempotency, idempotency_ttl_s=idempotency_ttl_s,
        idempotency_in_flight=idempotency_in_flight, idempotency_wait_s=idempotency_wait_s,
        idempotency_max_bytes=idempotency_max_bytes, max_json_depth=max_json_depth,
        max_images_per_request=max_images_per_request,
        max_image_bytes=max_image_bytes, max_image_pixels=max_image_pixels,
        image_fetch_timeout_s=image_fetch_timeout_s, default_max_tokens=default_max_tokens,
        vllm_gpu=vllm_gpu, vllm_gpus=vllm_gpus, vllm_weights=vllm_weights, vllm_kv_cache=vllm_kv_cache,
        vllm_args=vllm_arg or None,
        retries=retries, retry_backoff_s=retry_backoff_s, retry_max_wait_s=retry_max_wait_s,
        first_token_timeout_s=first_token_timeout_s, total_timeout_s=total_timeout_s,
        breaker_failures=breaker_failures, breaker_window_s=breaker_window_s, breaker_cooldown_s=breaker_cooldown_s,
        fallback_upstreams=fallback_upstream or None, canary_upstream=canary_upstream, canary_weight=canary_weight,
        request_log=request_log, data_dir=data_dir, log_db=log_db, log_prompts=log_prompts,
        prompt_retention_days=prompt_retention_days, log_secret=log_secret, log_buffer_rows=log_buffer_rows,
        log_spill_path=log_spill_path, metrics=metrics, metrics_key=metrics_key,
        dashboard=dashboard, admin_key=admin_key, alert_webhook_url=alert_webhook_url,
    )
    if settings.workers > 1:
        run_workers(settings)
    else:
        run_server(settings)


def _register_optional_commands() -> None:
    from unimodel.keys_cli import register as register_keys  # `unimodel keys create|list|revoke`

    register_keys(app)
    from unimodel.telemetry.logs_cli import register as register_logs  # `unimodel logs`, `unimodel logs stats`

    register_logs(app)
    from unimodel.evals.cli import register as register_eval  # `unimodel eval`: an HTTP client of any endpoint

    register_eval(app)
    from unimodel.bench.cli import register as register_bench  # `unimodel bench`: an HTTP client of any endpoint

    register_bench(app)
    try:
        from unimodel.plan.command import register as register_plan
    except ImportError:
        return
    register_plan(app)


def main(argv: Optional[list[str]] = None) -> None:
    """Entry point: usage errors and settings errors become one line on stderr and exit code 2."""
    _register_optional_commands()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per upstream call is noise, and slow
    try:
        result = app(args=argv, standalone_mode=False)
    except ConfigError as exc:
        _fail(str(exc), 2)
    except StartFailed as exc:
        _fail(f"the engine did not start: {exc}", 1)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(130)
    except TyperException as exc:  # typer's click usage errors: bad flag, bad value, missing option
        code = getattr(exc, "exit_code", 2)
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        _fail(message, code if isinstance(code, int) and code else 2)
    sys.exit(result if isinstance(result, int) else 0)


def _fail(message: str, code: int) -> None:
    typer.echo(f"unimodel: error: {' '.join(message.split())}", err=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
