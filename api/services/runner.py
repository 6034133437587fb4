"""The background services: the event recorder and the periodic loop (scheduler, dispatcher,
late runs, late-run policies, crash detection).

They run in threads inside ``orchestrator server start`` by default, or alone with
``orchestrator services start`` (``python -m api.services.runner``) next to API processes
started with ``ORCHESTRATOR_API_SERVICES=false``. Running two instances does no double
work: the recorder holds a lease, and every periodic step is a conditional UPDATE, a
unique key or a ZREM claim.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from api.db import get_engine, migrate
from api.metrics import Metrics
from api.services.loop import run_services
from api.services.outage import RedisOutage
from api.services.recorder import Recorder
from orchestrator.config.settings import get_settings
from orchestrator.runstate.store import get_store


@contextmanager
def background_services(metrics: Metrics | None = None) -> Iterator[Recorder]:
    """Run the recorder and the periodic services in threads for the length of the block
    (observing into ``metrics``, the API's, when given)."""
    settings = get_settings()
    stop = threading.Event()
    store = get_store()
    outage = RedisOutage(store.url)  # one per process: a Redis outage is told once, not once per thread
    recorder = Recorder(store, get_engine(), settings.recorder_name, settings.recorder_batch_size, outage, metrics)
    services = {"engine": get_engine(), "store": store, "stop": stop, "outage": outage, "metrics": metrics}
    threads = [
        threading.Thread(target=recorder.run, args=(stop,), name="recorder", daemon=True),
        threading.Thread(target=run_services, kwargs=services, name="services", daemon=True),
    ]
    for thread in threads:
        thread.start()
    try:
        yield recorder
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)


def main() -> int:
    """Migrate the database, then run the services until SIGINT or SIGTERM."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    migrate(get_settings().database_url)
    done = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: done.set())
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    with background_services():
        print("orchestrator services: recorder, scheduler, dispatcher, late runs, crash detection", flush=True)
        done.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
