"""One settings object for the whole product, read from ``ORCHESTRATOR_*`` variables.

Every process (client, worker, API) builds the same :class:`Settings`, so a single
environment variable changes behaviour everywhere at once.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from orchestrator.config.redis_urls import check_redis_url
from orchestrator.guards.redaction import masked_url

LOGGER_NAME = re.compile(r"[A-Za-z_][\w-]*(\.[A-Za-z_][\w-]*)*")  # a dotted logger name: sqlalchemy.engine
FINISHED_GRACE_MARGIN = 900  # seconds a completed run tree's bookkeeping outlives its last late message (Settings)


class Settings(BaseSettings):
    """URLs and tunables; each field is ``ORCHESTRATOR_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(
        env_prefix="ORCHESTRATOR_",
        extra="ignore",
        hide_input_in_errors=True,  # a URL may carry a password
    )

    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        description="Redis holding run state, results and the event stream: redis://, rediss:// (TLS), or "
        "redis+sentinel://[:password@]host1:26379,host2:26379/<master name>/<db> for a Redis behind Sentinel.",
    )
    broker_url: str | None = Field(
        default=None,
        description="Celery broker; defaults to redis_url. A redis+sentinel:// URL is turned into kombu's form.",
    )
    result_backend_url: str | None = Field(
        default=None,
        description="Celery result backend (chord counting); defaults to redis_url. A redis+sentinel:// URL is "
        "turned into Celery's form.",
    )
    redis_tls_ca_file: str | None = Field(
        default=None,
        description="rediss:// only: the CA file that signed Redis's certificate (default: the system's CAs).",
    )
    redis_tls_cert_file: str | None = Field(
        default=None, description="rediss:// only: a client certificate, when Redis asks for one."
    )
    redis_tls_key_file: str | None = Field(default=None, description="rediss:// only: the client certificate's key.")
    redis_tls_verify: bool = Field(
        default=True,
        description="rediss:// only: verify Redis's certificate and host name (run store, broker and result "
        "backend alike). false is for a test server only.",
    )
    default_queue: str = Field(default="default", description="Queue of flows that name none.")
    flow_modules: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated modules a worker imports at start (its flows and tasks).",
    )
    extra_loggers: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated loggers (sqlalchemy,requests) whose lines a worker ships with the task or "
        "flow run that logs them, as Prefect's PREFECT_LOGGING_EXTRA_LOGGERS; a logger with no level of its own "
        "is set to INFO. The run logger, each task's module logger and Python warnings are shipped anyway.",
    )
    result_ttl_seconds: int = Field(
        default=7 * 24 * 3600, description="How long task results and run records stay in Redis."
    )
    visibility_timeout_seconds: int = Field(
        default=300,
        description="Redis broker visibility timeout: how long a dead worker's messages wait before they are "
        "delivered again. Live workers stamp the messages they hold every few seconds, so a long task is never "
        "delivered twice, and this only has to outlast a worker that stopped answering.",
    )
    broker_confirm_publish: bool = Field(
        default=True,
        description="amqp:// brokers only: every message sent waits for RabbitMQ's publisher confirm, which "
        "comes once a persistent message is on disk, so a broker killed (not only stopped) loses no message it "
        "took. About one broker round trip per message; false trades that for faster sends.",
    )
    events_backlog_warn: int = Field(
        default=100_000,
        ge=1,
        description="Events waiting in the Redis stream for the recorder past which GET /api/health warns. The "
        "stream has no cap (only what the recorder has written is trimmed), so an API down for long keeps every "
        "event, in Redis memory (about 400 bytes for a state change or a short log line), until it is back.",
    )
    max_dynamic_flows_per_process: int = Field(
        default=32, description="Dynamic flow bodies one worker process drives at once."
    )
    max_body_resumes: int = Field(
        default=3,
        ge=0,
        description="Times a dynamic flow body is resumed on another worker after its worker died; one more "
        "and the run ends Crashed (a body that kills its worker every time, by memory say, stops there).",
    )
    local_max_workers: int = Field(
        default=16, description="Threads that run submitted tasks when a flow is called in-process."
    )

    database_url: str = Field(
        default="sqlite:///" + str(Path.home() / ".orchestrator" / "orchestrator.db"),
        description="Database of the API (SQLAlchemy URL): an SQLite file by default, postgresql+psycopg://... "
        "in production.",
    )
    result_storage: str = Field(
        default=str(Path.home() / ".orchestrator" / "results"),
        description="Where persist_result=True keeps task results: a folder or an fsspec URL (s3://bucket/prefix).",
    )
    api_url: str = Field(
        default="http://127.0.0.1:4200/api", description="Where the CLI finds the API (with the /api prefix)."
    )
    api_key: SecretStr | None = Field(
        default=None,
        description="When set, every API request needs 'Authorization: Bearer <key>'; the CLI sends it. "
        "A secret: repr, logs and dumps show '**********' (read it with .get_secret_value()).",
    )
    api_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated Host names the API answers to besides localhost, 127.0.0.1 and [::1] "
        "(a proxy's or a container's name; '.example.com' for its subdomains, '*' for any). Empty: loopback "
        "names only without an API key (no web page can reach the API through a DNS name it controls), any "
        "name with a key.",
    )
    api_root_path: str = Field(
        default="", description="Path prefix when the API sits behind a reverse proxy (e.g. /orchestrator)."
    )
    api_max_body_bytes: int = Field(default=1_048_576, description="Request bodies larger than this get 413.")
    api_services: bool = Field(default=True, description="Run the recorder and the dispatcher inside the API process.")
    heartbeat_interval_seconds: float = Field(
        default=5, description="How often a running task run heartbeats (from its worker process)."
    )
    crash_after_heartbeats: int = Field(
        default=3, description="A task run whose heartbeat stops this many intervals is marked Crashed."
    )
    slot_poll_seconds: float = Field(
        default=1.0,
        description="How often a task waiting for a concurrency-limit slot asks again (it waits in Redis, "
        "not in a worker slot).",
    )
    flower_task_api: bool = Field(
        default=False,
        description="Open Flower's task routes (run, send, revoke tasks; control workers); Flower refuses it "
        "without credentials.",
    )
    flower_url: str | None = Field(
        default=None,
        description="Where a browser reaches Flower (http://127.0.0.1:5555): the web UI links each task run to "
        "its Celery task there ({flower_url}/task/<task run id>). Unset: no links. orchestrator dev sets it.",
    )
    schedule_min_interval_seconds: float = Field(
        default=10,
        ge=1,
        description="The shortest interval a deployment's schedule may have (cron's floor is one run a minute).",
    )
    late_after_seconds: float = Field(
        default=15, description="A run not started this long after its start time becomes Late (with the reason)."
    )
    recorder_batch_size: int = Field(default=2000, description="Events the recorder writes per transaction.")
    recorder_name: str = Field(
        default_factory=lambda: f"recorder-{socket.gethostname()}",
        description="Consumer name of this API's recorder in the event stream's consumer group.",
    )
    retention_days: float | None = Field(
        default=None,
        gt=0,
        description="Finished flow runs that ended more than this many days ago are deleted by the API's "
        "services, with their task runs, history, logs and Redis keys (docs/retention.md). Unset: kept forever.",
    )
    retention_days_by_flow: dict[str, float] = Field(
        default_factory=dict,
        description='Per-flow retention in days, as JSON ({"etl": 30, "cleanup-tmp": 2}); a deployment\'s own '
        "retention_days wins over it, and it wins over retention_days.",
    )
    retention_interval_seconds: float = Field(
        default=60, gt=0, description="How often the services look for finished runs past their retention."
    )
    retention_batch_size: int = Field(
        default=500,
        ge=1,
        le=10_000,
        description="Flow runs (with their task runs, history and logs) deleted per database transaction.",
    )

    @field_validator("flow_modules", "api_allowed_hosts", mode="before")
    @classmethod
    def _split_modules(cls, value: Any) -> Any:
        """Accept ``a.flows,b.flows`` as well as a list."""
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("extra_loggers", mode="before")
    @classmethod
    def _split_logger_names(cls, value: Any) -> Any:
        """``sqlalchemy, requests`` as well as a list; each a logger name (dotted words), not the root logger."""
        names = [part.strip() for part in value.split(",") if part.strip()] if isinstance(value, str) else value
        for name in names if isinstance(names, list) else []:
            if not isinstance(name, str) or not LOGGER_NAME.fullmatch(name) or name == "root":
                raise ValueError(
                    f"ORCHESTRATOR_EXTRA_LOGGERS: {name!r} is not a logger name; give comma-separated names of "
                    "library loggers, such as sqlalchemy,requests (the root logger is not shipped)"
                )
        return names

    @field_validator("redis_url", "broker_url", "result_backend_url")
    @classmethod
    def _sentinel_form(cls, value: str | None, info: ValidationInfo) -> str | None:
        """A Sentinel URL in a form the product cannot use fails here, at start, naming the form to write."""
        check_redis_url(value, f"ORCHESTRATOR_{str(info.field_name).upper()}")
        return value

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_key_is_none(cls, value: Any) -> Any:
        """``ORCHESTRATOR_API_KEY=`` (empty, as a compose file or .env leaves it) means no key."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("flower_task_api", mode="before")
    @classmethod
    def _empty_is_off(cls, value: Any) -> Any:
        """``ORCHESTRATOR_FLOWER_TASK_API=`` (empty) leaves the task API closed."""
        return False if isinstance(value, str) and not value.strip() else value

    @field_validator("flower_url", mode="before")
    @classmethod
    def _flower_base(cls, value: Any) -> Any:
        """``ORCHESTRATOR_FLOWER_URL=`` (empty) means none; a trailing ``/`` is dropped (links add ``/task/...``)."""
        if isinstance(value, str):
            value = value.strip().rstrip("/")
            if value and not value.startswith(("http://", "https://")):
                raise ValueError(f"ORCHESTRATOR_FLOWER_URL must be an http:// or https:// URL, not {value!r}")
            return value or None
        return value

    @field_validator("retention_days_by_flow")
    @classmethod
    def _positive_days(cls, value: dict[str, float]) -> dict[str, float]:
        """Every per-flow retention is a positive number of days (0 would delete a run as soon as it ends)."""
        wrong = {flow: days for flow, days in value.items() if not days > 0}
        if wrong:
            raise ValueError(
                f"retention days must be more than 0; got {wrong} (leave a flow out to use retention_days)"
            )
        return value

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        """repr() shows every URL masked (redis_url, database_url, an fsspec result_storage...):
        a password never reaches a log through a printed Settings."""
        for name, value in super().__repr_args__():
            yield name, masked_url(value) if isinstance(value, str) else value

    @property
    def crash_window_seconds(self) -> float:
        """How long a running task run's heartbeats may stop before it counts as crashed: the
        crash detector, slot leases and the stalled-run service all wait this long."""
        return self.heartbeat_interval_seconds * self.crash_after_heartbeats

    @property
    def finished_grace_seconds(self) -> int:
        """How long a completed run tree keeps its bookkeeping (the ``finals`` hash, the count of task
        runs not final and, once the API's database holds it, its plan) instead of ``result_ttl_seconds``.

        A completed run cannot be retried, so only a late message still looks at it: a redelivery
        (the visibility timeout), a worker's last heartbeat (the crash window). Both also find each
        task run's own record final (it keeps ``result_ttl_seconds``), so this margin is not what
        keeps them safe, only what keeps them on their usual path.
        """
        grace = int(max(self.visibility_timeout_seconds, self.crash_window_seconds)) + FINISHED_GRACE_MARGIN
        return min(grace, self.result_ttl_seconds)  # never kept longer than the records themselves


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Return the process-wide settings, read once from the environment."""
    return Settings()


def reset_settings() -> None:
    """Forget the cached settings so the next :func:`get_settings` re-reads the environment."""
    get_settings.cache_clear()
