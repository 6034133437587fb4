"""``orchestrator deploy`` and ``orchestrator deployment ls|inspect|run|backfill|pause|resume|delete``."""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.table import Table

from orchestrator.cli.runs import AsJson, api_client, calling, console, parse_pairs, print_error, watch_to_the_end
from orchestrator.cli.text import print_json, user_line, user_text
from orchestrator.data.serialization import to_jsonable, to_plain
from orchestrator.errors import OrchestratorError

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
    retention_days: Annotated[
        float | None,
        typer.Option(help="Delete its finished runs this many days after they end (default: the server's)."),
    ] = None,
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
        "retention_days": retention_days,
    }
    created = calling(lambda: api_client().deploy(body))
    console.print(
        user_line(
            "deployment ",
            user_text(created["name"], "bold"),
            f" of flow {created['flow_name']}; next runs: {upcoming_runs(created)}",
        )
    )


def upcoming_runs(deployment: dict[str, Any]) -> str:
    """Its next start times, or why there are none: no schedule, paused, or not planned yet."""
    if deployment["next_runs"]:
        return ", ".join(deployment["next_runs"][:3])
    name = deployment["name"]
    if not (deployment["cron"] or deployment["interval_seconds"]):
        return f"none: it has no schedule, so it runs only when asked ('orchestrator deployment run {name}')"
    if deployment["paused"]:
        return f"none while it is paused ('orchestrator deployment resume {name}')"
    return (
        "none planned yet (the API's scheduler creates a deployment's next 3 runs once they are due within "
        "the hour, checking about once a second while it runs)"
    )


@deployment_app.command("ls")
def deployment_ls(as_json: AsJson = False) -> None:
    """List deployments with their schedules and next runs."""
    rows = calling(lambda: api_client().deployments())
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
    calling(lambda: api_client().pause(name, True))
    console.print(user_line("deployment ", name, " paused"))


@deployment_app.command("resume")
def deployment_resume(name: Annotated[str, typer.Argument(help="Deployment name.")]) -> None:
    """Send its runs again."""
    calling(lambda: api_client().pause(name, False))
    console.print(user_line("deployment ", name, " resumed"))


@deployment_app.command("inspect")
def deployment_inspect(
    name: Annotated[str, typer.Argument(help="Deployment name.")],
    last: Annotated[int, typer.Option(help="How many of its latest runs to show.")] = 10,
) -> None:
    """Its schedule, whether it is paused, its late-run policy and concurrency limit, its next and last runs."""
    client = api_client()
    found = calling(lambda: client.deployment(name))
    runs = calling(lambda: client.deployment_runs(name, last))
    policy = found["late_policy"]
    if policy == "cancel_older_than" and found["late_max_age_seconds"] is not None:
        policy += f" (older than {found['late_max_age_seconds']:g}s)"
    limit = found["concurrency_limit"]
    facts = {
        "flow": found["flow_name"],
        "queue": found["queue"] or "the flow's (default)",
        "schedule": schedule_text(found),
        "paused": "yes" if found["paused"] else "no",
        "late runs": policy,
        "concurrency": "no limit" if limit is None else f"at most {limit} of its runs under way at once",
        "retention": "the server's" if found.get("retention_days") is None else f"{found['retention_days']:g} days",
        "parameters": json.dumps(found["parameters"]),
        "next runs": upcoming_runs(found),
    }
    console.print(user_line("deployment ", user_text(found["name"], "bold")))
    for label, value in facts.items():
        console.print(user_line(f"  {label}: ", value))
    table = Table(title=user_text(f"last {len(runs)} runs (latest start first)"))
    for column in ("id", "name", "state", "start time", "ended", "message"):
        table.add_column(column)
    for run in runs:
        cells = (run["id"], run["name"], run["state"], (run["scheduled_start"] or run["created"] or "")[:19])
        table.add_row(*map(user_text, (*cells, (run["ended"] or "")[:19], run["state_message"][:60])))
    console.print(table)


def schedule_text(deployment: dict[str, Any]) -> str:
    if deployment["cron"]:
        return f"cron {deployment['cron']} ({deployment['timezone']})"
    if deployment["interval_seconds"]:
        return f"every {deployment['interval_seconds']:g}s"
    return "none (runs only when asked)"


@deployment_app.command("run")
def deployment_run(
    name: Annotated[str, typer.Argument(help="Deployment name.")],
    param: Annotated[
        list[str] | None, typer.Option("-p", "--param", help="name=value over the deployment's own (repeatable).")
    ] = None,
    watch: Annotated[bool, typer.Option("--watch", help="Show task states live until the run ends.")] = False,
    timeout: Annotated[float | None, typer.Option(help="With --watch: stop watching after this many seconds.")] = None,
) -> None:
    """Run the deployment now: its parameters, overridden by -p; prints the run's id (exit status 1 if a
    watched run does not complete). A deployment with a concurrency limit sends it when a slot is free."""
    client = api_client()

    def run_now() -> dict[str, Any]:
        flow = client.deployment(name)["flow_name"] if param else ""
        return client.run_deployment(name, parse_pairs(client, flow, param or []))

    run = calling(run_now)
    console.print(user_line("flow run ", user_text(run["name"], "bold"), f" ({run['id']}) {run['state']}"))
    if watch:
        watch_to_the_end(client, run["id"], timeout)


def parse_time(text: str, option: str) -> datetime:
    """An ISO 8601 time from the command line; without a zone it is UTC."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is not an ISO 8601 time; e.g. 2026-01-31T02:00 (UTC) or 2026-01-31T02:00+01:00",
            param_hint=option,
        ) from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


@deployment_app.command("backfill")
def deployment_backfill(
    name: Annotated[str, typer.Argument(help="Deployment name.")],
    start: Annotated[str, typer.Option("--start", help="First start time covered, ISO 8601 (UTC if no zone).")],
    end: Annotated[str, typer.Option("--end", help="End of the range (excluded), at most now.")],
) -> None:
    """Create the runs its schedule would have made in [start, end), at their start times.

    Running it again creates nothing new (a start time that has a run gets no other). The
    deployment's late-run policy decides which run (newest_only: only the newest), and its
    concurrency limit how many are sent at once. A deployment without a schedule is refused.
    """
    done = calling(lambda: api_client().backfill(name, parse_time(start, "--start"), parse_time(end, "--end")))
    console.print(
        user_line(
            "deployment ",
            user_text(name, "bold"),
            f": {done['start_times']} start times in [{done['start']}, {done['end']}): "
            f"{len(done['created'])} runs created, {done['existing']} already had one, "
            f"{done['skipped_by_policy']} left out by its late-run policy ({done['late_policy']})",
        )
    )
    if done["created"] and done["paused"]:
        console.print(user_line("it is paused: they wait until 'orchestrator deployment resume ", name, "'"))
    if done["created"] and done["concurrency_limit"] is not None:
        console.print(user_text(f"they are sent at most {done['concurrency_limit']} at a time (its concurrency limit)"))


@deployment_app.command("delete")
def deployment_delete(name: Annotated[str, typer.Argument(help="Deployment name.")]) -> None:
    """Delete a deployment. Its runs not started yet (scheduled, late, waiting for a slot, sent to a
    queue) are cancelled; its runs under way finish, and finished runs are kept with their history."""
    done = calling(lambda: api_client().delete_deployment(name))
    console.print(
        user_line(
            "deployment ",
            user_text(name, "bold"),
            f" deleted; {len(done['cancelled'])} runs not started were cancelled, {done['kept']} kept",
        )
    )
