"""What the CLI prints of user data is text: never Rich markup, never raw control or bidi characters.

Run names, parameters, log lines and error messages reach the CLI from whoever can create a
run. Printed as Rich markup, ``close[/oops]`` crashed ``flow-run ls`` for every operator and
``[link=...]`` became a terminal hyperlink; printed raw, ESC sequences, newlines and bidi
marks cleared the screen and forged table rows and log lines. These tests create runs with
such texts against real processes (redis-server, a Celery worker, the API) and run the
``orchestrator`` command as a subprocess, as an operator would.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import pytest
from rich.text import Text
from sqlmodel import Session

from api.db import engine_for
from api.models import FlowRun
from orchestrator.authoring.naming import run_name_problem
from orchestrator.devstack.localstack import ApiProcess, api_server, free_port, redis_server, worker
from tests.api_support import CLI_AT_ONCE, api_database, eventually, wait_final
from tests.cli_text_flows import FLOW_NAME

# What a hostile caller names a run (and passes as the text it logs and fails with) -> what the CLI shows.
HOSTILE = {
    "close[/oops]": "close[/oops]",  # an unmatched closing tag: Rich raised MarkupError
    "[link=https://evil.example]click[/link]": "[link=https://evil.example]click[/link]",
    "wipe\x1b[2Jscreen": r"wipe\x1b[2Jscreen",  # ESC: clears the operator's screen
    "osc\x1b]8;;http://x\x07here\x1b]8;;\x07": r"osc\x1b]8;;http://x\x07here\x1b]8;;\x07",  # OSC 8 hyperlink
    "first\nforged-row": r"first\nforged-row",  # a newline: a row or log line of its own
    "kept\roverwritten": r"kept\roverwritten",
    "abc\u202edcba": r"abc\u202edcba",  # right-to-left override
    "c1\x9b2Jcsi": r"c1\x9b2Jcsi",  # the one-byte C1 CSI
    "para\u2028graph": r"para\u2028graph",
    "iso\u2066late\u2069": r"iso\u2066late\u2069",
}
# Any of these in the output reached the terminal raw (the newline Rich writes itself is allowed).
RAW = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
SGR = re.compile(r"\x1b\[[0-9;]*m")  # Rich's own styling, when colour is forced


@dataclass
class Stack:
    api: ApiProcess
    http: httpx.Client
    runs: dict[str, str]  # hostile text -> id of the run named (and failing) with it


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("cli-text")
    with (
        redis_server() as url,
        worker(url, ["tests.cli_text_flows"], concurrency=1, name=f"text{free_port()}@%h", log_path=folder / "w.log"),
        api_database(folder, None) as database,
        api_server(url, database, log_path=folder / "api.log") as api,
        httpx.Client(base_url=api.url, timeout=30) as http,
    ):
        eventually(lambda: http.get(f"/flows/{FLOW_NAME}").status_code == 200, 60, what="the worker announced")
        runs: dict[str, str] = {}
        stored_before: dict[str, str] = {}  # names the API refuses today (control characters): run id -> name
        for i, text in enumerate(HOSTILE):
            refused = run_name_problem(text) is not None
            name = f"hostile-{i}" if refused else text
            made = http.post(f"/flows/{FLOW_NAME}/runs", json={"name": name, "parameters": {"text": text}})
            assert made.status_code == 201, made.text
            runs[text] = made.json()["id"]
            if refused:
                stored_before[runs[text]] = text
        for text, run_id in runs.items():
            assert wait_final(http, run_id)["state"] == "Failed"
            logs = f"/flow-runs/{run_id}/logs"
            eventually(lambda logs=logs: http.get(logs).json(), 20, what=f"log lines of {text!r}")
        # Rows stored before run names were checked (or by another writer) still reach the CLI.
        with Session(engine_for(database)) as session:
            for run_id, text in stored_before.items():
                row = session.get(FlowRun, run_id)
                assert row is not None
                row.name = text
                session.add(row)
            session.commit()
        yield Stack(api, http, runs)


def cli(stack: Stack, *args: str, colour: bool = False) -> subprocess.CompletedProcess[str]:
    """``orchestrator ARGS`` against the stack's API, wide enough that no cell wraps."""
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE")}
    env |= {"ORCHESTRATOR_API_URL": stack.api.url, "COLUMNS": "400"}
    if colour:
        env |= {"FORCE_COLOR": "1", "TERM": "xterm-256color"}
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=90,
    )


def cli_each(
    stack: Stack, commands: list[tuple[str, ...]], colour: bool = False
) -> list[subprocess.CompletedProcess[str]]:
    """``cli`` for each of ``commands``, a few at a time (each is a process of its own that reads what
    the stack holds, so the order they run in changes nothing); the results in the order given."""
    with ThreadPoolExecutor(CLI_AT_ONCE) as pool:
        return list(pool.map(lambda args: cli(stack, *args, colour=colour), commands))


def assert_safe(out: subprocess.CompletedProcess[str], colour: bool = False, styled: bool = True) -> str:
    """The output holds no raw control or bidi character and no hyperlink; returns it without Rich's SGR.

    With ``colour``, Rich's own styling (SGR sequences) is allowed, and required if ``styled``.
    """
    text = out.stdout + out.stderr
    assert "\x1b]8" not in text, "a terminal hyperlink (OSC 8) was printed"
    if colour:
        assert SGR.search(text) or not styled, "colour was forced, yet Rich printed no styling"
        text = SGR.sub("", text)
    raw = sorted({repr(c) for c in RAW.findall(text)})
    assert not raw, f"raw characters reached the terminal: {raw}\n{text}"
    return text


# -- the helper ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("\x1b", r"\x1b"),
        ("\x00\x07\x08\x7f", r"\x00\x07\x08\x7f"),
        ("\t\n\r", r"\t\n\r"),
        ("\x85\x9b\x9f", r"\x85\x9b\x9f"),
        ("\u2028\u2029", r"\u2028\u2029"),
        ("\u200e\u200f\u061c", r"\u200e\u200f\u061c"),
        ("\u202a\u202b\u202c\u202d\u202e", r"\u202a\u202b\u202c\u202d\u202e"),
        ("\u2066\u2067\u2068\u2069", r"\u2066\u2067\u2068\u2069"),
        ("café ✓ 日本 [bold]x[/bold] :smile: a\\b", "café ✓ 日本 [bold]x[/bold] :smile: a\\b"),
    ],
)
def test_visible_escapes_control_and_bidi_characters_and_keeps_other_text(raw: str, shown: str) -> None:
    from orchestrator.cli.text import user_text, visible

    assert visible(raw) == shown
    made = user_text(raw, style="bold")
    assert isinstance(made, Text) and made.plain == shown and made.style == "bold" and not made.spans


def test_user_text_takes_any_value() -> None:
    from orchestrator.cli.text import user_text

    assert user_text(None).plain == "" and user_text(3).plain == "3"
    assert user_text(ValueError("x\x1by")).plain == r"x\x1by"


# -- the CLI against real processes -------------------------------------------------------------
def test_flow_run_ls_shows_hostile_names_and_messages_as_text(stack: Stack) -> None:
    out = cli(stack, "flow-run", "ls", "--limit", "50")
    assert out.returncode == 0, out.stdout + out.stderr
    text = assert_safe(out)
    for shown in HOSTILE.values():
        assert shown in text
    assert FLOW_NAME in text  # the flow column: "[red]" is not a style
    forged = [line for line in text.splitlines() if "forged-row" in line]
    assert forged and all(stack.runs["first\nforged-row"] in line for line in forged), forged  # one row


def test_flow_run_inspect_shows_hostile_names_and_messages_as_text(stack: Stack) -> None:
    outs = cli_each(stack, [("flow-run", "inspect", stack.runs[raw]) for raw in HOSTILE])
    for (raw, shown), out in zip(HOSTILE.items(), outs, strict=True):
        assert out.returncode == 0, out.stdout + out.stderr
        text = assert_safe(out)
        title = next(line for line in text.splitlines() if stack.runs[raw] in line and "Failed" in line)
        assert shown in title  # the task table's title: name, state, message
        assert sum(shown in line for line in text.splitlines()) >= 3  # title, task row, state history


def test_flow_run_logs_show_hostile_lines_as_one_line_each(stack: Stack) -> None:
    outs = cli_each(stack, [("flow-run", "logs", stack.runs[raw]) for raw in HOSTILE])
    for shown, out in zip(HOSTILE.values(), outs, strict=True):
        assert out.returncode == 0, out.stdout + out.stderr
        text = assert_safe(out)
        said = [line for line in text.splitlines() if "said: " in line]
        assert len(said) == 1 and said[0].endswith(f"said: {shown}") and " INFO " in said[0], text


def test_flow_run_why_shows_the_hostile_message_as_text(stack: Stack) -> None:
    outs = cli_each(stack, [("flow-run", "why", stack.runs[raw]) for raw in HOSTILE])
    for shown, out in zip(HOSTILE.values(), outs, strict=True):
        assert out.returncode == 0, out.stdout + out.stderr
        assert shown in assert_safe(out)


def test_run_prints_a_hostile_name_and_its_failure_as_text(stack: Stack) -> None:
    def check(raw: str) -> None:
        out = cli(stack, "run", FLOW_NAME, "--name", raw, "-p", f"text={raw}", "--watch", "--timeout", "60")
        if run_name_problem(raw) is not None:  # the API refuses the name: its 422 is shown as text
            assert out.returncode == 2, out.stdout + out.stderr
            text = assert_safe(out)
            assert "control characters" in text and ("\\x1b" in text or "\\n" in text), text  # escaped, not raw
            out = cli(stack, "run", FLOW_NAME, "-p", f"text={raw}", "--watch", "--timeout", "60")
            assert out.returncode == 1, out.stdout + out.stderr  # the task fails with the hostile text
            assert HOSTILE[raw] in assert_safe(out)
            return
        assert out.returncode == 1, out.stdout + out.stderr  # the run failed, as its task does
        text = assert_safe(out)
        assert f"flow run {HOSTILE[raw]} (" in text and f"Failed: {FLOW_NAME}" not in text
        assert sum(HOSTILE[raw] in line for line in text.splitlines()) >= 2

    with ThreadPoolExecutor(CLI_AT_ONCE) as pool:  # each watches a run of its own: they may overlap
        list(pool.map(check, ["close[/oops]", "osc\x1b]8;;http://x\x07here\x1b]8;;\x07", "first\nforged-row"]))


def test_error_messages_from_the_server_are_text(stack: Stack) -> None:
    gone = cli(stack, "flow-run", "inspect", "[red]gone")
    assert gone.returncode == 2 and "no flow run '[red]gone' is recorded" in assert_safe(gone)
    bad = cli(stack, "run", FLOW_NAME, "-p", "x[/oops]=1")
    assert bad.returncode == 2, bad.stdout + bad.stderr
    assert "x[/oops]" in assert_safe(bad)


def test_forced_colour_styles_the_output_but_not_the_user_data(stack: Stack) -> None:
    link = "[link=https://evil.example]click[/link]"
    commands = ("inspect", "logs", "why")
    *of_link, listed, out = cli_each(
        stack,
        [
            *(("flow-run", command, stack.runs[link]) for command in commands),
            ("flow-run", "ls", "--limit", "50"),
            ("flow-run", "logs", stack.runs["wipe\x1b[2Jscreen"]),
        ],
        colour=True,
    )
    for command, done in zip(commands, of_link, strict=True):
        assert done.returncode == 0, done.stdout + done.stderr
        assert link in assert_safe(done, colour=True, styled=command != "logs")  # log lines are plain text
    assert listed.returncode == 0, listed.stdout + listed.stderr
    text = assert_safe(listed, colour=True)
    assert all(shown in text for shown in HOSTILE.values())
    assert r"said: wipe\x1b[2Jscreen" in assert_safe(out, colour=True, styled=False)
