"""The jobyard command line (Typer + Rich). Talks to the server only through jobyard.client."""

from jobyard.cli.app import app, main

__all__ = ["app", "main"]
