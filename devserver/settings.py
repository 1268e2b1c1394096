"""One settings object for the whole program: flags > ``KIT_DEV_*`` environment > defaults.

The environment is read here and nowhere else. The CLI builds ``Settings`` from its parsed flags
(only those the user gave), and pydantic-settings fills the rest from ``KIT_DEV_*`` variables and the
defaults below, so every option has one name, one type and one default.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

_SOURCE_CHECKOUT_CACHE = Path(__file__).resolve().parent.parent / "models-cache"


def default_cache_dir() -> Path:
    """``models-cache/`` of the checkout when run from one (the demo and tests), else the user cache."""
    if (_SOURCE_CHECKOUT_CACHE / ".gitkeep").exists():
        return _SOURCE_CHECKOUT_CACHE
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kit-dev"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KIT_DEV_", extra="forbid")

    # where things live
    cache_dir: Path = Field(default_factory=default_cache_dir, description="content-addressed ModelKit cache")
    # registry access
    plain_http: bool = Field(False, description="talk plain HTTP to a non-loopback registry")
    # server
    host: str = Field("127.0.0.1", description="address to bind; loopback unless you mean to share it")
    port: int = Field(8000, ge=1, le=65535)  # not 0: `start` prints and polls the port it asked for
    api_key: str | None = Field(None, description="require 'Authorization: Bearer KEY' on /v1/*")
    queue_size: int = Field(64, ge=1, description="requests waiting per model before 429")
    max_tokens_limit: int | None = Field(None, ge=1, description="cap on generated tokens per request")
    chat_template: Path | None = Field(None, description="Jinja file that overrides the model's template")
    metrics_compat: list[Literal["vllm"]] = Field(default_factory=list)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # engine
    backend: Literal["llama.cpp", "transformers"] | None = None
    device: str | None = None
    model_file: str | None = None
    ctx_size: int | None = Field(None, ge=16)
    threads: int | None = Field(None, ge=1)
    n_gpu_layers: int | None = None
    parallel: int | None = Field(None, ge=1)
    prompt_cache_mib: int = Field(512, ge=0)
    flash_attn: Literal["auto", "on", "off"] = "auto"
    trust_remote_code: bool = False
    allow_pickle: bool = False
    allow_runtime_lora: bool = Field(False, description="enable POST /v1/load_lora_adapter and unload")

    @property
    def run_dir(self) -> Path:
        """Where the background server keeps its pid, address and log."""
        return self.cache_dir / "run"
