"""The flows pages: ``/ui/flows`` lists the registered flows, ``/ui/flows/{name}`` starts a run of one.

The start form is generated from the flow's parameters JSON Schema (what ``GET /api/flows``
answers): a field per parameter, its default prefilled, the required ones marked. The form
only shapes values (a number field sends a number when its text is one); the API judges them:
the script posts to ``POST /ui/flows/{name}/runs`` (:mod:`api.ui.actions`, the API's own
create-run route) and shows each 422 beside the field it names.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse

from api.routes import flows
from api.routes.deps import StoreDep
from api.schemas import FlowPublic
from api.security import require_api_key
from api.ui.rendering import render

router = APIRouter(prefix="/ui", include_in_schema=False, dependencies=[Depends(require_api_key)])

Kind = Literal["string", "integer", "number", "boolean", "enum", "json"]
SCALARS = {"string", "integer", "number", "boolean"}


@dataclass(frozen=True)
class FormField:
    """One parameter's field in the start form."""

    name: str
    kind: Kind  # how the script reads the field's text (json: the text is a JSON value)
    required: bool
    value: str  # the text prefilled: the default, as the field shows it
    hint: str  # the type, and what an empty field means
    options: list[tuple[str, str]] = field(default_factory=list)  # enum/boolean: (JSON value, label)


def kind_of(schema: dict[str, Any]) -> Kind:
    """The field kind of a parameter's schema: a single scalar type or an enum; JSON text for the rest
    (arrays, objects, unions such as ``int | None``, untyped parameters)."""
    if "enum" in schema:
        return "enum"
    kind = schema.get("type")
    if isinstance(kind, str) and kind in SCALARS:
        return kind  # type: ignore[return-value]
    return "json"


def shown_type(schema: dict[str, Any]) -> str:
    """The type in words: 'integer', 'string (date)', 'array of integer (JSON)', 'integer or null (JSON)'."""
    if isinstance(schema.get("anyOf"), list):
        kinds = [shown_type(s).removesuffix(" (JSON)") for s in schema["anyOf"] if isinstance(s, dict)]
        return " or ".join(kinds) + " (JSON)"
    if "enum" in schema:
        return "one of " + ", ".join(json.dumps(v) for v in schema["enum"])
    kind = schema.get("type")
    if kind == "array" and isinstance(schema.get("items"), dict) and "type" in schema["items"]:
        return f"array of {schema['items']['type']} (JSON)"
    if isinstance(kind, str):
        fmt = schema.get("format")
        words = f"{kind} ({fmt})" if fmt else kind
        return words if kind in SCALARS else f"{words} (JSON)"
    return "any JSON value"


def default_text(kind: Kind, value: Any) -> str:
    """A default as its field shows it: a string as is, a number or bool as JSON, else indented JSON."""
    if kind == "string" and isinstance(value, str):
        return value
    if kind in ("json",):
        return json.dumps(value, indent=2, ensure_ascii=False)
    return json.dumps(value, ensure_ascii=False)


def form_fields(parameters: dict[str, Any]) -> list[FormField]:
    """The start form's fields for a flow's parameters schema, in the flow's parameter order."""
    required = set(parameters.get("required") or ())
    fields = []
    for name, schema in (parameters.get("properties") or {}).items():
        schema = schema if isinstance(schema, dict) else {}
        kind = kind_of(schema)
        has_default = "default" in schema
        value = default_text(kind, schema["default"]) if has_default else ""
        hint = shown_type(schema)
        if "x-default-factory" in schema:
            hint += f"; empty: {schema['x-default-factory']}() when the run is created"
        elif "x-default-repr" in schema:  # a default JSON cannot show (an Enum member, an object)
            hint += f"; empty: the flow's default, {schema['x-default-repr']}"
        elif name not in required and not has_default:
            hint += "; optional"
        options: list[tuple[str, str]] = []
        if kind == "enum":
            options = [(json.dumps(v), str(v)) for v in schema["enum"]]
        elif kind == "boolean":
            options = [("true", "true"), ("false", "false")]
        fields.append(FormField(name, kind, name in required, value, hint, options))
    return fields


@router.get("/flows", response_class=HTMLResponse)
def flow_list(request: Request, store: StoreDep) -> HTMLResponse:
    """Every flow a worker has registered (``GET /api/flows``), each with a link to its start form."""
    found = sorted(flows.list_flows(store), key=lambda f: f.name)
    return render(request, "flows.html", flows=found)


@router.get("/flows/{name}", response_class=HTMLResponse)
def flow_form(request: Request, store: StoreDep, name: str = flows.FlowName) -> HTMLResponse:
    """One flow and the form that starts a run of it."""
    try:
        flow = FlowPublic.model_validate(flows.find_flow(store, name))
    except HTTPException as missing:
        return render(
            request,
            "flow.html",
            status_code=missing.status_code,
            flow=None,
            name=name,
            fields=[],
            problem=missing.detail,
        )
    return render(request, "flow.html", flow=flow, name=name, fields=form_fields(flow.parameters), problem="")
