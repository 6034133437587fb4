"""Offset pages for the routes that list everything one run holds (task runs, history, graph).

A run may hold tens of thousands of task runs; listing them all in one answer took megabytes
and seconds. These routes answer one page: ``limit`` items (at most :data:`LIMIT_MAX`) from
``offset``. A run that fits in one default page answers as it always did; when more follow,
the response says so in headers (so list bodies keep their shape for existing clients):

- ``X-Total-Count``: how many items there are in all;
- ``X-Next-Offset``: the ``offset`` of the next page (absent on the last page);
- ``Link: <?offset=N&limit=L...>; rel="next"``: the same as a reference relative to the
  request's URL (correct behind a proxy that adds a path prefix).
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import Query, Response

LIMIT_DEFAULT = 1000
LIMIT_MAX = 5000
OFFSET_MAX = 10_000_000

Limit = Annotated[
    int,
    Query(
        ge=1, le=LIMIT_MAX, description=f"Items in this page (at most {LIMIT_MAX}); X-Next-Offset tells if more follow."
    ),
]
Offset = Annotated[
    int, Query(ge=0, le=OFFSET_MAX, description="Items to skip: 0, or the X-Next-Offset of the previous page.")
]

PAGE_HEADERS: dict[str, dict[str, Any]] = {
    "X-Total-Count": {"description": "How many items there are in all pages.", "schema": {"type": "integer"}},
    "X-Next-Offset": {
        "description": "The offset of the next page; absent on the last page.",
        "schema": {"type": "integer"},
    },
    "Link": {
        "description": 'The next page as `<?offset=N&limit=L>; rel="next"`, relative to the request URL; '
        "absent on the last page.",
        "schema": {"type": "string"},
    },
}
PAGED: dict[int | str, dict[str, Any]] = {200: {"headers": PAGE_HEADERS}}  # for a route's ``responses=``


def next_offset(offset: int, shown: int, total: int) -> int | None:
    """Where the page after ``shown`` items from ``offset`` starts, or None when none is left."""
    after = offset + shown
    return after if shown and after < total else None


def announce(response: Response, total: int, offset: int, limit: int, shown: int, **params: Any) -> int | None:
    """Set the paging headers of one page (``params``: the route's other query parameters)."""
    response.headers["X-Total-Count"] = str(total)
    following = next_offset(offset, shown, total)
    if following is not None:
        response.headers["X-Next-Offset"] = str(following)
        shown_params = {k: str(v).lower() if isinstance(v, bool) else v for k, v in params.items()}
        query = urlencode({**shown_params, "offset": following, "limit": limit})
        response.headers["Link"] = f'<?{query}>; rel="next"'
    return following
