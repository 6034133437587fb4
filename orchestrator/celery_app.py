"""The Celery configuration a careful operator would choose, in one place.

Clients use :func:`client_app` to send messages by task name; the worker app in
``workers.app`` is built by the same :func:`make_celery_app`, so both sides always
agree on serializers, acks and routing.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from celery import Celery
from celery.backends.redis import RedisBackend

from .settings import Settings, get_settings


class QuietRedisBackend(RedisBackend):  # type: ignore[misc]
    """Redis result backend that does not subscribe to every task it sends.

    Celery's Redis backend subscribes the sender to each sent task's result so that
    ``AsyncResult.get()`` works; we never wait on Celery results (run state lives in
    our own keys), so those subscriptions would only cost time and connections.
    """

    def on_task_call(self, producer: Any, task_id: str) -> None:
        return None

    def add_pending_result(self, result: Any, weak: bool = False, start_drainer: bool = True) -> Any:
        return result

    def remove_pending_result(self, result: Any) -> Any:
        return result


def backend_url(url: str) -> str:
    """Route redis:// and rediss:// result backends to :class:`QuietRedisBackend`."""
    if url.startswith(("redis://", "rediss://")):
        return f"{__name__}:QuietRedisBackend+{url}"
    return url


def make_celery_app(main: str = "orchestrator", settings: Settings | None = None) -> Celery:
    """A Celery app configured for the orchestrator (JSON only, late acks, events on)."""
    s = settings or get_settings()
    backend = backend_url(s.result_backend_url or s.redis_url)
    app = Celery(main, broker=s.broker_url or s.redis_url, backend=backend)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_acks_late=True,  # a task lost with its worker is redelivered
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,  # long tasks do not sit behind each other
        worker_send_task_events=True,  # Flower sees every task
        task_send_sent_event=True,
        task_default_queue=s.default_queue,
        task_create_missing_queues=True,
        result_expires=3600,  # canvas bookkeeping only; results live in our own keys
        broker_transport_options={"visibility_timeout": s.visibility_timeout_seconds},
        result_backend_transport_options={"visibility_timeout": s.visibility_timeout_seconds},
        broker_connection_retry_on_startup=True,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        enable_utc=True,
    )
    return app


@lru_cache(maxsize=1)
def client_app() -> Celery:
    """The app a client process uses to send runs (no tasks registered)."""
    return make_celery_app("orchestrator-client")
