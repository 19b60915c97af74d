"""`jobyard pools` and `jobyard queues`: what the scheduler has, holds and keeps waiting."""

from __future__ import annotations

import typer

from jobyard.cli import render
from jobyard.cli.options import JsonOpt
from jobyard.cli.session import open_client


def pools(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Each pool: capacity, what its live jobs hold (GPUs by model), running and queued jobs."""
    found = open_client(ctx).pools()
    if as_json:
        render.show_json([pool.model_dump(mode="json") for pool in found])
    else:
        render.show(render.pools_table(found))


def queues(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Each queue: its pool, priority, limits, running and queued jobs."""
    found = open_client(ctx).queues()
    if as_json:
        render.show_json([queue.model_dump(mode="json") for queue in found])
    else:
        render.show(render.queues_table(found))
