"""The Lua scripts of the run-state core: kept as ``.lua`` files in ``lua/``, loaded once.

Each script is one atomic step of the run-state machine (a task run starting or
ending, a slot taken, a crash claimed, a delayed message claimed); its header
comment names its KEYS and ARGV. Scripts that judge states (``FAILED[st]``,
``FINAL[state]``) get those two tables from :mod:`orchestrator.states`, prepended
when the file is read, so the Lua and the Python agree on what failed means.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from orchestrator.states import FAILED_STATES, FINAL_STATES, StateType

LUA_DIR = Path(__file__).with_name("lua")


def _lua_set(name: str, states: frozenset[StateType]) -> str:
    members = ", ".join(f"['{state.value}'] = true" for state in sorted(states))
    return f"local {name} = {{{members}}}\n"


@cache
def source(name: str) -> str:
    """The text of ``lua/<name>.lua``, with the state tables it uses defined first."""
    text = (LUA_DIR / f"{name}.lua").read_text()
    prelude = ""
    if "FAILED[" in text:
        prelude += _lua_set("FAILED", FAILED_STATES)
    if "FINAL[" in text:
        prelude += _lua_set("FINAL", FINAL_STATES)
    return prelude + text


class Scripts:
    """The scripts registered with one Redis client (registering hashes a source once;
    redis-py then sends EVALSHA, and loads the script again after a Redis restart)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._registered: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        script = self._registered.get(name)
        if script is None:
            script = self._registered[name] = self._client.register_script(source(name))
        return script
