"""Dataclass instances and pydantic models on the way: the class by name, the fields by value.

A value of a class travels as ``{"__orc__": "dataclass" | "model", "cls": "module:qualname",
"v": {field: value}}``; the serializer encodes and decodes each field (so a datetime or
another dataclass inside keeps its type). This module says which classes may be named and
builds the instance back.

Decoding names a class, so a message chooses which code runs: that is a door
(docs/security.md, "Classes named in a message"). A class is built only when all of these hold:

- the name is ``module:qualname`` of a class defined at that place (its own ``__module__``
  and ``__qualname__``), never ``__main__`` nor a class local to a function;
- its module is already imported in this process: decoding never imports anything;
- every step of the qualified name is a class, read from ``vars()`` (no ``__getattr__`` and
  no property runs on the way);
- it really is a dataclass (tag ``dataclass``) or a pydantic ``BaseModel`` subclass (tag
  ``model``, ``BaseModel`` in its MRO), and not one of the product's own classes;
- it is built through its fields only: ``cls(**fields)`` (then ``init=False`` fields set) or
  ``cls.model_validate(fields)``; no other callable named in a message is ever called.

The sender applies the same rule, so a class the receiver would refuse is refused where it
is sent, with the fix, rather than on the other side.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import TYPE_CHECKING, Any

from orchestrator.errors import SerializationError

if TYPE_CHECKING:  # pydantic is imported on use: ``import orchestrator`` (an in-process run) does without it
    from pydantic import BaseModel
    from pydantic.fields import FieldInfo

DATACLASS = "dataclass"
MODEL = "model"
KINDS: tuple[str, ...] = (DATACLASS, MODEL)  # a tuple: a tag of any JSON type (a list) is compared, never hashed
# The product's own classes (run records, plans, settings) are never built from a message.
PRODUCT_PACKAGES: frozenset[str] = frozenset({"orchestrator", "workers", "api"})
FIX = (
    "Define the class at the top level of a module the workers import (not in __main__, not inside a "
    'function), or opt the task into pickle with @task(result_serializer="pickle").'
)


def kind_of(value: Any) -> str | None:
    """``dataclass`` or ``model`` for an instance sent by class, else None.

    Called only for values no cheaper rule took, so plain JSON values never pay for it.
    """
    pydantic = sys.modules.get("pydantic")  # not imported: no value can be a model
    if pydantic is not None and isinstance(value, pydantic.BaseModel):
        return MODEL
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return DATACLASS
    return None


def class_name(cls: type, kind: str, where: str) -> str:
    """``module:qualname`` of a class the receiver will accept; else the sender's error, with the fix."""
    name = f"{cls.__module__}:{cls.__qualname__}"
    problem = _problem(name, kind)
    if isinstance(problem, str):
        raise SerializationError(
            f"{where}: a value of type {cls.__module__}.{cls.__qualname__} cannot be sent: {problem}. {FIX}"
        )
    return name


def field_values(value: Any, kind: str) -> dict[str, Any]:
    """The fields that rebuild ``value``: a dataclass's fields (set ones); a model's fields and extras, each
    under the key the model validates it by (its alias, if it has one: also what its JSON Schema names)."""
    missing = object()  # a field never set (init=False without a default, model_construct) is left out
    if kind == DATACLASS:
        found = {f.name: getattr(value, f.name, missing) for f in dataclasses.fields(value)}
        return {name: item for name, item in found.items() if item is not missing}
    cls = type(value)
    by_alias = cls.model_config.get("validate_by_alias", True)
    fields = {
        (_validation_key(n, f) if by_alias else n): getattr(value, n, missing) for n, f in cls.model_fields.items()
    }
    return {key: item for key, item in fields.items() if item is not missing} | dict(value.__pydantic_extra__ or {})


def resolve_class(name: Any, kind: str) -> type:
    """The class a message names, if it may be built here (see the module's docstring); else SerializationError.

    Called before any field is decoded, so a refused class stops the value before anything runs.
    """
    found = _problem(name, kind)
    if isinstance(found, str):
        raise SerializationError(
            f"refused a value tagged {kind!r} naming class {str(name)[:200]!r}: {found}. Only dataclasses and "
            "pydantic models defined at the top level of a module already imported here are built from a "
            "message (docs/security.md)."
        )
    return found


def build(cls: type, kind: str, fields: Any) -> Any:
    """An instance of ``cls`` made from its decoded fields, the class's own way; any failure is a SerializationError."""
    if not isinstance(fields, dict) or not all(isinstance(k, str) for k in fields):
        raise SerializationError(
            f"a value of class {cls.__module__}.{cls.__qualname__} must carry its fields as an object under 'v'."
        )
    try:
        return _build_model(cls, fields) if kind == MODEL else _build_dataclass(cls, fields)
    except SerializationError:
        raise
    except Exception as exc:  # the class's own validators and __post_init__ may raise anything
        raise SerializationError(
            f"a value of class {cls.__module__}.{cls.__qualname__} could not be rebuilt from its fields: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def _problem(name: Any, kind: str) -> type | str:
    """The class ``name`` names when it may be sent and built as ``kind``; else why not (one sentence)."""
    if not isinstance(name, str):
        return "a class is named as 'module:qualname' text"
    module_name, sep, qualname = name.partition(":")
    if not sep or not module_name or not qualname:
        return "a class is named as 'module:qualname'"
    if module_name == "__main__":
        return "it is defined in __main__ (a script), which the other side cannot import"
    if "<locals>" in qualname:
        return "it is defined inside a function, so the other side cannot find it by name"
    if module_name.partition(".")[0] in PRODUCT_PACKAGES:
        return "the orchestrator's own classes are never built from a message"
    module = sys.modules.get(module_name)
    if module is None:
        return (
            f"module {module_name!r} is not imported in this process, and reading a value never imports one: "
            "import it where the value is read (on a worker: in its --flows module, or a module that one imports)"
        )
    obj: Any = module
    path = module_name
    for part in qualname.split("."):
        obj = vars(obj).get(part)
        path = f"{path}.{part}"
        if obj is None:
            return f"{module_name} has no class {qualname}"
        if not isinstance(obj, type):
            return f"{path} is not a class"
    if (obj.__module__, obj.__qualname__) != (module_name, qualname):
        return f"{module_name}.{qualname} is a name for another class ({obj.__module__}.{obj.__qualname__})"
    cls: type = obj
    pydantic = sys.modules.get("pydantic")
    if kind == MODEL and pydantic is not None and pydantic.BaseModel in cls.__mro__:  # a real subclass, not virtual
        return cls
    if kind == DATACLASS and dataclasses.is_dataclass(cls):
        return cls
    return "it is not a dataclass" if kind == DATACLASS else "it is not a pydantic model (a BaseModel subclass)"


def _build_dataclass(cls: type, fields: dict[str, Any]) -> Any:
    """``cls(**init fields)``, then the ``init=False`` fields the sender had set (as the sender had them)."""
    declared = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - set(declared))
    if unknown:
        raise SerializationError(
            f"dataclass {cls.__module__}.{cls.__qualname__} has no field {', '.join(map(repr, unknown))}."
        )
    instance = cls(**{k: v for k, v in fields.items() if declared[k].init})
    for name, value in fields.items():
        if not declared[name].init:
            object.__setattr__(instance, name, value)  # frozen dataclasses too: this is how their __init__ sets fields
    return instance


def _build_model(cls: type[BaseModel], fields: dict[str, Any]) -> BaseModel:
    """``cls.model_validate``: the fields are keyed as the model validates them (see :func:`field_values`)."""
    return cls.model_validate(fields)


def _validation_key(name: str, info: FieldInfo) -> str:
    """The key a field is read from when validated by alias (pydantic 2.7 has no ``by_name=``); a field
    validated from an ``AliasPath`` is keyed by its name (the model must then allow ``populate_by_name``)."""
    from pydantic import AliasChoices

    alias = info.validation_alias
    if isinstance(alias, str):
        return alias
    if isinstance(alias, AliasChoices):
        return next((choice for choice in alias.choices if isinstance(choice, str)), name)
    return info.alias or name
