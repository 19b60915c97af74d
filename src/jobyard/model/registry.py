"""Registry logins: which registry an image comes from, and a user's login to one.

A user stores a login per registry host (service/registries.py); the scheduler hands the job
owner's logins to the executor with the placement, and the executor uses the one whose host is
the image's for that pull alone (executors/containers.py). The password is a SecretStr, so a
placement printed, logged or dumped shows '**********', never the password.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, SecretStr

DOCKER_HUB = "docker.io"
# What else Docker Hub is called: a login to any of these is a login to docker.io.
_HUB_ALIASES = frozenset({"index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"})
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = re.compile(rf"(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*|\[[0-9a-fA-F:]+\])(?::[0-9]{{1,5}})?")


class RegistryLogin(BaseModel):
    """A user's username and password for one registry host (`host[:port]`, lowercase)."""

    registry: str
    username: str
    password: SecretStr


def registry_problem(text: str) -> str | None:
    """Why `text` names no registry host (after normalize_registry); None when it does."""
    if not _HOST.fullmatch(text) or len(text) > 255:
        return (
            f"{text[:80]!r} is not a registry host: give host[:port] as in an image reference "
            "(e.g. registry.example.com, 127.0.0.1:5000, docker.io)"
        )
    return None


def normalize_registry(text: str) -> str:
    """The host a user means: without a scheme, path or trailing slash, in lowercase, Docker
    Hub's other names as docker.io ("https://index.docker.io/v1/" is docker.io)."""
    host = text.strip()
    for scheme in ("https://", "http://"):
        if host.lower().startswith(scheme):
            host = host[len(scheme) :]
    host = host.split("/", 1)[0].lower()
    return DOCKER_HUB if host in _HUB_ALIASES else host


def registry_of(image: str) -> str:
    """The registry host an image reference is pulled from, as distribution/reference says:
    its first component where that has a '.' or ':' or is 'localhost', else Docker Hub."""
    first, slash, _ = image.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return normalize_registry(first)
    return DOCKER_HUB


def login_for(image: str, logins: list[RegistryLogin]) -> RegistryLogin | None:
    """The login whose registry the image is pulled from, if there is one."""
    host = registry_of(image)
    return next((login for login in logins if login.registry == host), None)


__all__ = [
    "DOCKER_HUB",
    "RegistryLogin",
    "login_for",
    "normalize_registry",
    "registry_of",
    "registry_problem",
]
