"""``/docs`` (Swagger UI) and ``/redoc`` with their scripts served by the API itself.

FastAPI's own pages load Swagger UI and ReDoc from a CDN (and ReDoc its fonts from Google):
on a machine without internet, or behind a proxy that blocks them, both pages stay blank.
The package ``fastapi-offline`` ships those files (Swagger UI's bundle and stylesheet,
ReDoc's standalone bundle, a favicon); this module serves them from its folder under
``/docs-assets`` and builds both pages with FastAPI's own ``get_swagger_ui_html`` and
``get_redoc_html`` pointed at them. Every URL a page names starts with the request's root
path (``ORCHESTRATOR_API_ROOT_PATH``), as FastAPI's pages do, so they work behind a proxy.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request, status
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

from api.root_path import prefix_of

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
ASSETS_URL = "/docs-assets"
SWAGGER_JS = "swagger-ui-bundle.js"
SWAGGER_CSS = "swagger-ui.css"
REDOC_JS = "redoc.standalone.js"
FAVICON = "favicon.png"
ASSETS = (SWAGGER_JS, SWAGGER_CSS, REDOC_JS, FAVICON)


def assets_folder() -> Path:
    """The folder of the installed ``fastapi_offline`` package that holds the pages' files."""
    return Path(str(files("fastapi_offline") / "static"))


def asset_paths() -> list[str]:
    """The URL path of each served file (without the root path): open without an API key, as the pages are."""
    return [f"{ASSETS_URL}/{name}" for name in ASSETS]


def install_docs(app: FastAPI) -> None:
    """Serve ``/docs``, ``/redoc`` and their files on ``app`` (created with ``docs_url=None, redoc_url=None``)."""
    openapi_url = app.openapi_url or "/openapi.json"
    folder = assets_folder()

    # A route, not a StaticFiles mount: behind a proxy that strips the root path a mount looks
    # its files up under the wrong name (Starlette joins the root path to the mount's), and
    # naming the four files leaves nothing else of the package's folder to ask for.
    @app.get(ASSETS_URL + "/{name}", include_in_schema=False)
    async def asset(name: str) -> FileResponse:
        if name not in ASSETS:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no docs asset {name!r}; there are {', '.join(ASSETS)}.")
        return FileResponse(folder / name)

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        here = prefix_of(request.scope)
        return get_swagger_ui_html(
            openapi_url=here + openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{here}{ASSETS_URL}/{SWAGGER_JS}",
            swagger_css_url=f"{here}{ASSETS_URL}/{SWAGGER_CSS}",
            swagger_favicon_url=f"{here}{ASSETS_URL}/{FAVICON}",
            swagger_ui_parameters=app.swagger_ui_parameters,
        )

    @app.get(REDOC_URL, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        here = prefix_of(request.scope)
        return get_redoc_html(
            openapi_url=here + openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{here}{ASSETS_URL}/{REDOC_JS}",
            redoc_favicon_url=f"{here}{ASSETS_URL}/{FAVICON}",
            with_google_fonts=False,  # fonts.googleapis.com is off-host too; the system's fonts serve
        )
