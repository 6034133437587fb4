"""Flows the fleet has registered, and creating runs of them."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, HTTPException, Path, Request, status

from api.routes.deps import StoreDep
from api.schemas import FlowPublic, FlowRunCreate, FlowRunPublic
from api.submit import new_flow_run

router = APIRouter(prefix="/flows", tags=["flows"])

MAX_FLOW_NAME = 200  # characters of a flow's name in a path (api.direct_submit checks the same)
FlowName = Path(min_length=1, max_length=MAX_FLOW_NAME, description="The flow's name, as workers registered it.")


FLOW_CACHE_SECONDS = 2.0  # a flow a worker just registered is seen within this
_flow_cache: dict[str, tuple[float, dict[str, Any]]] = {}


def find_flow(store: Any, name: str) -> dict[str, Any]:
    """The registered flow named ``name`` (cached briefly) or a 404 that says how to register it."""
    cached = _flow_cache.get(name)
    if cached is not None and cached[0] > time.monotonic():
        return cached[1]
    found = store.fleet.flow_description(name)
    if found:
        flow = dict(found)
        _flow_cache[name] = (time.monotonic() + FLOW_CACHE_SECONDS, flow)
        return flow
    raise HTTPException(
        status_code=status.HTTP_404_NOT_FOUND,
        detail=f"no worker has registered a flow named {name!r}; start a worker with "
        "'orchestrator worker start --flows <module defining it>' (GET /api/flows lists the known ones).",
    )


@router.get("", response_model=list[FlowPublic])
def list_flows(store: StoreDep) -> list[FlowPublic]:
    """Every flow a worker has registered, with its parameters as JSON Schema and its queue."""
    return [FlowPublic.model_validate(f) for f in store.fleet.registered_flows()]


@router.get("/{name}", response_model=FlowPublic)
def read_flow(store: StoreDep, name: str = FlowName) -> FlowPublic:
    """One registered flow."""
    return FlowPublic.model_validate(find_flow(store, name))


@router.post("/{name}/runs", response_model=FlowRunPublic, status_code=status.HTTP_201_CREATED)
async def create_run(request: Request, body: FlowRunCreate, store: StoreDep, name: str = FlowName) -> FlowRunPublic:
    """Create a flow run and send it to a worker of its queue (now, or at ``scheduled_start``).

    Parameters are checked against the flow's schema first: a missing, unknown or
    ill-typed one gets 422 naming it, and nothing is created. 503 when Redis does not
    answer (nothing is created either).
    """
    return await created_run(request.app, store, name, body)


async def created_run(app: Any, store: Any, name: str, body: FlowRunCreate) -> FlowRunPublic:
    """The work of :func:`create_run` once its request is checked and read; :mod:`api.direct_submit`
    answers the plain request with it too, so both answer alike (404, 422, 503 included)."""
    row = new_flow_run(find_flow(store, name), body)
    return FlowRunPublic.of_row(await app.state.submitter.submit(row))
