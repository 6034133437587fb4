"""The UI's key form: with ``ORCHESTRATOR_API_KEY`` set, a browser gives the key once and keeps a cookie.

The cookie holds :func:`api.security.ui_token` (an HMAC under the key, not the key), is
HttpOnly (no script reads it) and SameSite=Strict (no other site's page makes the browser
send it), and opens reads only: the pages and the JSON routes their script reads. Without a
key the form is not needed and sends the browser to the list.
"""

from __future__ import annotations

from urllib.parse import parse_qs

from fastapi import APIRouter, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from api.security import UI_COOKIE, key_matches, ui_token
from api.ui.rendering import render, root_of
from orchestrator.config.settings import get_settings

router = APIRouter(prefix="/ui", include_in_schema=False)

MAX_FORM_BYTES = 4096  # a key and nothing else


def cookie_path(request: Request) -> str:
    """The cookie goes with every request under the root path: the pages and the JSON routes."""
    return (root_of(request) or "") + "/"


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request) -> Response:
    """The form asking for the key (none needed: straight to the list)."""
    if get_settings().api_key is None:
        return RedirectResponse(f"{root_of(request)}/ui", status_code=status.HTTP_303_SEE_OTHER)
    return render(request, "login.html", problem="")


@router.post("/login", response_class=HTMLResponse)
async def log_in(request: Request) -> Response:
    """Check the key given in the form; on a match set the cookie and go to the list."""
    expected = get_settings().api_key
    if expected is None:
        return RedirectResponse(f"{root_of(request)}/ui", status_code=status.HTTP_303_SEE_OTHER)
    body = await request.body()  # a urlencoded form (parsed here: no multipart parser needed)
    given = parse_qs(body[:MAX_FORM_BYTES].decode("utf-8", "replace")).get("key", [""])[0].strip()
    if not key_matches(f"Bearer {given}", expected):
        problem = "That is not this server's key (ORCHESTRATOR_API_KEY where the API runs). Try again."
        return render(request, "login.html", status_code=status.HTTP_401_UNAUTHORIZED, problem=problem)
    done = RedirectResponse(f"{root_of(request)}/ui", status_code=status.HTTP_303_SEE_OTHER)
    done.set_cookie(
        UI_COOKIE,
        ui_token(expected),
        path=cookie_path(request),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return done


@router.post("/logout")
def log_out(request: Request) -> Response:
    """Forget the cookie; the next page asks for the key again."""
    done = RedirectResponse(f"{root_of(request)}/ui/login", status_code=status.HTTP_303_SEE_OTHER)
    done.delete_cookie(UI_COOKIE, path=cookie_path(request), httponly=True, samesite="strict")
    return done
