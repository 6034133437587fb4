"""The in-process runner: a flow called like a function runs here, without Celery or Redis."""
