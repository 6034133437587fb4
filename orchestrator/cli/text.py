"""User data as terminal text: never Rich markup, never a raw control or bidi character.

Run names, flow and task names, tags, parameters, log lines, state messages and the API's
error texts come from whoever can create a run, not from the operator reading the CLI.
Printed as a Rich markup string, ``close[/oops]`` raises MarkupError (the command crashes
for everyone) and ``[link=...]`` becomes a hyperlink; printed raw, an ESC sequence clears
the screen or opens a hyperlink, a newline or carriage return forges a table row or a log
line, and a right-to-left override reorders what the operator reads.

So every such value goes through :func:`user_text` (one value, optionally styled) or
:func:`user_line` (a line of fixed words and values): a :class:`rich.text.Text`, which Rich
never parses as markup, whose unsafe characters are shown as escapes (``\\x1b``, ``\\n``,
``\\u202e``) so the operator still sees that they were there. :func:`user_json` does the
same for a JSON document, with JSON's own escapes so the output stays valid JSON.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

from rich.highlighter import JSONHighlighter
from rich.style import StyleType
from rich.text import Text

# C0 controls (with TAB, LF, CR), DEL, C1 controls (with NEL and the one-byte CSI), the
# line and paragraph separators, and the bidi controls: marks, embeddings, overrides, isolates.
UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_SHORT = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}
# What json.dumps leaves raw with ensure_ascii=False: UNSAFE less the C0 controls (which it
# escapes inside strings, and of which it writes only the newlines of its own indentation).
_UNSAFE_IN_JSON = re.compile("[\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _SHORT:
        return _SHORT[char]
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def visible(value: object) -> str:
    """``str(value)`` (``""`` for None) with every unsafe character written as its escape."""
    return UNSAFE.sub(_escape, "" if value is None else str(value))


def user_text(value: object, style: StyleType = "") -> Text:
    """One user-supplied value as a Text: shown as it is (no markup), unsafe characters escaped."""
    return Text(visible(value), style=style)


def user_line(*parts: object) -> Text:
    """A line of parts: a :class:`Text` part is kept as built (fixed styled words, :func:`user_text`),
    any other part is user data and goes through :func:`visible`."""
    line = Text()
    for part in parts:
        line.append(part if isinstance(part, Text) else visible(part))
    return line


def user_json(data: Any) -> Text:
    """``data`` as indented, highlighted JSON; unsafe characters stay JSON escapes (``\\u202e``).

    ``json.dumps`` escapes only C0 controls once non-ASCII text is kept readable, so DEL, C1,
    the separators and the bidi controls are escaped here (a ``\\uXXXX`` means the same to JSON).
    """
    encoded = json.dumps(data, indent=2, ensure_ascii=False, default=str)
    text = JSONHighlighter()(_UNSAFE_IN_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", encoded))
    text.no_wrap = True
    text.overflow = None
    return text


def print_json(data: Any) -> None:
    """``--json``: ``data`` as the API gave it, for programs: plain indented JSON on stdout, no Rich.

    ``ensure_ascii`` escapes every non-ASCII character, so no control or bidi character of user
    data reaches the terminal raw, and the output is the same bytes whatever the locale.
    """
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()
