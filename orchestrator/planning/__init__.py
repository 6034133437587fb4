"""A flow body traced into a plan without running a task, and the plan compiled to Celery canvas."""
