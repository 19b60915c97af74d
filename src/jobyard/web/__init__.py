"""The web dashboard: pages and a small JSON surface for them, served at `/` on the main port.

It is a face like the others: it reaches the core only through the services on `app.state`
(`jobs`, `logs`, `auth`) and never touches the store, the executors or the scheduler.
"""

from jobyard.web.docs import router as docs_router
from jobyard.web.origin import WebSocketOriginCheck
from jobyard.web.routes import router
from jobyard.web.usage import router as usage_router

__all__ = ["WebSocketOriginCheck", "docs_router", "router", "usage_router"]
