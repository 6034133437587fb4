"""The one seam that owns messaging: what the product sends to the fleet, and the Celery that sends it.

Run logic (``orchestrator.runs``) and the API speak to the fleet through a
:class:`Messaging`: send a run's start message, a compiled canvas, tasks that
became ready, a flow retry; revoke running tasks; tell Flower how task runs ended that
Celery saw no end of. :class:`CeleryMessaging` is its one implementation; only this
package, the compiler (which builds canvas) and the workers' Celery glue import Celery.

Delayed sends (a flow's deadline, its next attempt after ``retry_delay_seconds``)
wait in Redis as serialized messages (``RunStore.schedule``) until a worker's
delayed-message sender (workers/delayed.py) sends them; :func:`flow_deadline_message` and
:func:`retry_flow_run_message` make those messages, so their format is written here
too.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from celery import Celery
from celery.canvas import Signature, group
from kombu.transport import redis as kombu_redis

from orchestrator.planning.compiler import (
    FLOW_DEADLINE_TASK,
    RETRY_FLOW_RUN_TASK,
    START_FLOW_RUN_TASK,
    Compiled,
    compile_plan,
    make_signature,
)
from orchestrator.runstate.store import server_of
from orchestrator.states import StateType
from orchestrator.transport.celery_app import client_app, make_celery_app
from orchestrator.transport.envelope import EnvelopeProducer
from orchestrator.transport.message_templates import group_members, per_message, templates_of

if TYPE_CHECKING:
    from orchestrator.planning.plan import Plan

log = logging.getLogger(__name__)

Canvas = Any
"""A compiled canvas (``Compiled.canvas``): opaque outside the seam, sent with :meth:`Messaging.send_canvas`."""

SignatureData = dict[str, Any]
"""One message as JSON data (a serialized Celery signature: a task, or a whole canvas segment)."""


@dataclass(frozen=True)
class Start:
    """The start message of one flow run whose record exists: a worker of ``queue`` traces or drives it."""

    flow: str
    run_id: str
    queue: str
    dynamic: bool = False


@dataclass(frozen=True)
class TaskRunEnd:
    """A task run that became final where Celery cannot tell (see :meth:`Messaging.report_ends`)."""

    task_run_id: str  # the Celery task id
    task_name: str  # the Celery task name ('' when unknown): Flower lists the task under it
    state: StateType
    message: str


def celery_event(end: TaskRunEnd) -> tuple[str, dict[str, Any]]:
    """The Celery task event closest to ``end``'s state, with our state named in its text.

    Completed and Skipped are SUCCESS (a skip is no error; the result says "Skipped: why"),
    Cancelled is REVOKED, every other final state FAILURE (the exception says "UpstreamFailed:
    why", "Crashed: why"...). Flower shows the text as the task's result or exception.
    """
    text = f"{end.state.value}: {end.message}" if end.message else end.state.value
    if end.state in (StateType.COMPLETED, StateType.SKIPPED):
        return "task-succeeded", {"result": text, "runtime": 0.0}
    if end.state is StateType.CANCELLED:
        return "task-revoked", {"terminated": False, "signum": None, "expired": False, "exception": text}
    return "task-failed", {"exception": text, "traceback": ""}


@runtime_checkable
class Messaging(Protocol):
    """What the product sends to the fleet (see the module's docstring)."""

    def compile(self, plan: Plan) -> Compiled:
        """Compile ``plan`` into canvas this messaging sends (``Compiled.canvas`` goes to :meth:`send_canvas`)."""
        ...

    def send_start(self, flow_name: str, run_id: str, queue: str, *, dynamic: bool) -> None:
        """Ask a worker of ``queue`` to start a flow run (task id ``start-<run id>``)."""
        ...

    def send_starts(self, starts: Sequence[Start]) -> None:
        """Send many start messages at once (one connection; one Redis pipeline where kombu can)."""
        ...

    def send_canvas(self, canvas: Canvas) -> None:
        """Send a compiled canvas (results ignored: they live in the run store)."""
        ...

    def captured_canvas(self, canvas: Canvas, server: tuple[Any, ...] | None) -> list[BrokerWrite] | None:
        """The Redis commands :meth:`send_canvas` would run, captured and not run, for a caller that runs
        them in a round trip it makes anyway (:func:`captured_sends`); None, and nothing sent, when
        they cannot be (the caller then sends the canvas)."""
        ...

    def send_signature(self, data: SignatureData) -> None:
        """Send one serialized message with exactly the options it carries (a crashed task's next attempt)."""
        ...

    def send_signatures(self, signatures: Iterable[SignatureData]) -> None:
        """Send serialized messages that became ready (joins, tolerant downstream tasks), results ignored."""
        ...

    def send_retry_flow_run(self, run_id: str, attempt: int, queue: str) -> None:
        """Ask a worker of ``queue`` to run attempt ``attempt`` of a flow run now."""
        ...

    def revoke(self, task_ids: list[str], *, terminate: bool) -> None:
        """Revoke tasks by id (``terminate``: stop them where they run)."""
        ...

    def report_ends(self, ends: Sequence[TaskRunEnd], hostname: str) -> None:
        """Tell the monitor (Flower, through Celery's task events) how task runs ended that Celery
        saw no end of, from the process that decides it: ones that never ran (UpstreamFailed or
        Skipped downstream, Cancelled before they were sent), executions that stop without an
        outcome (a skip) and ones whose worker died (Crashed). ``hostname`` is the worker that
        decided ('' in another process: Celery's own name for it, which Flower lists as a worker)."""
        ...


BrokerWrite = tuple[str, str, Any]
"""One Redis command a message send is made of: ``('lpush', queue key, message)`` or
``('publish', event channel, event)`` (kombu's Redis transport, see :func:`captured_sends`)."""

CAPTURABLE = frozenset({"lpush", "publish"})

CANVAS_OPTIONS: dict[str, Any] = {"ignore_result": True}
"""What a compiled canvas is sent with: its results live in the run store."""


class _Capture:
    """Stands in for kombu's producer batch (kombu >= 5.7): the Redis transport hands it each
    message's final commands (``add``) instead of running them, and nothing is sent."""

    def __init__(self) -> None:
        self.writes: list[BrokerWrite] = []
        self.aborted = False

    def publish(self, channel: Any, message: Any, **kwargs: Any) -> Any:
        return channel.basic_publish(message, _publish_batch=self, **kwargs)

    def add(self, name: str, *args: Any) -> None:
        self.writes.append((name, *args))  # type: ignore[arg-type]

    def flush(self) -> None:
        """Nothing to send: the caller runs the writes."""

    def abort(self) -> None:
        self.aborted = True

    def close(self) -> None:
        """Nothing held."""


def _shares_redis(channel: Any, server: tuple[Any, ...] | None) -> bool:
    """Whether ``channel`` is kombu's plain Redis channel on the database ``server`` names, its keys
    unprefixed: then commands a run-store call runs land where kombu would have put them."""
    plain = isinstance(channel, kombu_redis.Channel) and not isinstance(channel, kombu_redis.SentinelChannel)
    if server is None or not plain:
        return False
    if getattr(channel, "global_keyprefix", "") or not hasattr(channel, "create_publish_batch"):
        return False
    return server_of(channel.pool.connection_kwargs) == server


def captured_sends(
    app: Celery,
    send: Callable[[Any], None],
    server: tuple[Any, ...] | None,
    *,
    connected_only: bool = False,
    envelope: bool = True,
) -> list[BrokerWrite] | None:
    """The Redis commands ``send(producer)`` would run to send its messages (and their task-sent
    events), captured and not run, for a caller that runs them in a round trip it makes anyway
    (a task run's end, in ``lua/finish_task_run.lua``). None, and nothing sent, when they cannot be
    captured: a broker other than a plain Redis on the run store's database ``server`` (see
    :meth:`RunStore.server`), a kombu without producer batches, or a send that needs more than
    ``LPUSH`` and ``PUBLISH`` (queue expiry, say); the caller then sends as usual.

    ``connected_only``: None too while the producer holds no broker connection yet (checked before
    anything opens one, see :meth:`CeleryMessaging.captured_canvas`), with the one producer this
    takes anyway: a second acquire from kombu's pool cost about 20 µs of every ``.delay()``.

    ``envelope``: ``send`` is handed an :class:`~orchestrator.transport.envelope.EnvelopeProducer`,
    which writes a plain message's commands itself and hands the rest to kombu (False: kombu
    writes every one, as tests compare)."""
    with app.producer_or_acquire() as producer:
        local = getattr(producer, "_batch_local", None)
        if local is None or (connected_only and not producer.connection.connected):
            return None
        if getattr(local, "current", None) is not None or not _shares_redis(producer.channel, server):
            return None
        capture = _Capture()
        local.current = capture
        try:
            send(EnvelopeProducer(producer, capture) if envelope else producer)
        finally:
            del local.current
    if capture.aborted or any(write[0] not in CAPTURABLE for write in capture.writes):
        return None
    return capture.writes


def acknowledgement(app: Celery, delivery_tag: Any, server: tuple[Any, ...] | None) -> list[BrokerWrite]:
    """The Redis commands that acknowledge a message a worker took from ``app``'s broker, for a run-store
    script to run with the end of its task run (``lua/finish_task_run.lua``): kombu's Redis transport
    holds a taken message in its unacked index and record until it is acknowledged, and acknowledging
    is taking it out of both. [] when the broker is not a plain Redis on the run store's database
    ``server`` (then the worker's main process acknowledges, as Celery does), or the message has no
    delivery tag."""
    keys = _unacked_keys(app, server)
    if keys is None or not isinstance(delivery_tag, str) or not delivery_tag:
        return []
    index, record = keys
    return [("zrem", index, delivery_tag), ("hdel", record, delivery_tag)]


@lru_cache(maxsize=8)
def _unacked_keys(app: Celery, server: tuple[Any, ...] | None) -> tuple[str, str] | None:
    """The broker channel's unacked index and record keys (transport options may rename them), or None
    when its Redis is not the run store's: asked once per app and database, as neither changes."""
    with app.producer_or_acquire() as producer:
        channel = producer.channel
        if not _shares_redis(channel, server):
            return None
        return str(channel.unacked_index_key), str(channel.unacked_key)


def _sender(signature: Any, args: tuple[Any, ...], options: dict[str, Any]) -> Callable[[Any], None]:
    def send(producer: Any) -> None:
        signature.apply_async(args, **options, producer=producer)

    return send


def only_pushes(canvas: Canvas) -> bool:
    """Whether sending ``canvas`` with a producer does nothing but push its messages through that
    producer: one task, or a group of tasks. Not a chord (the result backend counts its header),
    nor a chain: Celery's ``chain.run`` drops the producer it is given and sends its first task
    through another, so a capture would not catch it and the message would go out at once."""
    if type(canvas) is Signature:
        return True
    return type(canvas) is group and all(type(task) is Signature for task in canvas.tasks)


@contextlib.contextmanager
def batched_producer(app: Celery) -> Iterator[Any]:
    """A producer of ``app`` whose messages (and their task-sent events) kombu >= 5.7 sends in
    pipelined batches when the block ends: a few round trips instead of two per message. Older
    kombu sends them one by one."""
    with app.producer_or_acquire() as producer:
        batch = getattr(producer, "batch", None)
        with batch() if batch is not None else contextlib.nullcontext():
            yield producer


class CeleryMessaging:
    """:class:`Messaging` over a Celery app (the client's, the API's or a worker's own)."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    def __repr__(self) -> str:
        return f"<CeleryMessaging {self.app.main}>"

    def compile(self, plan: Plan) -> Compiled:
        return compile_plan(plan, self.app)

    def start_signature(self, flow_name: str, run_id: str, queue: str, *, dynamic: bool) -> Any:
        """The start message of a flow run (a Celery signature)."""
        kwargs = {"flow": flow_name, "run_id": run_id, "dynamic": dynamic}
        return make_signature(START_FLOW_RUN_TASK, kwargs, queue=queue, task_id=f"start-{run_id}", app=self.app)

    def send_start(self, flow_name: str, run_id: str, queue: str, *, dynamic: bool) -> None:
        self.start_signature(flow_name, run_id, queue, dynamic=dynamic).apply_async()

    def send_starts(self, starts: Sequence[Start]) -> None:
        if not starts:
            return
        with batched_producer(self.app) as producer:
            for start in starts:
                sig = self.start_signature(start.flow, start.run_id, start.queue, dynamic=start.dynamic)
                sig.apply_async(producer=producer)

    def send_canvas(self, canvas: Canvas) -> None:
        with batched_producer(self.app) as producer:
            canvas.apply_async(**CANVAS_OPTIONS, producer=producer)

    def captured_canvas(self, canvas: Canvas, server: tuple[Any, ...] | None) -> list[BrokerWrite] | None:
        """Only while this app's producer holds a broker connection already (``connected_only``). A
        capture needs one (kombu's Redis channel pings as it opens), and opening the first one retries
        a broker that is away for seconds: a first send takes the usual path, whose first step (the
        records' write) finds a Redis that is away at once and says so (``ConnectionProblem``)."""
        if not only_pushes(canvas):
            return None
        if type(canvas) is Signature:
            return self.captured_signatures([canvas], CANVAS_OPTIONS, server)
        templates = templates_of(self.app)  # watched sends are Celery's: no members frozen for nothing
        members = group_members(canvas, CANVAS_OPTIONS) if templates.quiet(CANVAS_OPTIONS) else None
        if members is not None:
            written = templates.all_writes(members[0], members[1], server)
            if written is not None:
                return written

        def send(producer: Any) -> None:
            canvas.apply_async(**CANVAS_OPTIONS, producer=producer)

        captured = captured_sends(self.app, send, server, connected_only=True)
        if captured is not None and members is not None:
            messages = per_message(captured)
            if len(messages) == len(members[0]):
                for member, writes in zip(members[0], messages, strict=True):
                    templates.learn(member, members[1], writes, server)
        return captured

    def captured_signatures(
        self,
        signatures: Sequence[Any],
        options: dict[str, Any],
        server: tuple[Any, ...] | None,
        args: tuple[Any, ...] = (),
        *,
        connected_only: bool = True,
    ) -> list[BrokerWrite] | None:
        """The Redis commands ``signature.apply_async(args, **options)`` would run for each of
        ``signatures`` (one task each), as :meth:`captured_canvas`: each written from its shape's
        template where one is trusted (``message_templates.py``: the same bytes, a tenth of the
        CPU), else captured from Celery's own send, which the template learns from. None, and
        nothing sent, when one cannot be captured (:func:`captured_sends`, ``connected_only`` as there)."""
        templates = templates_of(self.app)
        writes: list[BrokerWrite] = []
        for signature in signatures:
            written = templates.writes(signature, options, server, args)
            if written is None:
                send = _sender(signature, args, options)
                written = captured_sends(self.app, send, server, connected_only=connected_only)
                if written is None:
                    return None
                templates.learn(signature, options, written, server, args)
            writes.extend(written)
        return writes

    def send_signature(self, data: SignatureData) -> None:
        self.app.signature(data).apply_async()

    def send_signatures(self, signatures: Iterable[SignatureData]) -> None:
        ready = list(signatures)
        if not ready:  # the usual case: every task's end asks, few have anything to send
            return
        with batched_producer(self.app) as producer:
            for data in ready:
                self.app.signature(data).apply_async(ignore_result=True, producer=producer)

    def send_retry_flow_run(self, run_id: str, attempt: int, queue: str) -> None:
        kwargs = {"run_id": run_id, "attempt": attempt}
        make_signature(RETRY_FLOW_RUN_TASK, kwargs, queue=queue, app=self.app).apply_async()

    def revoke(self, task_ids: list[str], *, terminate: bool) -> None:
        self.app.control.revoke(task_ids, terminate=terminate)

    def report_ends(self, ends: Sequence[TaskRunEnd], hostname: str) -> None:
        """Send one Celery task event per end (``hostname`` '': Celery names this process itself).

        Only a monitor reads these: a broker that refuses them is logged, never raised, so the
        run's own bookkeeping around the report goes on.
        """
        if not ends:
            return
        try:
            with self.app.events.default_dispatcher(hostname=hostname or None) as dispatcher:
                for end in ends:
                    kind, fields = celery_event(end)
                    named = {"name": end.task_name} if end.task_name else {}
                    dispatcher.send(kind, uuid=end.task_run_id, **named, **fields)
        except Exception:
            log.warning("could not tell Flower how %d task runs ended", len(ends), exc_info=True)


def flow_deadline_message(run_id: str, timeout: float, queue: str) -> SignatureData:
    """The message that ends a flow run TimedOut (sent by a worker of ``queue`` when it is due)."""
    return dict(make_signature(FLOW_DEADLINE_TASK, {"run_id": run_id, "timeout": timeout}, queue=queue))


def start_flow_run_message(flow_name: str, run_id: str, queue: str) -> SignatureData:
    """The start message of a flow run whose record exists, to send later through the delayed set
    (a child run a plan node starts: written in the same transaction as the child's record)."""
    kwargs = {"flow": flow_name, "run_id": run_id, "dynamic": False}
    return dict(make_signature(START_FLOW_RUN_TASK, kwargs, queue=queue, task_id=f"start-{run_id}"))


def retry_flow_run_message(run_id: str, attempt: int, queue: str) -> SignatureData:
    """The message that starts attempt ``attempt`` of a flow run (sent by a worker of ``queue`` when it is due)."""
    return dict(make_signature(RETRY_FLOW_RUN_TASK, {"run_id": run_id, "attempt": attempt}, queue=queue))


@lru_cache(maxsize=1)
def _client_messaging(app: Celery) -> CeleryMessaging:
    return CeleryMessaging(app)


def client_messaging() -> CeleryMessaging:
    """The messaging a client process sends runs with (over :func:`client_app`, and cached with it)."""
    return _client_messaging(client_app())


@lru_cache(maxsize=1)
def sender_messaging() -> CeleryMessaging:
    """The API's messaging: start messages without task-sent events (one round trip less), like revokes and resends."""
    return CeleryMessaging(make_celery_app("orchestrator-api", send_only=True, sent_events=False))
