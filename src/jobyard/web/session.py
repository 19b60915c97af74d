"""Dashboard sessions: the API token in an HttpOnly, SameSite=Strict cookie, plus CSRF.

The session cookie holds the caller's API token; it is never readable by scripts and never
rendered into a page or a URL. Every state-changing request must also carry the value of the
(script-readable) CSRF cookie in the `X-CSRF-Token` header (double submit) and, when the
browser sends one, an `Origin` equal to the server's own.
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request, Response

from jobyard.errors import Forbidden, Unauthorized
from jobyard.service import AuthService, User

SESSION_COOKIE = "jobyard_session"
CSRF_COOKIE = "jobyard_csrf"
CSRF_HEADER = "x-csrf-token"
SESSION_SECONDS = 12 * 3600

CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",  # xterm.js sizes its rows with <style> elements
        "img-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # no-referrer would send `Origin: null` on our own forms
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


def open_session(response: Response, token: str, *, secure: bool) -> None:
    """Set the session cookie (the token) and a fresh CSRF cookie."""
    common = {"max_age": SESSION_SECONDS, "samesite": "strict", "secure": secure, "path": "/"}
    response.set_cookie(SESSION_COOKIE, token, httponly=True, **common)  # type: ignore[arg-type]
    response.set_cookie(CSRF_COOKIE, secrets.token_urlsafe(24), httponly=False, **common)  # type: ignore[arg-type]


def close_session(response: Response) -> None:
    for name in (SESSION_COOKIE, CSRF_COOKIE):
        response.delete_cookie(name, path="/", samesite="strict")


def same_origin(request: Request) -> bool:
    """No Origin header (a same-origin GET, an old client) passes; a foreign one does not."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    return origin == f"{request.url.scheme}://{request.url.netloc}"


async def session_user(request: Request) -> User:
    """The signed-in caller, from the session cookie (401 without a valid one)."""
    auth: AuthService = request.app.state.auth
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        raise Unauthorized("not signed in")
    return await auth.authenticate(token)


async def checked_user(request: Request) -> User:
    """The caller of a state-changing request: a session plus a matching CSRF header."""
    sent = request.headers.get(CSRF_HEADER, "")
    expected = request.cookies.get(CSRF_COOKIE, "")
    if not expected or not secrets.compare_digest(sent.encode(), expected.encode()):
        raise Forbidden("missing or wrong CSRF token (X-CSRF-Token)")
    if not same_origin(request):
        raise Forbidden("cross-origin request refused")
    return await session_user(request)


SessionUser = Annotated[User, Depends(session_user)]
CheckedUser = Annotated[User, Depends(checked_user)]
