"""Live workers and the queues they consume."""

from __future__ import annotations

from fastapi import APIRouter

from api.routes.deps import StoreDep
from api.schemas import WorkerPublic

router = APIRouter(prefix="/workers", tags=["workers"])


@router.get("", response_model=list[WorkerPublic])
def list_workers(store: StoreDep) -> list[WorkerPublic]:
    """Workers heard from in the last few seconds, with their queues and flows."""
    out = []
    for record in store.fleet.live_workers():
        known = {"hostname", "queues", "flows"}
        out.append(
            WorkerPublic(
                hostname=str(record.get("hostname", "")),
                queues=list(record.get("queues", [])),
                flows=list(record.get("flows", [])),
                extra={k: v for k, v in record.items() if k not in known},
            )
        )
    return out
