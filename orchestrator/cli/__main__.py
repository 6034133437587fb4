"""``python -m orchestrator.cli``: the same command line as the ``orchestrator`` script."""

from orchestrator.cli.main import main

main()
