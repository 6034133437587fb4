"""``orchestrator flow ls`` and ``orchestrator worker ls``: what the fleet registered, through the API."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from orchestrator.cli.runs import AsJson, api_client, calling, console
from orchestrator.cli.text import print_json, user_text

flow_app = typer.Typer(help="Flows the workers registered.", no_args_is_help=True)


def listed(path: str) -> list[dict[str, Any]]:
    """A list route's items (the CLI's only caller of these two routes, so no client method of their own)."""
    client = api_client()
    return list(calling(lambda: client.request("GET", path)))


@flow_app.command("ls")
def flow_ls(as_json: AsJson = False) -> None:
    """Every flow a worker registered, with its queue and parameters (the names 'orchestrator run' takes)."""
    rows = listed("/flows")
    if as_json:
        print_json(rows)
        return
    table = Table(title=f"{len(rows)} flow{'' if len(rows) == 1 else 's'}")
    for column in ("name", "queue", "parameters", "module"):
        table.add_column(column, no_wrap=column == "name")
    for row in rows:
        params = ", ".join((row.get("parameters") or {}).get("properties", {}))
        table.add_row(*map(user_text, (row["name"], row.get("queue") or "default", params, row.get("module") or "")))
    console.print(table)


def worker_ls(as_json: AsJson = False) -> None:
    """Workers heard from in the last few seconds, with the queues they consume and the flows they know."""
    rows = listed("/workers")
    if as_json:
        print_json(rows)
        return
    table = Table(title=f"{len(rows)} live worker{'' if len(rows) == 1 else 's'}")
    for column in ("worker", "queues", "flows"):
        table.add_column(column, no_wrap=column == "worker")
    for row in rows:
        table.add_row(*map(user_text, (row["hostname"], ", ".join(row["queues"]), ", ".join(row["flows"]))))
    console.print(table)
