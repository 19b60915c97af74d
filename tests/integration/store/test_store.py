"""The store layer against real databases: every test runs on SQLite and on PostgreSQL.

PostgreSQL tests get a fresh database in a cluster started once per session (see
tests/plugins/postgres.py); SQLite tests get a file in tmp_path. Each test migrates its empty
database with `migrate()` and talks to it through one `Database` (group-commit writer + readers).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, delete, func, insert, inspect, select, text
from sqlalchemy.exc import IntegrityError

import jobyard.store.db as store_db
import jobyard.store.gateway as store_gateway
import jobyard.store.jobs as store_jobs
import jobyard.store.registries as store_registries
import jobyard.store.users as store_users
from jobyard.errors import Conflict, InvalidInput, NotFound
from jobyard.model import (
    TRANSITIONS,
    Event,
    EventType,
    JobSpec,
    JobState,
    Resources,
    TaskState,
    TerminationReason,
    event_for,
)
from jobyard.service.access import LIVE_STATES
from jobyard.service.registries import RegistryService
from jobyard.store.db import Database, make_engines, migrate
from jobyard.store.jobs import (
    JobFilter,
    JobPage,
    TaskUpdate,
    Transition,
    delete_job,
    find_by_submission,
    get_job,
    ids_in_states,
    insert_job,
    list_events,
    list_jobs,
    load_jobs,
    request_stop,
    resolve_ref,
    transition,
    update_task,
)
from jobyard.store.tables import (
    Base,
    EventRow,
    GatewayPortRow,
    JobLabelRow,
    JobRow,
    StateLogRow,
    TaskRow,
)
from jobyard.store.users import (
    User,
    add_token,
    ensure_user,
    has_admin,
    insert_user,
    user_for_token,
)
from tests.factories import new_job

NOW = 1_700_000_000.5  # exactly representable: timestamps round-trip without rounding noise


def at(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/jobyard.db"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return sqlite_url(tmp_path)
    return str(request.getfixturevalue("fresh_postgres_url"))


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    migrate(db_url)
    database = Database(db_url)
    try:
        yield database
    finally:
        database.close()


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[Database]:
    """For behaviour that does not depend on the dialect."""
    url = sqlite_url(tmp_path)
    migrate(url)
    database = Database(url)
    try:
        yield database
    finally:
        database.close()


async def add(db: Database, now: float = NOW, **kwargs: Any) -> int:
    return await db.write(partial(insert_job, new=new_job(**kwargs), now=now))


async def move(
    db: Database, job_id: int, target: JobState, now: float = NOW, **kw: Any
) -> JobState:
    change = Transition(target=target, **kw)
    return await db.write(partial(transition, job_id=job_id, change=change, now=now))


async def fetch(db: Database, job_id: int) -> Any:
    return await db.read(partial(get_job, job_id=job_id))


async def events(db: Database, job_id: int) -> list[Event]:
    return await db.read(partial(list_events, job_id=job_id))


def count(conn: Connection, table: Any, job_id: int | None = None) -> int:
    query = select(func.count()).select_from(table)
    if job_id is not None:
        query = query.where(table.job_id == job_id)
    return int(conn.execute(query).scalar_one())


def path_to(state: JobState) -> list[JobState]:
    """The shortest legal path of transitions from QUEUED to `state` (BFS over the table)."""
    paths: dict[JobState, list[JobState]] = {JobState.QUEUED: []}
    todo = deque([JobState.QUEUED])
    while todo:
        current = todo.popleft()
        for nxt in sorted(TRANSITIONS[current]):
            if nxt not in paths:
                paths[nxt] = [*paths[current], nxt]
                todo.append(nxt)
    return paths[state]


# The states a job can be stored in: SCHEDULED is entered by no edge (docs/state-machine.md).
REACHABLE = [
    state
    for state in JobState
    if state is JobState.QUEUED or any(state in targets for targets in TRANSITIONS.values())
]


def job_in_state(state: JobState, **kwargs: Any) -> Callable[[Connection], int]:
    """A write that inserts a job and drives it to `state` along legal edges."""

    def fn(conn: Connection) -> int:
        job_id = insert_job(conn, new_job(**kwargs), NOW)
        for step, target in enumerate(path_to(state), start=1):
            change = Transition(target=target, reason="Setup", message="setup")
            transition(conn, job_id, change, NOW + step)
        return job_id

    return fn


# ---- migrations -----------------------------------------------------------------------------


def table_names(url: str) -> set[str]:
    writer, reader = make_engines(url)
    try:
        with writer.connect() as conn:
            return set(inspect(conn).get_table_names())
    finally:
        writer.dispose()
        reader.dispose()


def test_migrations_upgrade_an_empty_database_to_head_matching_the_metadata(db_url: str) -> None:
    assert table_names(db_url) == set()
    migrate(db_url)
    migrate(db_url)  # a second run is a no-op

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(store_db.__file__).parent / "migrations"))
    head = ScriptDirectory.from_config(cfg).get_current_head()

    writer, reader = make_engines(db_url)
    try:
        with writer.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            revision = context.get_current_revision()
            diff = compare_metadata(context, Base.metadata)
            jobs_ddl = (
                conn.execute(text("SELECT sql FROM sqlite_master WHERE name = 'jobs'")).scalar_one()
                if conn.dialect.name == "sqlite"
                else None
            )
    finally:
        writer.dispose()
        reader.dispose()

    assert head is not None and revision == head
    assert diff == []
    assert table_names(db_url) == set(Base.metadata.tables) | {"alembic_version"}
    if jobs_ddl is not None:  # ids are never reused on SQLite only with AUTOINCREMENT
        assert "AUTOINCREMENT" in jobs_ddl.upper()


# ---- insert and read back -------------------------------------------------------------------


async def test_inserted_job_reads_back_equal(db: Database) -> None:
    spec = JobSpec(
        entrypoint=["python", "train.py", "--lr", "0.1"],
        env={"EPOCHS": "3", "GREETING": "grüß dich"},
        working_dir="/work",
        runtime_env={"pip": ["numpy"], "nested": {"a": [1, 2.5, None, True]}},
        resources=Resources(cpus=2.5, memory="4GiB", gpus=1, gpu_model="H100"),
        replicas=3,
        max_runtime=3600,
    )
    labels = {"team": "vision", "exp": "a/b=c", "ünïcode": "ja"}
    new = new_job(
        owner="alice",
        submission_id="sub-1",
        name="resnet",
        queue="gpu",
        pool="p1",
        priority=7,
        labels=labels,
        spec=spec,
    )
    job_id = await db.write(partial(insert_job, new=new, now=NOW))

    job = await fetch(db, job_id)
    assert job is not None
    assert job.id == job_id
    assert len(job.display_id) == 6 and job.display_id.isalnum()
    assert (job.owner, job.submission_id, job.name) == ("alice", "sub-1", "resnet")
    assert (job.queue, job.pool, job.priority) == ("gpu", "p1", 7)
    assert job.spec == spec
    assert job.labels == labels
    assert job.state is JobState.QUEUED
    assert (job.reason, job.message, job.exit_code) == (None, "", None)
    assert job.created_at == job.updated_at == at(NOW)
    assert job.started_at is job.finished_at is job.stop_requested_at is job.stop_reason is None
    assert [t.index for t in job.tasks] == [0, 1, 2]
    assert [t.name for t in job.tasks] == [f"{job.display_id}-worker-{i}" for i in range(3)]
    assert all(t.state is TaskState.PENDING and t.gpus == [] and t.pid is None for t in job.tasks)
    assert [(e.state, e.timestamp) for e in job.state_log] == [(JobState.QUEUED, at(NOW))]
    assert await events(db, job_id) == [
        Event(
            type=EventType.NORMAL, reason="Queued", message="job queued in 'gpu'", timestamp=at(NOW)
        )
    ]
    assert await db.read(partial(find_by_submission, owner="alice", submission_id="sub-1")) == (
        job_id,
        new.request_hash,
    )
    assert await db.read(partial(find_by_submission, owner="bob", submission_id="sub-1")) is None


async def test_minimal_spec_round_trips_and_load_jobs_keeps_the_requested_order(
    db: Database,
) -> None:
    a = await add(db, spec=JobSpec(entrypoint="true"))
    b = await add(db)
    c = await add(db)
    jobs = await db.read(partial(load_jobs, ids=[c, a, 10**6, b]))
    assert [j.id for j in jobs] == [c, a, b]
    assert jobs[1].spec == JobSpec(entrypoint="true")
    assert jobs[1].labels == {}
    assert await db.read(partial(load_jobs, ids=[])) == []
    assert await fetch(db, 10**6) is None


async def test_ids_increase_and_are_never_reused_after_a_delete(db: Database) -> None:
    ids = [await add(db) for _ in range(3)]
    assert ids == sorted(set(ids))
    await db.write(partial(delete_job, job_id=ids[-1]))  # the highest id: the one a rowid reuses
    after = await add(db)
    assert after > ids[-1]
    await db.write(partial(delete_job, job_id=after))
    assert await add(db) > after


# ---- unique submissions ---------------------------------------------------------------------


async def test_duplicate_submission_raises_integrity_error_that_is_recognised(db: Database) -> None:
    first = await add(db, owner="alice", submission_id="s-1")
    with pytest.raises(IntegrityError) as info:
        await add(db, owner="alice", submission_id="s-1")
    assert "submission_id" in str(info.value.orig)
    # the failed insert left nothing behind, and another owner may reuse the submission id
    other = await add(db, owner="bob", submission_id="s-1")
    assert other > first

    def orphan_task(conn: Connection) -> None:
        conn.execute(
            insert(TaskRow).values(job_id=10**6, idx=0, name="x", state="PENDING", gpus=[])
        )

    with pytest.raises(IntegrityError) as info:
        await db.write(orphan_task)
    assert "submission_id" not in str(info.value.orig)  # not mistaken for a duplicate

    def counts(conn: Connection) -> tuple[int, ...]:
        return tuple(count(conn, t) for t in (JobRow, TaskRow, StateLogRow, EventRow))

    assert await db.read(counts) == (2, 2, 2, 2)


async def test_a_display_id_clash_raises_and_is_not_a_duplicate_submission(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The store does not probe for a free display_id (one statement per submit); the unique
    # constraint catches the rare clash and the service submits again with a fresh one.
    monkeypatch.setattr(store_jobs, "new_display_id", lambda: "AAAAAA")
    await add(db)
    with pytest.raises(IntegrityError) as info:
        await add(db)
    assert "display_id" in str(info.value.orig)


# ---- transitions ----------------------------------------------------------------------------


async def test_every_edge_outside_the_transition_table_is_refused_and_changes_nothing(
    db: Database,
) -> None:
    for state in REACHABLE:
        job_id = await db.write(job_in_state(state))
        before = (await fetch(db, job_id), await events(db, job_id))
        assert before[0].state is state
        illegal = [t for t in JobState if t not in TRANSITIONS[state]]
        if state.is_terminal():
            assert illegal == list(JobState)  # a terminal state is never left, nor rewritten
        results = await asyncio.gather(
            *(
                move(db, job_id, target, NOW + 100, exit_code=9, termination=TerminationReason.LOST)
                for target in illegal
            ),
            return_exceptions=True,
        )
        assert all(isinstance(r, Conflict) for r in results), results
        assert (await fetch(db, job_id), await events(db, job_id)) == before


async def test_every_edge_in_the_transition_table_is_accepted(db: Database) -> None:
    edges = [
        (s, t) for s, targets in TRANSITIONS.items() if s in REACHABLE for t in sorted(targets)
    ]

    def apply_all(conn: Connection) -> list[tuple[int, JobState, JobState]]:
        done = []
        for source, target in edges:
            job_id = job_in_state(source)(conn)
            change = Transition(target=target, reason="Edge", message="edge")
            previous = transition(conn, job_id, change, NOW + 50)
            done.append((job_id, source, previous))
        return done

    done = await db.write(apply_all)
    assert [(source, previous) for _, source, previous in done] == [
        (source, source) for source, _ in edges
    ]
    jobs = await db.read(partial(load_jobs, ids=[job_id for job_id, _, _ in done]))
    assert [job.state for job in jobs] == [target for _, target in edges]
    for job, (source, target) in zip(jobs, edges, strict=True):
        assert [e.state for e in job.state_log] == [JobState.QUEUED, *path_to(source), target]


async def test_legal_transitions_are_logged_with_timestamps_and_evented(db: Database) -> None:
    job_id = await add(db)
    steps = [
        (JobState.STARTING, NOW + 1, {}),
        (JobState.QUEUED, NOW + 2, {}),  # requeued
        (JobState.STARTING, NOW + 3, {}),
        (JobState.RUNNING, NOW + 5, {}),
        (
            JobState.SUCCEEDED,
            NOW + 9.25,
            {"termination": TerminationReason.SUCCEEDED, "exit_code": 0},
        ),
    ]
    previous = []
    for target, ts, extra in steps:
        change = Transition(
            target=target,
            reason=f"Became{target.value.title()}",
            message=f"now {target.value}",
            **extra,
        )
        previous.append(await db.write(partial(transition, job_id=job_id, change=change, now=ts)))
        job = await fetch(db, job_id)
        assert job.state is target and job.updated_at == at(ts)
        if not target.is_terminal():
            assert (job.reason, job.message, job.finished_at) == (None, "", None)

    assert previous == [JobState.QUEUED, *[target for target, _, _ in steps[:-1]]]
    job = await fetch(db, job_id)
    assert [(e.state, e.timestamp) for e in job.state_log] == [(JobState.QUEUED, at(NOW))] + [
        (target, at(ts)) for target, ts, _ in steps
    ]
    assert [e.id for e in job.state_log] == sorted({e.id for e in job.state_log})
    assert job.started_at == at(NOW + 5)
    assert job.finished_at == at(NOW + 9.25)
    assert (job.reason, job.exit_code, job.message) == (
        TerminationReason.SUCCEEDED,
        0,
        "now SUCCEEDED",
    )
    assert [(e.type, e.reason, e.message, e.timestamp) for e in await events(db, job_id)] == [
        (EventType.NORMAL, "Queued", "job queued in 'default'", at(NOW)),
        *[
            (EventType.NORMAL, f"Became{t.value.title()}", f"now {t.value}", at(ts))
            for t, ts, _ in steps
        ],
    ]

    # a terminal state is never overwritten
    with pytest.raises(Conflict):
        await move(
            db, job_id, JobState.FAILED, NOW + 20, exit_code=1, termination=TerminationReason.LOST
        )
    again = await fetch(db, job_id)
    assert again == job


async def test_failure_transition_records_reason_exit_code_and_a_warning_event(
    db: Database,
) -> None:
    job_id = await db.write(job_in_state(JobState.RUNNING))
    change = Transition(
        target=JobState.FAILED,
        reason="WorkerFailed",
        message="worker-0 exited with 3",
        event_type=EventType.WARNING,
        termination=TerminationReason.EXIT_NONZERO,
        exit_code=3,
    )
    assert await db.write(partial(transition, job_id=job_id, change=change, now=NOW + 30)) is (
        JobState.RUNNING
    )
    job = await fetch(db, job_id)
    assert (job.state, job.reason, job.exit_code, job.message) == (
        JobState.FAILED,
        TerminationReason.EXIT_NONZERO,
        3,
        "worker-0 exited with 3",
    )
    assert job.finished_at == at(NOW + 30)
    last = (await events(db, job_id))[-1]
    assert (last.type, last.reason, last.message, last.timestamp) == (
        EventType.WARNING,
        "WorkerFailed",
        "worker-0 exited with 3",
        at(NOW + 30),
    )


async def test_events_default_their_type_and_reason_from_the_target_state(db: Database) -> None:
    job_id = await add(db)
    path = [JobState.STARTING, JobState.RUNNING, JobState.STOPPING]
    for step, target in enumerate(path, start=1):
        await move(db, job_id, target, NOW + step)
    await move(db, job_id, JobState.FAILED, NOW + 9, message="lost contact")
    got = [(e.type, e.reason, e.message) for e in await events(db, job_id)]
    want = [(*event_for(t), event_for(t)[1]) for t in path]
    assert got == [
        (EventType.NORMAL, "Queued", "job queued in 'default'"),
        *want,
        (*event_for(JobState.FAILED), "lost contact"),
    ]
    job = await fetch(db, job_id)
    assert (job.state, job.message, job.reason, job.exit_code) == (
        JobState.FAILED,
        "lost contact",
        None,
        None,
    )


async def test_transition_of_a_missing_job_is_not_found(db: Database) -> None:
    with pytest.raises(NotFound):
        await move(db, 10**6, JobState.STARTING)


async def test_request_stop_and_update_task(db: Database) -> None:
    job_id = await add(db, spec=JobSpec(entrypoint="sleep 1", replicas=2))
    await db.write(
        partial(request_stop, job_id=job_id, reason=TerminationReason.STOPPED_BY_USER, now=NOW + 1)
    )
    running = TaskUpdate(
        state=TaskState.RUNNING,
        node="node-a",
        pid=4242,
        gpus=[0, 3],
        started_at=NOW + 2,
        handle={"kind": "local", "pgid": 4242},
    )
    await db.write(partial(update_task, job_id=job_id, index=1, change=running))
    exited = TaskUpdate(state=TaskState.EXITED, exit_code=0, finished_at=NOW + 3)
    await db.write(partial(update_task, job_id=job_id, index=1, change=exited))
    await db.write(
        partial(update_task, job_id=job_id, index=0, change=TaskUpdate(values={"node": "node-b"}))
    )

    job = await fetch(db, job_id)
    assert job.state is JobState.QUEUED  # a stop request is not a transition
    assert job.stop_requested_at == job.updated_at == at(NOW + 1)
    assert job.stop_reason is TerminationReason.STOPPED_BY_USER
    first, second = job.tasks
    assert (first.state, first.node, first.pid, first.gpus) == (
        TaskState.PENDING,
        "node-b",
        None,
        [],
    )
    assert (second.state, second.node, second.pid, second.gpus) == (
        TaskState.EXITED,
        "node-a",
        4242,
        [0, 3],
    )
    assert (second.exit_code, second.started_at, second.finished_at) == (
        0,
        at(NOW + 2),
        at(NOW + 3),
    )
    assert second.handle == {"kind": "local", "pgid": 4242}


async def test_update_task_with_nothing_to_change_is_a_no_op(sqlite_db: Database) -> None:
    job_id = await add(sqlite_db)
    await sqlite_db.write(partial(update_task, job_id=job_id, index=0, change=TaskUpdate()))
    assert (await fetch(sqlite_db, job_id)).tasks[0].state is TaskState.PENDING


# ---- listing --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    owner: str
    queue: str
    name: str
    state: JobState = JobState.QUEUED
    labels: dict[str, str] = field(default_factory=dict)


ROWS = [
    Row("alice", "default", "train-resnet", labels={"team": "vision", "tier": "gold"}),
    Row("alice", "gpu", "train-bert", JobState.RUNNING, {"team": "nlp"}),
    Row("bob", "gpu", "eval 50%_done", labels={"team": "vision"}),
    Row("bob", "default", "eval 50x_done", JobState.FAILED),
    Row("carol", "default", "eval 50%xdone", JobState.SUCCEEDED, {"tier": "silver"}),
    Row("carol", "gpu", "a_b", labels={"tier": "gold"}),
    Row("alice", "gpu", "axb", JobState.STOPPED, {"team": "vision", "tier": "silver"}),
    Row("alice", "default", "back\\slash", JobState.STARTING, {"note": ""}),
    Row("bob", "gpu", "backslash", JobState.RUNNING),
    Row("bob", "default", "100%", labels={"team": "vision=x"}),
    Row("carol", "gpu", "train-gpt", JobState.QUEUED, {"team": "nlp", "tier": "gold"}),
    Row("alice", "default", "sweep", JobState.FAILED, {"team": "vision"}),
    Row("bob", "gpu", "sweep", JobState.QUEUED, {"tier": "gold"}),
]


@pytest.fixture
async def listed(db: Database) -> dict[int, Row]:
    def insert_all(conn: Connection) -> dict[int, Row]:
        by_id = {}
        for row in ROWS:
            kwargs = {
                "owner": row.owner,
                "queue": row.queue,
                "name": row.name,
                "labels": row.labels,
            }
            by_id[job_in_state(row.state, **kwargs)(conn)] = row
        return by_id

    return await db.write(insert_all)


def expected_ids(listed: dict[int, Row], keep: Callable[[Row], bool], *, desc: bool) -> list[int]:
    return sorted((i for i, row in listed.items() if keep(row)), reverse=desc)


def has(key: str, value: str | None = None) -> Callable[[Row], bool]:
    return lambda row: key in row.labels and (value is None or row.labels[key] == value)


FILTERS: list[tuple[JobFilter, Callable[[Row], bool]]] = [
    (JobFilter(), lambda r: True),
    (JobFilter(states=[JobState.QUEUED]), lambda r: r.state is JobState.QUEUED),
    (
        JobFilter(states=[JobState.RUNNING, JobState.FAILED]),
        lambda r: r.state in (JobState.RUNNING, JobState.FAILED),
    ),
    (JobFilter(queue="gpu"), lambda r: r.queue == "gpu"),
    (JobFilter(queue="nope"), lambda r: False),
    (JobFilter(owner="bob"), lambda r: r.owner == "bob"),
    (JobFilter(name_contains="TRAIN"), lambda r: "train" in r.name.lower()),
    (JobFilter(name_contains="%"), lambda r: "%" in r.name),
    (JobFilter(name_contains="_"), lambda r: "_" in r.name),
    (JobFilter(name_contains="50%_"), lambda r: "50%_" in r.name),
    (JobFilter(name_contains="a_b"), lambda r: "a_b" in r.name),
    (JobFilter(name_contains="\\"), lambda r: "\\" in r.name),
    (JobFilter(name_contains="k\\s"), lambda r: "k\\s" in r.name),
    (JobFilter(labels=[("team", "vision")]), has("team", "vision")),
    (JobFilter(labels=[("team", None)]), has("team")),
    (JobFilter(labels=[("note", "")]), has("note", "")),
    (
        JobFilter(labels=[("team", "vision"), ("tier", None)]),
        lambda r: has("team", "vision")(r) and has("tier")(r),
    ),
    (
        JobFilter(labels=[("team", "vision"), ("tier", "gold")]),
        lambda r: has("team", "vision")(r) and has("tier", "gold")(r),
    ),
    (
        JobFilter(
            owner="alice",
            queue="gpu",
            states=[JobState.RUNNING, JobState.STOPPED],
            labels=[("team", None)],
            name_contains="b",
        ),
        lambda r: (
            r.owner == "alice"
            and r.queue == "gpu"
            and "b" in r.name
            and r.state in (JobState.RUNNING, JobState.STOPPED)
            and has("team")(r)
        ),
    ),
]


@pytest.mark.parametrize("desc", [False, True], ids=["asc", "desc"])
async def test_list_jobs_filters(db: Database, listed: dict[int, Row], desc: bool) -> None:
    def run_all(conn: Connection) -> list[JobPage]:
        return [list_jobs(conn, flt, limit=100, cursor=None, descending=desc) for flt, _ in FILTERS]

    pages = await db.read(run_all)
    for (flt, keep), page in zip(FILTERS, pages, strict=True):
        want = expected_ids(listed, keep, desc=desc)
        assert [job.id for job in page.items] == want, flt
        assert page.total == len(want), flt
        assert page.next_cursor is None, flt
        for job in page.items:
            row = listed[job.id]
            assert (job.owner, job.queue, job.name, job.state, job.labels) == (
                row.owner,
                row.queue,
                row.name,
                row.state,
                row.labels,
            )


async def test_list_jobs_ids_filter(db: Database, listed: dict[int, Row]) -> None:
    some = sorted(listed)[::3]
    page = await db.read(
        partial(
            list_jobs, flt=JobFilter(ids=[*some, 10**6]), limit=50, cursor=None, descending=False
        )
    )
    assert [j.id for j in page.items] == some and page.total == len(some)


@pytest.mark.parametrize("desc", [False, True], ids=["asc", "desc"])
async def test_list_jobs_pagination_has_no_duplicates_or_gaps(
    db: Database, listed: dict[int, Row], desc: bool
) -> None:
    cases = [
        (JobFilter(), lambda r: True),
        (JobFilter(queue="gpu"), lambda r: r.queue == "gpu"),
        (JobFilter(labels=[("tier", None)]), has("tier")),
    ]

    limits = (1, 2, 5, len(ROWS), len(ROWS) + 5)

    def walk(conn: Connection) -> list[tuple[int, list[list[int]], list[int]]]:
        walks = []
        for flt, _ in cases:
            for limit in limits:
                pages, totals, cursor = [], [], None
                while True:
                    page = list_jobs(conn, flt, limit=limit, cursor=cursor, descending=desc)
                    pages.append([j.id for j in page.items])
                    totals.append(page.total)
                    if page.next_cursor is None:
                        break
                    assert page.next_cursor == page.items[-1].id
                    cursor = page.next_cursor
                    assert len(pages) <= len(ROWS) + 1, "pagination does not terminate"
                walks.append((limit, pages, totals))
        return walks

    walks = iter(await db.read(walk))
    for _flt, keep in cases:
        want = expected_ids(listed, keep, desc=desc)
        for limit, pages, totals in (next(walks) for _ in limits):
            flat = [i for page in pages for i in page]
            assert flat == want, (limit, pages)
            assert all(len(page) == limit for page in pages[:-1])
            assert 0 < len(pages[-1]) <= limit or want == []
            assert set(totals) == {len(want)}


async def test_cursor_pages_stay_stable_while_jobs_are_added(db: Database) -> None:
    ids = [await add(db) for _ in range(6)]
    desc = await db.read(partial(list_jobs, flt=JobFilter(), limit=3, cursor=None, descending=True))
    asc = await db.read(partial(list_jobs, flt=JobFilter(), limit=3, cursor=None, descending=False))
    newer = await add(db)
    desc2 = await db.read(
        partial(list_jobs, flt=JobFilter(), limit=3, cursor=desc.next_cursor, descending=True)
    )
    asc2 = await db.read(
        partial(list_jobs, flt=JobFilter(), limit=10, cursor=asc.next_cursor, descending=False)
    )
    assert [j.id for j in desc.items + desc2.items] == ids[::-1]
    assert desc2.next_cursor is None and desc2.total == 7
    assert [j.id for j in asc.items + asc2.items] == [*ids, newer]


async def test_ids_in_states_orders_by_priority_then_age(db: Database) -> None:
    spec = [
        (0, JobState.QUEUED),
        (5, JobState.QUEUED),
        (5, JobState.STARTING),
        (1, JobState.QUEUED),
        (9, JobState.RUNNING),
        (5, JobState.QUEUED),
    ]
    ids = [await db.write(job_in_state(state, priority=p)) for p, state in spec]
    queued = await db.read(partial(ids_in_states, states=[JobState.QUEUED]))
    assert queued == [ids[1], ids[5], ids[3], ids[0]]
    both = await db.read(
        partial(ids_in_states, states=[JobState.QUEUED, JobState.STARTING], limit=3)
    )
    assert both == [ids[1], ids[2], ids[5]]
    assert await db.read(partial(ids_in_states, states=[JobState.STOPPED])) == []


# ---- refs and deletes -----------------------------------------------------------------------


async def test_resolve_ref_by_id_display_id_and_submission_id_within_owner_scope(
    db: Database,
) -> None:
    a = await add(db, owner="alice", submission_id="sub-a")
    b = await add(db, owner="bob", submission_id="sub-b")
    c = await add(db, owner="alice", submission_id=str(b))  # a digit-only submission id
    long_digits = "1" * 25  # too long to be an id: only a submission id
    d = await add(db, owner="alice", submission_id=long_digits)
    display = {j.id: j.display_id for j in await db.read(partial(load_jobs, ids=[a, b, c, d]))}

    cases = [
        (str(a), None, a),
        (str(a), "alice", a),
        (str(a), "bob", None),
        (display[a], None, a),
        (display[a], "alice", a),
        (display[a], "bob", None),
        ("sub-a", None, a),
        ("sub-a", "alice", a),
        ("sub-a", "bob", None),
        ("sub-b", "bob", b),
        # the numeric id wins; out of scope, the same string still matches a submission id
        (str(b), None, b),
        (str(b), "bob", b),
        (str(b), "alice", c),
        (long_digits, "alice", d),
        (long_digits, "bob", None),
        ("0", None, None),
        ("missing", None, None),
        ("", None, None),
    ]

    def resolve_all(conn: Connection) -> list[int | None]:
        return [resolve_ref(conn, ref, owner) for ref, owner, _ in cases]

    assert await db.read(resolve_all) == [want for _, _, want in cases]


async def test_resolve_ref_with_a_number_beyond_the_id_range_finds_nothing(db: Database) -> None:
    await add(db)
    refs = [str(2**31), "9" * 18]
    assert await db.read(lambda conn: [resolve_ref(conn, r, None) for r in refs]) == [None, None]


async def test_resolve_ref_with_a_non_ascii_digit_finds_nothing(sqlite_db: Database) -> None:
    await add(sqlite_db)
    assert await sqlite_db.read(partial(resolve_ref, ref="²", owner=None)) is None


async def test_delete_job_removes_its_rows_and_nothing_else(db: Database) -> None:
    spec = JobSpec(entrypoint="true", replicas=2)
    keep = await db.write(job_in_state(JobState.RUNNING, labels={"a": "1"}, spec=spec))
    gone = await db.write(job_in_state(JobState.STOPPED, labels={"a": "1", "b": "2"}, spec=spec))
    kept_job = await fetch(db, keep)
    kept_events = await events(db, keep)
    gone_display = (await fetch(db, gone)).display_id

    await db.write(partial(delete_job, job_id=gone))

    tables = (EventRow, StateLogRow, TaskRow, JobLabelRow)

    def counts(conn: Connection, job_id: int) -> tuple[int, ...]:
        jobs = int(
            conn.execute(
                select(func.count()).select_from(JobRow).where(JobRow.id == job_id)
            ).scalar_one()
        )
        return (jobs, *(count(conn, t, job_id) for t in tables))

    assert await db.read(partial(counts, job_id=gone)) == (0, 0, 0, 0, 0)
    # QUEUED, STARTING, RUNNING: three state-log rows, three events
    assert await db.read(partial(counts, job_id=keep)) == (1, 3, 3, 2, 1)
    assert await fetch(db, gone) is None
    assert await events(db, gone) == []
    assert await db.read(partial(resolve_ref, ref=gone_display, owner=None)) is None
    assert await fetch(db, keep) == kept_job
    assert await events(db, keep) == kept_events
    await db.write(partial(delete_job, job_id=gone))  # deleting twice is harmless


LIVE = [state.value for state in LIVE_STATES]  # what the gateway's sweep asks with


async def test_leases_of_ended_jobs_are_found_and_returned_and_only_those(db: Database) -> None:
    live = await db.write(job_in_state(JobState.RUNNING))
    ended = await db.write(job_in_state(JobState.SUCCEEDED))
    lease = {"task_index": 0, "target_port": 22, "protocol": "ssh", "allocated_at": NOW}
    await db.write(
        lambda c: store_gateway.insert_leases(
            c, [{**lease, "port": 40001, "job_id": live}, {**lease, "port": 40002, "job_id": ended}]
        )
    )
    assert await db.read(lambda c: store_gateway.has_ended_leases(c, LIVE))
    assert await db.write(lambda c: store_gateway.release_ended(c, LIVE)) == 1
    assert not await db.read(lambda c: store_gateway.has_ended_leases(c, LIVE))
    assert await db.read(store_gateway.leased_ports) == {40001}


def test_the_gateway_sweep_reads_the_leases_not_the_job_history(tmp_path: Path) -> None:
    """The gateway sweeps four times a second: with `job_id IN (every ended job)` an idle
    server holding 100,000 finished jobs spent 13% of a core reading them (now 1.3%)."""
    url = sqlite_url(tmp_path)
    migrate(url)
    writer, _ = make_engines(url)
    try:
        with writer.connect() as conn:
            for query in (
                select(GatewayPortRow.port).where(store_gateway.lease_of_ended_job(LIVE)),
                delete(GatewayPortRow).where(store_gateway.lease_of_ended_job(LIVE)),
            ):
                sql = str(query.compile(writer, compile_kwargs={"literal_binds": True}))
                plan = [row[-1] for row in conn.execute(text(f"EXPLAIN QUERY PLAN {sql}"))]
                assert not [step for step in plan if step.startswith("SCAN jobs")], plan
                assert any("jobs USING INTEGER PRIMARY KEY" in step for step in plan), plan
    finally:
        writer.dispose()


# ---- the writer: group commit and visibility ------------------------------------------------


async def test_two_hundred_concurrent_writes_all_commit(db: Database) -> None:
    ids = await asyncio.gather(*(add(db, submission_id=f"s-{i}") for i in range(200)))
    assert len(set(ids)) == 200

    def check(conn: Connection) -> tuple[int, int, int, int]:
        return (
            count(conn, JobRow),
            count(conn, TaskRow),
            count(conn, StateLogRow),
            count(conn, EventRow),
        )

    assert await db.read(check) == (200, 200, 200, 200)
    found = await db.read(
        lambda conn: [find_by_submission(conn, "alice", f"s-{i}") for i in range(200)]
    )
    assert [f[0] for f in found if f is not None] == ids


async def test_a_failing_write_fails_alone_and_the_rest_of_its_batch_commits(
    db: Database,
) -> None:
    gate, started = threading.Event(), threading.Event()

    def hold_the_writer(conn: Connection) -> str:
        started.set()
        assert gate.wait(30)
        return "held"

    transactions: list[Any] = []

    def op(i: int) -> Callable[[Connection], int]:
        def fn(conn: Connection) -> int:
            transactions.append(conn.get_transaction())
            if i == 70:  # same owner and submission id as op 10, earlier in the same batch
                return insert_job(conn, new_job(submission_id="s-10"), NOW)
            job_id = insert_job(conn, new_job(submission_id=f"s-{i}"), NOW)
            if i == 30:
                raise RuntimeError("boom after a partial write")
            return job_id

        return fn

    held = asyncio.ensure_future(db.write(hold_the_writer))
    assert await asyncio.to_thread(started.wait, 30)
    pending = [asyncio.ensure_future(db.write(op(i))) for i in range(100)]
    for _ in range(3):  # let every task enqueue its operation behind the held batch
        await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*pending, return_exceptions=True)

    assert await held == "held"
    assert isinstance(results[30], RuntimeError)
    assert isinstance(results[70], IntegrityError) and "submission_id" in str(results[70].orig)
    ok = [r for i, r in enumerate(results) if i not in (30, 70)]
    assert all(isinstance(r, int) for r in ok) and len(set(ok)) == 98
    # The batch first runs without savepoints; a failure makes it run again with one savepoint
    # per write. Either way the 100 writes that commit ran together in one transaction.
    final = transactions[-100:]
    assert len(final) == 100 and all(t is final[0] for t in final)

    def check(conn: Connection) -> tuple[Any, ...]:
        return (
            count(conn, JobRow),
            count(conn, TaskRow),
            count(conn, EventRow),
            find_by_submission(conn, "alice", "s-30"),
        )

    assert await db.read(check) == (98, 98, 98, None)


async def test_a_write_is_visible_as_soon_as_its_await_returns(db: Database) -> None:
    other_writer, other_reader = make_engines(db.url)  # a separate pool: not the Database's own
    try:
        for i in range(10):
            job_id = await add(db, submission_id=f"rw-{i}")
            assert (await fetch(db, job_id)).state is JobState.QUEUED
            await move(db, job_id, JobState.STARTING, NOW + i)
            assert (await fetch(db, job_id)).state is JobState.STARTING
            with other_reader.connect() as conn:
                state = conn.execute(select(JobRow.state).where(JobRow.id == job_id)).scalar_one()
            assert state == JobState.STARTING.value
        # the blocking variants behave the same from a worker thread
        sync_id = await asyncio.to_thread(
            db.write_sync, partial(insert_job, new=new_job(submission_id="sync"), now=NOW)
        )
        assert await asyncio.to_thread(db.read_sync, partial(get_job, job_id=sync_id)) is not None
    finally:
        other_writer.dispose()
        other_reader.dispose()


async def test_a_cancelled_write_does_not_stop_the_writer(sqlite_db: Database) -> None:
    gate, started = threading.Event(), threading.Event()

    def hold_the_writer(conn: Connection) -> None:
        started.set()
        assert gate.wait(30)

    held = asyncio.ensure_future(sqlite_db.write(hold_the_writer))
    assert await asyncio.to_thread(started.wait, 30)
    victim = asyncio.ensure_future(add(sqlite_db, submission_id="cancelled"))
    await asyncio.sleep(0)
    victim.cancel()
    gate.set()
    await held
    with contextlib.suppress(asyncio.CancelledError):
        await victim
    assert await asyncio.wait_for(add(sqlite_db, submission_id="after"), timeout=1) > 0


# ---- users ----------------------------------------------------------------------------------


@pytest.mark.postgres
def test_two_servers_making_the_admin_at_once_share_it(fresh_postgres_url: str) -> None:
    """Two servers started together on an empty PostgreSQL database both find no admin and
    both insert one: the second insert waits on the first's unique name, fails once it
    commits, and then takes the user the first made (it crashed the second server before)."""
    migrate(fresh_postgres_url)
    writer, _ = make_engines(fresh_postgres_url)
    other = Database(fresh_postgres_url)
    try:
        with writer.connect() as first:
            first.begin()
            made = insert_user(first, "admin", is_admin=True, now=NOW)
            second: concurrent.futures.Future[User] = concurrent.futures.Future()

            def ensure() -> None:
                try:
                    second.set_result(
                        other.write_sync(partial(ensure_user, name="admin", is_admin=True, now=NOW))
                    )
                except Exception as exc:  # the test's failure, reported below
                    second.set_exception(exc)

            thread = threading.Thread(target=ensure)
            thread.start()
            with pytest.raises(concurrent.futures.TimeoutError):
                second.result(timeout=0.5)  # waits on the first's uncommitted name
            first.commit()
            assert second.result(timeout=10) == made
            thread.join()
    finally:
        other.close()
        writer.dispose()


async def test_users_and_tokens(db: Database) -> None:
    assert await db.read(has_admin) is False
    alice = await db.write(partial(ensure_user, name="alice", is_admin=False, now=NOW))
    again = await db.write(partial(ensure_user, name="alice", is_admin=True, now=NOW + 1))
    assert again == alice and alice.is_admin is False
    root = await db.write(partial(ensure_user, name="root", is_admin=True, now=NOW))
    assert root.id != alice.id and await db.read(has_admin) is True

    await db.write(partial(add_token, user=alice, token="tok-alice", name="laptop", now=NOW))
    await db.write(partial(add_token, user=root, token="tok-root", name="ci", now=NOW))
    assert await db.read(partial(user_for_token, token="tok-alice")) == alice
    assert await db.read(partial(user_for_token, token="tok-root")) == root
    assert await db.read(partial(user_for_token, token="tok-nobody")) is None
    stored = await db.read(
        lambda conn: conn.execute(text("SELECT token_hash FROM tokens")).scalars().all()
    )
    assert "tok-alice" not in stored
    assert hashlib.sha256(b"tok-alice").hexdigest() in stored
    with pytest.raises(IntegrityError):  # a token is unique
        await db.write(partial(add_token, user=root, token="tok-alice", name="dup", now=NOW))


# ---- registry logins ----------------------------------------------------------------------------


async def test_registry_logins_are_per_user_replaced_listed_without_passwords_and_removed(
    db: Database,
) -> None:
    alice, bob = await db.write(
        lambda c: [store_users.insert_user(c, n, is_admin=False, now=1.0) for n in ("al", "bo")]
    )
    clock = iter(float(t) for t in range(10, 100))
    service = RegistryService(db, clock=lambda: next(clock))
    first, new = await service.put(alice, "https://Reg.Example:5000/", "me", "pw-1")
    assert new and (first.registry, first.username) == ("reg.example:5000", "me")
    again, new = await service.put(alice, "reg.example:5000", "me2", "pw-2")
    assert not new and (again.created_at, again.updated_at) == (first.created_at, 11.0)
    await service.put(bob, "reg.example:5000", "bob", "pw-bob")
    await service.put(alice, "docker.io", "me", "pw-hub")
    assert [(c.registry, c.username) for c in await service.list(alice)] == [
        ("docker.io", "me"),
        ("reg.example:5000", "me2"),
    ]
    assert "pw" not in repr(await service.list(alice))
    owned = await db.read(partial(store_registries.logins_of_owner, owner="al"))
    assert [(x.registry, x.password.get_secret_value()) for x in owned] == [
        ("docker.io", "pw-hub"),
        ("reg.example:5000", "pw-2"),
    ]
    for bad in ("not a host", "", "x\x00y"):
        with pytest.raises(InvalidInput) as info:
            await service.put(alice, bad, "me", "pw")
        assert info.value.field == "registry"
    with pytest.raises(InvalidInput) as info:
        await service.put(alice, "r.example", "me", "nul\x00")
    assert info.value.field == "password"
    await service.delete(alice, "docker.io")
    with pytest.raises(NotFound):
        await service.delete(alice, "docker.io")
    with pytest.raises(NotFound):
        await service.delete(alice, "x\x00y")  # no such host, and no query with a NUL
    await db.write(partial(store_users.delete_user, user_id=alice.id))
    assert await db.read(partial(store_registries.logins_of_owner, owner="al")) == []
    assert [c.username for c in await service.list(bob)] == ["bob"]  # bob's stays
