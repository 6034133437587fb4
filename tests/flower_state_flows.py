"""Flows for tests/test_flower_states.py: task runs that end Skipped, UpstreamFailed or with a sensor
that gave up, run by a worker importing this module (ORCHESTRATOR_FLOW_MODULES=tests.flower_state_flows).

Each flow runs on its own queue so the test's worker serves them alone.
"""

from __future__ import annotations

import time

from orchestrator import flow, task
from orchestrator.runstate.store import get_store
from orchestrator.runtime.signals import RETRY, SKIP

QUEUE = "flower-states"
CRASH_QUEUE = "flower-states-crash"


def running_key(marker: str) -> str:
    """Set by :func:`killed` once it runs (the test kills its worker then)."""
    return f"test:flower-states:running:{marker}"


@task(queue=QUEUE)
def nothing_to_do(tag: str) -> str:
    raise SKIP(f"nothing to do for {tag}")


@task(queue=QUEUE)
def breaks(tag: str) -> str:
    raise ValueError(f"broken on purpose: {tag}")


@task(queue=QUEUE)
def fine(tag: str) -> str:
    return tag


@task(queue=QUEUE)
def after(value: str) -> str:
    return f"after {value}"


@task(queue=QUEUE)
def joined(left: str, right: str) -> str:
    return f"{left}+{right}"


@task(queue=QUEUE, trigger="any_failed")
def alert(tag: str) -> str:
    return tag


@task(queue=QUEUE, poke_timeout_seconds=1)
def never_ready() -> str:
    raise RETRY("the file is still not there", delay=0.4)


@flow(queue=QUEUE)
def warm_up() -> str:
    """One task that completes: the tests run it until Flower shows it, so Flower is listening."""
    return fine.submit("warm-up")  # type: ignore[no-any-return]


@flow(queue=QUEUE)
def skip_then_after() -> str:
    """``nothing_to_do`` raises SKIP; ``after`` (chained to it) ends Skipped without running."""
    return after.submit(nothing_to_do.submit("skip"))  # type: ignore[no-any-return]


@flow(queue=QUEUE)
def break_then_downstream() -> str:
    """``breaks`` fails: ``after`` (one upstream, a chain) and ``joined`` (two upstreams, a Redis
    join) end UpstreamFailed without a worker ever receiving them; ``alert`` (trigger any_failed,
    on a completed upstream only) is received and ends Skipped by its rule."""
    bad = breaks.submit("upstream")
    good = fine.submit("good")
    alert.submit("nothing failed", wait_for=[good])
    after.submit(bad)
    return joined.submit(bad, good)  # type: ignore[no-any-return]


@flow(queue=QUEUE)
def sensor_gives_up() -> str:
    """``never_ready`` pokes until poke_timeout_seconds passes, then gives up (Failed)."""
    return never_ready.submit()  # type: ignore[no-any-return]


@flow(queue=QUEUE)
def dynamic_after_failure() -> str:
    """A dynamic body submits ``after`` once its upstream has failed: the driver ends it
    UpstreamFailed at once and never sends it."""
    bad = breaks.submit("dynamic")
    bad.wait()  # reading a state makes the body dynamic, and the upstream final before the next call
    return after.submit(bad)  # type: ignore[no-any-return]


@task(queue=QUEUE)
def slow(tag: str) -> str:
    time.sleep(30)  # the flow's timeout cancels it long before
    return tag


@flow(queue=QUEUE, timeout_seconds=2)
def timed_out_before_after() -> str:
    """The run times out while ``slow`` runs: ``slow`` is terminated (its worker reports the revoke)
    and ``after``, never sent, ends Cancelled."""
    return after.submit(slow.submit("slow"))  # type: ignore[no-any-return]


@task(queue=CRASH_QUEUE)
def killed(marker: str) -> str:
    get_store().redis.set(running_key(marker), "1")
    time.sleep(60)  # its worker is killed long before this ends
    return marker


@flow(queue=CRASH_QUEUE)
def killed_then_after(marker: str) -> str:
    """``killed``'s worker is killed mid-task: the crash detector ends it Crashed (no retries) and
    ``after`` UpstreamFailed, in the API's process."""
    return after.submit(killed.submit(marker))  # type: ignore[no-any-return]
