"""Settings: one TOML file plus JOBYARD_* environment variables. Pure: nothing happens at import."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import platformdirs
from pydantic import BaseModel, Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


def default_home() -> Path:
    return Path(platformdirs.user_data_dir("jobyard", appauthor=False))


class GpuSpec(BaseModel):
    """One GPU of a configured inventory (used where NVML finds none, e.g. in tests)."""

    index: int
    model: str = "unknown"
    memory_mib: int = 0


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="JOBYARD_", env_nested_delimiter="__", extra="forbid"
    )

    home: Path = Field(default_factory=default_home)
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8000
    database_url: str | None = None
    executor: str = "local"
    node_name: str = Field(default_factory=lambda: os.uname().nodename)
    # Timing: every delay is configuration with a sane default.
    stop_grace_seconds: Annotated[float, Field(ge=0)] = 10.0
    reconcile_interval_seconds: Annotated[float, Field(gt=0)] = 1.0
    reconcile_min_gap_seconds: Annotated[float, Field(ge=0)] = 0.005
    # Capacity of the local pool. None means: discover from this machine.
    cpus: float | None = None
    memory_mib: int | None = None
    gpus: list[GpuSpec] | None = None
    max_tasks: Annotated[int, Field(ge=1)] = 512
    default_queue: str = "default"
    default_pool: str = "local"
    log_level: str = "info"
    access_log: bool = False

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,  # noqa: ARG003 - no .env files
        file_secret_settings: PydanticBaseSettingsSource,  # noqa: ARG003
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("JOBYARD_CONFIG")
        if config_file:
            if not Path(config_file).is_file():
                raise ValueError(f"JOBYARD_CONFIG names {config_file!r}, which is not a file")
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config_file)))
        return tuple(sources)

    @property
    def sqlite_path(self) -> Path:
        return self.home / "jobyard.db"

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.sqlite_path}"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def jobs_dir(self) -> Path:
        return self.home / "jobs"

    @property
    def admin_token_path(self) -> Path:
        return self.home / "admin.token"


def load_settings(**overrides: Any) -> Settings:
    return Settings(**overrides)
