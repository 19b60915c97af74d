"""Each API operation as a Call: the request to send and how to read its answer, without I/O.

Client and AsyncClient only send Calls, so every path, parameter and parser is written once here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, Literal, TypedDict, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError

from jobyard import __version__
from jobyard.client.errors import ApiError
from jobyard.client.models import (
    Event,
    EventList,
    Health,
    Job,
    JobPage,
    JobState,
    NewToken,
    NewUser,
    Pool,
    Queue,
    RegistryCredential,
    RegistryCredentialList,
    Resources,
    Token,
    TokenList,
    User,
    UserInfo,
    UserList,
)

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

JobRef = int | str
"""A job's numeric id, display_id or submission_id."""
Entrypoint = str | Sequence[str]
"""A shell string (run by /bin/sh -c) or an argv list."""

API_PREFIX = "/api/v1"
# Following logs may stay silent for as long as the job does: no read timeout there.
STREAM_TIMEOUT = httpx.Timeout(30.0, read=None)


class SubmitOptions(TypedDict, total=False):
    """Keyword arguments of submit(); None means 'the server's default'."""

    name: str | None
    env: Mapping[str, str] | None
    working_dir: str | None
    resources: Resources | Mapping[str, Any] | None
    replicas: int | None
    queue: str | None
    priority: int | None
    labels: Mapping[str, str] | None
    submission_id: str | None
    max_runtime: float | None
    idle_gpu_timeout: float | None  # seconds its GPUs may idle (docs/observability.md)
    idle_gpu_action: Literal["warn", "stop"] | None


class ListFilters(TypedDict, total=False):
    """Keyword arguments of list() and iter_jobs(). A label value of None matches any value."""

    state: str | JobState | Sequence[str | JobState] | None
    queue: str | None
    owner: str | None
    q: str | None
    labels: Mapping[str, str | None] | None
    order: Literal["asc", "desc"] | None
    limit: int | None
    cursor: str | None


Params = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request and the parser of its successful answer."""

    method: str
    path: str
    read: Callable[[httpx.Response], T]
    params: Params = ()
    body: dict[str, Any] | None = None

    def parse(self, response: httpx.Response) -> T:
        """The answer as T, or the ApiError the server (or whatever answered) reported."""
        if not response.is_success:
            raise api_error(response)
        return self.read(response)


def http_options(url: str, token: str | None, timeout: float) -> dict[str, Any]:
    """Keyword arguments shared by httpx.Client and httpx.AsyncClient."""
    headers = {"User-Agent": f"jobyard-client/{__version__}"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return {"base_url": url + API_PREFIX, "headers": headers, "timeout": timeout}


def api_error(response: httpx.Response) -> ApiError:
    """The `{"error": {code, message, field}}` envelope as ApiError; anything else: http_error."""
    try:
        error = response.json()["error"]
        return ApiError(
            str(error["code"]), str(error["message"]), error.get("field"), response.status_code
        )
    except (ValueError, KeyError, TypeError):
        text = response.text.strip()[:200] or response.reason_phrase
        return ApiError(
            "http_error", f"HTTP {response.status_code}: {text}", None, response.status_code
        )


def transport_detail(exc: httpx.TransportError) -> str:
    return str(exc) or type(exc).__name__


# ---- operations -------------------------------------------------------------------------------


def submit(entrypoint: Entrypoint, options: SubmitOptions) -> Call[Job]:
    _check_keywords(options, SubmitOptions)
    body: dict[str, Any] = {
        "entrypoint": entrypoint if isinstance(entrypoint, str) else list(entrypoint)
    }
    body.update({key: _jsonable(value) for key, value in options.items() if value is not None})
    return Call("POST", "/jobs", _model(Job), body=body)


def get_job(ref: JobRef) -> Call[Job]:
    return Call("GET", _job_path(ref), _model(Job))


def list_jobs(filters: ListFilters) -> Call[JobPage]:
    _check_keywords(filters, ListFilters)
    return Call("GET", "/jobs", _model(JobPage), params=_list_params(filters))


def next_page(filters: ListFilters, page: JobPage) -> ListFilters | None:
    """The filters of the page after `page`, or None after the last one."""
    if page.next_cursor is None:
        return None
    return {**filters, "cursor": page.next_cursor}


def stop_job(ref: JobRef) -> Call[Job]:
    return Call("POST", _job_path(ref, "/stop"), _model(Job))


def delete_job(ref: JobRef, *, force: bool) -> Call[None]:
    params = (("force", "true"),) if force else ()
    return Call("DELETE", _job_path(ref), _nothing, params=params)


def job_events(ref: JobRef) -> Call[list[Event]]:
    return Call("GET", _job_path(ref, "/events"), _events)


def read_logs(
    ref: JobRef,
    *,
    task: str | int | None = None,
    tail: int | None = None,
    offset: int | None = None,
    follow: bool = False,
    timestamps: bool = False,
) -> Call[str]:
    """Logs of one task (the first unless named). With follow, the answer is a stream; with
    timestamps, each line begins with the time the server first saw it (RFC 3339) and a space."""
    given = {
        "task": task,
        "tail": tail,
        "offset": offset,
        "follow": "true" if follow else None,
        "timestamps": "true" if timestamps else None,
    }
    params = tuple((key, str(value)) for key, value in given.items() if value is not None)
    return Call("GET", _job_path(ref, "/logs"), _text, params=params)


def check_logs(ref: JobRef, *, task: str | int | None = None) -> Call[str]:
    """An empty read that fails as reading would: no such job, no such task, no access.

    Sent before following, because a follow request for an unknown job or task is answered
    200 and then cut off, instead of with the 404 a plain read gets.
    """
    return read_logs(ref, task=task, tail=0)


def health() -> Call[Health]:
    return Call("GET", "/health", _model(Health))


def pools() -> Call[list[Pool]]:
    return Call("GET", "/pools", _list_of(Pool))


def queues() -> Call[list[Queue]]:
    return Call("GET", "/queues", _list_of(Queue))


def whoami() -> Call[User]:
    return Call("GET", "/whoami", _model(User))


def create_user(name: str, *, admin: bool) -> Call[NewUser]:
    return Call("POST", "/users", _model(NewUser), body={"name": name, "admin": admin})


def list_users() -> Call[list[UserInfo]]:
    return Call("GET", "/users", lambda response: _model(UserList)(response).items)


def remove_user(name: str) -> Call[None]:
    return Call("DELETE", f"/users/{quote(name, safe='')}", _nothing)


def create_token(
    *, user: str | None, name: str, expires_in: float | None, expires_at: datetime | None
) -> Call[NewToken]:
    body: dict[str, Any] = {"name": name}
    if user is not None:
        body["user"] = user
    if expires_in is not None:
        body["expires_in"] = expires_in
    if expires_at is not None:
        body["expires_at"] = expires_at.isoformat()
    return Call("POST", "/tokens", _model(NewToken), body=body)


def list_tokens(user: str | None) -> Call[list[Token]]:
    params = (("user", user),) if user is not None else ()
    return Call("GET", "/tokens", lambda response: _model(TokenList)(response).items, params)


def revoke_token(token_id: int) -> Call[Token]:
    return Call("DELETE", f"/tokens/{int(token_id)}", _model(Token))


def set_registry_credential(
    registry: str, username: str, password: str
) -> Call[RegistryCredential]:
    body = {"registry": registry, "username": username, "password": password}
    return Call("POST", "/registry-credentials", _model(RegistryCredential), body=body)


def list_registry_credentials() -> Call[list[RegistryCredential]]:
    return Call(
        "GET",
        "/registry-credentials",
        lambda response: _model(RegistryCredentialList)(response).items,
    )


def remove_registry_credential(registry: str) -> Call[None]:
    return Call("DELETE", f"/registry-credentials/{quote(registry, safe='')}", _nothing)


# ---- helpers ----------------------------------------------------------------------------------


def _job_path(ref: JobRef, suffix: str = "") -> str:
    return f"/jobs/{quote(str(ref), safe='')}{suffix}"


def _list_params(filters: ListFilters) -> Params:
    params: list[tuple[str, str]] = []
    state = filters.get("state")
    states = [state] if isinstance(state, str) else list(state or ())
    params += [("state", str(item)) for item in states]
    plain: Mapping[str, object] = filters
    for key in ("queue", "owner", "q", "order", "limit", "cursor"):
        if plain.get(key) is not None:
            params.append((key, str(plain[key])))
    labels = filters.get("labels") or {}
    params += [
        ("label", key if value is None else f"{key}={value}") for key, value in labels.items()
    ]
    return tuple(params)


def _check_keywords(given: Mapping[str, object], accepted: type) -> None:
    unknown = sorted(set(given) - set(accepted.__annotations__))
    if unknown:
        raise TypeError(f"unexpected keyword argument(s): {', '.join(unknown)}")


def _jsonable(value: object) -> object:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_defaults=True)
    if isinstance(value, Mapping):
        return dict(value)
    return value


def _model(cls: type[M]) -> Callable[[httpx.Response], M]:
    def read(response: httpx.Response) -> M:
        try:
            return cls.model_validate_json(response.content)
        except ValidationError as exc:
            raise ApiError(
                "bad_response",
                f"unexpected answer from the server: {exc}",
                None,
                response.status_code,
            ) from None

    return read


def _list_of(cls: type[M]) -> Callable[[httpx.Response], list[M]]:
    adapter = TypeAdapter(list[cls])  # type: ignore[valid-type]

    def read(response: httpx.Response) -> list[M]:
        try:
            items: list[M] = adapter.validate_json(response.content)
        except ValidationError as exc:
            raise ApiError(
                "bad_response", f"unexpected answer from the server: {exc}", None, 200
            ) from None
        return items

    return read


def _events(response: httpx.Response) -> list[Event]:
    return _model(EventList)(response).items


def _text(response: httpx.Response) -> str:
    return response.text


def _nothing(_response: httpx.Response) -> None:
    return None
