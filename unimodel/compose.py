"""The composition root: the one place the settings become engines, stages and observers.

Below this module every package takes its own small settings type (``engines.factory.UpstreamOptions``,
``gateway.limits.LimitDefaults``, ``telemetry.request_log.RequestLogConfig`` …) and never imports
:mod:`unimodel.config`; here each is filled from :class:`~unimodel.config.Settings`, once, at start-up, and a
problem an operator can fix is a :class:`~unimodel.errors.ConfigError`. The engine kind is decided here and
nowhere else.

:func:`compose` gives a :class:`Composition`: the engine set (the primary and every extra upstream, which the
app starts and closes), the pipeline's stages in the order of the architecture page (auth → limits.requests →
parse → route → validate → limits → images → idempotency → upstream_share → choices → resilience), the
end-of-request observers, and what the server's routes need (metrics, the dashboard's window and alerts, the
body limit, the Host names and origins browsers may use), and :func:`key_source`, how ``server/reload.py`` reads
the keys again while the server runs (the settings read again and checked whole; only the keys applied).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from unimodel.config import Settings
from unimodel.config_values import DISCOVERY_SCHEMES, host_pattern, shell_words
from unimodel.engines.base import Engine
from unimodel.engines.engine_set import EngineSet
from unimodel.engines.factory import (
    LocalOptions,
    PoolOptions,
    UpstreamOptions,
    VllmOptions,
    local_engine,
    pool_engine,
    upstream_engine,
    vllm_engine,
)
from unimodel.engines.pool.discovery import Discovery, KubernetesAccess, parse_upstream
from unimodel.errors import ConfigError
from unimodel.formats.reasoning import ModelReasoning
from unimodel.formats.registry import get_format
from unimodel.gateway.auth import ApiKeyAuth
from unimodel.gateway.choices import ChoicesStage
from unimodel.gateway.idempotency import IdempotencyStage, IdempotencyStore
from unimodel.gateway.idempotency import MemoryStore as IdempotencyMemory
from unimodel.gateway.idempotency import RedisStore as IdempotencyRedis
from unimodel.gateway.images import ImagePolicy, ImagePolicyStage
from unimodel.gateway.keys import plain_key_names
from unimodel.gateway.limits import LimitsStage
from unimodel.gateway.limits.memory import MemoryStore as LimitsMemory
from unimodel.gateway.limits.policy import LimitDefaults
from unimodel.gateway.limits.store import LimitStore
from unimodel.gateway.policy import KeyPolicy
from unimodel.gateway.resilience import CircuitBreaker, ResiliencePolicy, ResilienceStage, Upstream, UpstreamPool
from unimodel.gateway.resilience.upstreams import CANARY, PRIMARY, fallback_name
from unimodel.gateway.routes import RouteStage
from unimodel.gateway.upstream_share import UpstreamShareStage, per_key_share
from unimodel.service.observer import AccessLog, Observer
from unimodel.service.parse import ParseStage
from unimodel.service.pipeline import Stage
from unimodel.service.priority import PriorityClasses
from unimodel.service.usage_estimate import UsageEstimator
from unimodel.service.validate import ValidateStage
from unimodel.secret_files import read_secrets
from unimodel.shapes.responses.state import ResponsesOptions, ResponsesState, build_state
from unimodel.telemetry.alerts import Alerts
from unimodel.telemetry.metrics import LabelBounds, Metrics
from unimodel.telemetry.request_log import CAPTURE_CHARS, RequestLog, RequestLogConfig, open_request_log
from unimodel.telemetry.store import LogStoreError, database_url, default_data_dir
from unimodel.telemetry.window import RequestWindow

DASHBOARD_HORIZON_S = 3600.0  # the dashboard's longest view


@dataclass(eq=False)
class Composition:
    """Everything one app serves with, built from one settings object."""

    engines: EngineSet
    stages: list[Stage]
    observers: list[Observer]
    request_log: Optional[RequestLog]
    metrics: Optional[Metrics]
    window: RequestWindow
    alerts: Optional[Alerts]
    capture_text_chars: int = 0
    usage_estimator: UsageEstimator = UsageEstimator()  # for requests that end without the engine's usage
    max_request_bytes: int = 20 * 1024 * 1024
    dashboard: bool = True
    admin_key: Optional[str] = None
    metrics_key: Optional[str] = None
    allowed_hosts: Optional[tuple[str, ...]] = None  # the Host names answered (None: any): allowed_hosts()
    cors_origins: tuple[str, ...] = ()  # the origins whose pages may call the API ("*": any)
    responses: Optional[ResponsesState] = None  # the Responses API's stored responses and sealing key
    key_source: Optional["KeySource"] = None  # how to read the keys again while serving (server/reload.py)

    @property
    def auth(self) -> ApiKeyAuth:
        return next(s for s in self.stages if isinstance(s, ApiKeyAuth))

    @property
    def counting_stages(self) -> list[Stage]:
        """The stages a token-counting request runs (``service/tokens.py``): the chat pipeline's own objects up to
        the validated request (auth, the key's requests, parse, route, validate), and the image policy (an
        image's tokens are counted from the image, which only that stage fetches). No generation stage: no
        answer is made."""
        cut = next(i for i, s in enumerate(self.stages) if isinstance(s, ValidateStage)) + 1
        return [*self.stages[:cut], *(s for s in self.stages[cut:] if isinstance(s, ImagePolicyStage))]


def compose(settings: Settings, engine: Optional[Engine] = None) -> Composition:
    """The whole server from its settings; ``engine`` replaces the primary the settings name (tests)."""
    engines = build_engines(settings, engine)
    stages = build_stages(settings, engines)
    request_log = build_request_log(settings)
    metrics = build_metrics(settings, engines.primary)
    window, alerts = build_alerts(settings)
    observers: list[Observer] = [AccessLog(), *([request_log] if request_log is not None else []),
                                 *([metrics.observer] if metrics is not None else []),
                                 window, *([alerts] if alerts is not None else [])]
    return Composition(
        engines=engines, stages=stages, observers=observers, request_log=request_log, metrics=metrics,
        window=window, alerts=alerts,
        capture_text_chars=CAPTURE_CHARS if settings.log_prompts and request_log is not None else 0,
        usage_estimator=usage_estimator(settings),
        max_request_bytes=settings.max_request_bytes, dashboard=settings.dashboard,
        admin_key=_secret(settings.admin_key), metrics_key=_secret(settings.metrics_key),
        allowed_hosts=allowed_hosts(settings), cors_origins=tuple(settings.cors_origins),
        responses=build_responses(settings), key_source=key_source(settings))


# ---- browsers -----------------------------------------------------------------------------------------------

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")


def has_keys(settings: Settings) -> bool:
    """Whether the API asks for a key (plain or named); without, anyone who can reach it may use it."""
    return bool(settings.api_keys or settings.keys)


def allowed_hosts(settings: Settings) -> Optional[tuple[str, ...]]:
    """The ``Host`` names the server answers to, ``None`` for any: the loopback names, ``--host`` (unless it is
    every address) and ``--allowed-hosts``. Without API keys that list always applies (a page whose name was
    rebound to this address must not drive a server anyone may use); with keys only when ``--allowed-hosts`` is
    given (a key already stops such a page, and behind a proxy the Host is the proxy's business)."""
    if "*" in settings.allowed_hosts or (has_keys(settings) and not settings.allowed_hosts):
        return None
    bind: list[str] = []
    if settings.host.strip() not in ("", "0.0.0.0", "::", "[::]"):  # one address, not every one
        try:
            bind.append(host_pattern(settings.host))
        except ValueError as exc:
            raise ConfigError(f"invalid setting 'host': {exc}") from exc
    names = [*LOOPBACK_HOSTS, *bind, *settings.allowed_hosts]
    return tuple(dict.fromkeys(names))


# ---- engines ------------------------------------------------------------------------------------------------

def upstream_options(settings: Settings) -> UpstreamOptions:
    return UpstreamOptions(
        api_key=settings.upstream_api_key, parse_mode=settings.upstream_parse, family=settings.model_family,
        families=dict(settings.model_families), connect_timeout_s=settings.upstream_connect_timeout_s,
        read_timeout_s=settings.upstream_read_timeout_s, max_connections=settings.upstream_max_connections)


def is_pool(settings: Settings) -> bool:
    """Several upstreams, or one named by a lookup, make a pool (a single URL stays a plain upstream engine)."""
    urls = settings.upstream
    return settings.engine == "upstream" and (len(urls) > 1 or any(u.startswith(DISCOVERY_SCHEMES) for u in urls))


def pool_options(settings: Settings) -> PoolOptions:
    return PoolOptions(
        policy=settings.pool_policy, scrape_interval_s=settings.pool_scrape_interval_s,
        discovery_interval_s=settings.pool_discovery_interval_s, max_waiting=settings.pool_max_waiting,
        max_kv_usage=settings.pool_max_kv_usage, max_inflight=settings.pool_max_inflight,
        queue_size=settings.pool_queue_size, queue_timeout_s=settings.pool_queue_timeout_s,
        tries=settings.pool_tries, breaker_failures=settings.breaker_failures,
        breaker_window_s=settings.breaker_window_s, breaker_cooldown_s=settings.breaker_cooldown_s,
        breaker_min_callers=settings.breaker_min_callers)


def discoveries(settings: Settings) -> list[Discovery]:
    """Each ``--upstream`` as the lookup of its replicas (a Kubernetes one reads the pod's service account)."""
    nameservers = None
    if settings.pool_dns_server:
        host, _, port = settings.pool_dns_server.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"--pool-dns-server is HOST:PORT, e.g. 10.96.0.10:53, not {settings.pool_dns_server!r}")
        nameservers = [(host.strip("[]"), int(port))]
    kubernetes = KubernetesAccess.from_environment(os.environ)
    return [parse_upstream(spec, kubernetes=kubernetes, nameservers=nameservers) for spec in settings.upstream]


def build_engine(settings: Settings) -> Engine:
    """The primary engine, of the kind ``--engine`` names."""
    if settings.engine == "upstream":
        if not settings.upstream:
            raise ConfigError("--engine upstream needs --upstream URL (e.g. http://gpu-box:8000/v1)")
        served = settings.served_model_name or settings.model
        if is_pool(settings):
            return pool_engine(pool_options(settings), upstream_options(settings), discoveries(settings),
                               served_model_name=served, upstream_model=settings.model)
        return upstream_engine(upstream_options(settings), settings.upstream[0], served_model_name=served,
                               upstream_model=settings.model)
    if settings.engine == "local":
        if not settings.model:
            raise ConfigError("--engine local needs --model HUB_ID_OR_PATH (or --model tiny-random for a "
                              "small random-weight demo model)")
        return local_engine(LocalOptions(
            settings.model, served_model_name=settings.served_model_name, device=settings.device,
            dtype=settings.dtype, max_model_len=settings.max_model_len, max_num_seqs=settings.max_num_seqs,
            max_queue=settings.max_queue, queue_timeout_s=settings.queue_timeout_s,
            max_prefill_tokens=settings.max_prefill_tokens, kv_memory_gb=settings.kv_memory_gb,
            cpu_threads=settings.cpu_threads, image_limits=settings.image_limits,
            family=settings.model_family if "model_family" in settings.model_fields_set else None,
            cache_dir=settings.cache_dir))
    return vllm_engine(VllmOptions(
        model=settings.model or "mistral-small-4", served_model_name=settings.served_model_name,
        gpu=settings.vllm_gpu, gpus=settings.vllm_gpus, weights=settings.vllm_weights,
        kv_cache=settings.vllm_kv_cache, max_model_len=settings.max_model_len, args=tuple(settings.vllm_args),
        port=settings.vllm_port, command=tuple(shell_words(settings.vllm_command)),
        cpu_kv_gib=settings.vllm_cpu_kv_gib, cache_dir=settings.cache_dir), upstream_options(settings))


def build_engines(settings: Settings, primary: Optional[Engine] = None) -> EngineSet:
    """The primary and the extra upstreams by name: ``fallback-N``, ``canary``, and the config file's named
    ones. Extras share the primary's upstream settings. Behind an upstream primary they ask for the same
    upstream model name; behind a local or vLLM primary, for the name the client used (a local path means
    nothing to a remote server). They send ``--upstream-api-key`` unless a named upstream has its own key."""
    options = upstream_options(settings)
    behind_upstream = settings.engine == "upstream"
    make = functools.partial(
        upstream_engine, options,
        served_model_name=(settings.served_model_name or settings.model) if behind_upstream else None,
        upstream_model=settings.model if behind_upstream else None)
    extras: dict[str, Engine] = {fallback_name(i): make(url)
                                 for i, url in enumerate(settings.fallback_upstreams, start=1)}
    if settings.canary_upstream is not None:
        extras[CANARY] = make(settings.canary_upstream)
    for name, spec in settings.upstreams.items():
        extras[name] = make(spec.url, api_key=spec.api_key)
    return EngineSet(primary if primary is not None else build_engine(settings), extras)


# ---- stages -------------------------------------------------------------------------------------------------

def build_stages(settings: Settings, engines: EngineSet) -> list[Stage]:
    """The chat pipeline's stages, in order; a stage with nothing to do is left out (limits without limits,
    idempotency with ``--no-idempotency``)."""
    images = image_policy(settings)
    reasoning = reasoning_for(settings)
    key_names(settings)  # the plain keys' names are distinct (else a ConfigError), and cached for the key ring
    limits = limits_stages(settings)
    return [
        ApiKeyAuth(settings.api_keys, settings.keys),
        *(stage.requests for stage in limits),  # the key's rpm and in-flight cap: before the body is read
        ParseStage(settings.max_json_depth, json_only=settings.json_only, untyped_ok=has_keys(settings)),
        RouteStage(settings.route_policies, image_policy=images, reasoning_for=reasoning),
        ValidateStage(engines.primary.models, reasoning, settings.default_max_tokens,
                      unknown_fields=settings.unknown_fields, upstream_extra_fields=settings.upstream_extra_fields,
                      allow_priority=settings.allow_priority, max_n=settings.max_n,
                      priority_classes=PriorityClasses(dict(settings.priority_classes), settings.default_priority_class,
                                                       forward=settings.pool_forward_priority)),
        *limits,  # users, high reasoning, tokens: before any image is fetched or decoded
        ImagePolicyStage(images),
        *idempotency_stages(settings),
        *upstream_share_stages(settings),  # a key's share of the upstream pool, taken just before it is used
        ChoicesStage(),  # n > 1: one generation per choice, each through resilience (its own retries, fallback)
        build_resilience(settings, engines),  # last: wraps the engine call itself
    ]


def reasoning_for(settings: Settings) -> Callable[[str], ModelReasoning]:
    """The reasoning policy of each served model (its own, else the server's), bound to its model family's
    format; every configured one is checked now, so a level the model does not know is a start-up error."""
    def bind(model: Optional[str], policy_name: str) -> ModelReasoning:
        family = settings.model_families.get(model, settings.model_family) if model else settings.model_family
        policy = settings.reasoning_per_model.get(model, settings.reasoning) if model else settings.reasoning
        try:
            return ModelReasoning(policy, get_format(family))
        except ValueError as exc:
            raise ConfigError(f"invalid setting '{policy_name}': {exc}") from exc

    default = bind(None, "reasoning")
    per_model = {name: bind(name, f"reasoning_per_model.{name}")
                 for name in {*settings.reasoning_per_model, *settings.model_families}}
    return lambda served_model: per_model.get(served_model, default)


def image_policy(settings: Settings) -> ImagePolicy:
    return ImagePolicy(allow_urls=settings.allow_image_urls, limits=settings.image_limits,
                       fetch_timeout_s=settings.image_fetch_timeout_s, max_in_flight=settings.image_max_in_flight,
                       wait_s=settings.image_wait_s)


def usage_estimator(settings: Settings) -> UsageEstimator:
    """How prompts are estimated for token reservations, and the usage of a request left without a count."""
    return UsageEstimator(image_tokens=settings.limits_image_tokens)


_LIMIT_FIELDS = ("rpm", "tpm", "high_reasoning_rpm", "high_reasoning_tpm", "max_concurrent")


def limits_configured(settings: Settings) -> bool:
    """Whether any limit is set: for the server, for end users, or in a key's policy."""
    return any(getattr(settings, f) is not None for f in (*_LIMIT_FIELDS, "user_rpm", "user_tpm")) or any(
        getattr(key, f) is not None for key in settings.keys for f in _LIMIT_FIELDS)


def limits_stages(settings: Settings) -> list[LimitsStage]:
    """The limits stage (its first part, ``.requests``, goes before the parse stage), or none when no limit is
    set for the server, for end users, or in any key's policy (then it would only cost time); its counters in
    Redis with ``--redis``."""
    if not limits_configured(settings):
        return []
    store: LimitStore
    if settings.redis:
        from unimodel.gateway.limits.redis_store import RedisStore

        store = RedisStore(settings.redis, settings.redis_prefix, timeout_s=settings.limits_redis_timeout_s,
                           lease_s=settings.limits_lease_s)
    else:
        store = LimitsMemory()
    defaults = LimitDefaults(
        rpm=settings.rpm, tpm=settings.tpm, user_rpm=settings.user_rpm, user_tpm=settings.user_tpm,
        high_reasoning_rpm=settings.high_reasoning_rpm, high_reasoning_tpm=settings.high_reasoning_tpm,
        max_concurrent=settings.max_concurrent, high_reasoning_effort=settings.high_reasoning_effort,
        window_s=settings.rate_limit_window_s, token_reservation=settings.limits_token_reservation)
    return [LimitsStage(defaults, store, on_store_failure=settings.limits_on_redis_failure,
                        estimator=usage_estimator(settings))]


def idempotency_stages(settings: Settings) -> list[Stage]:
    """The idempotency stage (none with ``--no-idempotency``); its keys in Redis when ``--redis`` is set."""
    if not settings.idempotency:
        return []
    store: IdempotencyStore
    if settings.redis:
        store = IdempotencyRedis(settings.redis, settings.redis_prefix, settings.idempotency_ttl_s,
                                 settings.idempotency_claim_ttl_s)
    else:
        # in memory a claim lasts as long as its request: it lives and dies with this process
        store = IdempotencyMemory(settings.idempotency_ttl_s, None, settings.idempotency_memory_entries,
                                  settings.idempotency_memory_bytes)
    return [IdempotencyStage(store, in_flight=settings.idempotency_in_flight, wait_s=settings.idempotency_wait_s,
                             max_bytes=settings.idempotency_max_bytes)]


def upstream_share_stages(settings: Settings) -> list[Stage]:
    """The per-key cap on upstream connections (``gateway/upstream_share.py``): only in front of an upstream pool
    (``--engine upstream`` or ``vllm``), with two or more keys, and a share below 1."""
    keys = len(set(settings.api_keys)) + len(settings.keys)
    if settings.engine not in ("upstream", "vllm") or keys < 2 or settings.upstream_key_share >= 1:
        return []
    return [UpstreamShareStage(per_key_share(settings.upstream_max_connections, settings.upstream_key_share))]


def build_resilience(settings: Settings, engines: EngineSet) -> ResilienceStage:
    """The stage over the engine set: the primary is whatever engine call the pipeline hands to its ``wrap``;
    every extra gets its own breaker, which asks its engine's health before one caller's failures open it; a
    failing canary goes straight on to the primary (no retries on it)."""
    def breaker(name: str, engine: Engine) -> CircuitBreaker:
        return CircuitBreaker(name, failures=settings.breaker_failures, window_s=settings.breaker_window_s,
                              cooldown_s=settings.breaker_cooldown_s, min_callers=settings.breaker_min_callers,
                              health=engine.check_health)

    def upstream(name: str, retries: int = settings.retries) -> Upstream:
        return Upstream(name, breaker(name, engines.extras[name]), retries, engines.extras[name])

    fallbacks = [upstream(fallback_name(i)) for i in range(1, len(settings.fallback_upstreams) + 1)]
    canary = upstream(CANARY, retries=0) if CANARY in engines.extras else None
    named = [upstream(name) for name in settings.upstreams]
    primary = Upstream(PRIMARY, breaker(PRIMARY, engines.primary), settings.retries)
    pool = UpstreamPool(primary, fallbacks, canary, settings.canary_weight, named)
    for route in settings.route_policies.values():  # a typo is a start-up error, not a request-time surprise
        missing = [u for u in route.upstreams or [] if u not in pool.by_name]
        if missing:
            raise ConfigError(f"the route '{route.name}' names the upstream '{missing[0]}', which is not "
                              f"configured (known: {', '.join(pool.names)}; fallback-N come from "
                              "--fallback-upstream, canary from --canary-upstream, others from the config file's "
                              "upstreams:)")
    return ResilienceStage(pool, ResiliencePolicy(
        retries=settings.retries, backoff_s=settings.retry_backoff_s, max_wait_s=settings.retry_max_wait_s,
        first_token_timeout_s=settings.first_token_timeout_s, total_timeout_s=settings.total_timeout_s))


# ---- observers ----------------------------------------------------------------------------------------------

def build_request_log(settings: Settings) -> Optional[RequestLog]:
    """The request log (none with ``--no-request-log``); reads or creates its secret file, connects nothing."""
    if not settings.request_log:
        return None
    try:
        return open_request_log(RequestLogConfig(
            db=settings.log_db, data_dir=settings.data_dir, log_prompts=settings.log_prompts,
            prompt_retention_days=settings.prompt_retention_days, secret=_secret(settings.log_secret),
            buffer_rows=settings.log_buffer_rows, spill_path=settings.log_spill_path))
    except LogStoreError as exc:
        raise ConfigError(str(exc)) from exc
    except OSError as exc:
        raise ConfigError(f"the request log cannot use {exc.filename}: {exc.strerror}") from exc


def build_responses(settings: Settings) -> ResponsesState:
    """The Responses API's state: its store (the request log's database unless ``--responses-store`` says
    otherwise; nothing is connected yet) and the sealer with ``--responses-key-file``'s keys (read now)."""
    keys: tuple[str, ...] = ()
    if settings.responses_key_file is not None:
        keys = tuple(read_secrets(settings.responses_key_file, "--responses-key-file"))
    kind = settings.responses_store
    if kind == "redis" and not settings.redis:
        raise ConfigError("--responses-store redis keeps stored responses in --redis: set --redis "
                          "redis://host:6379/0 (or --responses-store log-db)")
    try:
        return build_state(ResponsesOptions(
            store=kind,
            db_url=database_url(settings.log_db, default_data_dir(settings.data_dir)) if kind == "log-db" else None,
            redis_url=settings.redis, redis_prefix=settings.redis_prefix,
            retention_days=settings.responses_retention_days, max_bytes=settings.responses_max_bytes,
            memory_records=settings.responses_memory_records, memory_bytes=settings.responses_memory_bytes,
            key_secrets=keys, max_background=settings.responses_max_background))
    except LogStoreError as exc:
        raise ConfigError(str(exc)) from exc
    except ValueError as exc:  # a sealing key too short, two keys with one id
        raise ConfigError(f"--responses-key-file {settings.responses_key_file}: {exc}") from exc


def key_names(settings: Settings) -> list[str]:
    """Every name a caller can have: ``anonymous``, the plain keys' (``key-`` and 8 hex digits of each key's
    hash: :func:`~unimodel.gateway.keys.plain_key_name`), the named keys'."""
    try:
        plain = plain_key_names(settings.api_keys)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    return ["anonymous", *plain, *(key.name for key in settings.keys)]


def build_metrics(settings: Settings, engine: Engine) -> Optional[Metrics]:
    """The app's metrics (none with ``--no-metrics``); label bounds from the configuration and the engine."""
    if not settings.metrics:
        return None
    return Metrics(LabelBounds(routes=settings.route_policies, keys=key_names(settings),
                               models=lambda: [card.id for card in engine.models()]))


def build_alerts(settings: Settings) -> tuple[RequestWindow, Optional[Alerts]]:
    """The rolling window the dashboard and the alerts read (it reaches an hour back, or as far as the longest
    rule with its baseline), and the alerts (none without rules)."""
    window = RequestWindow(max([DASHBOARD_HORIZON_S, *(rule.reach_s for rule in settings.alerts)]))
    if not settings.alerts:
        return window, None
    return window, Alerts(settings.alerts, window, default_webhook=settings.alert_webhook_url,
                          interval_s=settings.alert_eval_interval_s)


# ---- keys read again while serving (server/reload.py) --------------------------------------------------------

@dataclass(frozen=True)
class KeyUpdate:
    """The keys read again: the plain ones (``--api-key`` and ``--api-key-file``'s), the named ones (the config
    file's ``keys:``), and what the reload does not apply, one line each (other settings that changed, which
    need a restart)."""

    plain: tuple[str, ...]
    named: tuple[KeyPolicy, ...]
    not_applied: tuple[str, ...] = ()


@dataclass(frozen=True)
class KeySource:
    """Where the server's keys come from: the files to watch, and ``read`` (blocking: run it off the event loop),
    which reads every setting again and checks them as a start would, so a file that does not hold is a
    :class:`ConfigError` and changes nothing."""

    files: tuple[Path, ...]
    read: Callable[[], KeyUpdate]


#: what a reload applies; every other setting is read (and must hold) but waits for a restart
RELOADED_SETTINGS = frozenset({"keys", "api_keys"})


def key_source(settings: Settings) -> Optional[KeySource]:
    """How to read the keys again (``None`` when they come from neither a config file nor ``--api-key-file``,
    or the settings were not made by :meth:`Settings.load`: nothing could change)."""
    files = tuple(p for p in (settings.config_file, settings.api_key_file) if p is not None)
    if not files or not settings.reloadable:
        return None
    limits = limits_configured(settings)

    def read() -> KeyUpdate:
        new = settings.reloaded()
        key_names(new)  # the plain keys' names are distinct (else a ConfigError), and cached for the ring
        others = sorted(name for name in Settings.model_fields if name not in RELOADED_SETTINGS
                        and getattr(new, name) != getattr(settings, name))
        notes = [f"the settings {', '.join(others)} changed too: they take effect on a restart"] if others else []
        if len(upstream_share_stages(new)) > len(upstream_share_stages(settings)):
            notes.append("with two keys or more, each key's share of the upstream connections (--upstream-key-share) "
                         "is enforced after a restart")
        if not limits:
            for key in new.keys:
                fields = [f for f in _LIMIT_FIELDS if getattr(key, f) is not None]
                if fields and not key.revoked:
                    notes.append(f"the key '{key.name}' sets {', '.join(fields)}, but this server started without "
                                 "limits: they are enforced after a restart")
        return KeyUpdate(tuple(new.api_keys), tuple(new.keys), tuple(notes))

    return KeySource(files, read)


def check_workers(settings: Settings) -> None:
    """Refuse a worker count whose state would not be shared (one line, for the CLI)."""
    n = settings.workers
    if n <= 1:
        return
    if settings.engine != "upstream":
        raise ConfigError(f"--workers {n} runs {n} gateway processes; with --engine {settings.engine} each would "
                          "load its own model: use --workers 1, or serve the model once and run the workers "
                          "with --engine upstream in front of it")
    if settings.redis is None:
        in_memory = [what for what, on in (("rate limits", bool(limits_stages(settings))),
                                           ("idempotency keys", settings.idempotency)) if on]
        if in_memory:
            raise ConfigError(f"--workers {n} needs shared state: {' and '.join(in_memory)} would live in each "
                              "worker's own memory; set --redis redis://host:6379/0, or turn them off "
                              "(no --rpm/--tpm/--max-concurrent limits, --no-idempotency)")
    if settings.responses_store == "memory":
        raise ConfigError(f"--workers {n} with --responses-store memory: a stored response would live in one "
                          "worker's memory, and the next turn may reach another; use --responses-store log-db "
                          "or redis")


def _secret(value: object) -> Optional[str]:
    get = getattr(value, "get_secret_value", None)
    return None if value is None else get() if get is not None else str(value)
