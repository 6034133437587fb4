"""Everyday use through the real API process and the real CLI: ids by any unique prefix, whole ids
in every table, ``--json`` on the listing commands, map children named by their labels in a run's
history, and ``/docs`` and ``/redoc`` that need nothing but the API itself."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

from orchestrator.devstack.localstack import ApiProcess, api_server
from tests.api_support import api_database


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """SQLite, and PostgreSQL too when ORCHESTRATOR_TEST_DATABASE_URL names one (a prefix is a range there)."""
    admin_url = os.environ.get("ORCHESTRATOR_TEST_DATABASE_URL")
    if request.param == "postgresql" and not admin_url:
        pytest.skip("ORCHESTRATOR_TEST_DATABASE_URL is not set (a PostgreSQL URL to create test databases from)")
    with api_database(tmp_path_factory.mktemp("ids-db"), admin_url if request.param == "postgresql" else None) as url:
        yield url


@pytest.fixture(scope="module")
def api(redis_url: str, database_url: str, fleet: subprocess.Popen[bytes], worker_logs: Path) -> Iterator[ApiProcess]:
    """The API with its recorder, on the session's Redis, next to the fleet worker."""
    with api_server(redis_url, database_url, log_path=worker_logs / "ids-api.log") as server:
        yield server


# ---- /docs and /redoc without internet ---------------------------------------------------------

ASSET = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""")
JS_TYPES = ("application/javascript", "text/javascript")


def page_assets(base: str, page: str) -> tuple[str, list[str]]:
    """A docs page's HTML and every URL its script, stylesheet and icon tags name (absolute)."""
    response = httpx.get(f"{base}{page}")
    assert response.status_code == 200, response.text
    return response.text, [urljoin(f"{base}{page}", found) for found in ASSET.findall(response.text)]


def assert_served_here(base: str, page: str, api_port: int) -> None:
    """Every URL the page loads is on this API (same host and port) and answers 200 with its type."""
    html, urls = page_assets(base, page)
    scripts = [u for u in urls if u.endswith(".js")]
    assert scripts, f"{page} names no script: {html[:500]}"
    for url in urls:
        parts = urlsplit(url)
        assert (parts.hostname, parts.port) == ("127.0.0.1", api_port), f"{page} loads {url} from elsewhere"
        fetched = httpx.get(url)
        assert fetched.status_code == 200, (url, fetched.status_code)
        kind = fetched.headers["content-type"]
        if url.endswith(".js"):
            assert kind.startswith(JS_TYPES) and len(fetched.content) > 100_000, (url, kind)
        elif url.endswith(".css"):
            assert kind.startswith("text/css"), (url, kind)
    assert "fonts.googleapis.com" not in html and "cdn.jsdelivr.net" not in html


def test_docs_pages_load_their_scripts_from_the_api(api: ApiProcess) -> None:
    base = f"http://127.0.0.1:{api.port}"
    for page in ("/docs", "/redoc"):
        assert_served_here(base, page, api.port)


def test_docs_assets_follow_the_root_path_and_need_no_key(redis_url: str, database_url: str, worker_logs: Path) -> None:
    env = {
        "ORCHESTRATOR_API_ROOT_PATH": "/orchestrator",
        "ORCHESTRATOR_API_KEY": "s3cret",
        "ORCHESTRATOR_API_SERVICES": "false",
    }
    with api_server(redis_url, database_url, log_path=worker_logs / "ids-docs.log", extra_env=env) as server:
        # behind a proxy that keeps the prefix in the path: every URL the page names carries it
        base = f"http://127.0.0.1:{server.port}/orchestrator"
        for page in ("/docs", "/redoc"):
            _, urls = page_assets(base, page)
            assert all(urlsplit(u).path.startswith("/orchestrator/") for u in urls), urls
            assert_served_here(base, page, server.port)
        # the files hold no data: open without the key, as the pages are; the data still is not
        direct = f"http://127.0.0.1:{server.port}"
        assert httpx.get(f"{direct}/docs-assets/swagger-ui-bundle.js").status_code == 200
        assert httpx.get(f"{direct}/api/flow-runs").status_code == 401
