"""``python -m api.server``: migrate the database, then serve the API with uvicorn.

Refuses to listen beyond the loopback interface unless an API key is set, so a
server started on a laptop is never open to the network by accident.
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys

import uvicorn

from api.app import create_app
from api.db import migrate
from api.root_path import DirectPrefixServed, root_path_of
from orchestrator.config.settings import get_settings
from orchestrator.guards.hosts import is_loopback
from orchestrator.guards.redaction import mask_urls_in, masked_url


def openable_host(host: str) -> str:
    """The host to put in a URL a user opens: a wildcard bind (0.0.0.0, ::) is reached as 127.0.0.1 here."""
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="orchestrator server start", description="Run the orchestrator API.")
    parser.add_argument("--host", default="127.0.0.1", help="Interface to bind (beyond loopback needs an API key).")
    parser.add_argument("--port", type=int, default=4200)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    settings = get_settings()
    if not is_loopback(args.host) and settings.api_key is None:
        print(
            f"refusing to listen on {args.host}: without ORCHESTRATOR_API_KEY anyone on the network could submit "
            "and cancel runs. Set ORCHESTRATOR_API_KEY=<a secret> (clients send it as a Bearer token), or bind "
            "127.0.0.1.",
            file=sys.stderr,
        )
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        migrate(settings.database_url)
    except Exception as exc:  # a traceback would quote what the driver said, the URL included
        print(
            f"cannot prepare the database at {masked_url(settings.database_url)}: {mask_urls_in(str(exc))}\n"
            "Check that it runs and that ORCHESTRATOR_DATABASE_URL names it (user, password, host, database).",
            file=sys.stderr,
        )
        return 2
    root = root_path_of(settings.api_root_path)
    here = f"http://{openable_host(args.host)}:{args.port}{root}"
    print(f"orchestrator API on {here}/api, docs at {here}/docs, web UI at {here}/ui", flush=True)
    app = DirectPrefixServed(create_app(), root)
    # What start-up built (modules, the app, its routes and models) lives as long as the process: out of the
    # collector's generations (after one collection of start-up's garbage), the collector's full passes no
    # longer walk it while the API creates and records runs: ~0.1 ms of CPU per run created (issue 18).
    gc.collect()
    gc.freeze()
    uvicorn.run(app, host=args.host, port=args.port, root_path=root, log_level=args.log_level, access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
