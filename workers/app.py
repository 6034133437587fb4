"""The worker's Celery app: ``celery -A workers.app worker -Q default``.

Importing this module builds the app with the orchestrator's Celery settings,
registers the built-in tasks, registers every ``@task`` under its own name (also
ones imported later), and imports the flow modules named by
``ORCHESTRATOR_FLOW_MODULES`` (``orchestrator worker start --flows`` sets it).
"""

from __future__ import annotations

import importlib
import logging
import socket
import sys
from typing import Any

from celery import signals

from orchestrator.authoring import registry
from orchestrator.config.settings import get_settings
from orchestrator.errors import DefinitionError
from orchestrator.guards.limits import queues_problem
from orchestrator.runstate.store import ride_out_outages
from orchestrator.transport.celery_app import make_celery_app, tolerate_redis_outages
from orchestrator.transport.messaging import CeleryMessaging

from .announce import Announcer
from .body_admission import hand_over_bodies
from .celery_tasks import record_revoked, record_unknown, register_builtin_tasks, register_user_task
from .delayed import BEAT_SECONDS, DelayedSender
from .logship import install as install_log_shipper
from .quiet_events import publish_events_quietly
from .redis_transport import survive_lost_redis
from .visibility import KeepVisible, refresh_interval

# A Redis restart (or failover) shorter than this is waited out by a running worker's own Redis
# calls: a task ending meanwhile records its end, sends what follows and counts its chord part
# once Redis is back, instead of failing and leaving its flow run Running forever.
REDIS_OUTAGE_SECONDS = 60.0
log = logging.getLogger(__name__)
app = make_celery_app("workers")
log_shipper = install_log_shipper()
registry.on_task_registered(lambda task: log_shipper.follow(task.fn.__module__))  # the task module's own logger
register_builtin_tasks(app)
registry.on_task_registered(lambda task: register_user_task(app, task))
_announcer = Announcer()
_held_messages = KeepVisible()
_delayed_sender = DelayedSender(
    app,
    periodic=[
        (BEAT_SECONDS, _announcer.beat),
        (refresh_interval(get_settings().visibility_timeout_seconds), _held_messages.refresh),
    ],
)


@signals.worker_init.connect
def _ride_out_redis_outages(**_: object) -> None:
    """In a worker (main process, before its pool forks): wait for a restarting Redis.

    Only a running worker: a process that merely imports this app (a test, Flower, a script
    sending plain Celery tasks) keeps failing at once when Redis is away.
    """
    ride_out_outages(REDIS_OUTAGE_SECONDS)
    tolerate_redis_outages(app, REDIS_OUTAGE_SECONDS)
    survive_lost_redis()  # neither exit nor give back the messages of running tasks when Redis is lost
    publish_events_quietly(app.conf.event_exchange)  # the main process never waits on an event's reply


@signals.celeryd_after_setup.connect
def _refuse_reserved_queues(sender: Any = None, instance: Any = None, **_: object) -> None:
    """Stop before consuming when ``-Q`` names a queue whose Redis key belongs to someone else
    (``orc:events`` is the event stream, ``orc:frdone:<id>`` a run's completion latch): consuming
    it would eat another part's data or kill the worker with a Redis type error."""
    names = list(getattr(getattr(getattr(instance, "app", None), "amqp", None), "queues", {}) or [])
    problem = queues_problem(names)
    if problem:
        log.critical("worker %s: %s", sender, problem)
        raise SystemExit(f"worker {sender}: {problem}")  # a signal handler's Exception would only be logged


@signals.worker_ready.connect
def _start_delayed_sender(sender: Any = None, **_: object) -> None:
    """Announce this worker (queues, flows), then send due retries and pokes and keep alive."""
    _held_messages.consumer = sender  # from now on, the messages it holds are kept from ageing
    queues = [q.name for q in getattr(getattr(sender, "task_consumer", None), "queues", [])]
    _announcer.announce(str(getattr(sender, "hostname", "") or socket.gethostname()), queues)
    _delayed_sender.start()


@signals.task_revoked.connect
def _record_revoked(sender: object = None, request: object = None, terminated: bool = False, **_: object) -> None:
    """A revoked task never reaches the executor: record it Cancelled so its run still ends."""
    record_revoked(app, request, terminated)


@signals.task_unknown.connect
def _record_unknown(sender: Any = None, message: Any = None, name: str = "", id: str = "", **_: object) -> None:
    """Celery drops a message for an unregistered task; the run is told instead of hanging."""
    record_unknown(app, message, name, id, str(getattr(sender, "hostname", "") or socket.gethostname()))


@signals.worker_process_shutdown.connect
def _hand_over_bodies_of_pool_process(**_: object) -> None:
    """A pool process exits (warm shutdown, a recycled child): its dynamic bodies resume elsewhere now."""
    _hand_over_bodies()


def _hand_over_bodies() -> None:
    try:
        handed = hand_over_bodies(CeleryMessaging(app))
    except Exception:  # Redis away: the crash detector resumes them after the crash window instead
        log.exception("could not hand dynamic flow bodies over; they resume after the crash window")
        return
    if handed:
        log.warning("handed %d dynamic flow bodies over to other workers", handed)


@signals.worker_shutdown.connect
def _stop_delayed_sender(**_: object) -> None:
    _hand_over_bodies()  # the solo and threads pools drive bodies in this process
    _delayed_sender.stop()
    log_shipper.flush()
    _announcer.leave()


def import_flow_modules(modules: list[str]) -> None:
    """Import the modules whose flows and tasks this worker runs; fail loudly if one is missing."""
    if "" not in sys.path:
        sys.path.insert(0, "")  # like `python -m`: modules in the current directory import
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise DefinitionError(
                f"worker cannot import flow module {name!r}: {exc}. Check the name given to "
                "--flows / ORCHESTRATOR_FLOW_MODULES and that it is installed or on PYTHONPATH."
            ) from exc


import_flow_modules(get_settings().flow_modules)
