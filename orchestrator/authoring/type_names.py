"""Types named in messages as a user writes them in an annotation: ``int``, ``list[int]``,
``Client | None``, never ``<class 'int'>`` or ``typing.Optional[...]`` (one rule for every message)."""

from __future__ import annotations

import types
import typing
from typing import Any


def type_name(hint: Any) -> str:
    """How a message names a type hint: ``int``, ``list[int]``, ``Literal['a', 'b']``, ``Client | None``.

    Classes go by their qualified name without the module (as the annotation spells them); a hint
    that is not a class falls back to its repr without the ``typing.`` prefix.
    """
    if hint is type(None) or hint is None:
        return "None"
    if hint is Ellipsis:
        return "..."
    if hint is Any:
        return "Any"
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is typing.Literal:
        return f"Literal[{', '.join(map(repr, args))}]"
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin is not None and args:
        return f"{type_name(origin)}[{', '.join(type_name(a) for a in args)}]"
    if isinstance(hint, type):
        return hint.__qualname__
    return repr(hint).replace("typing.", "")
