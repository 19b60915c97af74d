"""The training-job API: /api/jobs, its status names and its envelope."""

from jobyard.api.training.mapping import render_problem
from jobyard.api.training.routes import router

__all__ = ["render_problem", "router"]
