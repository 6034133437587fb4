"""Redis behind Sentinel: one URL form for the run store, the broker and the result backend.

Three clients reach Redis and each spells Sentinel its own way: redis-py wants a
``Sentinel([(host, port), ...]).master_for(name)``, kombu a ``sentinel://h1:26379;sentinel://h2:26379``
broker URL with ``master_name`` in ``broker_transport_options``, and Celery's result backend the
same list with ``result_backend_transport_options``. A user writes one form in any of the three
settings (``ORCHESTRATOR_REDIS_URL``, ``_BROKER_URL``, ``_RESULT_BACKEND_URL``)::

    redis+sentinel://[[user]:password@]host1:26379,host2:26379,host3:26379/<master name>[/<db>][?sentinel_password=...]

- the hosts are the sentinels (port 26379 when left out), in the order they are asked;
- the path names the monitored master (``sentinel monitor <name> ...``) and the database (0 by default);
- the user and password are the Redis servers' (master and replicas, as ``masterauth``);
- ``sentinel_password`` (and ``sentinel_username``) when the sentinels themselves ask for one.

The run store parses it here (:func:`parse_sentinel_url`); the Celery seam turns it into kombu's
and Celery's forms (:meth:`SentinelUrl.celery_url`, :meth:`SentinelUrl.transport_options`). A
kombu-style ``sentinel://`` URL is refused with the form to write instead: it cannot carry the
master's name, and the run store could not read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote, unquote

from orchestrator.errors import ConfigurationError

SCHEME = "redis+sentinel"
DEFAULT_PORT = 26379
FORM = "redis+sentinel://[:password@]host1:26379,host2:26379/<master name>/<db>"
_QUERY_KEYS = {"sentinel_password", "sentinel_username"}
# Sentinels are asked for the master on every (re)connect: one that does not answer must not hang it.
SENTINEL_SOCKET_TIMEOUT = 2.0


@dataclass(frozen=True)
class SentinelUrl:
    """A parsed ``redis+sentinel://`` URL (see the module docstring for the form)."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None

    def redis_credentials(self) -> dict[str, Any]:
        """``username`` / ``password`` of the Redis servers, for redis-py (only those given)."""
        given = {"username": self.username, "password": self.password}
        return {key: value for key, value in given.items() if value}

    def sentinel_kwargs(self) -> dict[str, Any]:
        """Connection options for the sentinels themselves (their own credentials, a timeout)."""
        options: dict[str, Any] = {
            "socket_timeout": SENTINEL_SOCKET_TIMEOUT,
            "socket_connect_timeout": SENTINEL_SOCKET_TIMEOUT,
        }
        if self.sentinel_username:
            options["username"] = self.sentinel_username
        if self.sentinel_password:
            options["password"] = self.sentinel_password
        return options

    def celery_url(self) -> str:
        """kombu's broker form, which Celery's ``sentinel://`` result backend reads too:
        ``sentinel://[:pw@]h1:26379/0;sentinel://[:pw@]h2:26379/0`` (the master's name goes in
        :meth:`transport_options`)."""
        userinfo = ""
        if self.password or self.username:
            userinfo = f"{quote(self.username or '', safe='')}:{quote(self.password or '', safe='')}@"
        return ";".join(f"sentinel://{userinfo}{_host_text(host)}:{port}/{self.db}" for host, port in self.sentinels)

    def transport_options(self) -> dict[str, Any]:
        """What kombu's Sentinel channel and Celery's Sentinel backend need beside :meth:`celery_url`."""
        return {"master_name": self.master, "sentinel_kwargs": self.sentinel_kwargs()}


def is_sentinel_url(url: str | None) -> bool:
    """Whether ``url`` is written in the ``redis+sentinel://`` form."""
    return bool(url) and str(url).lower().startswith(f"{SCHEME}://")


def check_redis_url(url: str | None, setting: str) -> None:
    """Refuse, naming ``setting`` and the form to write, a Sentinel URL the product cannot use:
    kombu's ``sentinel://`` (no master name), ``rediss+sentinel://`` (TLS through Sentinel is not
    supported) or a ``redis+sentinel://`` that does not parse."""
    if not url:
        return
    scheme = str(url).split("://", 1)[0].lower()
    if scheme == "sentinel":
        raise ConfigurationError(
            f"{setting}: kombu's sentinel://host:port;sentinel://... form cannot name the master; write "
            f"{FORM} (the orchestrator turns it into kombu's and Celery's forms itself)"
        )
    if scheme in {"rediss+sentinel", "sentinels"}:
        raise ConfigurationError(
            f"{setting}: TLS through Sentinel is not supported; use {FORM} on a private network, or "
            "rediss:// to a single Redis"
        )
    if scheme == SCHEME:
        parse_sentinel_url(url, setting)


def parse_sentinel_url(url: str, setting: str = "ORCHESTRATOR_REDIS_URL") -> SentinelUrl:
    """The parts of a ``redis+sentinel://`` URL; :class:`ConfigurationError` naming what to fix."""

    def bad(what: str) -> ConfigurationError:
        return ConfigurationError(f"{setting}: {what}; write {FORM}")

    if not is_sentinel_url(url):
        raise bad("not a redis+sentinel:// URL")
    rest = url.split("://", 1)[1]
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, _, hosts = netloc.rpartition("@")
    username, password = None, None
    if userinfo:
        user, has_password, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if has_password and secret else None
    sentinels = tuple(_sentinel_address(part, bad) for part in hosts.split(",") if part.strip())
    if not sentinels:
        raise bad("no sentinel host is given")
    parts = [p for p in path.split("/") if p]
    if not parts:
        raise bad("the master's name is missing (the name sentinels monitor it under, e.g. mymaster)")
    if len(parts) > 2:
        raise bad(f"the path {path!r} has more than a master name and a database number")
    db = 0
    if len(parts) == 2:
        if not parts[1].isdigit():
            raise bad(f"the database {parts[1]!r} is not a number")
        db = int(parts[1])
    options = parse_qs(query, keep_blank_values=True)
    unknown = sorted(set(options) - _QUERY_KEYS)
    if unknown:
        raise bad(f"unknown option {', '.join(unknown)} (known: {', '.join(sorted(_QUERY_KEYS))})")
    return SentinelUrl(
        sentinels=sentinels,
        master=unquote(parts[0]),
        db=db,
        username=username,
        password=password,
        sentinel_username=_last(options, "sentinel_username"),
        sentinel_password=_last(options, "sentinel_password"),
    )


def _sentinel_address(text: str, bad: Any) -> tuple[str, int]:
    """``host``, ``host:port`` or ``[v6]:port`` -> (host, port)."""
    text = text.strip()
    if text.startswith("["):
        host, _, after = text[1:].partition("]")
        port_text = after[1:] if after.startswith(":") else ""
    else:
        host, _, port_text = text.rpartition(":") if ":" in text else (text, "", "")
    if not host:
        raise bad(f"the sentinel address {text!r} has no host")
    if port_text and not port_text.isdigit():
        raise bad(f"the sentinel address {text!r} has a port that is not a number")
    port = int(port_text) if port_text else DEFAULT_PORT
    if not 0 < port < 65536:
        raise bad(f"the sentinel address {text!r} has a port out of range")
    return host, port


def _last(options: dict[str, list[str]], key: str) -> str | None:
    """The last value given for ``key`` in a query (None when absent or empty)."""
    values = options.get(key) or [""]
    return values[-1] or None


def _host_text(host: str) -> str:
    return f"[{host}]" if ":" in host else host
