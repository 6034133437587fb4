"""The API's services on a real database and Redis, called directly: a deployment's own late-run
policy, and the scheduler's next start times."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from sqlmodel import Session, select

from orchestrator.runstate.store import RunStore
from orchestrator.transport.celery_app import client_app


def test_a_deployments_newest_only_policy_cancels_all_but_its_newest_late_run(redis_url: str, tmp_path: Path) -> None:
    from api.db import engine_for, migrate
    from api.models import Deployment, FlowRun
    from api.services.late import apply_deployment_policies

    url = f"sqlite:///{tmp_path / 'svc.db'}"
    migrate(url)
    engine = engine_for(url)
    now = time.time()
    with Session(engine) as session:
        for policy in ("newest_only", "run_all"):
            deployment = Deployment(
                id=str(uuid.uuid4()), name=policy, flow_name="f", late_policy=policy, created=now, updated=now
            )
            session.add(deployment)
            for minutes in (1, 2, 3):
                run_id = str(uuid.uuid4())
                session.add(
                    FlowRun(
                        id=run_id,
                        flow_name="f",
                        name=f"{policy}-{minutes}",
                        state="Late",
                        root_id=run_id,
                        created=now,
                        scheduled_start=now - 60 * minutes,
                        dispatched=False,
                        deployment_id=deployment.id,
                    )
                )
        session.commit()
    assert apply_deployment_policies(engine, RunStore(redis_url), client_app()) == 2
    with Session(engine) as session:
        states = {r.name: r.state for r in session.exec(select(FlowRun)).all()}
    assert states == {
        "newest_only-1": "Late",
        "newest_only-2": "Cancelled",
        "newest_only-3": "Cancelled",
        "run_all-1": "Late",
        "run_all-2": "Late",
        "run_all-3": "Late",
    }


def test_cron_in_a_time_zone_and_intervals_give_the_right_next_starts() -> None:
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from api.models import Deployment
    from api.services.scheduling import check_schedule, next_starts

    paris = ZoneInfo("Europe/Paris")
    after = datetime(2026, 3, 28, 12, 0, tzinfo=paris).timestamp()  # the day before the clocks go forward
    nightly = Deployment(
        id="d", name="n", flow_name="f", cron="0 2 * * *", timezone="Europe/Paris", created=0, updated=0
    )
    starts = [datetime.fromtimestamp(s, paris) for s in next_starts(nightly, after, after + 3 * 86400, 3)]
    assert [s.day for s in starts] == [29, 30, 31] and all(s.minute == 0 for s in starts)
    assert [s.hour for s in starts] == [3, 2, 2]  # 02:00 does not exist on 29 March in Paris
    every = Deployment(id="e", name="e", flow_name="f", interval_seconds=300, created=1000.0, updated=0)
    assert next_starts(every, 1000.0, 2000.0, 10) == [1300.0, 1600.0, 1900.0]
    assert check_schedule("0 2 * * *", 60, "UTC") == "give either cron or interval_seconds, not both"
    assert "not a valid cron" in (check_schedule("nightly", None, "UTC") or "")
    assert "timezone 'Mars/Base'" in (check_schedule("0 2 * * *", None, "Mars/Base") or "")
