"""The Python SDK: `jobyard.client.Client` (and `AsyncClient`) over httpx. The CLI's only way
to reach a server; it imports nothing of the server's internals.

    from jobyard.client import Client

    with Client() as jobyard:  # $JOBYARD_URL, $JOBYARD_TOKEN or the local admin token
        job = jobyard.wait(jobyard.submit(["echo", "hello"]).id)
        print(job.state, jobyard.logs(job.id))
"""

from jobyard.client.calls import Entrypoint, JobRef, ListFilters, SubmitOptions
from jobyard.client.discovery import DEFAULT_URL, data_home, discover_token, discover_url
from jobyard.client.errors import ApiError, ClientError, ServerUnreachable, WaitTimeout
from jobyard.client.models import (
    Event,
    Health,
    Job,
    JobPage,
    JobSpec,
    JobState,
    NewToken,
    NewUser,
    RegistryCredential,
    Resources,
    StateChange,
    Task,
    Token,
    User,
    UserInfo,
)
from jobyard.client.sdk import AsyncClient, AsyncLogStream, Client, LogStream
from jobyard.client.usage import GpuUsage, JobUsage, TaskUsage, UsageSample

__all__ = [
    "DEFAULT_URL",
    "ApiError",
    "AsyncClient",
    "AsyncLogStream",
    "Client",
    "ClientError",
    "Entrypoint",
    "Event",
    "GpuUsage",
    "Health",
    "Job",
    "JobPage",
    "JobRef",
    "JobSpec",
    "JobState",
    "JobUsage",
    "ListFilters",
    "LogStream",
    "NewToken",
    "NewUser",
    "RegistryCredential",
    "Resources",
    "ServerUnreachable",
    "StateChange",
    "SubmitOptions",
    "Task",
    "TaskUsage",
    "Token",
    "User",
    "UsageSample",
    "UserInfo",
    "WaitTimeout",
    "data_home",
    "discover_token",
    "discover_url",
]
