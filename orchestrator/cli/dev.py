"""``orchestrator dev``: the whole stack on one machine, in the foreground.

A Redis (the configured one if it answers, else a local ``redis-server`` whose data
stay in the project's ``.orchestrator/`` folder), the API with its services on an
SQLite file in the same folder, one worker and Flower. Ctrl-C (or TERM) stops every
child, each in its own process group, so nothing is left behind.

Flower asks for a password generated for each start and printed in the banner, and its
task API (the routes that run tasks) stays off unless ``--flower-task-api`` asks for it:
any web page open in the developer's browser could otherwise post a task to it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from orchestrator.cli.runs import calling, parse_pairs, watch_run
from orchestrator.cli.text import user_line, user_text
from orchestrator.config.settings import get_settings, reset_settings
from orchestrator.devstack.localstack import ApiProcess, flower, free_port, redis_answers, redis_server, worker
from orchestrator.guards.redaction import masked_url
from orchestrator.runs.api_client import ApiClient
from orchestrator.runs.handle import FlowRun
from orchestrator.states import StateType

console = Console()
FLOWER_USER = "orchestrator"


@contextlib.contextmanager
def dev_redis(data_dir: Path) -> Iterator[str]:
    """The configured Redis if it answers, else a local one keeping its data in ``data_dir``."""
    configured = get_settings().redis_url
    if redis_answers(configured):
        console.print(f"redis:  {masked_url(configured)} (already running)")
        yield configured
        return
    with redis_server(data_dir=data_dir / "redis") as url:
        where = f"data in {data_dir / 'redis'}; {masked_url(configured)} did not answer"
        console.print(f"redis:  {masked_url(url)} (started here, {where})")
        yield url


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
) -> None:
    """Run Redis, the API (with its services), a worker and Flower until Ctrl-C."""
    sys.path.insert(0, os.getcwd())
    stop = stop_on_term()
    data_dir = data_dir.resolve()
    logs = data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    modules = [m.strip() for m in (flows or ",".join(get_settings().flow_modules)).split(",") if m.strip()]
    code = 0
    api_port = api_port or free_port()
    flower_port = flower_port or free_port()
    with dev_redis(data_dir) as redis_url:
        os.environ["ORCHESTRATOR_REDIS_URL"] = redis_url
        reset_settings()
        api = ApiProcess(redis_url, f"sqlite:///{data_dir / 'dev.db'}", port=api_port, log_path=logs / "api.log")
        api.start()
        try:
            console.print(f"api:    {api.url}  (docs: http://127.0.0.1:{api_port}/docs, log: {logs / 'api.log'})")
            console.print(f"ui:     {api.url.removesuffix('/api')}/ui  (flow runs in the browser)")
            with worker(redis_url, modules, concurrency=concurrency, log_path=logs / "worker.log"):
                console.print(f"worker: queue default, flows from {', '.join(modules) or '(none)'}")
                login = f"{FLOWER_USER}:{secrets.token_urlsafe(18)}"
                with flower(
                    redis_url,
                    port=flower_port,
                    log_path=logs / "flower.log",
                    basic_auth=login,
                    task_api=flower_task_api,
                ) as flower_url:
                    console.print(f"flower: {flower_url}  (login {login}, {flower_api_note(flower_task_api)})")
                    os.environ["ORCHESTRATOR_API_URL"] = api.url
                    reset_settings()
                    if run:
                        code = run_once(ApiClient(api.url), run, param or [])
                    if not (run and exit_after_run):
                        console.print("[bold]ready[/bold]: Ctrl-C stops everything")
                        stop.wait()
        finally:
            api.stop()
    console.print("stopped: redis (if started here), api, worker, flower")
    raise typer.Exit(code)


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
        console.print(user_line("result: ", user_text(FlowRun(created["id"]).result(timeout=10), "bold")))
    console.print(f"{len(history)} recorded transitions, {retries} retries or sensor pokes waited in Redis")
    return 0 if final["state"] == StateType.COMPLETED.value else 1
