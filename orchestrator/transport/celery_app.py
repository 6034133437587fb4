"""The Celery configuration a careful operator would choose, in one place.

Clients use :func:`client_app` to send messages by task name; the worker app in
``workers.app`` is built by the same :func:`make_celery_app`, so both sides always
agree on serializers, acks and routing.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from celery import Celery
from celery.app.amqp import AMQP
from celery.backends.redis import RedisBackend, SentinelBackend

from orchestrator.config.redis_urls import is_sentinel_url, parse_sentinel_url
from orchestrator.config.settings import Settings, get_settings
from orchestrator.config.tls import tls_options_for
from orchestrator.runstate.store import outage_retry


class SendOnly:
    """Result backend behaviour for a process that sends canvas but never waits on Celery results.

    Celery's client side subscribes to the result channel of every chord header it
    sends (and of every task whose result is not ignored) so that ``.get()`` works.
    The orchestrator client reads run state from its own keys, so those subscriptions
    would only cost time and connections. Only :func:`client_app` uses this backend;
    the worker app keeps Celery's usual one, so plain Celery tasks there behave as ever.
    """

    def on_task_call(self, producer: Any, task_id: str) -> None:
        return None

    def add_pending_result(self, result: Any, weak: bool = False, start_drainer: bool = True) -> Any:
        return result

    def remove_pending_result(self, result: Any) -> Any:
        return result


class OutageTolerant:
    """Result backend behaviour that can ride out a Redis restart or failover (the worker app's).

    Celery counts a chord's finished parts here (``on_chord_part_return``); a count that fails
    because Redis is restarting marks the chord failed, and the body (the task after a
    fan-in) never runs, so the flow run would wait forever. After :func:`tolerate_redis_outages`
    its connections retry like the worker's run store (:func:`orchestrator.runstate.store.ride_out_outages`);
    until then it is Celery's Redis backend, unchanged.
    """

    app: Celery

    def _create_client(self, **params: Any) -> Any:
        seconds = float(self.app.conf.get("orchestrator_outage_seconds") or 0)
        return super()._create_client(**params, **outage_retry(seconds))  # type: ignore[misc]


class SendOnlyRedisBackend(SendOnly, RedisBackend):  # type: ignore[misc]
    """:class:`SendOnly` on one Redis."""


class SendOnlySentinelBackend(SendOnly, SentinelBackend):  # type: ignore[misc]
    """:class:`SendOnly` on the master a Sentinel group names."""


class OutageTolerantRedisBackend(OutageTolerant, RedisBackend):  # type: ignore[misc]
    """:class:`OutageTolerant` on one Redis."""


class OutageTolerantSentinelBackend(OutageTolerant, SentinelBackend):  # type: ignore[misc]
    """:class:`OutageTolerant` on the master a Sentinel group names: a chord part counted while the
    sentinels fail the master over waits for the new one (its connections ask them again)."""


class JsonArgumentsAMQP(AMQP):  # type: ignore[misc]
    """Celery's message builder for apps that send only orchestrator messages (client and API).

    Every message carries a text of its arguments for Flower and the worker's log; Celery
    makes it with ``saferepr``, which guards against arbitrary objects and was the largest
    single cost of sending a group (1.0 s of the client's 5.9 s for 5,000 tasks). An
    orchestrator message's arguments are plain JSON data, so the builtin ``repr`` gives the
    same text, cut at the same length. The worker app also serves plain Celery tasks and
    keeps Celery's builder.
    """

    def as_task_v2(
        self, task_id: str, name: str, args: Any = None, kwargs: Any = None, *more: Any, **options: Any
    ) -> Any:
        if options.get("argsrepr") is None:
            options["argsrepr"] = self._args_text(args)
        if options.get("kwargsrepr") is None:
            options["kwargsrepr"] = self._kwargs_text(kwargs)
        return super().as_task_v2(task_id, name, args, kwargs, *more, **options)

    def reprs(self, args: Any, kwargs: Any) -> tuple[str, str]:
        """The argsrepr and kwargsrepr :meth:`as_task_v2` writes for these arguments (a message
        template writes them the same way: ``message_templates.py``)."""
        return self._args_text(args), self._kwargs_text(kwargs)

    def _args_text(self, args: Any) -> str:
        return _cut(repr(tuple(args or ())), self.argsrepr_maxsize)

    def _kwargs_text(self, kwargs: Any) -> str:
        return _cut(repr(dict(kwargs or {})), self.kwargsrepr_maxsize)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _backend(url: str, behaviour: str) -> str:
    """Route a redis://, rediss:// or (translated) sentinel:// backend URL to the ``behaviour``
    class (``SendOnly`` or ``OutageTolerant``) of its kind; any other backend stays Celery's."""
    if url.startswith(("redis://", "rediss://")):
        return f"{__name__}:{behaviour}RedisBackend+{url}"
    if url.startswith("sentinel://"):
        return f"{__name__}:{behaviour}SentinelBackend+{url}"
    return url


def celery_redis_url(url: str) -> tuple[str, dict[str, Any]]:
    """A broker or backend URL as Celery takes it, and the transport options it needs.

    ``redis+sentinel://`` (:mod:`orchestrator.config.redis_urls`) becomes kombu's
    ``sentinel://h1:26379;sentinel://h2:26379/<db>`` with the master's name (and the sentinels'
    own credentials) as options; every other URL is Celery's own and passes unchanged.
    """
    if not is_sentinel_url(url):
        return url, {}
    where = parse_sentinel_url(url)
    return where.celery_url(), where.transport_options()


def _is_amqp(url: str) -> bool:
    """Whether ``url`` names an AMQP broker (RabbitMQ): py-amqp's ``confirm_publish`` applies to it."""
    return url.startswith(("amqp://", "amqps://", "pyamqp://"))


def make_celery_app(
    main: str = "orchestrator", settings: Settings | None = None, *, send_only: bool = False, sent_events: bool = True
) -> Celery:
    """A Celery app configured for the orchestrator (JSON only, late acks, events on).

    ``sent_events=False`` skips the task-sent event (one Redis PUBLISH per message): the
    API uses it for start messages, which Flower then shows from the moment a worker
    receives them.
    """
    s = settings or get_settings()
    backend_url, backend_options = celery_redis_url(s.result_backend_url or s.redis_url)
    broker_url, broker_options = celery_redis_url(s.broker_url or s.redis_url)
    backend = _backend(backend_url, "SendOnly" if send_only else "OutageTolerant")
    app = Celery(main, broker=broker_url, backend=backend, amqp=JsonArgumentsAMQP if send_only else None)
    # rediss://: the broker and the result backend verify Redis's certificate as the run store does
    # (kombu alone would connect with CERT_NONE, and Celery's backend refuse to start).
    if broker_tls := tls_options_for(broker_url, s):
        app.conf.broker_use_ssl = broker_tls
    if backend_tls := tls_options_for(backend_url, s):
        app.conf.redis_backend_use_ssl = backend_tls
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_acks_late=True,  # a task lost with its worker is redelivered
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,  # long tasks do not sit behind each other
        worker_send_task_events=True,  # Flower sees every task
        task_send_sent_event=sent_events,
        task_default_queue=s.default_queue,
        task_create_missing_queues=True,
        result_expires=3600,  # orchestrator tasks ignore results (they live in our own keys);
        # plain Celery tasks on the same app keep Celery's usual result behaviour
        broker_transport_options={"visibility_timeout": s.visibility_timeout_seconds, **broker_options}
        | ({"confirm_publish": True} if s.broker_confirm_publish and _is_amqp(broker_url) else {}),
        result_backend_transport_options={"visibility_timeout": s.visibility_timeout_seconds, **backend_options},
        broker_connection_retry_on_startup=True,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        enable_utc=True,
    )
    return app


def tolerate_redis_outages(app: Celery, seconds: float) -> None:
    """Make ``app`` wait up to about ``seconds`` for a restarting Redis when it sends a message
    (the next task of a chain, a join, a retry) or counts a chord part, instead of failing.

    A running worker calls it (``workers/app.py``, with the run store's
    :func:`orchestrator.runstate.store.ride_out_outages`), before it sends or counts anything: a task
    that ends during a Redis restart still starts what comes after it. Celery's defaults give
    up on sending after about 0.6 s and on counting at once.
    """
    app.conf.orchestrator_outage_seconds = seconds  # read by OutageTolerantRedisBackend
    app.conf.task_publish_retry_policy = {
        "max_retries": int(seconds) + 3,
        "interval_start": 0,
        "interval_step": 0.2,
        "interval_max": 1,
    }


@lru_cache(maxsize=1)
def client_app() -> Celery:
    """The app a client process uses to send runs (no tasks registered)."""
    return make_celery_app("orchestrator-client", send_only=True)
