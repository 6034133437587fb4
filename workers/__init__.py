"""The Celery side: the worker app, the executor around every task, the dynamic driver."""
