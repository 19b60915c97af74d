"""Settings: one TOML file plus JOBYARD_* environment variables. Pure: nothing happens at import.

An executor does not get the whole Settings: it gets its slice (`ExecutorSettings` and one
subclass per built-in executor), built from Settings by `<Kind>ExecutorSettings.of(settings)`,
which `Executor.from_settings` calls (the registry, and tests, build executors that way).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from jobyard.model.job import MAX_ENTRYPOINT_BYTES, MAX_ENV_BYTES, MAX_ENV_VARS, MAX_NAME_LENGTH

MAX_PAGE_SIZE = 500  # the most jobs one list page may return
MAX_LOG_READ_BYTES = 16 * 2**20  # the most log bytes one read may return


def default_home() -> Path:
    return Path(platformdirs.user_data_dir("jobyard", appauthor=False))


class GpuSpec(BaseModel):
    """One GPU of a configured inventory (used where NVML finds none, e.g. in tests)."""

    index: int
    model: str = "unknown"
    memory_mib: int = 0


class EnvironmentSpec(BaseModel):
    """One entry of the environment catalog: what `image` (or a face's image id) names.

    For the local executor: a Python virtualenv (its bin/ goes first on PATH), more PATH
    entries and variables. For executors that run container images: `image`, a reference.
    """

    model_config = ConfigDict(extra="forbid")

    id: Annotated[str, Field(min_length=1, max_length=128)]
    name: Annotated[str, Field(min_length=1, max_length=128)]
    description: str = ""
    venv: Path | None = None
    path_prefix: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    image: str | None = None


def _default_environments() -> list[EnvironmentSpec]:
    """The host, under a positive id: clients of the PaaS face insist on image ids from 1."""
    description = "this machine's own environment: the job runs here, no container"
    return [EnvironmentSpec(id="1", name="host", description=description)]


class QueueSpec(BaseModel):
    """A queue: where jobs wait for one pool, with a priority and limits (None: unlimited)."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    pool: str = "local"
    priority: int = 0
    max_running_jobs: Annotated[int | None, Field(ge=0)] = None
    max_gpus: Annotated[int | None, Field(ge=0)] = None
    max_cpus: Annotated[float | None, Field(ge=0)] = None
    max_running_jobs_per_user: Annotated[int | None, Field(ge=0)] = None
    max_gpus_per_user: Annotated[int | None, Field(ge=0)] = None
    max_cpus_per_user: Annotated[float | None, Field(ge=0)] = None


class SlurmSettings(BaseModel):
    """The Slurm executor: where its jobs go and how the tools (sbatch, squeue, ...) are found."""

    model_config = ConfigDict(extra="forbid")

    partition: str | None = None  # None: the cluster's default partition
    account: str | None = None
    qos: str | None = None
    sbatch_args: list[str] = Field(default_factory=list)  # extra options, e.g. ["--exclusive"]
    bin_dir: Path | None = None  # where the tools live; None: PATH
    conf: Path | None = None  # SLURM_CONF for the tools; None: their default
    one_task_per_node: bool = False  # multi-worker jobs: --nodes=N --ntasks-per-node=1
    check_submissions: bool = True  # sbatch --test-only once per resource shape, at submit
    command_timeout_seconds: Annotated[float, Field(gt=0)] = 15.0
    poll_min_interval_seconds: Annotated[float, Field(ge=0)] = 0.2
    max_concurrent_commands: Annotated[int, Field(ge=1, le=64)] = 4
    # One-task jobs that start together with the same resources go to Slurm as one job array
    # (one sbatch) of at most this many; 1: one sbatch per job. Keep it below the cluster's
    # MaxArraySize (1001 by default).
    max_array_size: Annotated[int, Field(ge=1, le=1000)] = 256


class RaySettings(BaseModel):
    """The Ray executor: which cluster (its Job API), how to authenticate, how often to ask."""

    model_config = ConfigDict(extra="forbid")

    # The dashboard's http(s)://host:8265, or ray://host:10001 (resolved once through Ray
    # Client); None: Ray's own default (RAY_ADDRESS, else a cluster on this machine).
    address: str | None = None
    token: SecretStr | None = None  # sent as `Authorization: Bearer <token>`
    request_timeout_seconds: Annotated[float, Field(gt=0)] = 10.0
    poll_interval_seconds: Annotated[float, Field(gt=0)] = 0.02  # a young job's; then age/20
    poll_max_interval_seconds: Annotated[float, Field(gt=0)] = 2.0  # an old job's
    log_interval_seconds: Annotated[float, Field(gt=0)] = 1.0  # a running driver's log copy
    capacity_refresh_seconds: Annotated[float, Field(gt=0)] = 30.0
    max_concurrent_requests: Annotated[int, Field(ge=1, le=64)] = 4
    # Whether the cluster may grow (an autoscaler): a job asking for more CPUs, memory or
    # GPUs than it has now waits for them, as on Ray; False: such a job is refused at submit.
    pool_can_grow: bool = True


class ContainerRuntimeArgs(BaseModel):
    """What the container runtime's command lines carry besides jobyard's own options: before
    every subcommand (`global_args`, e.g. ["--runtime", "runc"]), after `run` (`run_args`,
    e.g. ["--ulimit", "nofile=20000:20000"]) and after `pull` (`pull_args`, e.g.
    ["--tls-verify=false"] for a registry on loopback without TLS)."""

    model_config = ConfigDict(extra="forbid")

    global_args: list[str] = Field(default_factory=list)
    run_args: list[str] = Field(default_factory=list)
    pull_args: list[str] = Field(default_factory=list)


class PoolSpec(BaseModel):
    """A resource pool: one executor's capacity. None: discover (local) or ask the executor."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    executor: str = "local"
    cpus: float | None = None
    memory_mib: int | None = None
    gpus: list[GpuSpec] | None = None


def _in_memory(sqlite_url: str) -> bool:
    return ":memory:" in sqlite_url or sqlite_url.rstrip("/") in ("sqlite:", "sqlite")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="JOBYARD_", env_nested_delimiter="__", extra="forbid"
    )

    home: Path = Field(default_factory=default_home)
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8000
    database_url: str | None = None
    # API processes of this server (jobyard server --workers; server.py): default 1 on SQLite,
    # the number of cores on PostgreSQL
    workers: Annotated[int | None, Field(ge=1, le=256)] = None
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
    # Scheduling: retries back off exponentially from the base; the first job blocked longer
    # than reservation_after_seconds holds what it needs so smaller ones cannot starve it.
    retry_backoff_seconds: Annotated[float, Field(ge=0)] = 10.0
    retry_backoff_max_seconds: Annotated[float, Field(ge=0)] = 600.0
    reservation_after_seconds: Annotated[float, Field(ge=0)] = 60.0
    start_timeout_seconds: Annotated[float, Field(gt=0)] = 300.0
    default_queue: str = "default"
    default_pool: str = "local"
    # Pools and queues; empty means one pool of this machine and one default queue.
    pools: list[PoolSpec] = Field(default_factory=list)
    queues: list[QueueSpec] = Field(default_factory=list)
    environments: list[EnvironmentSpec] = Field(default_factory=_default_environments)
    slurm: SlurmSettings = Field(default_factory=SlurmSettings)
    ray: RaySettings = Field(default_factory=RaySettings)
    # Containers (jobs with an image, on the local and Slurm executors; docs/executors.md): the
    # runtime's CLI (None: the first of podman and docker on PATH; "none": no containers), its
    # extra arguments, how long a pull may take, and the image of jobs that name none (a
    # catalog entry's id or name, or a reference; None: such jobs run on the host).
    container_runtime: Literal["podman", "docker", "none"] | None = None
    container_runtime_args: ContainerRuntimeArgs = Field(default_factory=ContainerRuntimeArgs)
    container_pull_timeout_seconds: Annotated[float, Field(gt=0)] = 1800.0
    default_image: Annotated[str | None, Field(min_length=1, max_length=1024)] = None
    log_level: str = "info"
    access_log: bool = False
    # The Ray-compatible job API's own listener (on `host`); 0 turns it off.
    ray_port: Annotated[int, Field(ge=0, le=65535)] = 8265
    # Largest working-directory package (a zip) a client may upload; unpacked, 10 times this.
    max_package_bytes: Annotated[int, Field(ge=1)] = 100 * 2**20
    # Limits: the largest request body (413 beyond it) and, per user, how many jobs may be
    # unfinished at once (None: no limit; a submission past it is refused with 429).
    max_request_bytes: Annotated[int, Field(ge=1024)] = 2**20
    max_live_jobs_per_user: Annotated[int | None, Field(ge=1)] = None
    # What one job may carry (every face; a 4xx naming the field beyond it), each at most the
    # model's own ceiling; the largest page a client may ask for (at least the faces' default
    # page sizes); the most log bytes one read returns.
    max_entrypoint_bytes: Annotated[int, Field(ge=1, le=MAX_ENTRYPOINT_BYTES)] = (
        MAX_ENTRYPOINT_BYTES
    )
    max_env_vars: Annotated[int, Field(ge=0, le=MAX_ENV_VARS)] = MAX_ENV_VARS
    max_env_bytes: Annotated[int, Field(ge=0, le=MAX_ENV_BYTES)] = MAX_ENV_BYTES
    max_name_length: Annotated[int, Field(ge=1, le=MAX_NAME_LENGTH)] = MAX_NAME_LENGTH
    max_page_size: Annotated[int, Field(ge=50, le=MAX_PAGE_SIZE)] = MAX_PAGE_SIZE
    max_log_read_bytes: Annotated[int, Field(ge=1024, le=MAX_LOG_READ_BYTES)] = MAX_LOG_READ_BYTES
    # SIGTERM: stop accepting, give requests in flight (log streams too) this long, then exit.
    shutdown_timeout_seconds: Annotated[int, Field(ge=1)] = 5
    # Interactive access (docs/access.md): the range gateway ports are lent from (on `host`),
    # the host name job URLs carry (default: `host`), how often leases follow job states.
    gateway_port_range: Annotated[str, Field(pattern=r"^\d{1,5}-\d{1,5}$")] = "20000-20999"
    gateway_host: str | None = None
    gateway_sweep_seconds: Annotated[float, Field(gt=0)] = 0.25
    # Web terminals: how long a terminal URL's single-use token stays valid.
    terminal_token_ttl_seconds: Annotated[float, Field(gt=0, le=3600)] = 60.0
    # Usage (docs/observability.md): each running task's CPU, memory and GPUs are sampled every
    # usage_interval_seconds (0: never), and its latest usage_samples kept; a GPU below
    # idle_gpu_threshold_percent busy is idle, for the jobs that set idle_gpu_timeout.
    usage_interval_seconds: Annotated[float, Field(ge=0, le=3600)] = 5.0
    usage_samples: Annotated[int, Field(ge=1, le=100_000)] = 720
    idle_gpu_threshold_percent: Annotated[float, Field(ge=0, le=100)] = 5.0

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

    @model_validator(mode="after")
    def _check_catalogs(self) -> Settings:
        pools = [p.name for p in self.effective_pools]
        if len(set(pools)) != len(pools):
            raise ValueError(f"pools: names must be unique, got {pools}")
        for pool in self.effective_pools:
            if pool.executor != self.executor:
                raise ValueError(
                    f"pools: pool {pool.name!r} names executor {pool.executor!r}, but this "
                    f"server runs the {self.executor!r} executor (one executor per server)"
                )
        queues = [q.name for q in self.effective_queues]
        if len(set(queues)) != len(queues):
            raise ValueError(f"queues: names must be unique, got {queues}")
        for queue in self.effective_queues:
            if queue.pool not in pools:
                raise ValueError(
                    f"queues: queue {queue.name!r} names pool {queue.pool!r}; "
                    f"pools are: {', '.join(pools)}"
                )
        ids = [e.id for e in self.environments]
        if len(set(ids)) != len(ids):
            raise ValueError(f"environments: ids must be unique, got {ids}")
        url = self.effective_database_url
        if (self.workers or 1) > 1 and url.startswith("sqlite") and _in_memory(url):
            raise ValueError(
                "workers: more than 1 needs a database file that every worker opens (the "
                "default SQLite file under home, or PostgreSQL); an in-memory SQLite database "
                "belongs to one process"
            )
        ports = self.gateway_ports
        if not (1 <= ports.start <= ports.stop - 1 <= 65535):
            raise ValueError("gateway_port_range: must be LOW-HIGH with 1 <= LOW <= HIGH <= 65535")
        return self

    @property
    def effective_pools(self) -> list[PoolSpec]:
        if self.pools:
            return self.pools
        return [PoolSpec(name=self.default_pool, executor=self.executor)]

    @property
    def effective_queues(self) -> list[QueueSpec]:
        if self.queues:
            return self.queues
        return [QueueSpec(name=self.default_queue, pool=self.effective_pools[0].name)]

    def find_environment(self, ref: str | None) -> EnvironmentSpec | None:
        """The catalog entry `ref` names by id or name; None (or "") means the first entry."""
        return _find_environment(self.environments, ref)

    @property
    def sqlite_path(self) -> Path:
        return self.home / "jobyard.db"

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.sqlite_path}"

    @property
    def effective_workers(self) -> int:
        if self.workers is not None:
            return self.workers
        return 1 if self.effective_database_url.startswith("sqlite") else os.cpu_count() or 1

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def jobs_dir(self) -> Path:
        return self.home / "jobs"

    @property
    def admin_token_path(self) -> Path:
        return self.home / "admin.token"

    @property
    def gateway_ports(self) -> range:
        low, high = (int(part) for part in self.gateway_port_range.split("-"))
        return range(low, high + 1)

    @property
    def ssh_host_key_path(self) -> Path:
        return self.home / "ssh_host_ed25519_key"


def load_settings(**overrides: Any) -> Settings:
    return Settings(**overrides)


def _find_environment(entries: list[EnvironmentSpec], ref: str | None) -> EnvironmentSpec | None:
    if not ref:
        return entries[0] if entries else None
    return next((entry for entry in entries if ref in (entry.id, entry.name)), None)


# ---- what each executor reads -----------------------------------------------------------------


class ExecutorSettings(BaseModel):
    """What every executor reads of the server's settings. `of` takes each field from the
    Settings attribute of the same name."""

    home: Path
    node_name: str
    stop_grace_seconds: float
    max_tasks: int
    environments: list[EnvironmentSpec]
    # Containers (the local and Slurm executors run jobs with an image; containers.py).
    container_runtime: Literal["podman", "docker", "none"] | None = None
    container_runtime_args: ContainerRuntimeArgs = Field(default_factory=ContainerRuntimeArgs)
    container_pull_timeout_seconds: float = 1800.0
    default_image: str | None = None

    @classmethod
    def of(cls, settings: Settings) -> Self:
        return cls.model_validate(_same_names(cls, settings))

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def jobs_dir(self) -> Path:
        return self.home / "jobs"

    def find_environment(self, ref: str | None) -> EnvironmentSpec | None:
        """The catalog entry `ref` names by id or name; None (or "") means the first entry."""
        return _find_environment(self.environments, ref)


class LocalExecutorSettings(ExecutorSettings):
    """The local executor's: its pool's CPUs, memory and GPUs as configured (the pool's own
    values, else the server's; None: discovered on this machine)."""

    cpus: float | None = None
    memory_mib: int | None = None
    gpus: list[GpuSpec] | None = None

    @classmethod
    def of(cls, settings: Settings) -> Self:
        pool = settings.effective_pools[0]
        return cls.model_validate(
            {
                **_same_names(ExecutorSettings, settings),
                "cpus": pool.cpus if pool.cpus is not None else settings.cpus,
                "memory_mib": pool.memory_mib or settings.memory_mib,
                "gpus": pool.gpus if pool.gpus is not None else settings.gpus,
            }
        )


def _same_names(cls: type[BaseModel], settings: Settings) -> dict[str, Any]:
    return {name: getattr(settings, name) for name in cls.model_fields}


class SlurmExecutorSettings(ExecutorSettings):
    slurm: SlurmSettings = Field(default_factory=SlurmSettings)


class RayExecutorSettings(ExecutorSettings):
    ray: RaySettings = Field(default_factory=RaySettings)
