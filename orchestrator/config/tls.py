"""TLS to Redis (``rediss://``), verified by default, the same way for every client.

Three clients reach Redis: the run store (redis-py), Celery's broker (kombu) and Celery's
result backend (chord counting). Left alone they disagree: redis-py verifies the server's
certificate, kombu connects with ``CERT_NONE`` (anyone on the path can read and forge
messages) and Celery's backend refuses to start without ``ssl_cert_reqs`` in the URL. They
all take the same option names, so :func:`redis_tls_options` builds them once from the
settings and each client gets the same dict:

- ``ORCHESTRATOR_REDIS_TLS_CA_FILE``: the CA that signed the server's certificate (the
  system's CAs when unset);
- ``ORCHESTRATOR_REDIS_TLS_CERT_FILE`` / ``ORCHESTRATOR_REDIS_TLS_KEY_FILE``: a client
  certificate, when Redis asks for one (``tls-auth-clients yes``);
- ``ORCHESTRATOR_REDIS_TLS_VERIFY=false``: no verification at all, an explicit and logged
  choice for a test server, never a silent default.
"""

from __future__ import annotations

import logging
import ssl
from typing import Any

from orchestrator.config.settings import Settings

log = logging.getLogger(__name__)


def uses_tls(url: str | None) -> bool:
    """Whether ``url`` is a Redis URL over TLS (``rediss://``)."""
    return bool(url) and str(url).startswith("rediss://")


def redis_tls_options(settings: Settings) -> dict[str, Any]:
    """Connection options for a ``rediss://`` URL: the ``ssl_*`` keys that redis-py takes, and
    that kombu (``broker_use_ssl``) and Celery's Redis backend (``redis_backend_use_ssl``) hand
    on to redis-py's connection unchanged."""
    if not settings.redis_tls_verify:
        log.warning(
            "ORCHESTRATOR_REDIS_TLS_VERIFY=false: Redis's certificate is not verified, so anyone on the "
            "network path can read and change run state and messages; use it only for a test server"
        )
    options: dict[str, Any] = {
        "ssl_cert_reqs": ssl.CERT_REQUIRED if settings.redis_tls_verify else ssl.CERT_NONE,
        "ssl_ca_certs": settings.redis_tls_ca_file,
        "ssl_certfile": settings.redis_tls_cert_file,
        "ssl_keyfile": settings.redis_tls_key_file,
        "ssl_check_hostname": settings.redis_tls_verify,
    }
    return {k: v for k, v in options.items() if v is not None}


def tls_options_for(url: str | None, settings: Settings) -> dict[str, Any]:
    """:func:`redis_tls_options` for a ``rediss://`` URL, nothing for any other: what every Redis
    client of the product adds to its connection (run store, broker, result backend, test helpers)."""
    return redis_tls_options(settings) if uses_tls(url) else {}
