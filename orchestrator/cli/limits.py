"""``orchestrator concurrency-limit create|ls|inspect|delete``: tag limits across the fleet."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from orchestrator.cli.runs import AsJson, api_client, calling, console
from orchestrator.cli.text import print_json, user_line, user_text

limits_app = typer.Typer(
    help="Concurrency limits: at most N task runs with a tag run at once, on all workers.", no_args_is_help=True
)

Tag = Annotated[str, typer.Argument(help="The tag, as in @task(tags=['db']).")]


def _show(limit: dict[str, Any]) -> None:
    held = f": {limit['active']} of {limit['limit']} slots held"
    console.print(user_line("concurrency limit ", user_text(limit["tag"], "bold"), held))
    for holder in limit["holders"]:
        console.print(
            user_text(
                f"  {holder['label'] or holder['task_run_id']} ({holder['task']}) of flow run {holder['flow_run_id']} "
                f"on {holder['worker'] or '?'}: {holder['state']}"
            )
        )


@limits_app.command("create")
def create(
    tag: Tag, limit: Annotated[int, typer.Argument(help="Task runs with the tag that may run at once.")]
) -> None:
    """Create the tag's limit, or change it."""
    _show(calling(lambda: api_client().set_limit(tag, limit)))


@limits_app.command("ls")
def ls(as_json: AsJson = False) -> None:
    """Every limit and how many of its slots are held."""
    rows = calling(lambda: api_client().limits())
    if as_json:
        print_json(rows)
        return
    table = Table(title="concurrency limits")
    for column in ("tag", "limit", "held", "holders"):
        table.add_column(column)
    for row in rows:
        holders = ", ".join(h["label"] or h["task_run_id"] for h in row["holders"][:5])
        table.add_row(*map(user_text, (row["tag"], row["limit"], row["active"], holders)))
    console.print(table)


@limits_app.command("inspect")
def inspect(tag: Tag, as_json: AsJson = False) -> None:
    """The limit and the task runs holding its slots now."""
    found = calling(lambda: api_client().limit(tag))
    if as_json:
        print_json(found)
        return
    _show(found)


@limits_app.command("delete")
def delete(tag: Tag) -> None:
    """Remove the limit: tasks with the tag no longer wait."""
    calling(lambda: api_client().delete_limit(tag))
    console.print(user_line("concurrency limit ", tag, " deleted"))
