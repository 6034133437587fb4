"""The web UI's actions: cancel, retry and rename a run, and start a run of a flow.

Each is a ``POST /ui/...`` the page's script (``static/actions.js``) sends with ``fetch()``, and
each calls the API route that does the same (``api.routes.flow_runs``, ``api.routes.flows``),
so the UI acts exactly as ``POST /api/...`` does and answers the same JSON, the same 202, 409
or 422. What differs is the door: the browser has no Bearer key to send, only the UI's cookie
(which opens no ``/api`` write), so these routes take the cookie (:func:`api.security.require_ui_key`)
and, with or without a key, refuse with 403 a request without the page's CSRF token
(:func:`api.ui.csrf.check_csrf`): a page of another site or port cannot act through the browser.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, status

from api.routes import flow_runs, flows
from api.routes.deps import FlowRunId, MessagingDep, SessionDep, StoreDep
from api.schemas import Accepted, FlowRunCreate, FlowRunPublic, FlowRunUpdate
from api.security import require_ui_key
from api.ui.csrf import check_csrf

router = APIRouter(prefix="/ui", include_in_schema=False, dependencies=[Depends(require_ui_key), Depends(check_csrf)])


@router.post("/runs/{run_id}/cancel", response_model=Accepted, status_code=status.HTTP_202_ACCEPTED)
def cancel(session: SessionDep, store: StoreDep, messaging: MessagingDep, run_id: FlowRunId) -> Accepted:
    """``POST /api/flow-runs/{id}/cancel`` from the run page."""
    return flow_runs.cancel_flow_run(session, store, messaging, run_id)


@router.post("/runs/{run_id}/retry", response_model=Accepted, status_code=status.HTTP_202_ACCEPTED)
def retry(session: SessionDep, store: StoreDep, messaging: MessagingDep, run_id: FlowRunId) -> Accepted:
    """``POST /api/flow-runs/{id}/retry`` from the run page (a new attempt of the same run: see the README)."""
    return flow_runs.retry_flow_run(session, store, messaging, run_id)


@router.post("/runs/{run_id}/rename", response_model=FlowRunPublic)
def rename(session: SessionDep, store: StoreDep, run_id: FlowRunId, body: FlowRunUpdate) -> FlowRunPublic:
    """``PATCH /api/flow-runs/{id}`` from the run page."""
    return flow_runs.rename_flow_run(session, store, run_id, body)


@router.post("/flows/{name}/runs", response_model=FlowRunPublic, status_code=status.HTTP_201_CREATED)
async def start_run(
    request: Request, body: FlowRunCreate, store: StoreDep, name: str = flows.FlowName
) -> FlowRunPublic:
    """``POST /api/flows/{name}/runs`` from a flow's start form (its 422 names the field to fix)."""
    return await flows.create_run(request, body, store, name)
