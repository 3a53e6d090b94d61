"""Settings: one pydantic-settings object, built once and passed down.

Precedence (highest first): CLI flags > ``UNIMODEL_*`` environment variables > the YAML file given with
``--config`` > defaults. Nothing is read at import; :meth:`Settings.load` does the reading.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, NamedTuple, Optional

import yaml
from pydantic import BaseModel, Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from unimodel.gateway.policy import KeyPolicy, RoutePolicy, check_key_names, resolve_routes
from unimodel.images.decode import ImageLimits
from unimodel.telemetry.alert_rules import AlertRule, check_rules, webhook_url

EngineKind = Literal["local", "upstream", "vllm"]
UpstreamParse = Literal["auto", "upstream", "gateway"]


class ConfigError(ValueError):
    """A settings problem a user can fix; the CLI prints it as one line and exits 2."""


class ConfigFile(NamedTuple):
    """A YAML config file as read: its text (``unimodel keys revoke`` edits it) and the mapping it holds."""

    text: str
    values: dict[str, Any]


def read_config_file(path: Path) -> ConfigFile:
    """Read and parse a YAML config file; every way it can be unusable is a :class:`ConfigError` that names it.

    The one reader of the file for :meth:`Settings.load` (``serve``, ``logs``) and ``unimodel keys``: a file
    that cannot be read, is not UTF-8, is not YAML (PyYAML's constructors raise plain ``ValueError`` and
    friends for values such as ``2001-13-45`` or ``!!int x``), or is not a mapping of named settings.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start})") from exc
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    except RecursionError as exc:
        raise ConfigError(f"config file {path} is nested too deeply") from exc
    except (ValueError, TypeError, AttributeError, OverflowError) as exc:
        raise ConfigError(f"config file {path} holds a value YAML cannot read: {exc}") from exc
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings")
    odd = next((k for k in values if not isinstance(k, str)), None)
    if odd is not None:
        raise ConfigError(f"config file {path}: setting names are text, not {repr(odd)[:60]}")
    return ConfigFile(text, values)


Effort = Literal["none", "minimal", "low", "medium", "high"]


def _default_model_effort() -> dict[Effort, Literal["none", "high"]]:
    return {"none": "none", "minimal": "none", "low": "high", "medium": "high", "high": "high"}


def _default_budgets() -> dict[Effort, Optional[int]]:
    return {"low": 1024, "medium": 4096, "high": None}


class ReasoningPolicy(BaseModel):
    """How a served model turns the five client effort levels into what the model knows.

    Mistral Small 4 knows ``none`` and ``high``; ``low``/``medium`` are ``high`` with a thinking budget.
    A budget of ``None`` means unbounded (up to ``max_tokens``).
    """

    default_effort: Effort = "none"
    include_reasoning: bool = True
    model_effort: dict[Effort, Literal["none", "high"]] = Field(default_factory=_default_model_effort)
    budgets: dict[Effort, Optional[int]] = Field(default_factory=_default_budgets)

    @field_validator("budgets")
    @classmethod
    def _positive(cls, v: dict[str, Optional[int]]) -> dict[str, Optional[int]]:
        for level, budget in v.items():
            if budget is not None and budget < 1:
                raise ValueError(f"the thinking budget for '{level}' must be a positive number of tokens")
        return v


def _http_url(v: str) -> str:
    if not v.startswith(("http://", "https://")):
        raise ValueError("must be an http:// or https:// URL, e.g. http://gpu-box:8000/v1")
    return v.rstrip("/")


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


class Settings(BaseSettings):
    # no inf or nan in any number: every one is a size, a count or a time (inf crashed later, in the middle of a run)
    model_config = SettingsConfigDict(env_prefix="UNIMODEL_", extra="forbid", validate_default=True,
                                      allow_inf_nan=False)

    # what to serve
    engine: EngineKind = "local"
    model: Optional[str] = None
    served_model_name: Optional[str] = None
    model_family: Literal["mistral", "think-tags"] = "mistral"
    model_families: dict[str, Literal["mistral", "think-tags"]] = Field(default_factory=dict)
    reasoning: ReasoningPolicy = Field(default_factory=ReasoningPolicy)
    reasoning_per_model: dict[str, ReasoningPolicy] = Field(default_factory=dict)

    # HTTP
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    api_keys: list[str] = Field(default_factory=list)
    max_request_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
    shutdown_grace_s: float = Field(default=30.0, ge=0)
    workers: int = Field(default=1, ge=1, le=64)  # gateway processes sharing the port (server/workers.py)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    # keys and routes (gateway/keys.py, gateway/routes.py): named routes merged over the shipped default, hard,
    # image and agent; named API keys with their own policy, stored as salted scrypt hashes (`unimodel keys`)
    routes: dict[str, Optional[RoutePolicy]] = Field(default_factory=dict)
    keys: list[KeyPolicy] = Field(default_factory=list)

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

    default_max_tokens: Optional[int] = Field(default=None, ge=1)  # None: up to the context length
    # request validation: unknown top-level fields are dropped, or refused with a 400; an allowlist goes upstream
    unknown_fields: Literal["drop", "reject"] = "drop"
    upstream_extra_fields: list[str] = Field(default_factory=list)
    max_json_depth: int = Field(default=64, ge=8, le=512)
    # images, for every engine: URLs are fetched by the gateway (public addresses only) and passed on inline
    max_images_per_request: int = Field(default=8, ge=0, le=256)
    max_image_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(default=40_000_000, ge=1024)
    image_fetch_timeout_s: float = Field(default=10.0, gt=0, le=120)

    # shared state across replicas (rate limits, idempotency keys): redis://host:6379/0; None: in memory
    redis: Optional[str] = None
    redis_prefix: str = Field(default="unimodel:", min_length=1, max_length=64)

    # limits and quotas (gateway/limits): defaults for every key without its own values in `keys`; per end user
    # (the request's `user`, within its key); a smaller quota for high reasoning; None: no limit. Exact across
    # replicas with --redis (one Lua script per request), else in this process's memory
    rpm: Optional[int] = Field(default=None, ge=1)
    tpm: Optional[int] = Field(default=None, ge=1)
    user_rpm: Optional[int] = Field(default=None, ge=1)
    user_tpm: Optional[int] = Field(default=None, ge=1)
    high_reasoning_rpm: Optional[int] = Field(default=None, ge=1)
    high_reasoning_tpm: Optional[int] = Field(default=None, ge=1)
    high_reasoning_effort: Effort = "high"  # requests at or above it also draw from the high-reasoning quota
    max_concurrent: Optional[int] = Field(default=None, ge=1)  # requests in flight per key
    rate_limit_window_s: float = Field(default=60.0, gt=0, le=86400)  # the "minute" of rpm/tpm
    limits_token_reservation: int = Field(default=4096, ge=1)  # reserved when neither max_tokens nor a default
    limits_on_redis_failure: Literal["open", "closed"] = "open"  # open: admit unchecked; closed: 503
    limits_redis_timeout_s: float = Field(default=0.25, gt=0, le=10)  # bound of every Redis call
    limits_lease_s: float = Field(default=900.0, ge=1)  # a dead replica's in-flight slots free themselves then

    # idempotency (the Idempotency-Key header): a repeated request is answered from the first one's stored
    # response; keys live in --redis when set, else in this process's memory (an LRU by count and bytes)
    idempotency: bool = True
    idempotency_ttl_s: float = Field(default=24 * 3600.0, gt=0)  # how long a stored response is replayed
    idempotency_in_flight: Literal["wait", "conflict"] = "wait"  # a repeat while the first still runs
    idempotency_wait_s: float = Field(default=60.0, ge=0)  # longest such wait, then 409 with Retry-After
    idempotency_max_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)  # a larger response is not stored
    idempotency_claim_ttl_s: float = Field(default=900.0, gt=0)  # a dead replica's claim frees its key then
    idempotency_memory_entries: int = Field(default=10_000, ge=0)
    idempotency_memory_bytes: int = Field(default=256 * 1024 * 1024, ge=0)

    # the request log (telemetry/): one row per request, redacted, written in the background; SQLite (WAL) in the
    # data dir by default, or PostgreSQL with --log-db; prompts only with --log-prompts, emptied after retention
    request_log: bool = True
    data_dir: Optional[Path] = None  # None: the platform's user data dir (~/.local/share/unimodel)
    log_db: Optional[str] = None  # postgresql://user@host/db, sqlite:///path, or a file; None: requests.db
    log_prompts: bool = False
    prompt_retention_days: float = Field(default=30.0, gt=0)
    log_secret: Optional[SecretStr] = None  # the HMAC key of user_hash; None: generated once, kept by the db
    log_buffer_rows: int = Field(default=10_000, ge=1)  # rows held in memory while the db is down, then spilled
    log_spill_path: Optional[Path] = None  # None: beside the database

    # alerts and the dashboard (telemetry/alerts.py, GET /dashboard): rules judged in process over the recent
    # requests; a firing alert is a line on the unimodel.alerts logger and, with a webhook, a JSON POST
    alerts: list[AlertRule] = Field(default_factory=list)
    alert_webhook_url: Optional[str] = None  # for every rule without its own `webhook`
    alert_eval_interval_s: float = Field(default=5.0, gt=0, le=3600)
    dashboard: bool = True
    admin_key: Optional[SecretStr] = None  # the one key the dashboard accepts; None: the API keys

    @field_validator("alerts")
    @classmethod
    def _alert_names(cls, v: list[AlertRule]) -> list[AlertRule]:
        check_rules(v)
        return v

    @field_validator("alert_webhook_url")
    @classmethod
    def _alert_webhook(cls, v: Optional[str]) -> Optional[str]:
        return None if v is None else webhook_url(v)

    # metrics (telemetry/metrics.py): GET /metrics for Prometheus, open unless a bearer key is set for it
    metrics: bool = True
    metrics_key: Optional[SecretStr] = None  # the scraper sends "Authorization: Bearer KEY"

    # local engine
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    max_model_len: Optional[int] = Field(default=None, ge=16)
    max_num_seqs: int = Field(default=16, ge=1)
    max_queue: int = Field(default=64, ge=0)  # requests waiting beyond the free slots; more → 503
    queue_timeout_s: float = Field(default=60.0, gt=0)  # longest wait for a slot, then 503 with Retry-After
    max_prefill_tokens: int = Field(default=512, ge=16)  # longer prompts are prefilled in chunks of this many
    kv_memory_gb: Optional[float] = Field(default=None, gt=0)  # KV cache budget (default: 90% of free CUDA memory)
    cpu_threads: Optional[int] = Field(default=None, ge=1)  # PyTorch threads on CPU (default: the cores less one)
    allow_image_urls: bool = False
    cache_dir: Optional[Path] = None

    # vllm engine (launched and supervised by us)
    vllm_gpu: Optional[str] = None  # catalog key; default: what nvidia-smi reports
    vllm_gpus: Optional[int] = Field(default=None, ge=1)
    vllm_weights: Literal["bf16", "fp8", "nvfp4", "int4"] = "fp8"
    vllm_kv_cache: Literal["auto", "bf16", "fp8"] = "auto"
    vllm_args: list[str] = Field(default_factory=list)  # override or add flags: --vllm-arg=--max-num-seqs=64
    vllm_port: Optional[int] = Field(default=None, ge=1, le=65535)  # the child's loopback port

    # upstream engine
    upstream: Optional[str] = None
    upstream_api_key: Optional[str] = None
    upstream_parse: UpstreamParse = "auto"
    upstream_connect_timeout_s: float = Field(default=5.0, gt=0)
    upstream_read_timeout_s: float = Field(default=600.0, gt=0)
    upstream_max_connections: int = Field(default=256, ge=1)

    # resilience (the last pipeline stage): timeouts, retries before the first event, a circuit breaker per
    # upstream, fallback and canary upstreams (each an upstream engine with the primary's settings)
    retries: int = Field(default=2, ge=0, le=10)  # tries again on the same upstream, retryable failures only
    retry_backoff_s: float = Field(default=0.2, ge=0, le=60)  # base of the exponential backoff (full jitter)
    retry_max_wait_s: float = Field(default=5.0, ge=0, le=300)  # longest single wait; a longer Retry-After: give up
    first_token_timeout_s: Optional[float] = Field(default=None, gt=0)  # per try; None: the read timeout only
    total_timeout_s: Optional[float] = Field(default=None, gt=0)  # the whole request, stream included
    breaker_failures: int = Field(default=5, ge=0)  # failures in a row that open a circuit; 0: no breaker
    breaker_window_s: float = Field(default=30.0, gt=0)  # ... within this many seconds
    breaker_cooldown_s: float = Field(default=30.0, gt=0)  # open this long, then one probe request
    fallback_upstreams: list[str] = Field(default_factory=list)  # fallback-1, fallback-2 … in order
    canary_upstream: Optional[str] = None
    canary_weight: float = Field(default=0.05, ge=0, le=1)  # the share of requests sent to the canary first
    upstreams: dict[str, UpstreamSpec] = Field(default_factory=dict)  # named ones, for routes

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

    @field_validator("upstream")
    @classmethod
    def _upstream_url(cls, v: Optional[str]) -> Optional[str]:
        return None if v is None else _http_url(v)

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

    @classmethod
    def load(cls, config_file: Optional[Path] = None, **cli: Any) -> "Settings":
        """Build settings from a YAML file, the environment and CLI values (``None`` = flag not given)."""
        file_values: dict[str, Any] = {}
        if config_file is not None:
            raw = read_config_file(config_file).values
            file_values = {k.replace("-", "_"): v for k, v in raw.items()}
        flags = {k: v for k, v in cli.items() if v is not None and v != []}
        try:
            # env beats the file, flags beat env: pass the file's values only where neither env nor flag set one
            env_only = cls._env_keys()
            merged = {k: v for k, v in file_values.items() if k not in env_only}
            merged.update(flags)
            return cls(**merged)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "settings"
            raise ConfigError(f"invalid setting '{where}': {err['msg']}") from exc

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
