"""Supervision of the fleet: task runs whose worker died, flow runs left Running with nothing to run.

These read and edit the run state the run-state core's scripts keep (heartbeats,
crash claims, tree counts) through its repositories, and end runs through the same
run lifecycle a worker uses. The API's services only schedule them (``api/services/loop.py``).
"""
