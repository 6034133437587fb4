"""``@task(task_run_name=...)``: a task run's display name, made from its arguments.

The name is a ``str.format`` template over the task's parameters (``"load-{table}"``,
``"{cfg.region}-{day:%Y-%m-%d}"``) or a callable taking no arguments, which may read the
run context (``current_run()``, whose ``extra["parameters"]`` holds the bound arguments).
It becomes the task run's label: the API's task run rows, ``orchestrator inspect`` and
failure messages show it.

When it is made: where every parameter a template names is a literal of the call (no
future), the name is made when the call is planned or submitted, so it is in the message
(Flower shows it in the task's ``run`` argument) and in the task run's record from the
start. Otherwise the worker makes it once the inputs are resolved, when the run starts
(the label planned until then is the usual ``task-N``). A name that cannot be made (a
template failing on a value, a callable that raises) leaves the planned label and logs why:
a name never fails a run.
"""

from __future__ import annotations

import inspect
import logging
import string
from collections.abc import Callable
from typing import Any

from orchestrator.authoring.naming import run_name_problem
from orchestrator.errors import DefinitionError
from orchestrator.planning.plan import refs_in

log = logging.getLogger(__name__)

TaskRunName = str | Callable[[], str]


def template_fields(template: str) -> list[str]:
    """The parameter names a template reads (``{a.b[0]:>4}`` reads ``a``)."""
    roots: list[str] = []
    for _, field, _, _ in string.Formatter().parse(template):
        if field is None:
            continue
        root = field.split(".", 1)[0].split("[", 1)[0]
        if root and root not in roots:
            roots.append(root)
    return roots


def check_task_run_name(value: Any, fn: Callable[..., Any], where: str) -> TaskRunName | None:
    """Refuse, at decoration, a template naming a parameter ``fn`` does not have, or a callable needing arguments."""
    if value is None:
        return None
    if callable(value):
        try:
            required = [
                p.name
                for p in inspect.signature(value).parameters.values()
                if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
            ]
        except (TypeError, ValueError):
            required = []
        if required:
            raise DefinitionError(
                f"{where}: task_run_name callable {value!r} is called with no arguments; it needs "
                f"{', '.join(required)}. Read the arguments from current_run().extra['parameters'] instead."
            )
        return value  # type: ignore[no-any-return]
    if not isinstance(value, str):
        raise DefinitionError(f"{where}: task_run_name takes a template string or a callable; got {value!r}.")
    try:
        fields = template_fields(value)
    except ValueError as exc:
        raise DefinitionError(f"{where}: task_run_name {value!r} is not a valid template: {exc}.") from None
    params = inspect.signature(fn).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    unknown = [f for f in fields if f not in params and not takes_any]
    if any(f.isdigit() for f in fields) or unknown:
        bad = next(f for f in fields if f.isdigit() or f in unknown)
        raise DefinitionError(
            f"{where}: task_run_name {value!r} names {bad!r}, which is not a parameter of the task; "
            f"its parameters are: {', '.join(params) or '(none)'}."
        )
    return value


def render(template: TaskRunName, arguments: dict[str, Any], where: str) -> str | None:
    """The name ``template`` makes from bound ``arguments`` (a callable: from the run context), or None (logged)."""
    try:
        name = str(template()) if callable(template) else template.format(**arguments)
    except Exception as exc:
        why = f"{type(exc).__name__}: {exc}"
        log.warning("%s: task_run_name %r could not be made (%s); the run keeps its label", where, template, why)
        return None
    problem = run_name_problem(name)
    if problem:
        log.warning("%s: task_run_name %r made an unusable name (%s); it keeps its label", where, template, problem)
        return None
    return name


def planned_name(template: TaskRunName | None, bound: dict[str, Any], inputs: dict[str, Any], where: str) -> str | None:
    """The name when it can be made before the run starts: a template whose named arguments hold no future.

    ``bound`` are the call's arguments as given, ``inputs`` their templates (futures as references).
    """
    if template is None or callable(template):
        return None
    fields = template_fields(template)
    if any(f in inputs and refs_in(inputs[f]) for f in fields):
        return None
    return render(template, bound, where)
