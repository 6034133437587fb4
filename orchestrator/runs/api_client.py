"""A small HTTP client for the API (the CLI, run_deployment, and scripts use it).

It finds the API at ``ORCHESTRATOR_API_URL`` and sends ``ORCHESTRATOR_API_KEY`` as
a Bearer token when set. Every failure becomes an :class:`ApiError` carrying the
API's own explanation, or a :class:`ConnectionProblem` that says what to start.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx

from orchestrator.config.settings import get_settings
from orchestrator.errors import ApiError, ConnectionProblem
from orchestrator.guards.redaction import mask_urls_in, masked_url


class ApiClient:
    """Calls the orchestrator API; one method per route the CLI needs."""

    def __init__(self, url: str | None = None, api_key: str | None = None, timeout: float = 15.0) -> None:
        settings = get_settings()
        self.url = (url or settings.api_url).rstrip("/")
        configured = settings.api_key.get_secret_value() if settings.api_key is not None else None
        key = api_key if api_key is not None else configured
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send one request; return the decoded JSON body or raise with the API's message."""
        response = self.send(method, path, **kwargs)
        return response.json() if response.content else None

    def every_page(self, path: str, params: dict[str, Any] | None = None) -> list[Any]:
        """All items of a paged list route, following its ``X-Next-Offset`` header page by page."""
        items: list[Any] = []
        query = dict(params or {})
        while True:
            response = self.send("GET", path, params=query)
            items.extend(response.json())
            following = response.headers.get("X-Next-Offset")
            if following is None or int(following) <= int(query.get("offset", 0)):
                return items
            query["offset"] = int(following)

    def send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send one request; return the response (headers too) or raise with the API's message."""
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ConnectionProblem(
                f"cannot reach the API at {masked_url(self.url)} ({mask_urls_in(str(exc))}); start it with "
                "'orchestrator server start' or set ORCHESTRATOR_API_URL to where it runs."
            ) from exc
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            if isinstance(detail, list):  # validation errors: one line each
                detail = "; ".join(str(d.get("msg", d)) if isinstance(d, dict) else str(d) for d in detail)
            # Masked here too: an older or foreign server may quote a URL with its password.
            detail = mask_urls_in(str(detail))
            raise ApiError(f"{method} {path}: {response.status_code}: {detail}", response.status_code, detail)
        return response

    def get_flow(self, flow: str) -> dict[str, Any]:
        """A flow a worker registered: its queue and its parameters' JSON Schema (404 if none did)."""
        return dict(self.request("GET", f"/flows/{segment(flow)}"))

    def create_run(
        self,
        flow: str,
        parameters: dict[str, Any],
        *,
        name: str | None = None,
        queue: str | None = None,
        scheduled_start: datetime | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"parameters": parameters}
        if name:
            body["name"] = name
        if queue:
            body["queue"] = queue
        if scheduled_start:
            body["scheduled_start"] = scheduled_start.isoformat()
        return dict(self.request("POST", f"/flows/{segment(flow)}/runs", json=body))

    def list_runs(self, **filters: Any) -> dict[str, Any]:
        return dict(self.request("GET", "/flow-runs", params={k: v for k, v in filters.items() if v is not None}))

    def get_run(self, run_id: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/flow-runs/{segment(run_id)}"))

    def task_runs(self, run_id: str, *, first_page_only: bool = False) -> list[dict[str, Any]]:
        """The run's task runs: every page, or only the first (a live view of a big run)."""
        path = f"/flow-runs/{segment(run_id)}/task-runs"
        return list(self.request("GET", path)) if first_page_only else self.every_page(path)

    def states(self, run_id: str, tasks: bool = True) -> list[dict[str, Any]]:
        return self.every_page(f"/flow-runs/{segment(run_id)}/states", {"tasks": tasks})

    def logs(self, run_id: str, after: int = 0) -> list[dict[str, Any]]:
        return list(self.request("GET", f"/flow-runs/{segment(run_id)}/logs", params={"after": after}))

    def result(self, run_id: str) -> Any:
        """The run's return value as plain JSON; an :class:`ApiError` (status 409 or 410) when it has none."""
        return self.request("GET", f"/flow-runs/{segment(run_id)}/result")

    def failures(self, run_id: str) -> dict[str, Any]:
        """Why the run failed: its root cause (with its traceback) first, then the other failed task runs."""
        return dict(self.request("GET", f"/flow-runs/{segment(run_id)}/failures"))

    def get_task_run(self, task_run_id: str) -> dict[str, Any]:
        """One task run (by its id or a unique prefix): its record, state history and, when it failed, traceback."""
        return dict(self.request("GET", f"/task-runs/{segment(task_run_id)}"))

    def task_run_logs(self, task_run_id: str, after: int = 0) -> list[dict[str, Any]]:
        return list(self.request("GET", f"/task-runs/{segment(task_run_id)}/logs", params={"after": after}))

    def deploy(self, body: dict[str, Any]) -> dict[str, Any]:
        return dict(self.request("POST", "/deployments", json=body))

    def deployments(self) -> list[dict[str, Any]]:
        return list(self.request("GET", "/deployments"))

    def pause(self, name: str, paused: bool) -> dict[str, Any]:
        return dict(self.request("POST", f"/deployments/{segment(name)}/{'pause' if paused else 'resume'}"))

    def deployment(self, name: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/deployments/{segment(name)}"))

    def deployment_runs(self, name: str, limit: int = 10) -> list[dict[str, Any]]:
        """Its runs past the Scheduled stage, latest start time first (its Scheduled ones: ``next_runs``)."""
        return list(self.request("GET", f"/deployments/{segment(name)}/runs", params={"limit": limit}))

    def run_deployment(self, name: str, parameters: dict[str, Any]) -> dict[str, Any]:
        """A run of the deployment now, its parameters overridden by ``parameters``."""
        return dict(self.request("POST", f"/deployments/{segment(name)}/runs", json={"parameters": parameters}))

    def backfill(self, name: str, start: datetime, end: datetime) -> dict[str, Any]:
        body = {"start": start.isoformat(), "end": end.isoformat()}
        return dict(self.request("POST", f"/deployments/{segment(name)}/backfill", json=body))

    def delete_deployment(self, name: str) -> dict[str, Any]:
        return dict(self.request("DELETE", f"/deployments/{segment(name)}"))

    def cleanup_late(self, body: dict[str, Any]) -> dict[str, Any]:
        return dict(self.request("POST", "/flow-runs/late/cleanup", json=body))

    def diagnosis(self, run_id: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/flow-runs/{segment(run_id)}/diagnosis"))

    def cancel(self, run_id: str) -> dict[str, Any]:
        return dict(self.request("POST", f"/flow-runs/{segment(run_id)}/cancel"))

    def delete_run(self, run_id: str, *, results: bool = False) -> dict[str, Any]:
        """Delete a finished run with its tree, history, logs and Redis keys (and persisted results if asked)."""
        params = {"results": "true"} if results else {}
        return dict(self.request("DELETE", f"/flow-runs/{segment(run_id)}", params=params))

    def retry(self, run_id: str) -> dict[str, Any]:
        return dict(self.request("POST", f"/flow-runs/{segment(run_id)}/retry"))

    def rename(self, run_id: str, name: str) -> dict[str, Any]:
        return dict(self.request("PATCH", f"/flow-runs/{segment(run_id)}", json={"name": name}))

    def set_limit(self, tag: str, limit: int) -> dict[str, Any]:
        return dict(self.request("POST", "/concurrency-limits", json={"tag": tag, "limit": limit}))

    def limits(self) -> list[dict[str, Any]]:
        return list(self.request("GET", "/concurrency-limits"))

    def limit(self, tag: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/concurrency-limits/{segment(tag)}"))

    def delete_limit(self, tag: str) -> None:
        self.request("DELETE", f"/concurrency-limits/{segment(tag)}")


def segment(value: str) -> str:
    """``value`` as one path segment: a ``/``, ``?`` or ``#`` in a name or id stays in it instead
    of sending the request to another route."""
    return quote(value, safe="")
