"""Build the engine named in the settings. Heavy engines are imported only when chosen."""

from __future__ import annotations

from unimodel.config import ConfigError, Settings
from unimodel.engines.base import Engine


def build_engine(settings: Settings) -> Engine:
    if settings.engine == "upstream":
        from unimodel.engines.upstream import UpstreamEngine

        if not settings.upstream:
            raise ConfigError("--engine upstream needs --upstream URL (e.g. http://gpu-box:8000/v1)")
        return UpstreamEngine(
            settings.upstream,
            served_model_name=settings.served_model_name or settings.model,
            upstream_model=settings.model,
            family=settings.model_family,
            families=dict(settings.model_families),
            parse_mode=settings.upstream_parse,
            api_key=settings.upstream_api_key,
            connect_timeout_s=settings.upstream_connect_timeout_s,
            read_timeout_s=settings.upstream_read_timeout_s,
            max_connections=settings.upstream_max_connections,
        )
    if settings.engine == "local":
        if not settings.model:
            raise ConfigError("--engine local needs --model HUB_ID_OR_PATH (or --model tiny-random for a "
                              "small random-weight demo model)")
        try:
            from unimodel.engines.local import LocalEngine
        except ImportError as exc:
            raise ConfigError(f"the local engine needs PyTorch and transformers ({exc.name} is missing): "
                              "pip install 'unimodel[local]', or use --engine upstream") from exc
        return LocalEngine(
            settings.model,
            served_model_name=settings.served_model_name,
            device=settings.device,
            dtype=settings.dtype,
            max_model_len=settings.max_model_len,
            max_num_seqs=settings.max_num_seqs,
            max_queue=settings.max_queue,
            allow_image_urls=settings.allow_image_urls,
            model_family=settings.model_family if "model_family" in settings.model_fields_set else None,
            cache_dir=settings.cache_dir,
        )
    raise ConfigError(f"--engine {settings.engine} is not available in this build yet")
