"""Local servers for ``orchestrator dev`` and the tests: redis-server, workers, the API and Flower on free ports."""
