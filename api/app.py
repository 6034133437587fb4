"""The FastAPI application: routes under /api, errors as clear 4xx/503, services in the background.

``create_app()`` builds it; ``api.server`` runs it with uvicorn after migrating the
database. The recorder and the dispatcher run in threads of the same process and
stop with it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request, status
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.db import get_engine
from api.direct_submit import DirectSubmit
from api.docs_pages import DOCS_URL, REDOC_URL, asset_paths, install_docs
from api.metrics import Metrics
from api.routes import concurrency_limits, deployments, flow_runs, flows, health, task_runs, workers
from api.security import UI_LOGIN, ApiKeyGate, BodySizeLimit, HostCheck, RefuseNulInUrl, require_api_key
from api.services.runner import background_services
from api.submit import ParameterProblem, Submitter
from api.timing import ServerTiming
from api.ui import actions as ui_actions
from api.ui import flows_page as ui_flows
from api.ui import graph_page as ui_graph
from api.ui import login as ui_login
from api.ui import ops_pages as ui_ops
from api.ui import pages as ui_pages
from api.ui.rendering import STATIC_FILES
from orchestrator.config.settings import get_settings
from orchestrator.errors import ConnectionProblem, RunError
from orchestrator.guards.redaction import mask_urls_in
from orchestrator.runstate.connection import RedisUnavailable
from orchestrator.runstate.store import get_store

log = logging.getLogger("orchestrator.api")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Start the submitter, the recorder and the dispatcher with the server; stop them with it."""
    app.state.submitter = Submitter(get_engine())
    try:
        if not app.state.services:
            yield
            return
        async with services(app):
            yield
    finally:
        app.state.submitter.close()


@asynccontextmanager
async def services(app: FastAPI) -> AsyncIterator[None]:
    """The recorder and the periodic services, in threads of this process."""
    with background_services(app.state.metrics) as recorder:
        app.state.recorder = recorder
        yield


def create_app(*, services: bool | None = None) -> FastAPI:
    """The API application (``services=False``: routes only, no recorder or dispatcher)."""
    settings = get_settings()
    services = settings.api_services if services is None else services
    app = FastAPI(
        title="Orchestrator API",
        version="0.1.0",
        description="Submit flows, read every run's states, task runs, graph and logs; cancel, retry, rename.",
        lifespan=lifespan,
        docs_url=None,  # FastAPI's pages load their scripts from a CDN: install_docs serves them from the package
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,  # no OAuth2 here: the key is a Bearer token
    )
    app.state.services = services
    app.state.recorder = None
    app.state.metrics = Metrics(get_engine, get_store)  # this app's registry (docs/metrics.md)
    guarded = APIRouter(prefix="/api", dependencies=[Depends(require_api_key)])
    guarded.include_router(flows.router)
    guarded.include_router(flow_runs.router)
    guarded.include_router(task_runs.router)
    guarded.include_router(workers.router)
    guarded.include_router(deployments.router)
    guarded.include_router(concurrency_limits.router)
    app.include_router(guarded)
    app.include_router(health.router, prefix="/api")
    app.include_router(ui_pages.router)
    app.include_router(ui_graph.router)
    app.include_router(ui_ops.router)
    app.include_router(ui_ops.actions)
    app.include_router(ui_pages.assets)
    app.include_router(ui_login.router)
    app.include_router(ui_flows.router)
    app.include_router(ui_actions.router)
    install_metrics(app)
    install_docs(app)
    install_doors(app)
    install_error_handlers(app)
    # In front of the router, inside the doors and the error handlers: plain run creations skip
    # FastAPI's routing and dependency solving (api.direct_submit; every other request unchanged).
    app.router.middleware_stack = DirectSubmit(app.router.middleware_stack)
    return app


def install_metrics(app: FastAPI) -> None:
    """``GET /metrics`` for Prometheus, at the root (Prometheus's default path), not under ``/api``.

    With ``ORCHESTRATOR_API_KEY`` set it needs the key as a Bearer token, like every route that holds
    data (flow names): Prometheus sends one from ``authorization:`` in its scrape config (docs/metrics.md).
    """

    @app.get("/metrics", include_in_schema=False, dependencies=[Depends(require_api_key)])
    def metrics(request: Request) -> Response:
        return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def install_doors(app: FastAPI) -> None:
    """The checks every request passes before a route sees it (see api.security), outermost last
    here: the Host and Origin, a NUL in the URL, the key (before any body is read), the body size.
    Outside them all, the Server-Timing header (api.timing) times every answer, refusals included."""
    settings = get_settings()
    app.add_middleware(BodySizeLimit, limit=settings.api_max_body_bytes)
    documents = (app.openapi_url, DOCS_URL, REDOC_URL, *asset_paths())
    ui_open = (UI_LOGIN, "/ui/logout", *(f"/ui/static/{name}" for name in STATIC_FILES))  # the key form, its files
    open_paths = {"/api/health", *(path for path in documents if path), *ui_open}  # hold no data
    app.add_middleware(ApiKeyGate, key=settings.api_key, open_paths=open_paths)
    app.add_middleware(RefuseNulInUrl)
    app.add_middleware(HostCheck, allowed=settings.api_allowed_hosts, keyless=settings.api_key is None)
    app.add_middleware(ServerTiming)


def install_error_handlers(app: FastAPI) -> None:
    """Every failure the caller can act on gets a status and a sentence; none is a bare 500."""

    @app.exception_handler(ParameterProblem)
    async def bad_parameters(_: Request, exc: ParameterProblem) -> JSONResponse:
        return JSONResponse(status_code=status.HTTP_422_UNPROCESSABLE_CONTENT, content={"detail": exc.errors})

    @app.exception_handler(ConnectionProblem)
    async def redis_away(_: Request, exc: ConnectionProblem) -> JSONResponse:
        return JSONResponse(
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            content={"detail": mask_urls_in(f"{exc} Nothing was created; try again once Redis answers.")},
        )

    async def redis_lost(_: Request, exc: Exception) -> JSONResponse:
        problem = get_store().unreachable(exc)
        return JSONResponse(
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            content={
                "detail": mask_urls_in(f"{problem} Nothing was created or changed; try again once Redis answers.")
            },
        )

    for lost in RedisUnavailable:  # Redis away mid-request (a refused command is a bug, not a 503)
        app.add_exception_handler(lost, redis_lost)

    @app.exception_handler(RunError)
    async def conflict(_: Request, exc: RunError) -> JSONResponse:
        return JSONResponse(status_code=status.HTTP_409_CONFLICT, content={"detail": str(exc)})


def _factory() -> Any:
    """Entry point for ``uvicorn --factory api.app:_factory`` (behind a prefix, give uvicorn ``--root-path``)."""
    return create_app()
