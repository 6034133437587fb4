"""CLI commands about one task run: ``task-run inspect|logs ID``, as ``prefect task-run`` has them.

A task run's id (or any unique prefix of it) is what ``flow-run inspect --json``, a state
history or a worker's log shows; the API resolves the prefix. Output goes through the same
helpers as the flow-run commands, so both print ids, log lines and tracebacks alike.
"""

from __future__ import annotations

from functools import partial
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from orchestrator.cli.runs import AsJson, api_client, calling, console, print_json, print_log_line, print_traceback
from orchestrator.cli.text import user_line, user_text

task_run_app = typer.Typer(
    help="Read one task run through the API: its record, history and logs.", no_args_is_help=True
)

LOG_PAGE = 1000  # lines the API sends per request by default

TaskRunIdArg = Annotated[str, typer.Argument(help="Task run id, or a unique prefix of it (at least 4 characters).")]


@task_run_app.command("inspect")
def task_run_inspect(task_run_id: TaskRunIdArg, as_json: AsJson = False) -> None:
    """A task run's record, its state history and, when it failed, its traceback."""
    task = calling(lambda: api_client().get_task_run(task_run_id))
    if as_json:
        print_json(task)
        return
    flow_run = f"{task['flow_run_name']} ({task['flow_run_id']})" if task["flow_run_name"] else task["flow_run_id"]
    state = task["state"] + (" (cached)" if task.get("cached") else "")
    fields = (
        ("task run", f"{task['label']} ({task['id']})"),
        ("task", task["task_name"]),
        ("flow run", flow_run),
        ("state", state),
        ("message", task["state_message"]),
        ("attempts", task["attempts"]),
        ("worker", task["worker"]),
        ("created", task["created"] or ""),
        ("started", task["started"] or ""),
        ("ended", task["ended"] or ""),
    )
    for name, value in fields:
        console.print(user_line(Text(f"{name + ':':<10}", style="bold"), value), soft_wrap=True)
    history = Table(title=f"state history ({task['states_total']} transitions)")
    for column in ("time", "state", "cause", "message"):
        history.add_column(column)
    for item in task["states"]:
        shown = item["state"] if item["applied"] else f"{item['state']} (ignored)"
        history.add_row(*map(user_text, ((item["time"] or "")[11:23], shown, item["cause"], item["message"][:80])))
    console.print(history)
    from orchestrator.runs.failures import failed_on_its_own  # it loads the run store (redis): only here

    if failed_on_its_own(task["state"]):  # not UpstreamFailed: it raised nothing, an upstream did
        error = f" ({task['error_type']})" if task["error_type"] else ""
        console.print(user_line(Text("traceback", style="bold red"), error, ":"))
        print_traceback(task["traceback"])


@task_run_app.command("logs")
def task_run_logs(task_run_id: TaskRunIdArg) -> None:
    """Print the log lines of one task run (its traceback's among them when an attempt raised)."""
    client = api_client()
    after = 0
    while True:  # the API answers a page of lines at a time: ask from the last one until a short page
        lines = calling(partial(client.task_run_logs, task_run_id, after))
        for line in lines:
            print_log_line(line)
            after = line["seq"]
        if len(lines) < LOG_PAGE:
            return
