"""create_ray_app: the Ray Job Submission API as its own ASGI app, for its own listener."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import Response

from jobyard import __version__
from jobyard.api import redaction
from jobyard.api.errors import Problem, install_error_handlers, register_face_errors
from jobyard.api.inputs import InputCheck
from jobyard.api.ray.nodes import NodeAddresses
from jobyard.api.ray.routes import router
from jobyard.api.ray.runtime_env import RuntimeEnvService
from jobyard.api.responses import JSONResponse
from jobyard.service import AuthService, JobService, LogService


def render_ray(problem: Problem) -> Response:
    """Errors as a JSON string. Ray answers bad input with 400 (not 422), and so does this
    face for a duplicate submission_id (not 409); an oversized package is a 413."""
    status = problem.status
    if status in (409, 422):
        status = 400
    if problem.code == "too_large":
        status = 413
    return JSONResponse(problem.message, status, problem.headers)


def create_ray_app(
    *, auth: AuthService, jobs: JobService, logs: LogService, runtime_env: RuntimeEnvService
) -> FastAPI:
    app = FastAPI(
        title="jobyard: Ray job API",
        version=__version__,
        description="Ray's Job Submission API over jobyard (`ray job`, JobSubmissionClient).",
        redirect_slashes=False,
        default_response_class=JSONResponse,  # answers any stored text (api.responses)
    )
    redaction.install()
    app.state.auth = auth
    app.state.jobs = jobs
    app.state.logs = logs
    app.state.runtime_env = runtime_env
    app.state.node_addresses = NodeAddresses()
    app.state.render_problem = render_ray
    install_error_handlers(app)
    register_face_errors(app, "/", render_ray)
    app.include_router(router)
    app.add_middleware(InputCheck)  # the composition root puts RequestSizeLimit around it
    return app
