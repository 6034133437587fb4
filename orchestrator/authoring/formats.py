"""JSON Schema ``format`` checked as the worker will read the value: by pydantic, for the type that wrote it.

A flow's parameter schema comes from pydantic (``day: date`` is ``{"type": "string",
"format": "date"}``), and JSON Schema validators take ``format`` as a note unless told to
check it: ``{"day": "2026-13-45"}`` used to be accepted with a 201 and fail later, on the
worker, when pydantic read it. The checker here checks each format pydantic writes with
pydantic itself, for the type that wrote it, so what the API (or ``.delay()``) accepts is
what the worker can read; jsonschema's own checkers would judge differently (its
``date-time`` wants a time zone, pydantic's does not). Formats without a type here (a path,
a password, a format of one's own) are not judged: any string passes, as before.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import uuid
from functools import lru_cache
from typing import Annotated, Any

from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError as ValidationError_
from pydantic import AnyUrl, IPvAnyAddress, IPvAnyInterface, IPvAnyNetwork, TypeAdapter, ValidationError
from pydantic.types import UuidVersion

# format -> (the type pydantic wrote it for, an example shown in the error message)
FORMAT_TYPES: dict[str, tuple[Any, str]] = {
    "date": (dt.date, "2026-01-02"),
    "date-time": (dt.datetime, "2026-01-02T03:04:05"),
    "time": (dt.time, "03:04:05"),
    "duration": (dt.timedelta, "PT1H30M"),
    "uuid": (uuid.UUID, "123e4567-e89b-42d3-a456-426614174000"),
    **{
        f"uuid{v}": (Annotated[uuid.UUID, UuidVersion(v)], f"a version-{v} UUID")  # type: ignore[arg-type]
        for v in (1, 3, 4, 5)
    },
    "ipv4": (ipaddress.IPv4Address, "192.0.2.1"),
    "ipv6": (ipaddress.IPv6Address, "2001:db8::1"),
    "ipvanyaddress": (IPvAnyAddress, "192.0.2.1"),
    "ipv4network": (ipaddress.IPv4Network, "192.0.2.0/24"),
    "ipv6network": (ipaddress.IPv6Network, "2001:db8::/32"),
    "ipvanynetwork": (IPvAnyNetwork, "192.0.2.0/24"),
    "ipv4interface": (ipaddress.IPv4Interface, "192.0.2.1/24"),
    "ipv6interface": (ipaddress.IPv6Interface, "2001:db8::1/32"),
    "ipvanyinterface": (IPvAnyInterface, "192.0.2.1/24"),
    "uri": (AnyUrl, "https://example.com/path"),
}


class FormatProblem(ValueError):
    """A string that is not of its format; the message is pydantic's reason and an example."""


def _checker_for(fmt: str, kind: Any, example: str) -> Any:
    adapter: TypeAdapter[Any] = TypeAdapter(kind)

    def check(value: object) -> bool:
        if not isinstance(value, str):
            return True  # the schema's "type" judges non-strings
        try:
            adapter.validate_python(value)
        except ValidationError as exc:
            reason = exc.errors()[0]["msg"]
            raise FormatProblem(f"{reason[:1].lower()}{reason[1:]}; expected e.g. {example}") from None
        return True

    return check


def _format_checker() -> FormatChecker:
    checker = FormatChecker()  # jsonschema's own checks for the formats not listed here (email, regex, ...)
    for fmt, (kind, example) in FORMAT_TYPES.items():
        checker.checks(fmt, raises=FormatProblem)(_checker_for(fmt, kind, example))
    return checker


FORMAT_CHECKER = _format_checker()

# ``json.dumps`` with options builds an encoder per call (2-3 µs); this one is built once (same text)
_SORTED = json.JSONEncoder(sort_keys=True)


@lru_cache(maxsize=1024)
def _validator(schema_text: str) -> Draft202012Validator:
    return Draft202012Validator(json.loads(schema_text), format_checker=FORMAT_CHECKER)


def validator_for(schema: dict[str, Any]) -> Draft202012Validator:
    """One compiled validator per distinct schema, checking ``format`` as above."""
    return _validator(_SORTED.encode(schema))


def telling(error: ValidationError_) -> ValidationError_:
    """The error to show: for a value no branch of an ``anyOf`` takes (``day: date | None``), the
    format error of the branch whose type it has, when that is why (else the error itself)."""
    if error.validator in ("anyOf", "oneOf") and error.context:
        formats = [e for e in error.context if e.validator == "format"]
        if len(formats) == 1:
            return formats[0]
    return error


def problem_message(name: str, error: ValidationError_) -> str:
    """One schema error as the 422 and the CLI say it, naming the parameter (and where in it);
    a format error names the format, the value and why (``'2026-13-45' is not a valid date: ...``)."""
    error = telling(error)
    if error.validator != "format":
        return f"parameter {name!r}: {error.message}"
    where = "".join(f"[{p!r}]" for p in error.absolute_path)
    cause = f": {error.cause}" if error.cause is not None else ""
    at = f" at {where}" if where else ""
    return f"parameter {name!r}{at}: {error.instance!r} is not a valid {error.validator_value}{cause}"
