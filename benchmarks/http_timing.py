"""Timing one API request, repeated: the server's time (its ``Server-Timing`` header) and the client's.

``db_scale`` (the list routes) and ``ui_bench`` (the UI's pages) timed their requests with the
same loop: two warm-up calls, then ``repeat`` timed ones, each checked for an error status.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import httpx

from api.timing import server_ms

WARMUP = 2  # calls before the timed ones: imports, connections and the database's caches warm


@dataclass
class Timings:
    """The timed calls of one request: milliseconds each, and the last response (to read what it answered)."""

    server_ms: list[float]  # NaN where the response had no Server-Timing
    client_ms: list[float]
    response: httpx.Response


def timed_gets(http: httpx.Client, path: str, params: dict[str, Any], repeat: int) -> Timings:
    """GET ``path`` :data:`WARMUP` times, then ``repeat`` times timed; raise on an error status."""
    server: list[float] = []
    client: list[float] = []
    response = None
    for n in range(WARMUP + repeat):
        began = time.perf_counter()
        response = http.get(path, params=params)
        spent = (time.perf_counter() - began) * 1000
        response.raise_for_status()
        if n >= WARMUP:
            client.append(spent)
            server.append(server_ms(response.headers.get("server-timing")) or float("nan"))
    assert response is not None
    return Timings(server, client, response)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))]
