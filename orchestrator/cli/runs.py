"""CLI commands that talk to the API: ``server start``, ``run``,
``flow-run ls|inspect|result|logs|cancel|retry|delete``."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from orchestrator.cli.api_words import cli_words
from orchestrator.cli.text import print_json, user_json, user_line, user_text
from orchestrator.errors import ApiError, OrchestratorError
from orchestrator.guards.redaction import mask_urls_in
from orchestrator.states import StateType

if TYPE_CHECKING:
    from orchestrator.runs.api_client import ApiClient

console = Console()
server_app = typer.Typer(help="The API server (runs, history, logs).", no_args_is_help=True)
flow_run_app = typer.Typer(help="Read and act on flow runs through the API.", no_args_is_help=True)

T = TypeVar("T")
RUN_LOGGER = "orchestrator.runs"  # the logger of get_run_logger() lines: not named on each printed line


def print_error(exc: Exception | str) -> None:
    """``error: <what happened>`` in one line, never wrapped (a command in it stays whole to copy); the text
    (often the API's, quoting user input) as text, an API error in the CLI's words (:func:`cli_words`)."""
    text = cli_words(exc) if isinstance(exc, ApiError) else str(exc)
    console.print(user_line(Text("error:", style="red"), " ", mask_urls_in(text)), soft_wrap=True)


def api_client(url: str | None = None) -> ApiClient:
    """The API's client, imported on first use: httpx and the settings (pydantic) it loads are most of
    a command's start-up time, and ``--help``, a usage error or ``worker start`` need neither."""
    from orchestrator.runs.api_client import ApiClient

    return ApiClient(url)


def calling(action: Callable[[], T]) -> T:
    """Run an API call; an error is printed in one line and ends the command with status 2."""
    try:
        return action()
    except OrchestratorError as exc:
        print_error(exc)
        raise typer.Exit(2) from None


@server_app.command("start")
def server_start(
    host: Annotated[str, typer.Option(help="Interface to bind; beyond loopback needs ORCHESTRATOR_API_KEY.")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 4200,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Start the API with its recorder and dispatcher (migrates the database first)."""
    cmd = [sys.executable, "-m", "api.server", "--host", host, "--port", str(port), "--log-level", log_level]
    os.execvp(cmd[0], cmd)


services_app = typer.Typer(help="The API's background services, run on their own.", no_args_is_help=True)


@services_app.command("start")
def services_start() -> None:
    """Run the recorder and the periodic services without the HTTP API (next to API processes
    started with ORCHESTRATOR_API_SERVICES=false)."""
    cmd = [sys.executable, "-m", "api.services.runner"]
    os.execvp(cmd[0], cmd)


def parse_pairs(client: ApiClient, flow: str, pairs: list[str]) -> dict[str, Any]:
    """``-p k=v`` read by the one rule of every command (:mod:`orchestrator.authoring.param_text`),
    with the parameter types the flow's workers announced (one GET, only when ``-p`` is given);
    the API then checks the values against the same schema."""
    if not pairs:
        return {}
    from orchestrator.authoring.param_text import read_pairs  # it loads jsonschema: only when -p is given

    schema = client.get_flow(flow).get("parameters")
    return read_pairs(pairs, schema if isinstance(schema, dict) else None)


def task_table(run: dict[str, Any], tasks: list[dict[str, Any]]) -> Table:
    """The run's task runs as a table (used by ``run --watch`` and ``inspect``)."""
    title = f"{run['name']} ({run['id']}): {run['state']} {run.get('state_message') or ''}".strip()
    table = Table(title=user_text(title))
    for column in ("task run", "task", "state", "attempts", "worker", "message"):
        table.add_column(column)
    for task in tasks:
        table.add_row(
            user_text(task["label"]),
            user_text(task["task_name"].rsplit(".", 1)[-1]),
            user_text(task["state"] + (" (cached)" if task.get("cached") else "")),
            user_text(task["attempts"]),
            user_text(task["worker"]),
            user_text((task["state_message"] or "")[:80]),
        )
    return table


def watch_run(client: ApiClient, run_id: str, timeout: float | None) -> dict[str, Any]:
    """Show a live table of the run's task states until the run is final; returns the run."""
    deadline = time.monotonic() + timeout if timeout else None
    run = client.get_run(run_id)
    try:
        with Live(task_table(run, []), console=console, refresh_per_second=4) as live:
            while True:
                run = client.get_run(run_id)
                live.update(task_table(run, client.task_runs(run_id, first_page_only=True)))
                if StateType(run["state"]).is_final or (deadline is not None and time.monotonic() > deadline):
                    return run
                time.sleep(0.5)
    finally:
        if not console.is_terminal:  # Rich ends the last frame with a newline only on a terminal
            console.line()


AsJson = Annotated[bool, typer.Option("--json", help="Print the API's JSON (for scripts) instead of a table.")]
RunIdArg = Annotated[str, typer.Argument(help="Flow run id, or a unique prefix of it (at least 4 characters).")]


def id_column(table: Table, ids: list[str], header: str = "id") -> None:
    """A column of whole ids: never cut or wrapped, however narrow the terminal (a cut id finds nothing);
    the other columns give way."""
    table.add_column(header, no_wrap=True, overflow="ignore", min_width=max(map(len, ids), default=len(header)))


@flow_run_app.command("ls")
def flow_run_ls(
    flow: Annotated[str | None, typer.Option(help="Only runs of this flow.")] = None,
    state: Annotated[list[str] | None, typer.Option(help="Only runs in this state (repeatable).")] = None,
    name: Annotated[str | None, typer.Option(help="Runs whose name contains this.")] = None,
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20,
    as_json: AsJson = False,
) -> None:
    """List flow runs, newest first (ids whole: any unique prefix of one works where an id is taken)."""
    page = calling(lambda: api_client().list_runs(flow=flow, state=state, name=name, limit=limit))
    if as_json:
        print_json(page)
        return
    table = Table(title=user_text(f"{len(page['items'])} of {page['total']} flow runs"))
    id_column(table, [run["id"] for run in page["items"]])
    states = [run["state"] for run in page["items"]]
    table.add_column("name")
    table.add_column("flow")
    # whole on a narrow terminal too ("Comp…" could be Completed or nothing): the other columns give way
    table.add_column("state", no_wrap=True, min_width=max(map(len, states), default=5))
    for column in ("created", "message"):
        table.add_column(column)
    for run in page["items"]:
        created = (run["created"] or "")[:19]
        cells = (run["id"], run["name"], run["flow_name"], run["state"], created, run["state_message"][:60])
        table.add_row(*map(user_text, cells))
    console.print(table)


@flow_run_app.command("inspect")
def flow_run_inspect(run_id: RunIdArg, as_json: AsJson = False) -> None:
    """A run's record, its task runs and its full state history."""
    client = api_client()
    run = calling(lambda: client.get_run(run_id))
    whole = run["id"]  # the API resolved a prefix: the rest asks by the whole id
    tasks = calling(lambda: client.task_runs(whole))
    states = calling(lambda: client.states(whole))
    if as_json:
        print_json({"run": run, "task_runs": tasks, "states": states})
        return
    console.print(user_json(run))
    console.print(task_table(run, tasks))
    history = Table(title="state history")
    for column in ("time", "run", "state", "cause", "message"):
        history.add_column(column, no_wrap=column == "run")
    for item in states:
        # a task run by its label (square-0[2]), not its id: a map's children differ only at the id's end
        who = "flow" if item["run_id"] == whole else item.get("label") or item["run_id"]
        state = item["state"] if item["applied"] else f"{item['state']} (ignored)"
        cells = ((item["time"] or "")[11:23], who, state, item["cause"], item["message"][:60])
        history.add_row(*map(user_text, cells))
    console.print(history)
    print_root_cause(client, run)


@flow_run_app.command("result")
def flow_run_result(run_id: RunIdArg) -> None:
    """Print a completed run's return value as JSON.

    Exit status 1 when the run has no result: still under way, failed (the error says why), or
    its result expired from Redis; 2 when the run is unknown or the API cannot be reached.
    """
    client = api_client()
    try:
        value = client.result(run_id)
    except ApiError as exc:
        print_error(exc)
        raise typer.Exit(1 if exc.status in (409, 410) else 2) from None
    except OrchestratorError as exc:
        print_error(exc)
        raise typer.Exit(2) from None
    console.print(user_json(value), soft_wrap=True)


def print_root_cause(client: ApiClient, run: dict[str, Any]) -> None:
    """For a failed run: the task run that failed first, what it raised and its traceback (the run's
    message, shown before, counts the rest). Nothing for a run that did not fail."""
    if not StateType(run["state"]).is_failed:
        return
    try:
        found = client.failures(run["id"])
    except OrchestratorError as exc:  # an API older than /failures: what was printed before stands
        console.print(user_line("(no root cause shown: ", mask_urls_in(str(exc)), ")"), soft_wrap=True)
        return
    cause = found["root_cause"]
    if cause is None:
        return
    task = cause["task_name"].rsplit(".", 1)[-1]
    headline = user_line(Text("root cause: ", style="bold red"), cause["label"], f" ({task}) ", cause["state"])
    console.print(headline, user_line(": ", cause["message"]) if cause["message"] else "", sep="", soft_wrap=True)
    print_traceback(cause["traceback"])


def print_traceback(traceback: str) -> None:
    """A failed task run's traceback, one printed line per line of it (a line in it never forges another)."""
    for line in (traceback or "(no traceback: nothing raised, see the message)").rstrip().splitlines():
        console.print(user_text(line), soft_wrap=True)


def log_text(line: dict[str, Any]) -> str:
    """A log line's message without the ``[task name <whole id>]`` that ``get_run_logger()`` puts first
    (for the worker's own log): the CLI names the task run by its label (square-0[2]) instead, or by
    its whole id when the API sends no label."""
    message = str(line["message"])
    run_id = line["task_run_id"] or line["flow_run_id"]
    end = message.find(f" {run_id}] ") if message.startswith("[") else -1
    return message[end + len(run_id) + 3 :] if end > 0 and "\n" not in message[:end] else message


def print_log_line(line: dict[str, Any]) -> None:
    """One log line as ``flow-run logs`` and ``task-run logs`` print it: time, level, the task run's label,
    the logger when it is not the run logger (a task module's, a library's, ``py.warnings``), text."""
    where = f" [{line.get('label') or line['task_run_id']}]" if line["task_run_id"] else ""
    logger = str(line.get("logger") or "")
    source = f" {logger}:" if logger and logger != RUN_LOGGER else ""
    text = user_text(f"{(line['time'] or '')[11:23]} {line['level']:<7}{where}{source} {log_text(line)}")
    console.print(text, soft_wrap=True)  # one record, one line: Rich adds no line break of its own


@flow_run_app.command("logs")
def flow_run_logs(
    run_id: RunIdArg,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines until the run ends.")] = False,
) -> None:
    """Print the log lines of a run and its task runs."""
    client = api_client()
    after = 0

    def print_new() -> None:
        nonlocal after
        since = after
        for line in calling(lambda: client.logs(run_id, since)):
            after = line["seq"]
            print_log_line(line)

    while True:
        print_new()
        if not follow:
            return
        if StateType(calling(lambda: client.get_run(run_id))["state"]).is_final:
            time.sleep(1)  # the last lines of the run are shipped within a second
            print_new()
            return
        time.sleep(1)


@flow_run_app.command("why")
def flow_run_why(run_id: RunIdArg) -> None:
    """Why a run is not running (or what it is doing), in plain words."""
    found = calling(lambda: api_client().diagnosis(run_id))
    # the run the API found (run_id may be a prefix): by its name and its whole id
    name = found.get("flow_run_name")
    who = f"{name} ({found['flow_run_id']})" if name else found["flow_run_id"]
    console.print(user_line("flow run ", who, " is ", user_text(found["state"], "bold"), ":"))
    for reason in found["reasons"]:
        console.print(user_line("- ", reason))


@flow_run_app.command("cleanup-late")
def flow_run_cleanup_late(
    policy: Annotated[str, typer.Option(help="newest_only, cancel_older_than or run_all.")] = "newest_only",
    max_age: Annotated[float | None, typer.Option(help="Seconds, for cancel_older_than.")] = None,
    deployment: Annotated[str | None, typer.Option(help="Only runs of this deployment.")] = None,
    flow: Annotated[str | None, typer.Option(help="Only runs of this flow.")] = None,
    queue: Annotated[str | None, typer.Option(help="Only runs on this queue.")] = None,
    all_flows: Annotated[
        bool, typer.Option("--all-flows", help="Apply the policy to the Late runs of every flow (no filter).")
    ] = False,
) -> None:
    """Clear a backlog of Late runs with a policy instead of letting it stampede the fleet.

    The API cancels at most a page of runs per request; this command asks again until none
    remain, so one command clears any backlog.
    """
    given = {"policy": policy, "max_age_seconds": max_age, "deployment": deployment, "flow": flow, "queue": queue}
    body: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    if all_flows:
        body["all_flows"] = True
    client = api_client()
    done = calling(lambda: client.cleanup_late(body))
    late, cancelled = done["late"], done["cancelled"]
    while done.get("remaining") and done["cancelled"]:
        done = calling(lambda: client.cleanup_late(body))
        cancelled += done["cancelled"]
    console.print(user_text(f"{late} late runs: {cancelled} cancelled, {late - cancelled} kept ({done['policy']})"))


@flow_run_app.command("cancel")
def flow_run_cancel(run_id: RunIdArg) -> None:
    """Cancel a run: queued tasks never start, running ones are terminated."""
    console.print(user_text(calling(lambda: api_client().cancel(run_id))["detail"]))


@flow_run_app.command("retry")
def flow_run_retry(run_id: RunIdArg) -> None:
    """Run a failed run again: only its task runs that did not complete."""
    console.print(user_text(calling(lambda: api_client().retry(run_id))["detail"]))


@flow_run_app.command("rename")
def flow_run_rename(run_id: RunIdArg, name: Annotated[str, typer.Argument(help="The run's new name.")]) -> None:
    """Rename a run (also while it runs): lists, the web UI and the history show the new name."""
    if not name.strip():
        print_error("the new name is empty; give the run's new name (1 to 500 characters).")
        raise typer.Exit(2)
    renamed = calling(lambda: api_client().rename(run_id, name))
    console.print(user_line("flow run ", renamed["id"], " renamed ", user_text(renamed["name"], "bold")))


@flow_run_app.command("delete")
def flow_run_delete(
    run_id: RunIdArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    results: Annotated[
        bool, typer.Option("--results", help="Also remove the results its task runs persisted (persist_result=True).")
    ] = False,
) -> None:
    """Delete a finished run for good: its subflow runs, task runs, state history, logs and Redis keys.

    A run under way is refused: cancel it first. A run never sent to a worker (scheduled, late)
    is deleted at once.
    """
    client = api_client()
    if not yes:
        run = calling(lambda: client.get_run(run_id))
        what = f"flow run {run['name']} ({run['id']}), {run['state']}"
        extra = " and their persisted results" if results else ""
        if not typer.confirm(user_text(f"Delete {what}, with its task runs, history and logs{extra}?").plain):
            raise typer.Exit(1)
        run_id = run["id"]
    done = calling(lambda: client.delete_run(run_id, results=results))
    subflows = len(done["flow_runs"]) - 1
    parts = [f"{done['task_runs']} task runs", f"{done['state_events']} state events", f"{done['log_lines']} log lines"]
    if subflows:
        parts.insert(0, f"{subflows} subflow runs")
    parts.append(f"{done['redis_keys']} Redis keys")
    if done["results"] is not None:
        parts.append(f"{done['results']} persisted results")
    console.print(user_line("flow run ", done["id"], " deleted with ", ", ".join(parts)))


def registered_name(target: str) -> str:
    """The name workers register the flow ``module:flow`` under (imported from the current directory)."""
    from orchestrator.authoring.params import load_flow

    sys.path.insert(0, os.getcwd())
    return load_flow(target).name


def run_command(
    flow: Annotated[
        str,
        typer.Argument(
            help="Flow name, as workers registered it (orchestrator flow ls), or module:flow (as plan takes it)."
        ),
    ],
    param: Annotated[list[str] | None, typer.Option("-p", "--param", help="name=value (repeatable).")] = None,
    name: Annotated[str | None, typer.Option(help="Run name (default: the flow's flow_run_name).")] = None,
    queue: Annotated[str | None, typer.Option(help="Queue (default: the flow's).")] = None,
    watch: Annotated[bool, typer.Option("--watch", help="Show task states live until the run ends.")] = False,
    timeout: Annotated[float | None, typer.Option(help="With --watch: stop watching after this many seconds.")] = None,
) -> None:
    """Submit a flow run through the API (exit status 1 if a watched run does not complete)."""
    client = api_client()
    if ":" in flow:  # module:flow, as plan and deploy take it: the name its @flow registers
        flow = calling(lambda: registered_name(flow))
    parameters = calling(lambda: parse_pairs(client, flow, param or []))
    run = calling(lambda: client.create_run(flow, parameters, name=name, queue=queue))
    console.print(user_line("flow run ", user_text(run["name"], "bold"), f" ({run['id']}) {run['state']}"))
    if not watch:
        return
    watch_to_the_end(client, run["id"], timeout)


def watch_to_the_end(client: ApiClient, run_id: str, timeout: float | None) -> None:
    """``--watch`` of ``run`` and ``deployment run``: the live table, then the run's result, or its
    state and root cause and exit status 1 when it did not complete."""
    run = calling(lambda: watch_run(client, run_id, timeout))
    if run["state"] != StateType.COMPLETED.value:
        console.print(user_line(user_text(run["state"], "red"), ": ", run["state_message"]))
        print_root_cause(client, run)
        raise typer.Exit(1)
    try:
        value = client.result(run["id"])
    except OrchestratorError as exc:  # completed, but its result expired already (or the API went away)
        print_error(exc)
        return
    console.print(Text("result:", style="bold green"), user_json(value), soft_wrap=True)
