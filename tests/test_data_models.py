"""Dataclasses and pydantic models as task arguments, task results and flow parameters.

In-process, and on the fleet: a real Redis and a real worker importing ``tests.model_flows``
(the API too, for the HTTP and CLI door). A class travels by ``module:qualname``; the side
that reads it builds only a dataclass or model class it has already imported
(``orchestrator.data.classes``, docs/security.md): forged messages prove nothing else runs.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from orchestrator.authoring.schema import parameters_schema
from orchestrator.data.serialization import dumps, loads, to_plain
from orchestrator.devstack.localstack import ApiProcess, api_server, worker
from orchestrator.errors import ParameterError, SerializationError
from orchestrator.runs.create import FlowSpec, new_flow_run, schema_problems, submit_by_name
from orchestrator.runs.handle import FlowRun, launch_prepared, prepare_run
from orchestrator.runstate.store import get_store
from orchestrator.states import StateType
from orchestrator.transport.messaging import client_messaging
from tests import model_flows as mf
from tests.api_support import api_database, cli, submit, wait_final

START = dt.datetime(2026, 3, 1, 6, 0, tzinfo=dt.UTC)
TRIPWIRE_MODULE = "tests.model_tripwire"  # leaves a file when imported; nothing imports it


@pytest.fixture(scope="module")
def tripwire_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tripwire") / "imported"


@pytest.fixture(scope="module")
def models_worker(redis_url: str, worker_logs: Path, tripwire_file: Path) -> Iterator[subprocess.Popen[bytes]]:
    with worker(
        redis_url,
        ["tests.model_flows"],
        queues=mf.QUEUE,
        concurrency=2,
        name="models@%h",
        log_path=worker_logs / "models.log",
        extra_env={"MODEL_TRIPWIRE_FILE": str(tripwire_file)},
    ) as proc:
        yield proc


@pytest.fixture(scope="module")
def api(
    redis_url: str,
    models_worker: subprocess.Popen[bytes],
    worker_logs: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ApiProcess]:
    database = api_database(tmp_path_factory.mktemp("models-db"), None)
    with database as url, api_server(redis_url, url, log_path=worker_logs / "models-api.log") as server:
        yield server


def a_batch() -> mf.Batch:
    return mf.Batch("b", mf.Window(START, START + dt.timedelta(hours=2)), (1, 2, 3))


def round_trip(value: Any) -> Any:
    return loads(dumps(value, "json", "test"), allow_pickle=False, where="test")


# -- the serializer ----------------------------------------------------------------------------------------
def test_dataclasses_and_models_round_trip_with_their_types_inside() -> None:
    batch = a_batch()
    back = round_trip(batch)
    assert back == batch and type(back) is mf.Batch and type(back.window) is mf.Window
    assert back.window.start == START and back.window.start.tzinfo is not None  # the datetime kept its type
    assert back.rows == (1, 2, 3) and back.total == 6  # a tuple stays a tuple; the init=False field came along

    summary = mf.Summary(name="s", total=3, tags={"a", "b"}, window=batch.window)
    assert round_trip(summary) == summary and type(round_trip(summary).window) is mf.Window
    config = mf.Config(threshold=2, labelText="x", since=dt.date(2026, 1, 2))  # an aliased field
    assert round_trip(config) == config
    nested = {"items": [batch, (config, None)], "when": START}  # inside plain containers too
    assert round_trip(nested) == nested

    data = json.loads(dumps(batch, "json", "test"))
    assert data["__orc__"] == "dataclass" and data["cls"] == "tests.model_flows:Batch"
    assert to_plain(data) == {  # what the API shows: the object of its fields, no class name
        "name": "b",
        "window": {"start": START.isoformat(), "end": (START + dt.timedelta(hours=2)).isoformat()},
        "rows": [1, 2, 3],
        "total": 6,
    }


def test_plain_values_keep_their_json() -> None:
    """The fast path: plain data is written exactly as before."""
    assert dumps({"a": [1, 2.5, None, True, "x"]}, "json", "t") == '{"a":[1,2.5,null,true,"x"]}'
    assert dumps(dt.date(2026, 1, 2), "json", "t") == '{"__orc__":"date","v":"2026-01-02"}'


def test_a_class_defined_in_a_function_or_in_main_is_refused_where_it_is_sent_with_the_fix() -> None:
    @dataclass
    class Local:
        x: int

    class LocalModel(BaseModel):
        x: int

    @dataclass
    class InMain:
        x: int

    InMain.__module__, InMain.__qualname__ = "__main__", "InMain"  # as a script defines it
    cases = [(Local(1), "defined inside a function"), (LocalModel(x=1), "defined inside a function")]
    cases.append((InMain(1), "defined in __main__"))
    for value, reason in cases:
        with pytest.raises(SerializationError) as refused:
            dumps({"k": [value]}, "json", "task 'etl.extract'")
        message = str(refused.value)
        assert message.startswith("task 'etl.extract': a value of type ") and type(value).__qualname__ in message
        assert reason in message
        assert "top level of a module" in message and '@task(result_serializer="pickle")' in message
    with pytest.raises(SerializationError, match=r"field Window\.start: a value of type builtins\.object"):
        dumps(mf.Window(object(), START), "json", "t")  # type: ignore[arg-type]  # an unsendable field is named


def forged(kind: str, cls: str, fields: dict[str, Any]) -> dict[str, Any]:
    return {"__orc__": kind, "cls": cls, "v": fields}


def forgeries(marker: Path) -> dict[str, tuple[dict[str, Any], str]]:
    """Values a forged message may carry, each with the reason it must be refused; each would leave ``marker``."""
    touch = f"touch {marker}"
    return {
        "os.system": (forged("dataclass", "os:system", {"command": touch}), "os.system is not a class"),
        "Popen": (forged("dataclass", "subprocess:Popen", {"args": ["touch", str(marker)]}), "not a dataclass"),
        "Popen as model": (forged("model", "subprocess:Popen", {"args": ["touch", str(marker)]}), "not a pydantic"),
        "plain class": (forged("dataclass", "tests.model_flows:Tripwire", {"path": str(marker)}), "not a dataclass"),
        "kind mismatch": (forged("model", "tests.model_flows:Marker", {"path": str(marker)}), "not a pydantic"),
        "not imported": (forged("dataclass", f"{TRIPWIRE_MODULE}:Boom", {"path": str(marker)}), "is not imported"),
        "an alias": (forged("dataclass", "tests.model_flows:Path", {}), "tests.model_flows.Path is a name for"),
        "product class": (
            forged("dataclass", "orchestrator.runstate.records:NewTaskRun", {}),
            "the orchestrator's own classes",
        ),
        "a method": (forged("dataclass", "tests.model_flows:Marker.__post_init__", {}), "is not a class"),
        "main": (forged("dataclass", "__main__:Marker", {"path": str(marker)}), "__main__"),
    }


def test_a_message_naming_a_class_that_may_not_be_built_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    for label, (value, reason) in forgeries(marker).items():
        with pytest.raises(SerializationError) as refused:
            loads(json.dumps([value]), allow_pickle=False, where="t")
        assert reason in str(refused.value), label
        assert "refused a value tagged" in str(refused.value) and "docs/security.md" in str(refused.value)
    assert not marker.exists()
    assert TRIPWIRE_MODULE not in sys.modules  # decoding never imports
    control = loads(json.dumps(forged("dataclass", "tests.model_flows:Marker", {"path": str(marker)})), **NO_PICKLE)
    assert isinstance(control, mf.Marker) and marker.exists()  # an allowed dataclass is built, its own way


NO_PICKLE: dict[str, Any] = {"allow_pickle": False, "where": "t"}


def test_fields_that_do_not_fit_the_class_are_refused_by_name() -> None:
    unknown = forged("dataclass", "tests.model_flows:Window", {"start": 1, "end": 2, "colour": "red"})
    with pytest.raises(SerializationError, match=r"tests\.model_flows\.Window has no field 'colour'"):
        loads(json.dumps(unknown), **NO_PICKLE)
    invalid = forged("model", "tests.model_flows:Config", {"threshold": -1})
    with pytest.raises(SerializationError, match=r"tests\.model_flows\.Config could not be rebuilt.*ValidationError"):
        loads(json.dumps(invalid), **NO_PICKLE)
    with pytest.raises(SerializationError, match="must carry its fields as an object"):
        loads(json.dumps(forged("dataclass", "tests.model_flows:Window", [1])), **NO_PICKLE)  # type: ignore[arg-type]


# -- parameters: schema and coercion -----------------------------------------------------------------------
def test_a_class_parameter_has_an_object_schema_and_a_plain_object_fits_it() -> None:
    cfg = parameters_schema(mf.config_flow)["properties"]["cfg"]
    assert cfg["type"] == "object" and cfg["required"] == ["threshold"]
    assert set(cfg["properties"]) == {"threshold", "labelText", "since"}
    assert cfg["properties"]["threshold"] == {"minimum": 0, "title": "Threshold", "type": "integer"}
    schema = parameters_schema(mf.config_flow)
    assert schema_problems("config-flow", schema, {"cfg": {"threshold": 1, "labelText": "x"}}) == []
    problems = schema_problems("config-flow", schema, {"cfg": {"threshold": -1}})
    assert [p["msg"] for p in problems] == ["parameter 'cfg': -1 is less than the minimum of 0"]
    window = parameters_schema(mf.window_flow)["properties"]["window"]
    assert window["properties"]["start"] == {"format": "date-time", "title": "Start", "type": "string"}


def test_delay_judges_an_instance_in_its_json_form_and_makes_a_dict_an_instance() -> None:
    created = new_flow_run(FlowSpec.of(mf.config_flow), {"cfg": {"threshold": 3, "labelText": "x"}})
    assert created.values["cfg"] == mf.Config(threshold=3, labelText="x")  # what the body is traced with
    assert created.record.parameters["cfg"]["cls"] == "tests.model_flows:Config"
    with pytest.raises(ParameterError, match="-1 is less than the minimum of 0"):
        new_flow_run(FlowSpec.of(mf.config_flow), {"cfg": mf.Config.model_construct(threshold=-1)})


def test_in_process_runs_take_and_return_dataclasses_and_models() -> None:
    described = mf.batch_flow("b", START, 2)
    assert described["type"] == "Batch" and described["hours"] == 2.0
    summary = mf.summary_flow("s", START, 3)
    assert isinstance(summary, mf.Summary) and summary.total == 3
    assert mf.window_flow(mf.Window(START, START)) == {"task": "Window", "body": "Window"}


# -- on the fleet ------------------------------------------------------------------------------------------
def test_a_dataclass_result_is_consumed_by_a_downstream_task(models_worker: subprocess.Popen[bytes]) -> None:
    run = mf.batch_flow.delay("b", START, 4)
    out = run.result(timeout=60)
    assert run.info["mode"] == "static"
    assert out == {"type": "Batch", "window_type": "Window", "hours": 4.0, "total": 6, "start": START}


def test_a_model_result_comes_back_from_run_result(models_worker: subprocess.Popen[bytes]) -> None:
    summary = mf.summary_flow.delay("s", START, 3).result(timeout=60)
    assert isinstance(summary, mf.Summary) and isinstance(summary.window, mf.Window)
    assert (summary.name, summary.total, summary.tags) == ("s", 3, {"a", "b"})
    assert summary.window.start == START


def test_a_dataclass_parameter_sent_with_delay(models_worker: subprocess.Popen[bytes]) -> None:
    run = mf.window_flow.delay(window=mf.Window(START, START + dt.timedelta(days=1)))
    assert run.result(timeout=60) == {"task": "Window", "body": "Window"}
    assert run.info["parameters"]["window"]["cls"] == "tests.model_flows:Window"


def test_a_model_parameter_given_as_a_plain_dict_arrives_as_an_instance(
    models_worker: subprocess.Popen[bytes],
) -> None:
    given = {"threshold": 3, "labelText": "x", "since": "2026-01-02"}
    expected = mf.Config(threshold=3, labelText="x", since=dt.date(2026, 1, 2))
    from_python = mf.config_flow.delay(cfg=given)  # traced here, with the dict made a Config
    planned_there = submit_by_name(
        "config-flow", {"cfg": given}, queue=mf.QUEUE
    )  # as the API sends it: a worker plans it
    for run in (from_python, planned_there):
        out = run.result(timeout=60)
        assert out == {"seen": {"task": "Config", "body": "Config"}, "cfg": expected}
    bad = submit_by_name(
        "config-flow", {"cfg": {"threshold": "many"}}, queue=mf.QUEUE
    )  # no schema check here: the worker refuses
    assert bad.wait(timeout=60) is StateType.FAILED
    assert "parameter 'cfg'" in bad.info["message"] and "threshold" in bad.info["message"]


def test_a_dynamic_flow_receives_and_returns_dataclasses(models_worker: subprocess.Popen[bytes]) -> None:
    window = mf.Window(START, START + dt.timedelta(hours=1))
    run = mf.dynamic_batch_flow.delay(window=window, n=3)
    out = run.result(timeout=60)
    assert run.info["mode"] == "dynamic"
    assert out["body_saw"] == "Window" and out["window"] == window
    assert isinstance(out["batch"], mf.Batch) and out["batch"].total == 3 and out["batch"].window.start == START


def test_a_local_class_is_refused_with_the_fix_on_the_worker_and_by_delay(
    models_worker: subprocess.Popen[bytes],
) -> None:
    run = mf.local_result_flow.delay()
    assert run.wait(timeout=60) is StateType.FAILED
    (row,) = run.task_runs()
    assert row["state"] == "Failed" and "local_result" in row["message"]
    assert "defined inside a function" in row["message"] and "top level of a module" in row["message"]

    @dataclass
    class Local:
        x: int

    with pytest.raises(SerializationError, match=r"flow 'any-flow' parameter 'value'.*defined inside a function"):
        mf.any_flow.delay(value=Local(1))


def test_a_forged_message_naming_a_class_that_may_not_be_built_runs_nothing_on_the_worker(
    models_worker: subprocess.Popen[bytes], tripwire_file: Path, tmp_path: Path
) -> None:
    """Each sink task gets a crafted message (inline inputs, as anyone who can post to the broker may send):
    every value names a class the worker must refuse, but the last, an allowed dataclass, the control."""
    marker = tmp_path / "ran"
    cases = forgeries(marker)
    control_marker = tmp_path / "control"
    values = [value for value, _ in cases.values()]
    values.append(forged("dataclass", "tests.model_flows:Marker", {"path": str(control_marker)}))
    run_id, rows = send_to_sinks(values)
    assert FlowRun(run_id).wait(timeout=60) is StateType.FAILED
    for (label, (_, reason)), row in zip(cases.items(), rows[:-1], strict=True):
        assert row()["state"] == "Failed", label
        assert reason in row()["message"] and "refused a value tagged" in row()["message"], label
        assert row()["attempts"] == "1"  # refused at once, never retried
    assert rows[-1]()["state"] == "Completed" and control_marker.exists()  # the forged route does reach decoding
    assert not marker.exists() and not tripwire_file.exists()  # nothing else ran, nothing was imported


def send_to_sinks(values: list[Any]) -> tuple[str, list[Any]]:
    """One run of ``any_flow``-like sinks whose inputs are replaced by ``values`` (inline in their messages)."""
    messaging = client_messaging()
    store = get_store()
    created = new_flow_run(FlowSpec.of(mf.sinks_flow), {"n": len(values)})
    run = created.record
    prepared = prepare_run(mf.sinks_flow, created.values, run_id=run.id, queue=run.queue, messaging=messaging)
    assert prepared.plan is not None
    nodes = sorted(prepared.plan.nodes.values(), key=lambda n: int(n.label.rsplit("-", 1)[1]))
    for node, value in zip(nodes, values, strict=True):
        node.inputs = {"value": value}
    prepared.compiled = messaging.compile(prepared.plan)
    record = run.to_redis()
    pipe = store.pipeline()
    store.flow_runs.emit_state(run.id, StateType.PENDING, pipe, record)
    launch_prepared(prepared, mf.sinks_flow.name, store=store, messaging=messaging, record=record, pipe=pipe)
    return run.id, [lambda node=node: store.task_runs.read(node.id) for node in nodes]


# -- over HTTP and the CLI ---------------------------------------------------------------------------------
def test_over_http_and_the_cli_a_plain_object_is_checked_and_arrives_as_an_instance(
    api: ApiProcess, tmp_path: Path
) -> None:
    with httpx.Client(base_url=api.url, timeout=15) as http:
        schema = http.get("/flows/config-flow").json()["parameters"]["properties"]["cfg"]
        assert schema["type"] == "object" and "labelText" in schema["properties"]
        refused = http.post("/flows/config-flow/runs", json={"parameters": {"cfg": {"threshold": -1}}})
        assert refused.status_code == 422
        assert refused.json()["detail"][0]["msg"] == "parameter 'cfg': -1 is less than the minimum of 0"

        marker = tmp_path / "http"  # naming a class is for messages between processes, never for the HTTP door
        for flow, name, value in [
            ("config-flow", "cfg", forged("model", "tests.model_flows:Config", {"threshold": 1})),
            ("any-flow", "value", [forged("dataclass", "tests.model_flows:Marker", {"path": str(marker)})]),
        ]:
            refused = http.post(f"/flows/{flow}/runs", json={"parameters": {name: value}})
            assert refused.status_code == 422 and "which names a class" in refused.text, refused.text
        assert not marker.exists()

        created = submit(http, "config-flow", parameters={"cfg": {"threshold": 5, "labelText": "http"}})
        assert wait_final(http, created["id"])["state"] == "Completed"
        shown = http.get(f"/flow-runs/{created['id']}").json()["parameters"]
        assert shown == {"cfg": {"threshold": 5, "labelText": "http", "since": None}}  # as one would send it
        out = FlowRun(created["id"]).result(timeout=30)
        assert out == {"seen": {"task": "Config", "body": "Config"}, "cfg": mf.Config(threshold=5, labelText="http")}

    done = cli(api, "run", "config-flow", "-p", 'cfg={"threshold": 7}', "--watch", "--timeout", "60")
    assert done.returncode == 0, done.stdout + done.stderr
    run_id = done.stdout.split("(", 1)[1].split(")", 1)[0]
    assert FlowRun(run_id).result(timeout=30)["cfg"] == mf.Config(threshold=7)
