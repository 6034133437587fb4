"""``python -m workers.flower``: Celery's Flower on the orchestrator's broker, its doors closed.

Flower's own defaults leave it open: it listens on every interface, its HTTP API can run any
registered task (``POST /api/task/async-apply/<task>``) and, with FLOWER_UNAUTHENTICATED_API,
answers any origin with no XSRF check, so any web page a developer visits can post a task.
Every entry point (``orchestrator flower``, ``orchestrator dev``, docker-compose, the tests'
``localstack.flower``) starts Flower through here, so these hold wherever it runs:

- It listens on 127.0.0.1 unless another address is given, and refuses another address
  without credentials (``--basic-auth=user:password`` / FLOWER_BASIC_AUTH, or Flower's OAuth
  ``--auth``), as ``orchestrator server start`` refuses one without ORCHESTRATOR_API_KEY.
- FLOWER_UNAUTHENTICATED_API is refused: it opens the API to anyone who can reach the port and
  to every web page (``Access-Control-Allow-Origin: *``, no XSRF check).
- The task API (every API route that runs, sends, aborts, revokes or limits a task, or
  controls a worker) answers 404 unless ``--task-api`` or ORCHESTRATOR_FLOWER_TASK_API=true
  asks for it, and it can only be asked for together with credentials. Reading (the pages,
  ``GET /api/tasks``, ``/api/workers``...) stays, behind the credentials when there are some.
- A request other than GET, HEAD or OPTIONS whose Origin (or, without one, Referer) is not
  Flower's own origin, or whose Sec-Fetch-Site says another site, gets 403 before any handler
  runs: a browser attaches the basic-auth credentials it cached for Flower to a cross-site
  form post, so credentials alone prove nothing. Flower's own origin is the Host header the
  request came with: a reverse proxy in front of Flower passes the Host header on.
- Without credentials, only loopback host names are answered, so a page whose name was
  rebound to 127.0.0.1 (DNS rebinding) cannot read Flower as its own origin.

Everything else on the command line passes through to Flower (``--port``, ``--url_prefix``...).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import tornado.web
from pydantic import ValidationError
from tornado.httputil import HTTPServerRequest

from orchestrator.config.settings import get_settings
from orchestrator.guards.hosts import SAFE_METHODS, host_name, is_loopback, same_origin
from orchestrator.guards.redaction import mask_urls_in

TASK_API_FLAG = "--task-api"
TASK_API_ENV = "ORCHESTRATOR_FLOWER_TASK_API"
UNAUTHENTICATED_API_ENV = "FLOWER_UNAUTHENTICATED_API"
MIN_PASSWORD_LENGTH = 12
MUTATING_METHODS = ("post", "put", "patch", "delete")
TASK_API_OFF = (
    "Flower's task API is off: this route runs or changes tasks or workers. Start Flower with "
    f"{TASK_API_FLAG} (or {TASK_API_ENV}=true) and credentials (--basic-auth=user:password) to open it.\n"
)
GENERATE_PASSWORD = "python -c 'import secrets; print(secrets.token_urlsafe(18))' makes one"
CREDENTIALS_HINT = (
    "Set --basic-auth=user:password (or FLOWER_BASIC_AUTH=user:password, which docker-compose "
    f"passes on), with a password of at least {MIN_PASSWORD_LENGTH} characters ({GENERATE_PASSWORD})"
)

logger = logging.getLogger("workers.flower")  # also when run as __main__


class FlowerRefused(Exception):
    """Flower would start with an open door; the message says which and what to set instead."""


@dataclass(frozen=True)
class Doors:
    """What this launcher was asked to open (only the task API can be)."""

    task_api: bool = False

    @classmethod
    def from_environment(cls, args: Iterable[str]) -> Doors:
        """The doors ``--task-api`` in ``args`` or ORCHESTRATOR_FLOWER_TASK_API ask for."""
        return cls(task_api=TASK_API_FLAG in args or get_settings().flower_task_api)


def unauthenticated_api_asked() -> bool:
    """Whether FLOWER_UNAUTHENTICATED_API asks to open Flower's API to anyone, read as Flower reads it
    (``flower.utils.strtobool``); a value Flower would not read is refused too."""
    from flower.utils import strtobool

    value = os.environ.get(UNAUTHENTICATED_API_ENV) or "false"
    try:
        return bool(strtobool(value))
    except ValueError:
        raise FlowerRefused(f"{UNAUTHENTICATED_API_ENV}={value!r} is not a boolean; use true or false") from None


def check_options(options: Any, doors: Doors) -> None:
    """Refuse an open door in Flower's parsed ``options`` (command line, FLOWER_* and its config
    file all land there); default the address to 127.0.0.1, Flower's own default being every
    interface."""
    if unauthenticated_api_asked():
        raise FlowerRefused(
            f"refusing {UNAUTHENTICATED_API_ENV}: it lets anyone who reaches the port, and any web page "
            "open in a browser on this machine, run tasks through Flower's API. Unset it; scripts that "
            f"read the API use credentials instead. {CREDENTIALS_HINT}."
        )
    check_credentials(options.basic_auth or [])
    authenticated = bool(options.basic_auth or options.auth)
    if not options.address and not options.unix_socket:
        options.address = "127.0.0.1"
    if not options.unix_socket and not is_loopback(options.address) and not authenticated:
        raise FlowerRefused(
            f"refusing to listen on {options.address} without credentials: anyone on the network could "
            f"read every task's arguments and results. {CREDENTIALS_HINT}, or listen on 127.0.0.1 (the "
            "default). To reach Flower from elsewhere, put it behind a reverse proxy with TLS."
        )
    if doors.task_api and not authenticated:
        raise FlowerRefused(
            f"refusing {TASK_API_FLAG} ({TASK_API_ENV}) without credentials: the task API runs tasks on "
            f"the workers. {CREDENTIALS_HINT}."
        )


def check_credentials(entries: list[str]) -> None:
    """Each basic-auth entry is ``user:password`` with a real password (Flower takes any string,
    an empty one included, which a client can match with an empty Authorization header)."""
    for entry in entries:
        user, _, password = entry.partition(":")
        if not user or len(password) < MIN_PASSWORD_LENGTH:
            shown = f"{user}:**" if user else "(empty)"
            raise FlowerRefused(
                f"refusing basic-auth entry {shown}: it must be user:password with a password of at "
                f"least {MIN_PASSWORD_LENGTH} characters ({GENERATE_PASSWORD})."
            )


def is_task_control(handler_class: type[tornado.web.RequestHandler]) -> bool:
    """Whether a handler belongs to the task API: a Flower API handler that takes a POST, PUT,
    PATCH or DELETE (decided by what it does, so a route a later Flower adds is covered too)."""
    from flower.api import BaseApiHandler

    base = tornado.web.RequestHandler
    return issubclass(handler_class, BaseApiHandler) and any(
        getattr(handler_class, method) is not getattr(base, method) for method in MUTATING_METHODS
    )


def cross_site(request: HTTPServerRequest) -> str | None:
    """Why ``request`` looks sent by another site's page, or None (a safe method, Flower's own
    pages, or a client that is no browser: browsers always send Origin on a cross-origin POST)."""
    if request.method in SAFE_METHODS:
        return None
    site = request.headers.get("Sec-Fetch-Site")
    if site and site not in ("same-origin", "none"):
        return f"a {request.method} from another site (Sec-Fetch-Site: {site})"
    origin = request.headers.get("Origin")
    source = origin if origin is not None else request.headers.get("Referer")
    if source is None or same_origin(source, request.host):
        return None
    header = "Origin" if origin is not None else "Referer"
    return f"a {request.method} from another origin ({header}: {mask_urls_in(source)[:200]})"


class Refused(tornado.web.RequestHandler):
    """Answers ``status`` with a plain-text ``message`` before any of Flower's handlers runs."""

    def initialize(self, status: int, message: str) -> None:
        self.status = status
        self.message = message

    def check_xsrf_cookie(self) -> None:
        """Nothing to protect: this handler changes nothing (and its answer must not turn into
        Tornado's XSRF 403)."""

    def prepare(self) -> None:
        self.set_status(self.status)
        self.set_header("Content-Type", "text/plain; charset=UTF-8")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.finish(self.message)


def guarded_flower(doors: Doors) -> type:
    """Flower's application class with the checks above; ``flower.command`` builds this one."""
    from flower.app import Flower

    class GuardedFlower(Flower):  # type: ignore[misc]
        """Flower that refuses to start with an open door and screens every request."""

        def __init__(self, options: Any = None, **kwargs: Any) -> None:
            check_options(options, doors)  # before Flower imports anything or binds a port
            self.authenticated = bool(options.basic_auth or options.auth)
            self.on_unix_socket = bool(options.unix_socket)
            super().__init__(options=options, **kwargs)
            if not doors.task_api:
                options.read_only = True  # the pages hide the buttons whose routes are off

        def find_handler(self, request: HTTPServerRequest, **kwargs: Any) -> Any:
            """Refuse DNS rebinding and cross-site writes, and hide the task API unless opened."""
            refusal: tuple[int, str] | None = None
            if not self.authenticated and not self.on_unix_socket and not is_loopback(host_name(request.host)):
                refusal = (403, "Flower without credentials answers only loopback host names (127.0.0.1, localhost).\n")
            elif reason := cross_site(request):
                refusal = (403, f"refused {reason}: Flower accepts changes only from its own pages.\n")
            delegate = super().find_handler(request, **kwargs)
            if refusal is None and not doors.task_api and is_task_control(delegate.handler_class):
                refusal = (404, TASK_API_OFF)
            if refusal is None:
                return delegate
            logger.warning("%s %s refused (%s): %s", request.method, request.path, refusal[0], refusal[1].strip())
            return self.get_handler_delegate(request, Refused, {"status": refusal[0], "message": refusal[1]})

    return GuardedFlower


def main(argv: list[str] | None = None) -> int:
    """Run ``celery -A workers.app flower`` with the guarded application; 2 if it refuses to start."""
    import flower.command
    from celery.bin.celery import celery

    args = list(sys.argv[1:] if argv is None else argv)
    try:
        doors = Doors.from_environment(args)
        flower.command.Flower = guarded_flower(doors)  # type: ignore[attr-defined]
        celery.add_command(flower.command.flower)
        flower_args = [arg for arg in args if arg != TASK_API_FLAG]
        celery.main(args=["-A", "workers.app", "flower", *flower_args], prog_name="celery", auto_envvar_prefix="CELERY")
    except FlowerRefused as refused:
        print(f"orchestrator flower: {refused}", file=sys.stderr)
        return 2
    except ValidationError as invalid:  # an ORCHESTRATOR_* variable that is not what it should be
        print(f"orchestrator flower: {invalid}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
