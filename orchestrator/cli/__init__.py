"""The ``orchestrator`` command line (typer) and its HTTP client for the API."""
