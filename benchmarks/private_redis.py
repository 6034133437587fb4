"""A private redis-server that this process, and every process it starts, uses for one benchmark.

Each benchmark main started its Redis the same way, in four lines written again in each: a
private ``redis-server`` on a free port (never the shared one on 6379), ``ORCHESTRATOR_REDIS_URL``
set to it so that the workers, the API and any probe subprocess started inside inherit it, the
cached settings dropped so that this process reads it too, and the cached Celery client app
dropped so that no ``.delay()`` keeps a connection to another Redis. One context manager now.

``benchmarks/client_cpu.py`` keeps its own copy on purpose: it is run with ``PYTHONPATH`` against
older checkouts, which have no such module.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping

from orchestrator.config.settings import reset_settings
from orchestrator.devstack.localstack import redis_server
from orchestrator.transport.celery_app import client_app


@contextlib.contextmanager
def private_redis(extra_env: Mapping[str, str] | None = None) -> Iterator[str]:
    """Start a private redis-server and point this process's settings at it; yield its URL.

    ``extra_env`` are more settings to set in the environment with the URL (read together with it).
    The environment is left as set when the block ends, as each main left it before (it ends soon after).
    """
    with redis_server() as url:
        os.environ.update({**(extra_env or {}), "ORCHESTRATOR_REDIS_URL": url})
        reset_settings()
        client_app.cache_clear()
        yield url
