"""``python -m tests.crashing_api [api.server's options]``: the API whose recorder dies at one batch.

The same entry point as ``python -m api.server``, with ``Recorder.apply`` wrapped so that the
process ends (``os._exit``: no clean-up, no acknowledgement, like a SIGKILL) while applying the
``TEST_RECORDER_CRASH_AT``-th batch of events (counting from 1, batches with events only):

- ``TEST_RECORDER_CRASH=after-commit``: once the batch's transaction is committed, before the
  recorder acknowledges the batch in the stream;
- ``TEST_RECORDER_CRASH=before-commit``: the batch read and its rows written to the database
  (flushed) in the open transaction, which is never committed.

The process exits with :data:`CRASH_EXIT` then, so a test can tell this crash from any other
ending. Used by tests/test_reliability.py; the product code is not changed.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

from sqlmodel import Session

from api.services.recorder import Recorder

CRASH_EXIT = 17
MODES = ("after-commit", "before-commit")


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(CRASH_EXIT)


def install(mode: str, at: int) -> None:
    """Wrap ``Recorder.apply`` (and, for ``before-commit``, the recorder's ``Session.commit``)."""
    if mode not in MODES:
        raise SystemExit(f"TEST_RECORDER_CRASH must be one of {MODES}, not {mode!r}")
    apply = Recorder.apply
    commit = Session.commit
    dying = threading.local()  # set only in the recorder's thread, while it applies the doomed batch
    batches = 0

    def crashing_apply(self: Recorder, events: list[Any]) -> None:
        nonlocal batches
        if not events:
            apply(self, events)
            return
        batches += 1
        if batches != at:
            apply(self, events)
            return
        print(f"crashing_api: batch {batches} of {len(events)} events, dying {mode}", flush=True)
        if mode == "after-commit":
            apply(self, events)
            _die()
        dying.now = True
        apply(self, events)  # its commit dies
        raise AssertionError("the recorder applied a batch without committing it")

    def flush_then_die(session: Session) -> None:
        if not getattr(dying, "now", False):
            commit(session)
            return
        session.flush()  # the rows are written in the transaction, which dies uncommitted
        _die()

    Recorder.apply = crashing_apply  # type: ignore[method-assign]
    Session.commit = flush_then_die  # type: ignore[method-assign, assignment]


def main() -> int:
    install(os.environ["TEST_RECORDER_CRASH"], int(os.environ.get("TEST_RECORDER_CRASH_AT", "1")))
    from api.server import main as serve

    return serve(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
