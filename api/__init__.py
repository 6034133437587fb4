"""The orchestrator's server: HTTP routes, the run database, the event recorder, services.

It reads what workers announce and record in Redis, keeps every run's history in a
SQL database (SQLModel), and sends Celery messages by task name: it never imports
the users' flow code.
"""
