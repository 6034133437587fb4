"""Flow parameters read with the flow's type hints: given as text (``-p day=2026-01-02``), as JSON
(from the API), or as Python values of an in-process call (:func:`validated_call`)."""

from __future__ import annotations

import dataclasses
import functools
import importlib
import reprlib
import typing
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, PydanticSchemaGenerationError, TypeAdapter, ValidationError

from orchestrator.authoring.definitions import parameter_hints
from orchestrator.authoring.flows import Flow
from orchestrator.authoring.param_text import read_pairs
from orchestrator.authoring.schema import parameters_schema
from orchestrator.authoring.type_names import type_name
from orchestrator.errors import DefinitionError, ParameterError
from orchestrator.runtime.engine import bind_arguments


def load_flow(target: str) -> Flow:
    """Import ``package.module:flow_object`` (or ``package.module:flow-name``)."""
    module_name, _, attr = target.partition(":")
    if not attr:
        raise DefinitionError(f"{target!r}: name the flow as module:flow, e.g. mypkg.flows:etl.")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise DefinitionError(f"cannot import {module_name!r}: {exc}") from exc
    found = getattr(module, attr, None)
    if not isinstance(found, Flow):
        found = next((v for v in vars(module).values() if isinstance(v, Flow) and v.name == attr), None)
    if found is None:
        raise DefinitionError(f"{module_name!r} has no @flow named {attr!r}.")
    return found


def parse_parameters(flow: Flow, pairs: list[str]) -> dict[str, Any]:
    """``-p name=value`` texts as the flow's typed parameters (``plan``, ``deploy``): read by the one rule
    of :mod:`orchestrator.authoring.param_text`, then checked and converted by the type hints as an
    in-process call is (``"2026-01-02"`` becomes a date). Raises ParameterError naming what is wrong."""
    values = read_pairs(pairs, parameters_schema(flow))
    unknown = [name for name in values if name not in flow.signature.parameters]
    if unknown:
        known = ", ".join(flow.signature.parameters) or "(none)"
        raise ParameterError(f"flow {flow.name!r} has no parameter {unknown[0]!r}; it has: {known}.")
    return validated_parameters(flow, values)


def coerce_parameters(flow: Flow, given: dict[str, Any]) -> dict[str, Any]:
    """Read JSON parameters (from the API) with the flow's type hints: "2026-01-02" becomes a date.

    A value that does not fit its hint raises ParameterError naming the parameter.
    """
    hints = parameter_hints(flow.fn)  # unresolvable annotations: the values are taken as they are
    out: dict[str, Any] = {}
    for name, value in given.items():
        hint = hints.get(name)
        if hint is None:
            out[name] = value
            continue
        try:
            out[name] = TypeAdapter(hint).validate_python(value)
        except ValidationError as exc:
            first = exc.errors()[0]["msg"]
            message = f"flow {flow.name!r} parameter {name!r}={value!r} is not a valid {type_name(hint)}: {first}."
            raise ParameterError(message) from None
        except Exception:  # a hint pydantic cannot check
            out[name] = value
    return out


def coerce_class_parameters(flow: Flow, given: dict[str, Any]) -> dict[str, Any]:
    """Parameters annotated with a dataclass or a pydantic model (also in ``list[...]``, ``X | None``)
    made instances of it; the others as given.

    Where the flow's code is (``.delay()``), the body is traced with these values: a plain dict
    given for ``cfg: Config`` must reach it as a ``Config``, as it does when a worker starts a
    run sent over HTTP (:func:`coerce_parameters`). Other parameters are left alone: ``.delay()``
    has always passed them as given.
    """
    classes = _class_parameters(flow.fn)
    typed = {name: value for name, value in given.items() if name in classes}
    return given | coerce_parameters(flow, typed) if typed else given


@functools.lru_cache(maxsize=1024)
def _class_parameters(fn: Callable[..., Any]) -> frozenset[str]:
    """The parameters of ``fn`` annotated with (or holding) a dataclass or a pydantic model."""
    return frozenset(name for name, hint in parameter_hints(fn).items() if _names_a_class(hint))


def _names_a_class(hint: Any) -> bool:
    """Whether a type hint is, or holds, a dataclass or a pydantic model."""
    if isinstance(hint, type) and (dataclasses.is_dataclass(hint) or issubclass(hint, BaseModel)):
        return True
    return any(_names_a_class(arg) for arg in typing.get_args(hint))


# -- a flow called in-process: its arguments checked and converted by their annotations ------------------
def validated_call(flow: Flow, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The parameters of ``flow(*args, **kwargs)`` run in-process, given ones validated as Prefect 3 does.

    Pydantic v2 in lax mode, per annotated parameter: ``"5"`` for an ``int`` becomes 5 and
    ``"2026-01-02"`` for a ``date`` a date, while ``1`` for a ``str`` is refused (pydantic v2
    does not turn numbers into text). Unannotated and ``Any`` parameters, and defaults not
    given, are passed as they are; a class pydantic has no schema for is checked with
    ``isinstance``. Every bad parameter is named in one ParameterError, with what was given
    and what was expected, before anything runs.
    """
    given = bind_arguments(flow.fn, args, kwargs, f"flow {flow.name!r}")
    return flow.complete_parameters(validated_parameters(flow, given))


def validated_parameters(flow: Flow, given: dict[str, Any]) -> dict[str, Any]:
    """``given`` (parameters by name, as bound) with each annotated one validated and converted as
    :func:`validated_call` does; the one ParameterError names every bad parameter."""
    given = dict(given)
    checkers = _checkers(flow.fn)
    problems: list[str] = []
    for name, value in given.items():
        checker = checkers.get(name)
        if checker is None:
            continue
        adapter, expected, plain = checker
        if type(value) is plain:  # an int for an int: what the adapter would give back
            continue
        try:
            given[name] = adapter.validate_python(value)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = "".join(f"[{part!r}]" for part in first.get("loc", ()))
            problems.append(
                f"parameter {name!r} got {reprlib.repr(value)} ({type(value).__name__}), expected {expected}"
                f"{f' (at {where})' if where else ''}: {first['msg']}"
            )
    if problems:
        raise ParameterError(f"flow {flow.name!r}: " + "; ".join(problems) + ".")
    return given


PLAIN_HINTS = (int, float, str, bool)  # hints whose adapter gives a value of exactly that type back as it is


@functools.lru_cache(maxsize=1024)
def _checkers(fn: Callable[..., Any]) -> dict[str, tuple[TypeAdapter[Any], str, type | None]]:
    """A validator, a readable type and the plain type (:data:`PLAIN_HINTS`, else None) per annotated
    parameter of ``fn`` (built once: adapters are slow to make). A value of exactly its plain type is
    not given to the validator: ``x=1`` for ``x: int`` on the path of every ``.delay()``."""
    checkers: dict[str, tuple[TypeAdapter[Any], str, type | None]] = {}
    for name, hint in parameter_hints(fn).items():
        if hint is Any:
            continue
        adapter = _adapter(hint)
        if adapter is not None:
            checkers[name] = (adapter, type_name(hint), hint if hint in PLAIN_HINTS else None)
    return checkers


def _adapter(hint: Any) -> TypeAdapter[Any] | None:
    """A lax-mode adapter for ``hint``; classes without a pydantic schema checked with isinstance, as Prefect does."""
    try:
        return TypeAdapter(hint)
    except PydanticSchemaGenerationError:
        pass
    except Exception:  # a hint pydantic cannot read at all: the value is taken as it is
        return None
    try:
        return TypeAdapter(hint, config=ConfigDict(arbitrary_types_allowed=True))
    except Exception:
        return None
