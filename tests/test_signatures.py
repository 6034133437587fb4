"""Tasks and flows with any Python signature run the same in-process, compiled, dynamic and from the schema.

``*args``, positional-only, keyword-only and ``**kwargs`` parameters are bound by name into
the run's record and messages, then spread back into the call (``call_bound``); before,
``gather.submit(a, b)`` for ``def gather(*parts)`` ended with ``unexpected keyword argument 'parts'``.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.authoring.params import coerce_parameters
from orchestrator.authoring.schema import parameters_schema
from orchestrator.devstack.localstack import worker
from orchestrator.errors import ParameterError
from orchestrator.runtime.engine import bind_arguments, call_bound
from tests import signature_flows as sf


@pytest.fixture(scope="module")
def signature_worker(redis_url: str, worker_logs: Path) -> Iterator[subprocess.Popen[bytes]]:
    with worker(
        redis_url,
        ["tests.signature_flows"],
        queues=sf.QUEUE,
        concurrency=2,
        name="signatures@%h",
        log_path=worker_logs / "signatures.log",
    ) as proc:
        yield proc


def test_bound_arguments_are_spread_back_into_the_call_as_python_would_pass_them() -> None:
    def f(a: int, /, b: int, *parts: int, c: int = 1, **kw: int) -> tuple[object, ...]:
        return a, b, parts, c, kw

    bound = bind_arguments(f, (1, 2, 3, 4), {"c": 5, "z": 6}, "f")
    assert bound == {"a": 1, "b": 2, "parts": (3, 4), "c": 5, "kw": {"z": 6}}
    assert call_bound(f, bound) == (1, 2, (3, 4), 5, {"z": 6})
    assert call_bound(f, {"a": 1, "b": 2, "parts": [3], "kw": {}}) == (1, 2, (3,), 1, {})  # as read back from JSON
    with pytest.raises(TypeError, match="unexpected keyword argument 'q'"):
        call_bound(lambda x: x, {"x": 1, "q": 2})  # an unknown name still fails as fn(**arguments) would


def test_parameters_by_name_complete_as_the_call_they_stand_for() -> None:
    """A body whose parameters all take names is completed by binding the names as given (no
    spread into a call first): the same values, defaults and errors as the spread gives."""
    from orchestrator.authoring.flows import flow
    from orchestrator.runtime.engine import as_call

    def body(a: int, b: int = 2, *, c: int, d: int = 4) -> None:
        return None

    named = flow(name="complete-by-name")(body)

    def spread(given: dict[str, object]) -> dict[str, object] | str:
        try:
            args, kwargs = as_call(body, given)
            return named.bind_parameters(args, kwargs)
        except ParameterError as exc:
            return str(exc)

    def completed(given: dict[str, object]) -> dict[str, object] | str:
        try:
            return named.complete_parameters(given)
        except ParameterError as exc:
            return str(exc)

    cases: list[dict[str, object]] = [
        {},
        {"a": 1},
        {"b": 1},
        {"a": 1, "c": 3},
        {"c": 3, "a": 1, "z": 0},
        {"d": 1, "c": 1},
    ]
    for given in cases:
        assert completed(given) == spread(given)
    assert list(named.complete_parameters({"c": 3, "a": 1})) == ["a", "b", "c", "d"]
    assert named.complete_parameters({"c": 3, "a": 1}) == {"a": 1, "b": 2, "c": 3, "d": 4}


def test_every_signature_runs_in_process() -> None:
    assert sf.wired(1, 2) == 40  # gather(1, 2, 10) = 13; scaled(13, scale=3, bonus=1) = 40
    assert sf.computing(1, 2) == 10  # gather(1, 2) = 3; scaled(4, scale=2, bonus=2) = 10
    assert sf.variadic(1, 2, x=3) == 6
    assert sf.variadic() == 0


def test_the_schema_describes_args_as_an_array_and_kwargs_as_an_object() -> None:
    schema = parameters_schema(sf.variadic)
    numbers, named = schema["properties"]["numbers"], schema["properties"]["named"]
    assert numbers["type"] == "array" and numbers["items"] == {"type": "integer"}
    assert named["type"] == "object" and named["additionalProperties"] == {"type": "integer"}
    assert schema["required"] == []  # neither has to be given
    coerced = coerce_parameters(sf.variadic, {"numbers": [1, 2], "named": {"x": 3}})
    assert coerced == {"numbers": (1, 2), "named": {"x": 3}}


def test_a_bad_variadic_value_is_refused_before_anything_is_sent() -> None:
    with pytest.raises(ParameterError, match="numbers"):
        sf.variadic.delay(1, "two")


@pytest.mark.parametrize(
    ("flow", "args", "kwargs", "expected", "mode"),
    [
        (sf.wired, (1, 2), {}, 40, "static"),
        (sf.computing, (1, 2), {}, 10, "dynamic"),
        (sf.variadic, (1, 2), {"x": 3}, 6, "static"),
    ],
    ids=["compiled", "dynamic", "variadic-flow"],
)
def test_every_signature_runs_on_the_fleet(
    signature_worker: subprocess.Popen[bytes],
    flow: object,
    args: tuple[int, ...],
    kwargs: dict[str, int],
    expected: int,
    mode: str,
) -> None:
    run = flow.delay(*args, **kwargs)  # type: ignore[attr-defined]
    assert run.result(timeout=60) == expected
    assert run.info["mode"] == mode
    assert all(row["state"] == "Completed" for row in run.task_runs())
