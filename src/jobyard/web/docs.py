"""The OpenAPI pages, /docs (Swagger UI) and /redoc (ReDoc), with their scripts served from
`web/node_modules` like the dashboard's (FastAPI's own pages load them from a CDN, so they are
blank on a machine without internet). They carry no data: the schema is /openapi.json, and a
request made from Swagger UI needs a token like any other."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse

from jobyard.web import assets

router = APIRouter(include_in_schema=False)
_VENDOR = "/static/vendor/"
_MISSING = (
    "<!doctype html><title>jobyard API docs</title><p>The API docs' scripts ({package}) are not "
    "installed: run <code>make assets</code>. The schema itself is at "
    '<a href="{openapi}">{openapi}</a>.</p>'
)


def _missing(name: str, openapi: str) -> HTMLResponse | None:
    if assets.vendor_file(name) is not None:
        return None
    package = assets.VENDOR_FILES[name][0]
    return HTMLResponse(_MISSING.format(package=package, openapi=openapi), status_code=503)


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    openapi = request.app.openapi_url or "/openapi.json"
    return _missing("swagger-ui-bundle.js", openapi) or get_swagger_ui_html(
        openapi_url=openapi,
        title=f"{request.app.title} - API docs",
        swagger_js_url=_VENDOR + "swagger-ui-bundle.js",
        swagger_css_url=_VENDOR + "swagger-ui.css",
        swagger_favicon_url=_VENDOR + "swagger-favicon.png",
    )


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    openapi = request.app.openapi_url or "/openapi.json"
    return _missing("redoc.standalone.js", openapi) or get_redoc_html(
        openapi_url=openapi,
        title=f"{request.app.title} - API reference",
        redoc_js_url=_VENDOR + "redoc.standalone.js",
        redoc_favicon_url=_VENDOR + "swagger-favicon.png",
        with_google_fonts=False,
    )
