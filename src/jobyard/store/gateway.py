"""Gateway port leases (`gateway_ports`) and users' registered public keys (`user_keys`).

A lease lends one port of the server's gateway range to one declared port of a live job; the
primary key on `port` is what keeps a port from two live jobs at once."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, delete, exists, insert, select

from jobyard.model.job import Lease, PortProtocol
from jobyard.store.tables import GatewayPortRow, JobRow, JobSecretRow, UserKeyRow, UserRow


@dataclass(frozen=True)
class KeyRow:
    id: int
    name: str
    public_key: str
    fingerprint: str
    created_at: float


def jobs_needing_leases(
    conn: Connection, states: Iterable[str]
) -> list[tuple[int, dict[str, Any]]]:
    """(job id, stored spec) of jobs in `states` that declare ports but hold no lease yet.
    A job with ports has a port token, so the join finds them without reading every spec."""
    has_lease = exists().where(GatewayPortRow.job_id == JobRow.id)
    rows = conn.execute(
        select(JobRow.id, JobRow.spec)
        .join(JobSecretRow, JobSecretRow.job_id == JobRow.id)
        .where(
            JobSecretRow.kind == "port_token",
            JobRow.state.in_(list(states)),
            ~has_lease,
        )
        .order_by(JobRow.id)
    )
    return [(int(job_id), spec) for job_id, spec in rows]


def leased_ports(conn: Connection) -> set[int]:
    return {int(p) for p in conn.execute(select(GatewayPortRow.port)).scalars()}


def insert_leases(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Keys: port, job_id, task_index, target_port, protocol, allocated_at."""
    if rows:
        conn.execute(insert(GatewayPortRow), list(rows))


def lease_of_ended_job(live_states: Iterable[str]) -> Any:
    """The lease's job is no longer in `live_states`: correlated on the lease, so the database
    walks the leases (a few) and looks each job up by its key, never the whole job history
    (`job_id IN (every ended job)` read all of `jobs` four times a second)."""
    return exists().where(JobRow.id == GatewayPortRow.job_id, ~JobRow.state.in_(list(live_states)))


def has_ended_leases(conn: Connection, live_states: Iterable[str]) -> bool:
    """Whether a job no longer in `live_states` still holds a lease (a read, so that a quiet
    sweep writes nothing)."""
    query = select(GatewayPortRow.port).where(lease_of_ended_job(live_states)).limit(1)
    return conn.execute(query).first() is not None


def release_ended(conn: Connection, live_states: Iterable[str]) -> int:
    """Return the leases of jobs no longer in `live_states`; how many were returned."""
    result = conn.execute(delete(GatewayPortRow).where(lease_of_ended_job(live_states)))
    return int(result.rowcount or 0)


def list_leases(conn: Connection, job_ids: Sequence[int] | None = None) -> list[Lease]:
    query = select(
        GatewayPortRow.port,
        GatewayPortRow.job_id,
        JobRow.display_id,
        JobRow.owner,
        GatewayPortRow.task_index,
        GatewayPortRow.target_port,
        GatewayPortRow.protocol,
    ).join(JobRow, JobRow.id == GatewayPortRow.job_id)
    if job_ids is not None:
        query = query.where(GatewayPortRow.job_id.in_(list(job_ids)))
    rows = conn.execute(query.order_by(GatewayPortRow.port))
    return [Lease(**{**row._asdict(), "protocol": PortProtocol(row.protocol)}) for row in rows]


# ---- public keys --------------------------------------------------------------------------------


def add_key(
    conn: Connection, user_id: int, name: str, public_key: str, fingerprint: str, now: float
) -> int:
    return int(
        conn.execute(
            insert(UserKeyRow)
            .values(
                user_id=user_id,
                name=name,
                public_key=public_key,
                fingerprint=fingerprint,
                created_at=now,
            )
            .returning(UserKeyRow.id)
        ).scalar_one()
    )


def list_keys(conn: Connection, user_id: int) -> list[KeyRow]:
    rows = conn.execute(
        select(
            UserKeyRow.id,
            UserKeyRow.name,
            UserKeyRow.public_key,
            UserKeyRow.fingerprint,
            UserKeyRow.created_at,
        )
        .where(UserKeyRow.user_id == user_id)
        .order_by(UserKeyRow.id)
    )
    return [KeyRow(*row) for row in rows]


def keys_of_user_named(conn: Connection, name: str) -> list[str]:
    """The public keys (OpenSSH text) of the user called `name` (a job's owner)."""
    rows = conn.execute(
        select(UserKeyRow.public_key)
        .join(UserRow, UserRow.id == UserKeyRow.user_id)
        .where(UserRow.name == name)
    )
    return [str(key) for key in rows.scalars()]


def delete_key(conn: Connection, user_id: int, key_id: int) -> bool:
    result = conn.execute(
        delete(UserKeyRow).where(UserKeyRow.id == key_id, UserKeyRow.user_id == user_id)
    )
    return bool(result.rowcount)
