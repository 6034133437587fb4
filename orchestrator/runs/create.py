"""Creating a flow run: the one use case behind ``.delay()``, ``apply_async``, the API (so the CLI too) and deployments.

Every door goes through :func:`new_flow_run`: the parameters get the one check (nesting
depth, then the flow's JSON Schema: the one workers announce and the API publishes, with
the API's messages), the queue and the name are chosen, and the one record
(:class:`~orchestrator.runstate.records.NewFlowRun`) is built. What happens to the record then
depends on where the flow's code is:

- ``.delay()`` / ``apply_async`` (:func:`create_flow_run`): this process has the code; it
  traces and compiles the run, writes the record with its first event (:func:`write_new`)
  and sends the canvas (a dynamic flow: its start message);
- the API (``api.submit``) and deployments (``api.services.scheduling``) keep the record as a
  database row; when the run is due :func:`send_new_runs` writes it with its first event
  and sends its start message, and a worker that has the code traces it
  (:func:`submit_by_name` does the same from Python).

Python values given to ``.delay()`` are checked in the JSON form they would have over HTTP
(:func:`json_view`): tuples and sets as arrays, datetimes and dates as ISO text, UUIDs as
text, Decimals as numbers, bytes as text, a dataclass instance or a pydantic model as the
object pydantic dumps for it. A value JSON has no form for (any other object, a dict with
keys that are not text) is not judged by the schema; the encoder refuses it by name as
before (flow parameters travel as JSON).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import reprlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from decimal import Decimal
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter

from orchestrator.authoring.formats import problem_message, telling, validator_for
from orchestrator.authoring.naming import run_name_problem
from orchestrator.authoring.params import coerce_class_parameters, validated_parameters
from orchestrator.authoring.schema import parameters_schema
from orchestrator.config.settings import get_settings
from orchestrator.data.classes import kind_of
from orchestrator.errors import ParameterError
from orchestrator.guards.limits import depth_problems, queue_problem
from orchestrator.runs.handle import FlowRun, encode_parameters, launch_prepared, prepare_run
from orchestrator.runstate.connection import RedisConnectionError, RedisUnavailable
from orchestrator.runstate.records import NewFlowRun, default_run_name
from orchestrator.runstate.store import RunStore, get_store, now
from orchestrator.states import StateType
from orchestrator.transport.messaging import (
    BrokerWrite,
    CeleryMessaging,
    Messaging,
    Start,
    client_messaging,
    start_flow_run_message,
)

if TYPE_CHECKING:
    from orchestrator.authoring.flows import Flow

log = logging.getLogger(__name__)

Problem = dict[str, Any]  # one refused parameter, as the API's 422 lists it: loc, msg, type


class ParameterProblem(ParameterError):
    """Parameters the flow does not take; ``errors`` name each one (the API answers them as its 422)."""

    def __init__(self, errors: list[Problem]) -> None:
        super().__init__("; ".join(e["msg"] for e in errors))
        self.errors = errors


def parameter_problem(name: str, kind: str, message: str) -> Problem:
    """One problem with parameter ``name`` (``kind``: depth, type, missing, unknown)."""
    return {"loc": ["body", "parameters", name], "msg": message, "type": f"parameter_{kind}"}


# -- the one parameter check -----------------------------------------------------------------------
def check_parameters(
    flow_name: str,
    schema: dict[str, Any] | None,
    parameters: dict[str, Any],
    *,
    door: Callable[[dict[str, Any]], None] | None = None,
    view: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> None:
    """Refuse parameters nested too deep, then (``schema``, when known) missing, unknown and ill-typed ones.

    The depth is measured first, without recursion, before anything recursive meets the
    values. ``door`` adds the checks of one entry (the API refuses pickle payloads) after it;
    ``view`` gives the JSON form the schema judges (:func:`json_view` for Python values).
    """
    too_deep = [parameter_problem(name, "depth", text) for name, text in depth_problems(parameters).items()]
    if too_deep:
        raise ParameterProblem(too_deep)
    if door is not None:
        door(parameters)
    if schema is None:
        return
    problems = schema_problems(flow_name, schema, view(parameters) if view is not None else parameters)
    if problems:
        raise ParameterProblem(problems)


UNJUDGED = object()  # a value the schema cannot judge (JSON has no form for it)


def schema_problems(flow_name: str, schema: dict[str, Any], parameters: dict[str, Any]) -> list[Problem]:
    """The flow's parameter schema applied to ``parameters``, each problem named: unknown, missing, then by path.

    Each parameter is judged against its own schema, which is a whole JSON Schema document
    (a pydantic model's ``$defs`` sit inside it); a value that is :data:`UNJUDGED` is skipped.
    """
    properties: dict[str, Any] = schema.get("properties", {})
    problems: list[Problem] = []
    if schema.get("additionalProperties") is False:
        known = ", ".join(properties) or "(none)"
        for name in sorted(set(parameters) - set(properties)):
            text = f"flow {flow_name!r} has no parameter {name!r}; its parameters are: {known}"
            problems.append(parameter_problem(name, "unknown", text))
    for name in schema.get("required", []):
        if name not in parameters:
            problems.append(parameter_problem(name, "missing", f"parameter {name!r} is required by flow {flow_name!r}"))
    typed: list[tuple[list[str], Problem]] = []
    for name, value in parameters.items():
        if name not in properties or value is UNJUDGED or plainly_valid(properties[name], value):
            continue
        for error in validator_for(properties[name]).iter_errors(value):
            path = [name, *(str(p) for p in error.path)]
            kind = "format" if telling(error).validator == "format" else "type"
            typed.append((path, parameter_problem(name, kind, problem_message(name, error))))
    return problems + [p for _, p in sorted(typed, key=lambda t: t[0])]


# JSON Schema's plain types and the Python types of the values each takes as they are (jsonschema's
# rules: a bool is neither an integer nor a number), and the keywords that only annotate a schema
_PLAIN_TYPES: dict[str, tuple[type, ...]] = {
    "integer": (int,),
    "number": (int, float),
    "string": (str,),
    "boolean": (bool,),
    "null": (type(None),),
}
_PLAIN_KEYWORDS = frozenset({"type", "default", "title", "description"})


def plainly_valid(schema: Any, value: Any) -> bool:
    """Whether ``value`` is valid for a parameter schema that says nothing but its plain type
    (``{"type": "integer", "default": 1}`` for an ``x: int = 1``), without a validator: the
    common parameter, judged on the path of every ``.delay()``. False means "ask the validator"."""
    if type(schema) is not dict or not schema.keys() <= _PLAIN_KEYWORDS:
        return False
    kind = schema.get("type")
    return type(kind) is str and type(value) in _PLAIN_TYPES.get(kind, ())


class _NoJsonForm(Exception):
    pass


def json_view(parameters: dict[str, Any]) -> dict[str, Any]:
    """Python parameter values as the JSON data the schema judges; :data:`UNJUDGED` where JSON has no form."""
    out: dict[str, Any] = {}
    for name, value in parameters.items():
        try:
            out[name] = _json_form(value)
        except _NoJsonForm:
            out[name] = UNJUDGED
    return out


def _json_form(value: Any) -> Any:
    """``value`` as it would be sent over HTTP (see the module's docstring); nested no deeper than checked."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_json_form(v) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise _NoJsonForm
        return {k: _json_form(v) for k, v in value.items()}
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if kind_of(value) is not None:
        return _object_form(value)
    raise _NoJsonForm


def _object_form(value: Any) -> Any:
    """A dataclass instance or a pydantic model as the JSON object its schema describes (aliases included)."""
    try:
        cls: Any = type(value)
        return _adapter(cls).dump_python(value, mode="json", by_alias=True, warnings=False)  # only judged here
    except Exception as exc:  # a field pydantic cannot dump: the encoder decides
        raise _NoJsonForm from exc


@lru_cache(maxsize=256)
def _adapter(cls: Any) -> TypeAdapter[Any]:
    """One pydantic adapter per class (building one costs far more than using it)."""
    return TypeAdapter(cls)


# -- what a door knows of the flow -----------------------------------------------------------------
@lru_cache(maxsize=512)
def _schema_of(flow: Flow) -> dict[str, Any]:
    return parameters_schema(flow)


@dataclass(frozen=True)
class FlowSpec:
    """What creating a run needs to know of its flow: from its code (:meth:`of`), from what a worker
    announced (:meth:`announced`), or only its name (the parameters are then checked for depth only;
    the worker that starts the run judges the rest)."""

    name: str
    queue: str | None = None
    schema: dict[str, Any] | None = None
    name_template: str | None = None
    code: Flow | None = None

    @classmethod
    def of(cls, flow: Flow) -> FlowSpec:
        return cls(flow.name, flow.queue, _schema_of(flow), code=flow)

    @classmethod
    def announced(cls, description: dict[str, Any]) -> FlowSpec:
        """From a flow's announced record (``orchestrator.authoring.schema.describe_flow``)."""
        schema = description.get("parameters") or {"type": "object"}
        return cls(description["name"], description.get("queue"), schema, description.get("name_template"))

    def view(self, given: dict[str, Any]) -> dict[str, Any]:
        """What the schema judges: Python values in their JSON form where the code is, else the JSON given."""
        return json_view(given) if self.code is not None else given

    def converted(self, given: dict[str, Any]) -> dict[str, Any]:
        """Where the code is (``.delay()``), Python values converted by their annotations as an in-process
        call converts them (``"5"`` for an ``int`` is 5), unless ``validate_parameters=False``. A value that
        does not convert is left for the schema check, which names it the way the API does."""
        if self.code is None or not self.code.validate_parameters:
            return given
        try:
            return validated_parameters(self.code, given)
        except ParameterError:
            return given

    def complete(self, given: dict[str, Any]) -> dict[str, Any]:
        """The run's parameters: where the code is, the defaults filled in (callable ones evaluated now) and
        a dict given for a dataclass or model parameter made an instance of it (what the body is traced with)."""
        if self.code is None:
            return dict(given)
        return self.code.complete_parameters(coerce_class_parameters(self.code, given))

    def encoded(self, values: dict[str, Any]) -> dict[str, Any]:
        """The parameters as the record keeps them (JSON data; Python values encoded where the code is)."""
        return encode_parameters(self.code, values) if self.code is not None else values

    def run_name(self, values: dict[str, Any], run_id: str) -> str:
        """The name of a run nobody named: the flow's ``flow_run_name``, else :func:`default_run_name`.

        Where the code is not, a template the parameters cannot fill (one naming a parameter with
        a callable default) leaves the default name; the worker names the run when it starts it.
        A name a template makes passes the rule a given one does: else the run is refused.
        """
        if self.code is not None:
            return self.code.run_name(values, run_id)
        template = self.name_template
        if template:
            try:
                name = str(template.format(**values))
            except (KeyError, IndexError, ValueError, AttributeError, TypeError):
                name = None
            if name is not None:
                problem = run_name_problem(name)
                if problem:
                    text = (
                        f"flow {self.name!r} names its runs with flow_run_name {reprlib.repr(template)}, which made "
                        f"a name that cannot be used: {problem}; pass parameters that make a valid name, or give "
                        "the run a name"
                    )
                    raise ParameterProblem([{"loc": ["body", "name"], "msg": text, "type": "run_name"}])
                return name
        return default_run_name(self.name, run_id)

    @property
    def options(self) -> dict[str, Any]:
        return self.code.run_options if self.code is not None else {}


@dataclass(frozen=True)
class CreatedRun:
    """A new run's record, and its parameters as this process holds them (what its body is traced with)."""

    record: NewFlowRun
    values: dict[str, Any]


# -- the use case ----------------------------------------------------------------------------------
def new_flow_run(
    spec: FlowSpec,
    given: dict[str, Any],
    *,
    queue: str | None = None,
    name: str | None = None,
    run_id: str | None = None,
    created: float | None = None,
    scheduled_start: float | None = None,
    door: Callable[[dict[str, Any]], None] | None = None,
) -> CreatedRun:
    """Check ``given`` (the parameters as the caller gave them) and build the run's one record.

    Nothing is written or sent here; a refused run raises :class:`ParameterProblem` (or the
    encoder's SerializationError for a value JSON cannot carry).
    """
    given = spec.converted(given)
    check_parameters(spec.name, spec.schema, given, door=door, view=spec.view)
    run_id = run_id or str(uuid.uuid4())
    values = spec.complete(given)
    parameters = spec.encoded(values)
    record = NewFlowRun(
        id=run_id,
        flow=spec.name,
        name=name or spec.run_name(values, run_id),
        name_given=name is not None,
        queue=queue or spec.queue or get_settings().default_queue,
        parameters=parameters,
        created=now() if created is None else created,
        scheduled_start=scheduled_start,
        options=spec.options,
    )
    return CreatedRun(record, values)


def write_new(store: RunStore, run: NewFlowRun, pipe: Any) -> None:
    """Write a new run's record in ``pipe`` with its first event: Pending."""
    store.flow_runs.write(run.id, run.to_redis() | {"state": StateType.PENDING.value}, pipe)


def door_problem(flow_name: str, queue: str | None, name: str | None) -> str | None:
    """What is wrong with a queue or a run name given from Python (the API's request schema says the same)."""
    if queue is not None and (problem := queue_problem(queue)):
        return f"flow {flow_name!r}: {problem}."
    if name is not None and (problem := run_name_problem(name)):
        return f"flow {flow_name!r}: run name {reprlib.repr(name)}: {problem}."
    return None


def create_flow_run(
    flow: Flow, parameters: dict[str, Any], *, queue: str | None = None, name: str | None = None
) -> FlowRun:
    """``.delay()`` and ``apply_async``: create a run of ``flow`` and send it; nothing is written if it is refused."""
    if problem := door_problem(flow.name, queue, name):
        raise ParameterError(problem)
    created = new_flow_run(FlowSpec.of(flow), parameters, queue=queue, name=name)
    flow.importable_or_raise()
    run = created.record
    store = get_store()
    messaging = client_messaging()
    if flow.plan_on_worker:  # a worker of its queue plans it, as a run created over HTTP
        send_new_runs([run], messaging)
        return FlowRun(run.id, store)
    prepared = prepare_run(flow, created.values, run_id=run.id, queue=run.queue, messaging=messaging, keep_logs=True)
    record = run.to_redis()
    pipe = store.pipeline()
    if prepared.plan is not None:  # launched in this pipeline (the record written Running): Pending is its first event
        store.flow_runs.emit_state(run.id, StateType.PENDING, pipe, record)
    else:
        write_new(store, run, pipe)
    try:
        launch_prepared(prepared, flow.name, store=store, messaging=messaging, record=record, pipe=pipe, new=True)
    except RedisConnectionError as exc:
        raise store.unreachable(exc) from exc
    return FlowRun(run.id, store)


def send_new_runs(runs: list[NewFlowRun], messaging: Messaging | None = None) -> None:
    """Write the records of many runs (and their first events), then send their start messages: in one
    Redis round trip where the broker is the run store's Redis (:func:`captured_starts`), the messages
    queued after the records; else the records' round trip, then kombu's.

    A worker of each run's queue that imported the flow traces and compiles it; a worker
    without it ends the run Failed, saying so. Raises ConnectionProblem when Redis does not
    answer (before any start message is sent).
    """
    if not runs:
        return
    store = get_store()
    messaging = messaging or client_messaging()
    starts = [Start(run.flow, run.id, run.queue) for run in runs]
    try:
        pipe = store.pipeline()
        for run in runs:
            write_new(store, run, pipe)
        sends = captured_starts(messaging, starts, store.server())
        for command, key, value in sends or ():  # the messages go in the records' round trip, after them
            pipe.execute_command(command.upper(), key, value)
        pipe.execute()
        if sends is None:
            messaging.send_starts(starts)
    except (*RedisUnavailable, OSError) as exc:
        raise store.unreachable(exc) from exc


def captured_starts(
    messaging: Messaging, starts: list[Start], server: tuple[Any, ...] | None
) -> list[BrokerWrite] | None:
    """The Redis commands :meth:`~CeleryMessaging.send_starts` would run for ``starts``, captured and not
    run (:meth:`~CeleryMessaging.captured_signatures`: from their template once Celery's own sends
    taught it, else Celery's capture): the same messages, byte for byte
    but for kombu's random delivery tag, for :func:`send_new_runs` to run in the round trip that writes
    the records. None, and nothing sent, when they cannot be captured (another broker than the run
    store's Redis, no broker connection open yet, a send that is not a plain push): the caller sends.

    Sent by kombu, each start message cost the API ~100 µs of CPU (its retry wrapper and
    ``maybe_declare`` around every publish) and each batch a round trip of its own."""
    if not isinstance(messaging, CeleryMessaging):
        return None
    signatures = [messaging.start_signature(s.flow, s.run_id, s.queue, dynamic=s.dynamic) for s in starts]
    try:  # send_starts' own calls: the same options, so the same messages
        return messaging.captured_signatures(signatures, {}, server)
    except Exception:  # the broker away, say: the usual send meets it again and says so as before
        log.debug("could not capture the start messages of %d runs", len(starts), exc_info=True)
        return None


def submit_by_name(
    flow_name: str,
    parameters: dict[str, Any],
    *,
    queue: str | None = None,
    name: str | None = None,
    run_id: str | None = None,
) -> FlowRun:
    """Send one run of a flow this process has no code for (see :func:`send_new_runs`).

    The queue and the name get the checks ``apply_async`` gives them (a queue such as
    ``orc:events`` would push onto another part's Redis key); the parameters are checked for
    depth here, and against the flow's schema by the worker that has the flow."""
    queue = queue or get_settings().default_queue
    if problem := door_problem(flow_name, queue, name):
        raise ParameterError(problem)
    created = new_flow_run(FlowSpec(flow_name), parameters, queue=queue, name=name, run_id=run_id)
    send_new_runs([created.record])
    return FlowRun(created.record.id)


# -- runs of their own that a flow run starts (plan nodes, dynamic bodies) ------------------------
def linked_run_id(node_task_run_id: str, attempt: int) -> str:
    """The id of the child run a node starts: the same for every delivery of one attempt's message,
    another for the next attempt of the parent (a retried parent starts the child again)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"orchestrator:linked:{node_task_run_id}:{attempt}"))


def start_linked_run(
    spec: FlowSpec,
    parameters: dict[str, Any],
    *,
    run_id: str,
    parent: str,
    parent_task_run: str,
    tree: str | None = None,
    queue: str | None = None,
    name: str | None = None,
    waiter: dict[str, Any] | None = None,
) -> bool:
    """Create and start a child run of ``parent`` once (False: it existed already).

    The parameters get the check every run gets; a worker of the child's queue traces it with
    them (compiled when it can be, driven when its body needs values). ``waiter`` (the parent
    node's message) is sent again when the child ends. Stopping ``tree`` (the parent's root
    run, by default the parent) stops the child too.
    """
    if problem := door_problem(spec.name, queue, name):
        raise ParameterError(problem)
    store = get_store()
    created = new_flow_run(spec, parameters, queue=queue, name=name, run_id=run_id)
    run = replace(created.record, parent=parent, parent_task_run=parent_task_run)
    start = json.dumps(start_flow_run_message(run.flow, run.id, run.queue))
    return store.linked.create_once(
        run.id,
        run.to_redis(),
        tree=tree or parent,
        start=start,
        waiter=json.dumps(waiter) if waiter is not None else None,
    )
