"""What keeps the run list fast on a large database, checked without timing anything.

The figures are in ``benchmarks/db_scale.py`` (100,000 flow runs, 1,000,000 task runs);
these tests catch the regressions that would undo them: every answer says its server
time (``Server-Timing``, which the benchmark reads).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.timing import server_ms
from orchestrator.config.settings import reset_settings


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    from api.db import migrate

    url = f"sqlite:///{tmp_path / 'list.db'}"
    migrate(url)
    return url


@pytest.fixture
def app(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The API's ASGI app (routes only, no services) on a fresh migrated SQLite file."""
    from api.app import create_app

    monkeypatch.setenv("ORCHESTRATOR_DATABASE_URL", database_url)
    reset_settings()
    try:
        yield create_app(services=False)
    finally:
        reset_settings()


def get(app: Any, path: str, **params: Any) -> httpx.Response:
    """One GET straight into the ASGI app (no server process, no lifespan)."""

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            return await client.get(path, params=params)

    return asyncio.run(call())


def test_every_answer_says_its_server_time(app: Any) -> None:
    listed = get(app, "/api/flow-runs")
    assert listed.status_code == 200 and listed.json()["total"] == 0
    refused = get(app, "/api/flow-runs", limit=0)
    assert refused.status_code == 422
    for response in (listed, refused):
        spent = server_ms(response.headers.get("server-timing"))
        assert spent is not None and spent >= 0, response.headers


def test_server_timing_is_read_from_a_header_with_other_metrics() -> None:
    assert server_ms("db;dur=3.5, app;dur=12.0;desc=orchestrator") == 12.0
    assert server_ms("db;dur=3.5") is None
    assert server_ms(None) is None
