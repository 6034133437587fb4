"""How values travel between processes: JSON by default, pickle only by opt-in.

JSON keeps messages readable in Flower and safe to load anywhere. A handful of
everyday Python types that JSON lacks (datetime, date, UUID, Decimal, tuple, set,
bytes) are carried as small tagged objects so they come back as the same type; so are
dataclass instances and pydantic models, by class name and fields, under the rules of
:mod:`orchestrator.data.classes` (which classes a message may name). Anything else fails
with an error that names the run, the type and the fix.

Plain JSON values take the first branches and never reach the tagged ones: the hot path
(every task's arguments and result) pays nothing for the rarer types.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import pickle
import reprlib
import uuid
from decimal import Decimal
from typing import Any, Literal

from orchestrator.data import classes
from orchestrator.errors import SerializationError

Serializer = Literal["json", "pickle"]
SERIALIZERS: tuple[str, ...] = ("json", "pickle")
_TAG = "__orc__"
TAG = _TAG  # the key of every tagged value (the API's door looks for it)
PICKLE_TAG = "__pickle__"


def _encode(value: Any, where: str) -> Any:
    """Turn ``value`` into plain JSON data, tagging the extra types we support."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        return [_encode(v, where) for v in value]
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise SerializationError(
                    f"{where}: dict key {key!r} of type {type(key).__name__} cannot be sent as JSON "
                    "(JSON keys are strings). Use string keys, or opt the task into pickle with "
                    '@task(result_serializer="pickle").'
                )
            out[key] = _encode(item, where)
        if _TAG in out or PICKLE_TAG in out:
            raise SerializationError(f"{where}: dict keys {_TAG!r} and {PICKLE_TAG!r} are reserved.")
        return out
    if isinstance(value, tuple):
        return {_TAG: "tuple", "v": [_encode(v, where) for v in value]}
    if isinstance(value, (set, frozenset)):
        return {_TAG: "set", "v": [_encode(v, where) for v in value]}
    if isinstance(value, dt.datetime):
        return {_TAG: "datetime", "v": value.isoformat()}
    if isinstance(value, dt.date):
        return {_TAG: "date", "v": value.isoformat()}
    if isinstance(value, uuid.UUID):
        return {_TAG: "uuid", "v": str(value)}
    if isinstance(value, Decimal):
        return {_TAG: "decimal", "v": str(value)}
    if isinstance(value, bytes):
        return {_TAG: "bytes", "v": base64.b64encode(value).decode()}
    kind = classes.kind_of(value)
    if kind is not None:
        return _encode_instance(value, kind, where)
    raise SerializationError(
        f"{where}: a value of type {type(value).__module__}.{type(value).__qualname__} cannot be "
        "sent as JSON. Return or pass plain data (dict, list, str, int, float, bool, None, "
        "datetime, date, UUID, Decimal, tuple, set, bytes, a dataclass or a pydantic model defined at the top "
        'level of a module), or opt the task into pickle with @task(result_serializer="pickle").'
    )


def _encode_instance(value: Any, kind: str, where: str) -> dict[str, Any]:
    """A dataclass or model as its class name and its fields, each encoded like any value."""
    cls = type(value)
    name = classes.class_name(cls, kind, where)
    fields = classes.field_values(value, kind)
    encoded = {field: _encode(item, f"{where}, field {cls.__qualname__}.{field}") for field, item in fields.items()}
    return {_TAG: kind, "cls": name, "v": encoded}


_DECODERS: dict[str, Any] = {
    "tuple": lambda v: tuple(v),
    "set": lambda v: set(v),
    "datetime": dt.datetime.fromisoformat,
    "date": dt.date.fromisoformat,
    "uuid": uuid.UUID,
    "decimal": Decimal,
    "bytes": lambda v: base64.b64decode(v),
}


def _decode(data: Any, hook: Any = None) -> Any:
    """Inverse of _encode; ``hook(dict)`` may replace special dicts (references)."""
    if isinstance(data, list):
        return [_decode(v, hook) for v in data]
    if isinstance(data, dict):
        if hook is not None:
            replaced = hook(data)
            if replaced is not data:
                return replaced
        tag = data.get(_TAG)
        if tag is not None:
            return _decode_tagged(tag, data, hook)
        return {k: _decode(v, hook) for k, v in data.items()}
    return data


def _decode_tagged(tag: Any, data: dict[str, Any], hook: Any) -> Any:
    """One tagged value; a malformed one (e.g. sent over HTTP as a parameter) raises SerializationError.

    Anything else would escape as a bare KeyError or ValueError, which the callers do not
    expect from bad input: a flow run whose parameters hold one would never leave Pending.
    """
    decoder = _DECODERS.get(tag) if isinstance(tag, str) else None
    if decoder is None and tag in classes.KINDS:  # after the everyday tags: a date costs no more than before
        return _decode_instance(tag, data, hook)
    reserved = f"The dict keys {_TAG!r} and {PICKLE_TAG!r} are reserved: rename that key, or send the plain value."
    if decoder is None or "v" not in data:
        raise SerializationError(
            f"a value tagged {{{_TAG!r}: {reprlib.repr(tag)}}} is not one this product writes (known tags: "
            f"{', '.join([*_DECODERS, *classes.KINDS])}, each with its value under 'v'). {reserved}"
        )
    try:
        return decoder(_decode(data["v"], hook))
    except (TypeError, ValueError, ArithmeticError) as exc:  # decimal.InvalidOperation is an ArithmeticError
        raise SerializationError(
            f"a value tagged {{{_TAG!r}: {tag!r}}} holds {reprlib.repr(data['v'])}, which is not a valid {tag} "
            f"({exc}). {reserved}"
        ) from exc


def _decode_instance(kind: str, data: dict[str, Any], hook: Any) -> Any:
    """A tagged dataclass or model: the class is resolved (or refused) before any field is decoded."""
    cls = classes.resolve_class(data.get("cls"), kind)
    fields = data.get("v")
    if isinstance(fields, dict):
        fields = {name: _decode(item, hook) for name, item in fields.items()}
    return classes.build(cls, kind, fields)


def to_jsonable(value: Any, where: str) -> Any:
    """Encode ``value`` as JSON-ready data; ``where`` names the run for the error."""
    return _encode(value, where)


def from_jsonable(data: Any, hook: Any = None) -> Any:
    """Inverse of :func:`to_jsonable`; ``hook`` may replace special dicts on the way."""
    return _decode(data, hook)


def refuse_pickle(where: str) -> SerializationError:
    """The error for a pickle payload reaching a task that did not opt in."""
    return SerializationError(
        f"{where}: refused a pickle payload because this task did not opt into pickle. "
        'Declare @task(result_serializer="pickle") on the task that receives it, or pass '
        "plain data."
    )


def unpickle(data: dict[str, Any], allow_pickle: bool, where: str) -> Any:
    """Load a ``{"__pickle__": ...}`` payload, only where pickle was opted into."""
    if not allow_pickle:
        raise refuse_pickle(where)
    return pickle.loads(base64.b64decode(data[PICKLE_TAG]))


def dumps(value: Any, serializer: str, where: str) -> str:
    """Serialize a result or argument to a string stored in Redis."""
    if serializer == "pickle":
        try:
            payload = pickle.dumps(value)
        except Exception as exc:  # pickling errors have many types
            raise SerializationError(
                f"{where}: a value of type {type(value).__qualname__} cannot be pickled: {exc}. "
                "Return plain data instead."
            ) from exc
        return json.dumps({PICKLE_TAG: base64.b64encode(payload).decode()})
    return json.dumps(_encode(value, where), separators=(",", ":"))


def loads(text: str | bytes, *, allow_pickle: bool, where: str) -> Any:
    """Load a stored value; a pickle payload is refused unless ``allow_pickle``."""

    def hook(item: dict[str, Any]) -> Any:
        return unpickle(item, allow_pickle, where) if PICKLE_TAG in item else item

    return _decode(json.loads(text), hook)


def check_serializer(name: str, where: str) -> str:
    """Refuse an unknown serializer name at declaration time."""
    if name not in SERIALIZERS:
        raise SerializationError(f"{where}: unknown result_serializer {name!r}; use one of {', '.join(SERIALIZERS)}.")
    return name


def to_plain(data: Any) -> Any:
    """Tagged JSON shown as plain JSON (for people and the API): a date becomes its ISO text,
    a tuple or set a list, a dataclass or model the object of its fields, a pickled value the
    text "<pickled>"."""
    if isinstance(data, list):
        return [to_plain(v) for v in data]
    if isinstance(data, dict):
        if PICKLE_TAG in data:
            return "<pickled>"
        tag = data.get(_TAG)
        if tag in ("tuple", "set"):
            return [to_plain(v) for v in data.get("v", [])]
        if tag in classes.KINDS:  # a dataclass or model: its fields, as the object JSON would have
            return to_plain(data.get("v"))
        if tag is not None:
            return data.get("v")
        return {k: to_plain(v) for k, v in data.items()}
    return data
