"""Settings: one pydantic-settings object, built once and passed down.

Precedence (highest first): CLI flags > ``UNIMODEL_*`` environment variables > the YAML file given with
``--config`` > defaults. Nothing is read at import; :meth:`Settings.load` does the reading.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from unimodel.images.decode import ImageLimits

EngineKind = Literal["local", "upstream", "vllm"]
UpstreamParse = Literal["auto", "upstream", "gateway"]


class ConfigError(ValueError):
    """A settings problem a user can fix; the CLI prints it as one line and exits 2."""


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


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="UNIMODEL_", extra="forbid", validate_default=True)

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
    log_level: Literal["debug", "info", "warning", "error"] = "info"

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

    # local engine
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    max_model_len: Optional[int] = Field(default=None, ge=16)
    max_num_seqs: int = Field(default=16, ge=1)
    max_queue: int = Field(default=64, ge=0)  # requests waiting beyond the free slots; more → 503
    queue_timeout_s: float = Field(default=60.0, gt=0)  # longest wait for a slot, then 503 with Retry-After
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

    @field_validator("upstream")
    @classmethod
    def _upstream_url(cls, v: Optional[str]) -> Optional[str]:
        if v is None:
            return v
        if not v.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL, e.g. http://gpu-box:8000/v1")
        return v.rstrip("/")

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
            try:
                raw = yaml.safe_load(Path(config_file).read_text()) or {}
            except OSError as exc:
                raise ConfigError(f"cannot read config file {config_file}: {exc.strerror}") from exc
            except yaml.YAMLError as exc:
                raise ConfigError(f"config file {config_file} is not valid YAML: {exc}") from exc
            if not isinstance(raw, dict):
                raise ConfigError(f"config file {config_file} must hold a mapping of settings")
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
