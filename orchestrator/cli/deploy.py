"""``orchestrator deploy`` and ``orchestrator deployment ls|pause|resume``."""

from __future__ import annotations

import os
import sys
from typing import Annotated, Any

import typer
from rich.table import Table

from orchestrator.cli.runs import AsJson, calling, console, print_error
from orchestrator.cli.text import print_json, user_line, user_text
from orchestrator.data.serialization import to_jsonable, to_plain
from orchestrator.errors import OrchestratorError
from orchestrator.runs.api_client import ApiClient

deployment_app = typer.Typer(help="Deployments: flows with parameters and a schedule.", no_args_is_help=True)


def deploy_command(
    target: Annotated[str, typer.Argument(help="module:flow, e.g. mypkg.flows:etl")],
    name: Annotated[str, typer.Option(help="Deployment name (unique; deploying again replaces it).")],
    queue: Annotated[str | None, typer.Option(help="Queue its runs go to (default: the flow's).")] = None,
    cron: Annotated[str | None, typer.Option(help="Cron schedule, e.g. '0 2 * * *'.")] = None,
    interval: Annotated[float | None, typer.Option(help="Run every this many seconds.")] = None,
    timezone: Annotated[str, typer.Option(help="Time zone of the cron schedule (IANA name).")] = "UTC",
    param: Annotated[list[str] | None, typer.Option("-p", "--param", help="name=value (repeatable).")] = None,
    paused: Annotated[bool, typer.Option(help="Create it paused.")] = False,
    concurrency_limit: Annotated[
        int | None, typer.Option(help="At most this many of its flow runs under way at once.")
    ] = None,
    late_policy: Annotated[
        str, typer.Option(help="Late runs: run_all, newest_only or cancel_older_than (with --late-max-age).")
    ] = "run_all",
    late_max_age: Annotated[float | None, typer.Option(help="Seconds, for cancel_older_than.")] = None,
) -> None:
    """Deploy a flow: its runs are created ahead on the schedule and sent when due."""
    from orchestrator.authoring.params import load_flow, parse_parameters

    sys.path.insert(0, os.getcwd())
    try:
        flow = load_flow(target)
        parameters = {
            k: to_plain(to_jsonable(v, f"parameter {k!r}")) for k, v in parse_parameters(flow, param or []).items()
        }
    except OrchestratorError as exc:
        print_error(exc)
        raise typer.Exit(2) from None
    body: dict[str, Any] = {
        "name": name,
        "flow_name": flow.name,
        "queue": queue or flow.queue,
        "parameters": parameters,
        "cron": cron,
        "interval_seconds": interval,
        "timezone": timezone,
        "paused": paused,
        "concurrency_limit": concurrency_limit,
        "late_policy": late_policy,
        "late_max_age_seconds": late_max_age,
    }
    created = calling(lambda: ApiClient().deploy(body))
    upcoming = ", ".join(created["next_runs"][:3]) or "none yet (the scheduler plans them within a second)"
    console.print(
        user_line(
            "deployment ", user_text(created["name"], "bold"), f" of flow {created['flow_name']}; next runs: {upcoming}"
        )
    )


@deployment_app.command("ls")
def deployment_ls(as_json: AsJson = False) -> None:
    """List deployments with their schedules and next runs."""
    rows = calling(lambda: ApiClient().deployments())
    if as_json:
        print_json(rows)
        return
    table = Table(title="deployments")
    for column in ("name", "flow", "queue", "schedule", "paused", "next run"):
        table.add_column(column)
    for row in rows:
        schedule = (row["cron"] and f"cron {row['cron']} ({row['timezone']})") or (
            f"every {row['interval_seconds']:g}s" if row["interval_seconds"] else "manual"
        )
        nxt = row["next_runs"][0] if row["next_runs"] else ""
        cells = (row["name"], row["flow_name"], row["queue"] or "", schedule, row["paused"], nxt)
        table.add_row(*map(user_text, cells))
    console.print(table)


@deployment_app.command("pause")
def deployment_pause(name: Annotated[str, typer.Argument(help="Deployment name.")]) -> None:
    """Stop sending its runs."""
    calling(lambda: ApiClient().pause(name, True))
    console.print(user_line("deployment ", name, " paused"))


@deployment_app.command("resume")
def deployment_resume(name: Annotated[str, typer.Argument(help="Deployment name.")]) -> None:
    """Send its runs again."""
    calling(lambda: ApiClient().pause(name, False))
    console.print(user_line("deployment ", name, " resumed"))
