"""``orchestrator dev``: the whole stack on one machine, in the foreground.

A Redis of its own (a local ``redis-server`` whose data stay in the project's
``.orchestrator/`` folder; ``--redis-url`` names another), the API with its services on
an SQLite file in the same folder, one worker and Flower. The banner prints what another
shell exports to reach them. Ctrl-C (or TERM) stops every child, each in its own process
group, so nothing is left behind; so does a child that fails to start or dies, and ``dev``
says which, why (the end of its log) and where its log is, with exit status 1.

Flower asks for a password generated for each start and printed in the banner, and its
task API (the routes that run tasks) stays off unless ``--flower-task-api`` asks for it:
any web page open in the developer's browser could otherwise post a task to it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shlex
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.text import Text

from orchestrator.cli.runs import api_client, calling, parse_pairs, watch_run
from orchestrator.cli.text import user_line, user_text
from orchestrator.devstack.children import Child, port_taken
from orchestrator.errors import ChildExited, ConnectionProblem
from orchestrator.guards.redaction import mask_urls_in, masked_url
from orchestrator.states import StateType

if TYPE_CHECKING:
    from orchestrator.runs.api_client import ApiClient

console = Console(soft_wrap=True)  # a path or URL in the banner stays whole, to copy
FLOWER_USER = "orchestrator"
# Settings that would send the broker or the result backend to another Redis than the stack's.
REDIS_OVERRIDES = ("ORCHESTRATOR_BROKER_URL", "ORCHESTRATOR_RESULT_BACKEND_URL")


@contextlib.contextmanager
def dev_redis(given: str | None, data_dir: Path, logs: Path) -> Iterator[Child | None]:
    """The stack's own redis-server, keeping its data in ``data_dir``; or the Redis ``--redis-url`` names.

    Never whatever answers on the configured URL: a Redis shared with other work (the usual
    one on 6379) would get the stack's keys, and the stack its leftovers. Yields the process
    when it was started here (to watch it), else None.
    """
    from orchestrator.devstack.localstack import redis_answers, redis_process

    if given:
        if not redis_answers(given):
            raise ConnectionProblem(
                f"no Redis answers at {masked_url(given)} (--redis-url): start it, or leave --redis-url out "
                "and dev starts a Redis of its own"
            )
        console.print(f"redis:  {masked_url(given)} (--redis-url: the stack's keys go there)")
        yield None
        return
    with redis_process(data_dir=data_dir / "redis", log_path=logs / "redis.log") as child:
        console.print(f"redis:  {child.url} (started here, data in {data_dir / 'redis'}; --redis-url uses another)")
        yield child


def stop_on_term() -> threading.Event:
    """An event set by SIGINT or SIGTERM, so the stack unwinds through its context managers."""
    stop = threading.Event()

    def handler(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


def dev_command(
    flows: Annotated[str, typer.Option(help="Comma-separated flow modules the worker imports.")] = "",
    run: Annotated[str | None, typer.Option(help="Submit a run of this flow once the stack is up.")] = None,
    param: Annotated[list[str] | None, typer.Option("-p", "--param", help="name=value for --run.")] = None,
    exit_after_run: Annotated[bool, typer.Option("--exit", help="Stop the stack once the --run run ends.")] = False,
    api_port: Annotated[int, typer.Option(help="API port (0: any free port).")] = 4200,
    flower_port: Annotated[int, typer.Option(help="Flower port (0: any free port).")] = 5555,
    flower_task_api: Annotated[
        bool, typer.Option("--flower-task-api", help="Open Flower's API routes that run and control tasks.")
    ] = False,
    concurrency: Annotated[int, typer.Option("-c", help="Worker processes.")] = 2,
    data_dir: Annotated[Path, typer.Option(help="Where Redis data, the database and logs are kept.")] = Path(
        ".orchestrator"
    ),
    redis_url: Annotated[
        str | None,
        typer.Option(
            help="Use this Redis instead of starting one (ORCHESTRATOR_REDIS_URL, _BROKER_URL and "
            "_RESULT_BACKEND_URL are not used)."
        ),
    ] = None,
) -> None:
    """Run Redis, the API (with its services), a worker and Flower until Ctrl-C.

    A child that fails to start, or stops while the stack runs, ends the command with status 1
    and one line naming it, quoting the end of its log and giving the log's path; every child
    still running is stopped before the command exits.
    """
    # imported here, not at the top: the settings, Redis and Celery cost every other command's start-up
    from orchestrator.config.settings import get_settings, reset_settings
    from orchestrator.devstack.localstack import ApiProcess, flower_process, free_port, worker

    sys.path.insert(0, os.getcwd())
    stop = stop_on_term()
    data_dir = data_dir.resolve()
    logs = data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    modules = [m.strip() for m in (flows or ",".join(get_settings().flow_modules)).split(",") if m.strip()]
    api_port = api_port or free_port()
    flower_port = flower_port or free_port()
    taken = taken_port({"the API": (api_port, "--api-port"), "Flower": (flower_port, "--flower-port")})
    if taken:
        print_problem(taken)
        raise typer.Exit(1)
    code = 1
    with contextlib.ExitStack() as stack:
        try:
            redis = stack.enter_context(dev_redis(redis_url, data_dir, logs))
            url = redis.url if redis else str(redis_url)
            os.environ["ORCHESTRATOR_REDIS_URL"] = url
            unset = [name for name in REDIS_OVERRIDES if os.environ.pop(name, None) is not None]
            reset_settings()
            flower_link = {"ORCHESTRATOR_FLOWER_URL": f"http://127.0.0.1:{flower_port}"}  # the UI's task links
            database = f"sqlite:///{data_dir / 'dev.db'}"
            api = ApiProcess(url, database, port=api_port, log_path=logs / "api.log", extra_env=flower_link)
            stack.callback(api.stop)
            api.start()
            console.print(f"api:    {api.url}  (docs: http://127.0.0.1:{api_port}/docs, log: {logs / 'api.log'})")
            console.print(f"ui:     {api.url.removesuffix('/api')}/ui  (flow runs in the browser)")
            proc = stack.enter_context(worker(url, modules, concurrency=concurrency, log_path=logs / "worker.log"))
            console.print(f"worker: queue default, flows from {', '.join(modules) or '(none)'}")
            login = f"{FLOWER_USER}:{secrets.token_urlsafe(18)}"
            shown = flower_process(
                url, port=flower_port, log_path=logs / "flower.log", basic_auth=login, task_api=flower_task_api
            )
            flower = stack.enter_context(shown)
            console.print(f"flower: {flower.url}  (login {login}, {flower_api_note(flower_task_api)})")
            os.environ["ORCHESTRATOR_API_URL"] = api.url
            reset_settings()
            print_exports(url, api.url, unset)
            children = [c for c in (redis, api.child, Child("the worker", proc, logs / "worker.log"), flower) if c]
            code = run_and_watch(children, stop, run, param or [], api.url, exit_after_run)
        except (ChildExited, ConnectionProblem) as exc:
            print_problem(exc)
            console.print("stopping the rest of the stack")
    console.print("stopped: every process dev started")
    raise typer.Exit(code)


def run_and_watch(
    children: list[Child], stop: threading.Event, flow: str | None, pairs: list[str], api_url: str, once: bool
) -> int:
    """Run ``flow`` if asked, then (unless ``once``) wait for Ctrl-C; a child that dies ends the wait.

    Returns the exit status (that of the run, if one was asked for); raises :class:`ChildExited`.
    """
    code = 0
    if flow:
        code = run_once(api_client(api_url), flow, pairs)
        check_children(children)
    if flow and once:
        return code
    console.print("[bold]ready[/bold]: Ctrl-C stops everything")
    while not stop.wait(0.5):
        check_children(children)
    return code


def check_children(children: list[Child]) -> None:
    """Raise :class:`ChildExited` for the first child that is no longer running."""
    for child in children:
        failed = child.exited("while dev was running")
        if failed is not None:
            raise failed


def taken_port(ports: dict[str, tuple[int, str]]) -> str | None:
    """What to say if another process already listens on a port a child is to listen on.

    Checked before anything starts: the child would die on "address already in use" while
    whatever listens there answered the readiness check in its place.
    """
    for name, (port, option) in ports.items():
        if port_taken(port):
            return (
                f"{name} cannot listen on 127.0.0.1:{port}: another process listens there. Stop it, or choose "
                f"another port with {option} (0 picks a free one)"
            )
    return None


def print_problem(problem: Exception | str) -> None:
    """``error: ...`` on one line (the console does not wrap it: a log path stays whole to copy)."""
    line = user_line(Text("error:", style="red"), " ", mask_urls_in(str(problem)))
    console.print(line)


def print_exports(redis_url: str, api_url: str, unset: list[str]) -> None:
    """What another shell exports to reach this stack (the CLI, a worker, a script using the SDK),
    and the broker or backend settings it unsets (``unset``: those this shell had set)."""
    shown = masked_url(redis_url)
    hidden = "  # the password is hidden: use the one in --redis-url" if shown != redis_url else ""
    console.print("another shell reaches this stack with:")
    console.print(f"  export ORCHESTRATOR_REDIS_URL={shlex.quote(shown)}{hidden}", markup=False, highlight=False)
    console.print(f"  export ORCHESTRATOR_API_URL={shlex.quote(api_url)}", markup=False, highlight=False)
    if unset:
        console.print(f"  unset {' '.join(unset)}", markup=False, highlight=False)


def flower_api_note(task_api: bool) -> str:
    """What the banner says about Flower's task API."""
    return "task API on" if task_api else "task API off: --flower-task-api opens it"


def run_once(client: ApiClient, flow: str, pairs: list[str]) -> int:
    """Submit one run through the API, show it live, print its outcome; 0 if it completed."""
    created = calling(lambda: client.create_run(flow, parse_pairs(client, flow, pairs)))
    name = user_text(created["name"], "bold")
    console.print(user_line("flow run ", name, f" ({created['id']}) sent through the API"))
    final = calling(lambda: watch_run(client, created["id"], timeout=300))
    history = [s for s in calling(lambda: client.states(created["id"])) if s["applied"]]
    retries = sum(1 for s in history if s["state"] == StateType.AWAITING_RETRY.value)
    console.print()
    message = f" {final['state_message']}" if final["state_message"] else ""
    console.print(user_line("outcome: ", user_text(final["state"], "bold"), message))
    if final["state"] == StateType.COMPLETED.value:
        from orchestrator.runs.handle import FlowRun

        console.print(user_line("result: ", user_text(FlowRun(created["id"]).result(timeout=10), "bold")))
    console.print(f"{len(history)} recorded transitions, {retries} retries or sensor pokes waited in Redis")
    return 0 if final["state"] == StateType.COMPLETED.value else 1
