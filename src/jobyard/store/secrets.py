"""Per-job secrets (SSH password, port token): written with the job, read by owner or admin."""

from __future__ import annotations

from sqlalchemy import Connection, insert, select

from jobyard.store.tables import JobSecretRow


def insert_secrets(conn: Connection, job_id: int, secrets: dict[str, str]) -> None:
    if secrets:
        conn.execute(
            insert(JobSecretRow),
            [{"job_id": job_id, "kind": kind, "value": value} for kind, value in secrets.items()],
        )


def get_secrets(conn: Connection, job_id: int) -> dict[str, str]:
    rows = conn.execute(
        select(JobSecretRow.kind, JobSecretRow.value).where(JobSecretRow.job_id == job_id)
    )
    return {kind: value for kind, value in rows}


def find_job_by_secret(conn: Connection, kind: str, value: str) -> int | None:
    """The job a secret belongs to (e.g. the port token a proxied request carries)."""
    row = conn.execute(
        select(JobSecretRow.job_id).where(JobSecretRow.kind == kind, JobSecretRow.value == value)
    ).first()
    return None if row is None else int(row[0])
