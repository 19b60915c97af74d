"""Options several commands share, declared once."""

from __future__ import annotations

from typing import Annotated

import typer

JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]
WatchOpt = Annotated[
    bool, typer.Option("--watch", "-w", help="redraw every --interval s until Ctrl-C")
]
IntervalOpt = Annotated[float, typer.Option(min=0.1, help="seconds between redraws of --watch")]
