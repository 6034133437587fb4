"""The one state machine, and the recorder applying it: duplicates and late events change nothing."""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, select

from orchestrator.runstate.events import from_wire
from orchestrator.runstate.store import RunStore
from orchestrator.states import StateType as S
from orchestrator.states import can_transition


@pytest.mark.parametrize(
    ("current", "new", "reopen", "allowed"),
    [
        (None, S.RUNNING, False, True),
        (S.PENDING, S.RUNNING, False, True),
        (S.RUNNING, S.COMPLETED, False, True),
        (S.COMPLETED, S.RUNNING, False, False),  # a redelivered task after the end
        (S.FAILED, S.COMPLETED, False, False),  # final states are never rewritten
        (S.RUNNING, S.PENDING, False, False),  # a late Pending after Running
        (S.SCHEDULED, S.LATE, False, True),
        (S.RUNNING, S.LATE, False, False),
        (S.PENDING, S.LATE, False, True),  # sent, but nobody picked it up in time
        (S.LATE, S.PENDING, False, False),
        (S.LATE, S.RUNNING, False, True),
        (S.CANCELLING, S.RUNNING, False, False),
        (S.CANCELLING, S.CANCELLED, False, True),
        (S.RUNNING, S.AWAITING_RETRY, False, True),
        (S.AWAITING_RETRY, S.RETRYING, False, True),
        (S.FAILED, S.RETRYING, True, True),  # an explicit retry reopens a final run
        (S.FAILED, S.RUNNING, True, False),  # ... but only to a retry state
        (S.COMPLETED, S.PENDING, True, True),
    ],
)
def test_transitions(current: S | None, new: S, reopen: bool, allowed: bool) -> None:
    assert can_transition(current, new, reopen=reopen) is allowed


def test_recorder_applies_each_event_once_and_refuses_regressions(redis_url: str, tmp_path: Path) -> None:
    from api.db import engine_for, migrate
    from api.models import FlowRun, StateEvent, TaskRun
    from api.services.recorder import Event, Recorder

    url = f"sqlite:///{tmp_path / 'rec.db'}"
    migrate(url)
    recorder = Recorder(RunStore(redis_url), engine_for(url), consumer="unit")
    run_id, task_id = str(uuid.uuid4()), f"t-{uuid.uuid4()}"
    record = {"flow": "f", "name": "f-1", "root": run_id, "parameters": {"d": {"__orc__": "date", "v": "2026-01-02"}}}
    task = {"name": "mod.work", "label": "work", "flow_run_id": run_id, "root": run_id, "worker": "w1"}

    def ev(n: int, kind: str, rid: str, state: str, rec: dict[str, object], **extra: object) -> Event:
        wire = {"kind": kind, "id": rid, "state": state, "ts": 1000.0 + n, "record": rec, **extra}
        return Event(f"{n}-0", from_wire(wire))

    events = [
        ev(1, "flow_run", run_id, "Pending", record),
        ev(2, "flow_run", run_id, "Running", {"mode": "dynamic"}),
        ev(3, "task_run", task_id, "Running", task),
        ev(4, "task_run", task_id, "Completed", task),
        ev(5, "task_run", task_id, "Running", task),  # a redelivery after the end: refused
        ev(6, "flow_run", run_id, "Completed", {}),
        ev(7, "flow_run", run_id, "Pending", {}),  # late: refused
    ]
    recorder.apply(events[:3])
    recorder.apply(events)  # the first three again (a batch read twice after a crash): applied once
    recorder.apply(events[4:])
    with Session(engine_for(url)) as session:
        flow = session.get(FlowRun, run_id)
        work = session.get(TaskRun, task_id)
        history = session.exec(select(StateEvent).order_by(StateEvent.seq)).all()  # type: ignore[arg-type]
    assert flow is not None and work is not None
    assert (flow.state, flow.name, flow.parameters) == ("Completed", "f-1", {"d": "2026-01-02"})
    assert (work.state, work.task_name, work.worker, work.started, work.ended) == (
        "Completed",
        "mod.work",
        "w1",
        1003,
        1004,
    )
    assert [(h.event_id, h.state, h.applied) for h in history] == [
        ("1-0", "Pending", True),
        ("2-0", "Running", True),
        ("3-0", "Running", True),
        ("4-0", "Completed", True),
        ("5-0", "Running", False),
        ("6-0", "Completed", True),
        ("7-0", "Pending", False),
    ]
    assert json.dumps(flow.parameters)  # plain JSON for the API


def test_recorder_writes_history_and_log_lines_in_stream_order_without_nul(redis_url: str, tmp_path: Path) -> None:
    from api.db import engine_for, migrate
    from api.models import LogLine, StateEvent
    from api.services.recorder import Event, Recorder

    url = f"sqlite:///{tmp_path / 'rows.db'}"
    migrate(url)
    recorder = Recorder(RunStore(redis_url), engine_for(url), consumer="unit")
    run_id = str(uuid.uuid4())
    record = {"flow": "f", "name": "f-1", "root": run_id}
    wires = [
        {"kind": "flow_run", "id": run_id, "state": "Pending", "ts": 1.0, "record": record},
        {"kind": "log", "flow_run_id": run_id, "level": "INFO", "message": "first\x00", "ts": 2.0},
        {"kind": "flow_run", "id": run_id, "state": "Running", "ts": 3.0, "message": "go\x00", "record": {}},
        {"kind": "log", "flow_run_id": run_id, "level": "INFO", "message": "second", "ts": 4.0},
        {"kind": "flow_run", "id": run_id, "state": "Completed", "ts": 5.0, "record": {}},
    ]
    events = [Event(f"{n + 1}-0", from_wire(wire)) for n, wire in enumerate(wires)]
    recorder.apply(events[:2])
    recorder.apply(events)  # the first two again: written once
    with Session(engine_for(url)) as session:
        history = session.exec(select(StateEvent).order_by(StateEvent.seq)).all()  # type: ignore[arg-type]
        lines = session.exec(select(LogLine).order_by(LogLine.seq)).all()  # type: ignore[arg-type]
    assert [(h.event_id, h.state, h.message) for h in history] == [
        ("1-0", "Pending", ""),
        ("3-0", "Running", "go"),
        ("5-0", "Completed", ""),
    ]
    assert len({h.recorded for h in history[1:]}) == 1  # stamped once, just before the batch's commit
    assert [(line.event_id, line.message) for line in lines] == [("2-0", "first"), ("4-0", "second")]


def test_recorder_skips_loading_a_run_the_submitter_just_created_and_ends_with_the_same_rows(
    redis_url: str, tmp_path: Path
) -> None:
    """Its Pending event would change nothing: no row is loaded for it, and what the database holds
    is what the full path leaves. A run cancelled before its Pending event is recorded takes the
    full path (the event is then kept in its history, refused), as does a run the list lacks."""
    import asyncio

    import redis
    from sqlalchemy import event as sa_event
    from sqlalchemy import update

    from api.db import engine_for, migrate
    from api.models import FlowRun, StateEvent
    from api.services.created_runs import CreatedRuns
    from api.services.recorder import Event, Recorder
    from api.submit import Submitter, flow_run_row
    from orchestrator.runstate import keys
    from orchestrator.runstate.events import decode
    from orchestrator.runstate.records import NewFlowRun

    url = f"sqlite:///{tmp_path / 'created.db'}"
    migrate(url)
    engine = engine_for(url)
    created = CreatedRuns()
    submitter = Submitter(engine)
    submitter.created = created
    queue = f"nobody-{uuid.uuid4().hex[:6]}"  # its start messages wait: no worker runs these runs

    def new(n: int) -> dict[str, object]:
        run = NewFlowRun(str(uuid.uuid4()), "f", f"f-{n}", False, queue, {"n": n}, 1000.0 + n, 1000.0 + n)
        return flow_run_row(run, state=S.PENDING, dispatched=True) | {"parent_id": None}

    async def submit_all(rows: list[dict[str, object]]) -> None:
        await asyncio.gather(*(submitter.submit(row) for row in rows))

    kept, cancelled, unlisted = new(1), new(2), new(3)
    try:
        asyncio.run(submit_all([kept, cancelled, unlisted]))
    finally:
        submitter.close()
    ids = [str(row["id"]) for row in (kept, cancelled, unlisted)]
    assert created.listed(ids) == set(ids)  # noted once committed
    created.forget([ids[2]])  # as if created by another API process
    with Session(engine) as session:  # cancelled over HTTP before the recorder got to its Pending event
        session.execute(update(FlowRun).where(FlowRun.id == ids[1]).values(state="Cancelled", updated=1500.0))  # type: ignore[arg-type]
        session.commit()
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    pending = [
        Event(stream_id, decode(fields["event"]))
        for stream_id, fields in client.xrange(keys.EVENTS_STREAM)
        if json.loads(fields["event"]).get("id") in ids
    ]
    assert [(e.run_id, e.body.state) for e in pending] == [(i, "Pending") for i in ids]  # type: ignore[union-attr]
    loads: list[str] = []

    def note(conn: object, cursor: object, statement: str, *args: object) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "flow_run.parameters" in statement:
            loads.append(statement)

    recorder = Recorder(RunStore(redis_url), engine, consumer="unit")
    recorder.created = created
    sa_event.listen(engine, "before_cursor_execute", note)
    recorder.apply(pending[:1])
    assert loads == []  # the kept run's row was not loaded
    recorder.apply(pending)  # the others take the full path (the first is a no-op again)
    sa_event.remove(engine, "before_cursor_execute", note)
    assert loads  # ... and loaded their rows
    assert created.listed(ids) == set()
    running = {"kind": "flow_run", "id": ids[0], "state": "Running", "ts": 2000.0, "record": {"mode": "dynamic"}}
    recorder.apply([Event("9999999999999-0", from_wire(running))])
    with Session(engine) as session:
        rows = {r.id: r for r in session.exec(select(FlowRun).where(FlowRun.id.in_(ids))).all()}  # type: ignore[attr-defined]
        history = session.exec(select(StateEvent).where(StateEvent.run_id.in_(ids)).order_by(StateEvent.seq)).all()  # type: ignore[attr-defined,arg-type]
    assert {i: (rows[i].state, rows[i].name, rows[i].parameters, rows[i].created) for i in ids} == {
        ids[0]: ("Running", "f-1", {"n": 1}, 1001.0),
        ids[1]: ("Cancelled", "f-2", {"n": 2}, 1002.0),
        ids[2]: ("Pending", "f-3", {"n": 3}, 1003.0),
    }
    assert rows[ids[2]].updated == 1003.0  # a no-op Pending on the full path changes nothing either
    by_run = [(h.run_id, h.state, h.applied, h.cause) for h in history]
    assert by_run == [
        (ids[0], "Pending", True, "api"),  # the submitter's own
        (ids[1], "Pending", True, "api"),  # the submitter's own
        (ids[2], "Pending", True, "api"),  # the submitter's own
        (ids[1], "Pending", False, "fleet"),  # the full path's refused Pending of the cancelled run
        (ids[0], "Running", True, "fleet"),
    ]


def statements_of(engine: Any, work: Callable[[], object]) -> int:
    """How many SQL statements ``work`` sends through ``engine``."""
    from sqlalchemy import event as sa_event

    count = 0

    def note(*args: object) -> None:
        nonlocal count
        count += 1

    sa_event.listen(engine, "before_cursor_execute", note)
    try:
        work()
    finally:
        sa_event.remove(engine, "before_cursor_execute", note)
    return count


def test_recorder_batch_takes_the_same_statements_for_many_runs_as_for_one(redis_url: str, tmp_path: Path) -> None:
    """No statement per row: reading a row after the commit (which expired it) cost one SELECT each."""
    from api.db import engine_for, migrate
    from api.services.recorder import Event, Recorder

    url = f"sqlite:///{tmp_path / 'statements.db'}"
    migrate(url)
    engine = engine_for(url)
    recorder = Recorder(RunStore(redis_url), engine, consumer="unit")
    serial = iter(range(1, 10_000))

    def batch(runs: int) -> list[Event]:
        ids = [str(uuid.uuid4()) for _ in range(runs)]
        events = []
        for state in ("Pending", "Running", "Completed"):
            for run_id in ids:
                record = {"flow": "f", "name": "f-1", "root": run_id} if state == "Pending" else {}
                wire = {"kind": "flow_run", "id": run_id, "state": state, "ts": 1000.0, "record": record}
                events.append(Event(f"{next(serial)}-0", from_wire(wire)))
        return events

    def statements(events: list[Event]) -> int:
        def both() -> None:
            recorder.apply(events[: len(events) // 3])  # created (Pending) in one batch
            recorder.apply(events[len(events) // 3 :])  # then Running and Completed in another

        return statements_of(engine, both)

    assert statements(batch(20)) == statements(batch(1))


def test_the_recorders_plain_rows_have_the_models_columns_and_defaults() -> None:
    """The recorder writes flow and task runs as plain rows (``recorder_rows``): a new one must hold what
    a new ``FlowRun`` or ``TaskRun`` would, column for column, or rows would change with the models."""
    from api.models import FlowRun, TaskRun
    from api.services.recorder_rows import FlowRow, TaskRow

    assert set(FlowRow.COLUMNS) == set(FlowRun.model_fields)
    assert set(TaskRow.COLUMNS) == set(TaskRun.model_fields)
    assert FlowRow(id="f", created=1.0).values() == FlowRun(id="f", created=1.0).model_dump()
    assert TaskRow(id="t").values() == TaskRun(id="t").model_dump()


def test_recorder_writes_task_runs_it_creates_and_only_the_columns_it_changes(redis_url: str, tmp_path: Path) -> None:
    """Task runs created in one batch and ended in the next, in the same statements for 20 as for 1: a
    column the recorder does not change keeps what another writer left there, as with the ORM's flush;
    NULs are dropped from a task run's text too."""
    from sqlalchemy import update

    from api.db import engine_for, migrate
    from api.models import TaskRun
    from api.services.recorder import Event, Recorder

    url = f"sqlite:///{tmp_path / 'tasks.db'}"
    migrate(url)
    engine = engine_for(url)
    recorder = Recorder(RunStore(redis_url), engine, consumer="unit")
    serial = iter(range(1, 10_000))
    flow_id = str(uuid.uuid4())

    def events(ids: list[str], state: str, record: dict[str, object], **extra: object) -> list[Event]:
        return [
            Event(
                f"{next(serial)}-0",
                from_wire({"kind": "task_run", "id": i, "state": state, "ts": 1000.0, "record": record, **extra}),
            )
            for i in ids
        ]

    def statements(ids: list[str]) -> tuple[int, int]:
        counts = []
        begun = {"flow_run_id": flow_id, "root": flow_id, "name": "mod.work", "label": "work\x00", "worker": "w1"}
        begun |= {"created": 999.0}
        for batch in (
            events(ids, "Running", begun | {"started": 1001.0, "attempts": 1}),
            events(ids, "Failed", {"ended": 1002.0, "traceback": "Traceback\nValueError: x"}, message="bad\x00"),
        ):
            counts.append(statements_of(engine, functools.partial(recorder.apply, batch)))
            with Session(engine) as session:  # another writer, between the batches: a column the recorder keeps
                session.execute(update(TaskRun).where(TaskRun.id.in_(ids)).values(cache_key="theirs"))  # type: ignore[attr-defined]
                session.commit()
        return counts[0], counts[1]

    many = [f"t-{uuid.uuid4()}" for _ in range(20)]
    assert statements(many) == statements([f"t-{uuid.uuid4()}"])
    with Session(engine) as session:
        rows = session.exec(select(TaskRun).where(TaskRun.id.in_(many))).all()  # type: ignore[attr-defined]
    assert len(rows) == 20
    assert {
        (r.flow_run_id, r.root_id, r.task_name, r.label, r.worker, r.attempts, r.state, r.state_message) for r in rows
    } == {(flow_id, "", "mod.work", "work", "w1", 1, "Failed", "bad")}
    assert {(r.created, r.started, r.ended, r.cache_key, r.traceback) for r in rows} == {
        (999.0, 1001.0, 1002.0, "theirs", "Traceback\nValueError: x")
    }


def test_recorder_gathers_events_for_a_while_after_a_small_batch_not_after_a_full_one(
    redis_url: str, tmp_path: Path
) -> None:
    """A batch costs about the same for 1 event as for 50: after a batch smaller than a full one the
    recorder waits ``gather_seconds`` before reading again, so a steady trickle of events is recorded
    in a few batches a second, not one batch per event; after a full batch it reads again at once."""
    import itertools
    import threading
    import time

    from api.db import engine_for, migrate
    from api.services.recorder import Recorder

    url = f"sqlite:///{tmp_path / 'gather.db'}"
    migrate(url)
    recorder = Recorder(RunStore(redis_url), engine_for(url), consumer=f"gather-{uuid.uuid4().hex[:6]}", batch_size=10)
    recorder.gather_seconds = 0.3
    stop = threading.Event()

    def steps(handled: int) -> list[float]:
        reads: list[float] = []

        def step(block_ms: int = 1000) -> int:
            reads.append(time.monotonic())
            if len(reads) == 4:
                stop.set()
            return handled

        recorder.step = step  # type: ignore[method-assign]
        stop.clear()
        recorder.run(stop)
        return [later - earlier for earlier, later in itertools.pairwise(reads)]

    assert min(steps(3)) >= 0.3  # a small batch: the next read waits
    assert max(steps(10)) < 0.3  # a full one: the next read follows at once
