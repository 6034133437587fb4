"""The run-state core: the only code that touches Redis (see :mod:`orchestrator.runstate.store`)."""
