"""SQLAlchemy rows. Timestamps are UTC epoch seconds (float): portable and cheap to compare."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class UserRow(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    is_admin: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[float] = mapped_column(Float)


class TokenRow(Base):
    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class UserKeyRow(Base):
    """A public key a user registered (SSH into their jobs)."""

    __tablename__ = "user_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(128), default="")
    public_key: Mapped[str] = mapped_column(Text)
    fingerprint: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[float] = mapped_column(Float)


class RegistryCredentialRow(Base):
    """A user's login to a container registry (service/registries.py): one per user and
    registry host. The password is read only to write a pull's auth file; never shown."""

    __tablename__ = "registry_credentials"
    __table_args__ = (
        UniqueConstraint("user_id", "host", name="uq_registry_credentials_user_host"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    host: Mapped[str] = mapped_column(String(255))  # the registry, host[:port]
    username: Mapped[str] = mapped_column(String(255))
    password: Mapped[str] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class JobRow(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("owner", "submission_id", name="uq_jobs_owner_submission_id"),
        Index("ix_jobs_owner_id", "owner", "id"),
        Index("ix_jobs_state_priority_id", "state", "priority", "id"),
        Index("ix_jobs_state_id", "state", "id"),
        Index("ix_jobs_owner_state_id", "owner", "state", "id"),
        Index("ix_jobs_queue_id", "queue", "id"),
        Index("ix_jobs_queue_state", "queue", "state"),  # counts per queue and state
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    display_id: Mapped[str] = mapped_column(String(16), unique=True)
    owner: Mapped[str] = mapped_column(String(128))
    submission_id: Mapped[str] = mapped_column(String(128))
    request_hash: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(256))
    queue: Mapped[str] = mapped_column(String(128))
    pool: Mapped[str] = mapped_column(String(128))
    priority: Mapped[int] = mapped_column(Integer, default=0)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    labels: Mapped[dict[str, str]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    message: Mapped[str] = mapped_column(Text, default="")
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    stop_requested_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    stop_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # Retries: the attempt now running or queued (0 is the first); when the next may start.
    attempt: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    not_before: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Why a queued job waits (a machine code and a message), kept by the scheduler.
    pending_reason: Mapped[str | None] = mapped_column(String(64), nullable=True)
    pending_message: Mapped[str] = mapped_column(Text, default="", server_default="")


class JobAttemptRow(Base):
    """A finished attempt of a job that was retried: its own exit code and reason."""

    __tablename__ = "job_attempts"

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    attempt: Mapped[int] = mapped_column(Integer, primary_key=True)
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    message: Mapped[str] = mapped_column(Text, default="")
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class JobSecretRow(Base):
    """Per-job secrets (SSH password, port token): shown only to the owner and admins,
    never written to events or logs."""

    __tablename__ = "job_secrets"

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class GatewayPortRow(Base):
    """A port of the server's gateway range lent to a live job's declared port.

    The primary key on `port` is what keeps one gateway port from two live jobs."""

    __tablename__ = "gateway_ports"
    __table_args__ = (Index("ix_gateway_ports_job", "job_id"),)

    port: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    task_index: Mapped[int] = mapped_column(Integer, default=0)
    target_port: Mapped[int] = mapped_column(Integer)
    protocol: Mapped[str] = mapped_column(String(16))
    allocated_at: Mapped[float] = mapped_column(Float)


class JobLabelRow(Base):
    __tablename__ = "job_labels"
    __table_args__ = (Index("ix_job_labels_key_value", "key", "value"),)

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))


class TaskRow(Base):
    __tablename__ = "tasks"

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    idx: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))
    node: Mapped[str | None] = mapped_column(String(256), nullable=True)
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    gpus: Mapped[list[int]] = mapped_column(JSON)
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    handle: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class EventRow(Base):
    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    type: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(64))
    message: Mapped[str] = mapped_column(Text)
    timestamp: Mapped[float] = mapped_column(Float)


class StateLogRow(Base):
    __tablename__ = "state_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    state: Mapped[str] = mapped_column(String(16))
    timestamp: Mapped[float] = mapped_column(Float)


class TaskUsageRow(Base):
    """One usage sample of a task (service/usage.py), in a ring of the task's latest ones:
    `slot` is the sample's number `seq` modulo the ring's size, so a task never holds more rows
    than that. Kept after the job ends; deleted with the job (ON DELETE CASCADE)."""

    __tablename__ = "task_usage"

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    task_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    slot: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(BigInteger)
    timestamp: Mapped[float] = mapped_column(Float)
    cpu_cores: Mapped[float | None] = mapped_column(Float, nullable=True)
    rss_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # [[index, utilization %, memory used, memory total], ...]; null: no GPU figures
    gpus: Mapped[list[list[float]] | None] = mapped_column(JSON, nullable=True)


class LogMarkRow(Base):
    """How far a task's log had grown when a sampling pass saw it (service/usage.py): the
    first `log_bytes` bytes were there at `timestamp`. What `logs?timestamps=true` stamps lines
    with. A ring per task like task_usage's; deleted with the job."""

    __tablename__ = "log_marks"

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    task_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    slot: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(BigInteger)
    log_bytes: Mapped[int] = mapped_column(BigInteger)
    timestamp: Mapped[float] = mapped_column(Float)


class IdleGpuSpellRow(Base):
    """idle_gpu_timeout's clock (service/usage.py): since when a job's GPUs have all been idle,
    whether that spell was acted on, and whether the job was told its GPUs cannot be measured;
    kept so a server restart goes on counting. A row only while one of these is set; deleted
    with the job."""

    __tablename__ = "idle_gpu_spells"

    job_id: Mapped[int] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    since: Mapped[float | None] = mapped_column(Float, nullable=True)
    acted: Mapped[bool] = mapped_column(Boolean, default=False)
    unmeasured: Mapped[bool] = mapped_column(Boolean, default=False)


class TerminalTokenRow(Base):
    """A web terminal URL's single-use token (service/terminals.py), by its SHA-256: in the
    database, so that whichever worker or server the WebSocket reaches can redeem it."""

    __tablename__ = "terminal_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    job: Mapped[str] = mapped_column(String(128))
    task: Mapped[str] = mapped_column(String(256))
    expires_at: Mapped[float] = mapped_column(Float, index=True)
