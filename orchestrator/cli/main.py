"""The ``orchestrator`` command: workers, the API server, the dev stack, runs, plans, Flower."""

from __future__ import annotations

import json
import os
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from orchestrator.cli.deploy import deploy_command, deployment_app
from orchestrator.cli.dev import dev_command
from orchestrator.cli.fleet import flow_app, worker_ls
from orchestrator.cli.limits import limits_app
from orchestrator.cli.runs import flow_run_app, print_error, run_command, server_app, services_app
from orchestrator.cli.task_runs import task_run_app
from orchestrator.cli.text import user_line, user_text, visible
from orchestrator.errors import OrchestratorError

app = typer.Typer(help="Prefect-style flows on Celery and Redis.", no_args_is_help=True)
worker_app = typer.Typer(help="Celery workers that run flows.", no_args_is_help=True)
app.add_typer(worker_app, name="worker")
app.add_typer(server_app, name="server")
app.add_typer(flow_run_app, name="flow-run")
app.add_typer(task_run_app, name="task-run")
app.add_typer(services_app, name="services")
app.command("run")(run_command)
app.command("dev")(dev_command)
app.command("deploy")(deploy_command)
app.add_typer(deployment_app, name="deployment")
app.add_typer(limits_app, name="concurrency-limit")
app.add_typer(flow_app, name="flow")
worker_app.command("ls")(worker_ls)


def print_version(asked: bool) -> None:
    """``--version``: the installed package's version, then exit (before any command runs)."""
    if asked:
        from orchestrator import __version__

        print(f"celery-orchestrator {__version__}")
        raise typer.Exit()


@app.callback()
def options(
    version: Annotated[
        bool, typer.Option("--version", help="Print the version and exit.", is_eager=True, callback=print_version)
    ] = False,
) -> None:
    """Prefect-style flows on Celery and Redis."""


@app.command("flower", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def flower_command(
    ctx: typer.Context,
    port: Annotated[int, typer.Option(help="Port Flower listens on.")] = 5555,
    address: Annotated[
        str | None, typer.Option(help="Interface to listen on (default 127.0.0.1; another needs --basic-auth).")
    ] = None,
    basic_auth: Annotated[
        str | None,
        typer.Option("--basic-auth", help="user:password every page and API call asks for (or FLOWER_BASIC_AUTH)."),
    ] = None,
    task_api: Annotated[
        bool,
        typer.Option(
            "--task-api", help="Open the API routes that run, revoke or limit tasks and control workers (needs auth)."
        ),
    ] = False,
) -> None:
    """Start Flower on the orchestrator's broker (any other Flower option passes through).

    It runs workers.flower, which refuses an address beyond loopback without credentials
    and keeps the task API and cross-site writes out. The credentials reach Flower in
    FLOWER_BASIC_AUTH, never on its command line (where ps would show them).
    """
    cmd = [sys.executable, "-m", "workers.flower", f"--port={port}"]
    if address is not None:
        cmd.append(f"--address={address}")
    if task_api:
        cmd.append("--task-api")
    cmd += list(ctx.args)
    env = dict(os.environ) | ({"FLOWER_BASIC_AUTH": basic_auth} if basic_auth is not None else {})
    os.execvpe(cmd[0], cmd, env)


console = Console()


@worker_app.command("start", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def worker_start(
    ctx: typer.Context,
    flows: Annotated[str, typer.Option("--flows", help="Comma-separated flow modules to import.")] = "",
    queues: Annotated[str, typer.Option("-Q", "--queues", help="Queues to consume.")] = "default",
    concurrency: Annotated[
        int | None, typer.Option("-c", "--concurrency", help="Worker processes (default: one per CPU).")
    ] = None,
    hostname: Annotated[
        str | None, typer.Option("-n", "--hostname", help="Worker name, e.g. w1@%h (default: celery@<host>).")
    ] = None,
) -> None:
    """Start a Celery worker; any other Celery worker option passes through."""
    from orchestrator.guards.limits import queues_problem

    problem = queues_problem(queues.split(","))
    if problem:
        print_error(problem)
        raise typer.Exit(2)
    env = dict(os.environ)
    if flows:
        env["ORCHESTRATOR_FLOW_MODULES"] = flows
    cmd = [sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-Q", queues]
    if concurrency:
        cmd += ["-c", str(concurrency)]
    if hostname:
        cmd += ["-n", hostname]
    cmd += list(ctx.args)
    os.execvpe(cmd[0], cmd, env)


@app.command()
def plan(
    target: Annotated[str, typer.Argument(help="module:flow, e.g. mypkg.flows:etl")],
    param: Annotated[list[str] | None, typer.Option("-p", "--param", help="name=value (repeatable).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the traced graph and the canvas as JSON.")] = False,
) -> None:
    """Show the task graph a flow traces to and the Celery canvas it compiles to."""
    from orchestrator.authoring.params import load_flow, parse_parameters
    from orchestrator.planning.compiler import canvas_tree, compile_plan, describe_canvas
    from orchestrator.planning.tracer import DynamicFlowRequired

    sys.path.insert(0, os.getcwd())
    try:
        flow = load_flow(target)
        parameters = flow.complete_parameters(parse_parameters(flow, param or []))
        try:
            traced = flow.plan(**parameters)
        except DynamicFlowRequired as signal:
            message = f"dynamic: {signal}; the body runs on a worker and submits tasks as it goes."
            print(json.dumps({"mode": "dynamic", "reason": str(signal)}) if as_json else visible(message))
            return
        compiled = compile_plan(traced)
    except OrchestratorError as exc:
        print_error(exc)
        raise typer.Exit(2) from None
    labels = {n.id: n.label for n in traced.nodes.values()}
    if as_json:
        out = traced.to_dict() | {
            "mode": "static",
            "canvas": canvas_tree(compiled.canvas, labels),
            "joins": {labels[k]: v for k, v in compiled.join_pending.items()},
        }
        print(json.dumps(out, indent=2, default=str))
        return
    table = Table(title=user_text(f"flow {flow.name}: {len(traced.nodes)} task runs"))
    for column in ("task run", "kind", "task", "queue", "waits for"):
        table.add_column(column)
    for node in traced.nodes.values():
        ups = ", ".join(labels[u] for u in node.upstream)
        table.add_row(*map(user_text, (node.label, node.kind, node.name, node.queue, ups)))
    console.print(table)
    console.print("[bold]Celery canvas[/bold]")
    print("\n".join(map(visible, describe_canvas(compiled.canvas, labels).split("\n"))))
    if compiled.join_pending:
        joined = ", ".join(labels[k] for k in compiled.join_pending)
        console.print(user_line(Text("Started by Redis joins", style="bold"), " (not series-parallel): ", joined))


def main() -> None:
    """Entry point of the ``orchestrator`` console script."""
    app()


if __name__ == "__main__":
    main()
