"""The API's background services: the event recorder and the periodic loop (scheduling, dispatch, late runs).

Supervision (crashes, stalled runs) lives in :mod:`orchestrator.supervision`; the loop only schedules it.
"""
