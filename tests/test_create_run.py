"""One "create a flow run" use case: ``.delay()``/``apply_async`` and the API check parameters alike.

A real Redis, a real worker that imports ``tests.create_flows`` (and so announces their
JSON Schemas) and the API on it. A refused ``.delay()`` must leave no trace: no flow run
record, no event, no message on the broker; the control beside each negative check shows
the probe sees what a created run writes and sends.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from orchestrator.devstack.localstack import ApiProcess, api_server, worker
from orchestrator.errors import ParameterError, SerializationError
from orchestrator.runstate import keys
from tests import create_flows, flows
from tests.api_support import HeldEvents, api_database, wait_final


@pytest.fixture(scope="module")
def create_worker(redis_url: str, worker_logs: Path) -> Iterator[subprocess.Popen[bytes]]:
    with worker(
        redis_url,
        ["tests.create_flows"],
        queues=create_flows.QUEUE,
        concurrency=2,
        name="create@%h",
        log_path=worker_logs / "create.log",
    ) as proc:
        yield proc


@pytest.fixture(scope="module")
def api(
    redis_url: str,
    fleet: subprocess.Popen[bytes],
    create_worker: subprocess.Popen[bytes],
    worker_logs: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ApiProcess]:
    database = api_database(tmp_path_factory.mktemp("create-db"), None)
    with database as url, api_server(redis_url, url, log_path=worker_logs / "create-api.log") as server:
        yield server


class Trace:
    """What a flow leaves in the run store and on the broker after :meth:`mark`: records, events, messages.

    Only what names ``flow`` counts, so a run of another flow still going on cannot make a check pass
    or fail; the first event of a run carries its flow's name (the API creates its row from it).
    The events are kept from the API's recorder, which trims what it has recorded (:class:`HeldEvents`).
    """

    def __init__(self, redis_url: str, flow: str, queue: str) -> None:
        self.redis_url = redis_url
        self.client = redis.Redis.from_url(redis_url, decode_responses=True)
        self.flow, self.queue = flow, queue
        self.held: HeldEvents | None = None
        self.mark()

    def mark(self) -> None:
        self.records = set(self.client.scan_iter(match=keys.flow_run("*"), count=1000))
        self.close()
        self.held = HeldEvents(self.redis_url)

    def records_since(self) -> set[str]:
        new = set(self.client.scan_iter(match=keys.flow_run("*"), count=1000)) - self.records
        return {key for key in new if self.client.hget(key, "flow") == self.flow}

    def events_since(self) -> int:
        assert self.held is not None
        return sum(1 for event in self.held.events() if self.flow in str(event))

    def messages_waiting(self) -> int:
        return int(self.client.llen(self.queue))

    def close(self) -> None:
        if self.held is not None:
            self.held.close()
            self.held = None


@pytest.fixture
def traces(redis_url: str) -> Iterator[Callable[[str, str], Trace]]:
    """Make :class:`Trace` probes; their hold on the event stream ends with the test."""
    made: list[Trace] = []

    def make(flow: str, queue: str) -> Trace:
        made.append(Trace(redis_url, flow, queue))
        return made[-1]

    yield make
    for trace in made:
        trace.close()


def api_text(http: httpx.Client, flow: str, parameters: dict[str, Any]) -> str:
    """The API's 422 for these parameters, as one sentence (its problems' messages joined)."""
    response = http.post(f"/flows/{flow}/runs", json={"parameters": parameters})
    assert response.status_code == 422, response.text
    return "; ".join(problem["msg"] for problem in response.json()["detail"])


def test_delay_refuses_an_ill_typed_parameter_in_the_apis_words_and_leaves_no_trace(
    http: httpx.Client, traces: Callable[[str, str], Trace]
) -> None:
    nobody = f"create-nobody-{uuid.uuid4().hex[:8]}"  # no worker consumes it: whatever is sent stays there
    trace = traces("chain-flow", nobody)
    with pytest.raises(ParameterError) as delayed:
        flows.chain_flow.delay(x="x")  # chain_flow(x: int = 1)
    with pytest.raises(ParameterError) as sent:
        flows.chain_flow.apply_async({"x": "x"}, queue=nobody)
    # refused before any I/O: nothing can still be on its way
    assert (trace.records_since(), trace.events_since(), trace.messages_waiting()) == (set(), 0, 0)
    assert str(delayed.value) == str(sent.value) == "parameter 'x': 'x' is not of type 'integer'"
    assert isinstance(delayed.value, ValueError)
    assert api_text(http, "chain-flow", {"x": "x"}) == str(delayed.value)  # the API's 422, word for word

    good = flows.chain_flow.apply_async({"x": 2}, queue=nobody)  # the control: the probe sees a created run
    assert trace.records_since() == {keys.flow_run(good.id)}
    assert trace.events_since() >= 1 and trace.messages_waiting() == 1
    trace.client.delete(nobody)
    assert flows.chain_flow.delay(x=2).result(timeout=60) == 8  # a good call still runs: (2+1+1)*2


def test_every_kind_of_bad_parameter_gets_the_same_words_from_python_and_from_http(http: httpx.Client) -> None:
    cases: list[dict[str, Any]] = [
        {},  # n is required
        {"n": 1, "colour": "red"},  # no such parameter
        {"n": 1.5, "days": ["2026-01-02", 3]},  # not an integer; a list item not a date
        {"n": 1, "segment": {"start": {"x": "left"}, "end": {}}},  # inside a model of models ($defs)
    ]
    for parameters in cases:
        with pytest.raises(ParameterError) as refused:
            create_flows.typed_flow.apply_async(parameters)
        assert str(refused.value) == api_text(http, "typed-flow", parameters), parameters
    assert str(refused.value) == (
        "parameter 'segment': {'start': {'x': 'left'}, 'end': {}} is not valid under any of the given schemas"
    )


def test_what_python_passes_is_judged_in_its_json_form_and_what_json_cannot_carry_is_refused_as_before(
    http: httpx.Client, traces: Callable[[str, str], Trace]
) -> None:
    days = [dt.date(2026, 1, 2), dt.date(2026, 1, 3)]
    segment = {"start": {"x": 1}, "end": {"x": 2}}
    model = create_flows.Segment.model_validate(segment)
    run = create_flows.typed_flow.delay(3, segment=segment, days=days)  # dates: "2026-01-02" to the schema
    assert run.result(timeout=60) == [3, model, days]  # the dict given for a model parameter became the model
    assert create_flows.typed_flow.delay(3, segment=model).result(timeout=60) == [3, model, None]
    with pytest.raises(ParameterError, match=r"parameter 'days': \['2026-01-02', 4\] is not valid"):
        create_flows.typed_flow.delay(3, days=[dt.date(2026, 1, 2), 4])
    wrong = create_flows.Segment.model_construct(start={"x": "left"}, end={"x": 2})  # judged in its JSON form
    with pytest.raises(ParameterError, match=r"parameter 'segment'"):
        create_flows.typed_flow.delay(3, segment=wrong)

    trace = traces("typed-flow", create_flows.QUEUE)
    with pytest.raises(SerializationError, match=r"parameter 'days': a value of type builtins\.object"):
        create_flows.typed_flow.delay(3, days=[object()])  # no JSON form: the encoder refuses it by name
    assert (trace.records_since(), trace.events_since()) == (set(), 0)


def test_a_name_given_from_python_is_kept_by_the_worker_that_starts_a_dynamic_run(http: httpx.Client) -> None:
    name = f"kept-{uuid.uuid4().hex[:8]}"
    given = create_flows.named_dynamic_flow.apply_async({"n": 4}, name=name)
    unnamed = create_flows.named_dynamic_flow.delay(5)
    assert given.result(timeout=60) == 4 and unnamed.result(timeout=60) == 5
    assert given.info["name"] == name
    assert unnamed.info["name"] == f"named-dynamic-flow-{unnamed.id[:8]}"
    assert wait_final(http, given.id)["name"] == name


PLAIN_SCHEMAS: list[Any] = [
    {"type": kind, **extra}
    for kind in ("integer", "number", "string", "boolean", "null", "object", "array", "no-such-type")
    for extra in ({}, {"default": 1}, {"title": "X", "description": "d"}, {"minimum": 3}, {"format": "date"})
] + [{"type": ["integer", "null"]}, True, False, {}, {"anyOf": [{"type": "integer"}]}]
PLAIN_VALUES: list[Any] = [0, -5, 2**70, True, None, 1.0, 1.5, float("nan"), "", "2026-13-45", [], {}, [1], {"a": 1}]


def test_a_parameter_is_passed_without_its_validator_only_where_the_validator_passes_it() -> None:
    """``.delay(x=1)`` of an ``x: int`` skips jsonschema (its plain type says enough); what is skipped
    is valid for jsonschema too, and a bool is not taken for an integer or a number."""
    from orchestrator.authoring.formats import validator_for
    from orchestrator.runs.create import plainly_valid

    skipped = []
    for schema in PLAIN_SCHEMAS:
        for value in PLAIN_VALUES:
            if plainly_valid(schema, value):
                skipped.append((schema, value))
                assert not list(validator_for(schema).iter_errors(value)), (schema, value)
    assert ({"type": "integer"}, 0) in skipped and ({"type": "string", "default": 1}, "2026-13-45") in skipped
    assert not plainly_valid({"type": "integer"}, True) and not plainly_valid({"type": "number"}, False)
    assert not plainly_valid({"type": "integer"}, 1.0)  # valid, but the validator says so
    assert not plainly_valid({"type": "string", "format": "date"}, "2026-13-45")
