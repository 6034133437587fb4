"""Task caching as in Prefect 3, on real workers (and in-process).

Each cached task counts its own executions in the test's Redis (``tests/cache_flows.py``):
a call answered from the cache leaves that count unchanged, and its task run says so
(``cached`` = "1", its key, a message), in the run store and in the API.

- INPUTS: the same inputs in two flow runs execute once, other inputs again;
- TASK_SOURCE ignores the inputs; RUN_ID shares within one flow run only; NO_CACHE never;
- INPUTS + TASK_SOURCE, ``INPUTS - "note"``, ``cache_key_fn`` (and its None);
- ``cache_expiration``: after it passes, the task executes again; ``refresh_cache`` runs and overwrites;
- two worker processes share the cache (it lives in Redis); a persisted result's cache lives in result
  storage too (Redis holds a pointer);
- an input with no JSON form fails the task run with a message naming the parameter and the fixes;
- keys are the same in every process (hash randomization does not change them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator import INPUTS, NO_CACHE, RUN_ID, TASK_SOURCE, task
from orchestrator.authoring.caching import CacheContext, CacheSettings, policy_from_spec
from orchestrator.authoring.options import message_overrides
from orchestrator.devstack.localstack import ApiProcess, api_server, worker
from orchestrator.errors import CacheKeyError, DefinitionError, TaskRunFailed
from orchestrator.local.cache import clear_local_cache
from orchestrator.runstate.store import get_store
from tests import cache_flows as cf
from tests.api_support import cli, eventually, wait_final


@pytest.fixture(scope="module")
def cache_worker(redis_url: str, worker_logs: Path) -> Iterator[subprocess.Popen[bytes]]:
    with worker(
        redis_url, ["tests.cache_flows"], queues=cf.QUEUE, concurrency=2, name="cache-a@%h",
        log_path=worker_logs / "cache-a.log",
    ) as proc:  # fmt: skip
        yield proc


@pytest.fixture(scope="module")
def other_worker(redis_url: str, worker_logs: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A second worker process, on its own queue: it finds what the first one cached."""
    with worker(
        redis_url, ["tests.cache_flows"], queues=cf.OTHER_QUEUE, concurrency=1, name="cache-b@%h",
        log_path=worker_logs / "cache-b.log",
    ) as proc:  # fmt: skip
        yield proc


@pytest.fixture(scope="module")
def api(
    redis_url: str, cache_worker: subprocess.Popen[bytes], worker_logs: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiProcess]:
    database = f"sqlite:///{tmp_path_factory.mktemp('cache-db') / 'api.db'}"
    with api_server(redis_url, database, log_path=worker_logs / "cache-api.log") as server:
        yield server


def token() -> str:
    return uuid.uuid4().hex[:12]


def executions(tok: str) -> int:
    """How many times the tasks of ``tok`` executed."""
    return int(get_store().redis.get(f"test:cache:{tok}") or 0)


def run(flow: Any, *args: Any, **kwargs: Any) -> tuple[Any, list[dict[str, Any]], str]:
    """Run ``flow`` on the fleet: (its value, its task runs by start, its id)."""
    handle = flow.delay(*args, **kwargs)
    value = handle.result(timeout=60)
    return value, handle.task_runs(), handle.id


def only(rows: list[dict[str, Any]], name: str) -> dict[str, Any]:
    found = [r for r in rows if r["name"] == name]
    assert len(found) == 1, rows
    return found[0]


# -- on the fleet ---------------------------------------------------------------------------
def test_inputs_the_same_inputs_in_two_flow_runs_execute_once(cache_worker: subprocess.Popen[bytes]) -> None:
    tok = token()
    first, rows1, _ = run(cf.inputs_flow, tok, 4)
    second, rows2, _ = run(cf.inputs_flow, tok, 4)
    assert first == second == 8
    assert executions(tok) == 1
    executed, cached = only(rows1, cf.by_inputs.name), only(rows2, cf.by_inputs.name)
    assert executed["state"] == cached["state"] == "Completed"
    assert executed["cached"] is False and cached["cached"] is True
    assert cached["cache_key"] == executed["cache_key"] != ""
    assert cached["cached_from"] == executed["id"]
    assert cached["message"].startswith(f"cached result (key {cached['cache_key']})")
    other, _, _ = run(cf.inputs_flow, tok, 5)
    assert other == 10 and executions(tok) == 2  # other inputs: executed again


def test_a_dynamic_body_calling_a_cached_task_twice_executes_it_once(cache_worker: subprocess.Popen[bytes]) -> None:
    tok = token()
    value, rows, _ = run(cf.dynamic_flow, tok)
    assert value == 12 and executions(tok) == 1
    assert sorted(r["cached"] for r in rows if r["name"] == cf.by_inputs.name) == [False, True]


def test_an_async_task_is_cached_like_a_sync_one(cache_worker: subprocess.Popen[bytes]) -> None:
    tok = token()
    value, rows, _ = run(cf.async_flow, tok, 1)
    assert value == [101, 101] and executions(tok) == 1
    assert sorted(r["cached"] for r in rows) == [False, True]
    local = token()
    assert cf.async_flow(local, 2) == [102, 102] and executions(local) == 1  # in-process too


def test_task_source_ignores_the_inputs(cache_worker: subprocess.Popen[bytes]) -> None:
    first, second = token(), token()
    assert run(cf.source_flow, first)[0] == first  # the first call of this task in the session's Redis
    value, rows, _ = run(cf.source_flow, second)
    assert value == first  # another token, the same source: the first call's result
    assert executions(first) == 1 and executions(second) == 0
    assert only(rows, cf.by_source.name)["cached"] is True


def test_run_id_shares_a_result_within_one_flow_run_only(cache_worker: subprocess.Popen[bytes]) -> None:
    tok = token()
    _, rows, run_id = run(cf.run_id_flow, tok)
    assert executions(tok) == 1
    assert sorted(r["cached"] for r in rows) == [False, True]
    assert {r["cache_key"] for r in rows} == {run_id}  # RUN_ID's key is the flow run id
    run(cf.run_id_flow, tok)
    assert executions(tok) == 2  # another flow run: executed again (once)


def test_no_cache_executes_every_call(cache_worker: subprocess.Popen[bytes]) -> None:
    tok = token()
    value, rows, _ = run(cf.no_cache_flow, tok)
    assert value == [1, 2, 2, 2]  # by_inputs returns 2 * x: executed twice all the same
    assert executions(tok) == 4
    assert all("cached" not in r and "cache_key" not in r for r in rows)


def test_a_combination_of_inputs_and_task_source(cache_worker: subprocess.Popen[bytes]) -> None:
    tok = token()
    run(cf.combined_flow, tok, 1)
    _, rows, run_id = run(cf.combined_flow, tok, 1)
    assert executions(tok) == 1
    row = only(rows, cf.combined.name)
    # The worker's key is the one this process computes: hashed, not Python's hash()
    context = CacheContext(cf.combined, row["id"], run_id)
    assert row["cache_key"] == (INPUTS + TASK_SOURCE).compute_key(context, {"token": tok, "x": 1})
    run(cf.combined_flow, tok, 2)
    assert executions(tok) == 2


def test_inputs_minus_a_parameter_leaves_it_out_of_the_key(cache_worker: subprocess.Popen[bytes]) -> None:
    tok = token()
    first, _, _ = run(cf.without_note_flow, tok, 1, "first note")
    second, _, _ = run(cf.without_note_flow, tok, 1, "another note")
    assert first == second == "1:first note"  # the cached result, note and all
    assert executions(tok) == 1


def test_cache_key_fn_gives_the_key_and_none_means_not_cached(cache_worker: subprocess.Popen[bytes]) -> None:
    tok = token()
    run(cf.keyed_flow, tok, 3)
    _, rows, _ = run(cf.keyed_flow, tok, 3)
    assert executions(tok) == 1
    assert only(rows, cf.keyed.name)["cache_key"] == f"{tok}-3"
    run(cf.keyed_flow, tok, -1)
    _, rows, _ = run(cf.keyed_flow, tok, -1)
    assert executions(tok) == 3  # None: both calls executed
    assert "cache_key" not in only(rows, cf.keyed.name)


def test_flow_parameters_and_prefects_task_input_hash(cache_worker: subprocess.Popen[bytes]) -> None:
    tok = token()
    assert [run(cf.flow_parameters_flow, tok, day)[0] for day in ("mon", "mon", "tue")] == [1, 1, 2]
    assert run(cf.flow_parameters_flow, tok, "mon", scale=2)[0] == 3  # another parameter, another key
    hashed = token()
    for x in (1, 1, 2):
        run(cf.prefect_style_flow, hashed, x)
    assert executions(hashed) == 2


def test_an_entry_expires_after_cache_expiration(cache_worker: subprocess.Popen[bytes]) -> None:
    tok = token()
    first, rows, _ = run(cf.short_lived_flow, tok)
    key = only(rows, cf.short_lived.name)["cache_key"]
    assert 0 < get_store().redis.pttl(f"orc:cache:{cf.short_lived.name}:{key}") <= 2500  # its TTL is the expiration
    second, _, _ = run(cf.short_lived_flow, tok)  # well within 2.5 s
    assert first == second == 1
    eventually(lambda: get_store().task_cache.get(cf.short_lived.name, key) is None, timeout=10, what="entry expired")
    third, _, _ = run(cf.short_lived_flow, tok)
    assert third == 2 and executions(tok) == 2


def test_refresh_cache_executes_and_overwrites_the_entry(cache_worker: subprocess.Popen[bytes]) -> None:
    tok = token()
    assert run(cf.stamped_flow, tok)[0] == 1
    assert run(cf.stamped_flow, tok)[0] == 1  # cached
    refreshed, rows, _ = run(cf.stamped_flow, tok, refresh=True)  # with_options(refresh_cache=True)
    assert refreshed == 2 and only(rows, cf.stamped.name)["cached"] is False
    assert run(cf.stamped_flow, tok)[0] == 2  # the entry holds the refreshed result
    assert executions(tok) == 2


def test_refresh_cache_given_with_options_holds_in_a_dynamic_body(cache_worker: subprocess.Popen[bytes]) -> None:
    tok = token()
    assert run(cf.dynamic_refresh_flow, tok)[0] == 1 + 10 * 2  # executed, then refreshed: executed again
    assert executions(tok) == 2


def test_two_worker_processes_share_the_cache(
    cache_worker: subprocess.Popen[bytes], other_worker: subprocess.Popen[bytes]
) -> None:
    tok = token()
    first, rows_a, _ = run(cf.shared_on_a, tok, 2)
    second, rows_b, _ = run(cf.shared_on_b, tok, 2)
    assert first == second == 20 and executions(tok) == 1
    executed, cached = only(rows_a, cf.shared.name), only(rows_b, cf.shared.name)
    assert executed["worker"].startswith("cache-a@") and cached["worker"].startswith("cache-b@")
    assert cached["cached"] is True and cached["cached_from"] == executed["id"]


def test_a_persisted_result_is_cached_in_result_storage(cache_worker: subprocess.Popen[bytes]) -> None:
    tok = token()
    first, rows, _ = run(cf.persisted_flow, tok, 3)
    executed = only(rows, cf.persisted.name)
    entry = get_store().task_cache.get(cf.persisted.name, executed["cache_key"])
    assert entry is not None and entry.persisted and entry.task_run_id == executed["id"]  # no copy in Redis
    stored = Path(os.environ["ORCHESTRATOR_RESULT_STORAGE"]) / f"{executed['id']}.json"
    assert json.loads(stored.read_text()) == {"x": 3, "square": 9}
    second, rows, _ = run(cf.persisted_flow, tok, 3)
    assert first == second == {"x": 3, "square": 9} and executions(tok) == 1
    assert only(rows, cf.persisted.name)["cached"] is True
    get_store().task_cache.forget(cf.persisted.name, executed["cache_key"])  # Redis lost it (TTL, a flush)
    third, rows, _ = run(cf.persisted_flow, tok, 3)
    assert third == first and executions(tok) == 1  # the result storage keeps the entry too
    assert only(rows, cf.persisted.name)["cached_from"] == executed["id"]
    stored.unlink()  # the result storage lost the result: the entry leads nowhere, and the task runs again
    fourth, _, _ = run(cf.persisted_flow, tok, 3)
    assert fourth == first and executions(tok) == 2


def test_an_input_with_no_json_form_fails_the_task_run_naming_the_parameter_and_the_fix(
    cache_worker: subprocess.Popen[bytes],
) -> None:
    tok = token()
    handle = cf.opaque_flow.delay(tok)
    assert handle.wait(timeout=60).value == "Failed"
    row = only(handle.task_runs(), cf.takes_opaque.name)
    assert row["state"] == "Failed" and executions(tok) == 0
    message = row["message"]
    assert "parameter 'obj'" in message and "tests.cache_flows.Opaque" in message
    assert 'INPUTS - "obj"' in message and "cache_key_fn" in message and "NO_CACHE" in message
    assert row["attempts"] == 1
    value, _, _ = run(cf.opaque_flow, tok, leave_out=True)  # the fix the message names
    assert value == 7 and executions(tok) == 1


def test_the_api_and_the_cli_show_the_cached_marker_and_the_key(api: ApiProcess) -> None:
    tok = token()
    run(cf.inputs_flow, tok, 6)
    _, rows, run_id = run(cf.inputs_flow, tok, 6)
    expected = only(rows, cf.by_inputs.name)
    with httpx.Client(base_url=api.url, timeout=15) as http:
        wait_final(http, run_id)

        def shown() -> dict[str, Any] | None:
            found = http.get(f"/flow-runs/{run_id}/task-runs").json()
            return found[0] if found and found[0]["state"] == "Completed" else None

        shown_row = eventually(shown, what="the cached task run in the API")
    assert shown_row["cached"] is True and shown_row["cache_key"] == expected["cache_key"]
    assert shown_row["state_message"].startswith("cached result (key ")
    inspected = cli(api, "flow-run", "inspect", run_id)  # the CLI's task table says it too
    assert inspected.returncode == 0 and "Completed (cached)" in inspected.stdout, inspected.stdout + inspected.stderr


# -- in-process ---------------------------------------------------------------------------------
def test_in_process_runs_cache_with_the_same_policies(redis_url: str) -> None:
    clear_local_cache()
    tok = token()
    assert cf.inputs_flow(tok, 4) == cf.inputs_flow(tok, 4) == 8
    assert executions(tok) == 1
    assert cf.inputs_flow(tok, 5) == 10 and executions(tok) == 2
    run_tok = token()
    cf.run_id_flow(run_tok)
    cf.run_id_flow(run_tok)
    assert executions(run_tok) == 2  # once per flow run
    keyed_tok = token()
    for x in (1, 1, -1, -1):
        cf.keyed_flow(keyed_tok, x)
    assert executions(keyed_tok) == 3  # 1 once, -1 (no key) twice
    stamp_tok = token()
    stamps = [cf.stamped_flow(stamp_tok), cf.stamped_flow(stamp_tok, refresh=True), cf.stamped_flow(stamp_tok)]
    assert stamps == [1, 2, 2]  # cached after the first, refreshed, then the refreshed entry


def test_in_process_an_unhashable_input_fails_the_task_run_with_the_fix(redis_url: str) -> None:
    tok = token()
    with pytest.raises(TaskRunFailed, match=r"parameter 'obj' holds a _thread\.lock") as failed:
        cf.lock_flow(tok)
    assert isinstance(failed.value.__cause__, CacheKeyError) and failed.value.__cause__.parameter == "obj"
    assert 'INPUTS - "obj"' in str(failed.value) and executions(tok) == 0


# -- keys and options (no services) ------------------------------------------------------------------
KEY_PROGRAM = """
import sys
from orchestrator import INPUTS, TASK_SOURCE
from orchestrator.authoring.caching import CacheContext
from tests import cache_flows as cf
inputs = {"token": "t", "x": {"b": [1, 2.5, None], "a": {"set-of", "strings", "here"}, "d": ("t", b"x")}}
print((INPUTS + TASK_SOURCE).compute_key(CacheContext(cf.combined, "tr", "fr"), inputs))
"""


def test_keys_are_the_same_in_every_process() -> None:
    keys = set()
    for seed in ("1", "2", "3"):
        env = os.environ | {"PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", KEY_PROGRAM], env=env, capture_output=True, text=True, check=True)
        keys.add(out.stdout.strip())
    assert len(keys) == 1 and len(next(iter(keys))) == 32


def test_policies_combine_and_subtract_as_in_prefect() -> None:
    context = CacheContext(cf.combined, "tr", "fr")
    base = INPUTS.compute_key(context, {"a": 1, "b": 2})
    assert (INPUTS - "b").compute_key(context, {"a": 1, "b": 3}) == (INPUTS - "b").compute_key(context, {"a": 1})
    assert base != (INPUTS - "b").compute_key(context, {"a": 1, "b": 2})
    assert NO_CACHE + INPUTS == INPUTS and INPUTS + NO_CACHE == INPUTS
    assert NO_CACHE.compute_key(context, {"a": 1}) is None
    assert TASK_SOURCE - "a" is TASK_SOURCE  # no inputs to leave out
    both = INPUTS + TASK_SOURCE - "b"
    assert both.compute_key(context, {"a": 1, "b": 1}) == both.compute_key(context, {"a": 1, "b": 2})
    assert RUN_ID.compute_key(context, {}) == "fr"
    other_source = CacheContext(cf.by_inputs, "tr", "fr")
    assert TASK_SOURCE.compute_key(context, {}) != TASK_SOURCE.compute_key(other_source, {})  # other code, other key
    assert INPUTS.compute_key(context, {}) is None  # as in Prefect: no inputs, no INPUTS key


def test_cache_options_travel_in_messages_and_are_checked_at_declaration() -> None:
    policy = INPUTS + TASK_SOURCE - "x"
    changed = cf.by_inputs.with_options(cache_policy=policy, cache_expiration=60, refresh_cache=True)
    spec = changed.options["cache"]
    assert json.loads(json.dumps(spec)) == spec  # JSON-safe
    assert CacheSettings.from_spec(spec) == changed.cache
    assert cf.by_inputs.with_message_options({"cache": spec}).cache == changed.cache  # what the worker rebuilds
    assert "cache" not in cf.make_opaque.options  # a task without cache options sends nothing more
    with_lambda = cf.by_inputs.with_options(cache_key_fn=lambda c, p: "k")  # fine in-process, refused on the way out
    with pytest.raises(DefinitionError, match="cannot be sent to workers"):
        message_overrides(with_lambda.name, with_lambda.options, cf.by_inputs.options)
    named = cf.by_inputs.with_options(cache_key_fn=cf.key_by_x)  # by name: the worker finds it in its module
    assert named.with_message_options(message_overrides(named.name, named.options, cf.by_inputs.options)).cache == (
        named.cache
    )
    unknown = policy_from_spec({"kind": "key_fn", "fn": "tests.cache_flows:no_such_function"})
    with pytest.raises(CacheKeyError, match="no_such_function"):  # fails the task run, saying why
        unknown.compute_key(CacheContext(cf.by_inputs, "tr", "fr"), {})
    with pytest.raises(DefinitionError, match="not both"):
        task(cache_policy=INPUTS, cache_key_fn=cf.key_by_x)(_plain)
    with pytest.raises(DefinitionError, match="no cache_policy"):
        task(cache_expiration=10)(_plain)
    with pytest.raises(DefinitionError, match="cache_policy must be"):
        task(cache_policy="inputs")(_plain)  # type: ignore[arg-type]
    with pytest.raises(DefinitionError, match="cache_expiration must be"):
        task(cache_policy=INPUTS, cache_expiration=0)(_plain)


def _plain(x: int) -> int:
    return x
