"""Operating the stack: Flower sees our tasks, the compose file's commands are real commands of the
project. (``orchestrator dev`` starting and stopping cleanly: tests/test_dev_stack.py.)"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from orchestrator.devstack.localstack import (
    ApiProcess,
    api_server,
    flower,
    free_port,
    redis_server,
    stop_process,
    worker,
)
from tests import flows
from tests.api_support import eventually

ROOT = Path(__file__).resolve().parent.parent


def test_flower_shows_every_task_by_name_with_its_flow_run_id(
    redis_url: str, fleet: subprocess.Popen[bytes], worker_logs: Path
) -> None:
    login = ("ops", uuid.uuid4().hex)  # Flower's API answers only with credentials
    with flower(redis_url, log_path=worker_logs / "flower.log", basic_auth=":".join(login)) as url:
        time.sleep(1.0)  # Flower subscribes to the event stream when it starts
        run = flows.chain_flow.delay(x=3)
        assert run.wait(30).value == "Completed"
        ids = {row["id"]: row for row in run.task_runs()}

        def seen() -> dict[str, dict[str, str]]:
            tasks = httpx.get(f"{url}/api/tasks", params={"limit": 1000}, auth=login).json()
            return {k: v for k, v in tasks.items() if k in ids and v.get("state") == "SUCCESS"}

        shown = eventually(lambda: len(seen()) == len(ids) and seen(), 20, what="Flower shows the run's tasks")
        for task_id, task in shown.items():
            assert task["name"] == ids[task_id]["name"]  # its own name, e.g. tests.flows.inc
            assert run.id in task["kwargs"]  # the flow run id is in the message
        queues = httpx.get(f"{url}/api/queues/length", auth=login).json()
        assert "default" in [q["name"] for q in queues["active_queues"]]


def test_every_compose_service_runs_a_real_command_of_the_project() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"redis", "postgres", "api", "worker", "flower"} <= set(services)
    assert "--appendonly" in services["redis"]["command"]
    for name in ("api", "worker", "flower"):
        service = services[name]
        assert service["build"] == "."
        assert all(dep.get("condition") == "service_healthy" for dep in service["depends_on"].values())
        command = [part for part in service["command"] if not part.startswith("--basic-auth")]
        binary = Path(sys.executable).parent / command[0]
        assert binary.exists(), f"{name}: {command[0]} is not installed by the package"
        done = subprocess.run(
            [str(binary), *command[1:], "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, f"{name}: {' '.join(command)} --help failed: {done.stderr[-500:]}"
    for name in ("redis", "postgres", "api"):
        assert "healthcheck" in services[name]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "orchestrator" in dockerfile and "server" in dockerfile


def merged_compose(*overrides: str) -> dict[str, Any]:
    """docker-compose.yml with override files merged in, as ``docker compose -f ... -f ...`` does
    for what they use: mappings merged key by key, lists and values replaced."""

    def merge(base: Any, extra: Any) -> Any:
        if isinstance(base, dict) and isinstance(extra, dict):
            return {k: merge(base[k], v) if k in base else v for k, v in extra.items()} | {
                k: v for k, v in base.items() if k not in extra
            }
        return extra

    compose: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for name in overrides:
        compose = merge(compose, yaml.safe_load((ROOT / name).read_text()))
    return compose


def test_the_rabbitmq_compose_variant_puts_every_celery_process_on_a_healthy_rabbitmq() -> None:
    """docker-compose.rabbitmq.yml: the API, the workers and Flower get the same amqp:// broker, wait
    for RabbitMQ's health check, keep Redis for the run store, and RabbitMQ's consumer_timeout
    outlasts long late-acknowledged tasks."""
    services = merged_compose("docker-compose.rabbitmq.yml")["services"]
    rabbitmq = services["rabbitmq"]
    assert "healthcheck" in rabbitmq and not rabbitmq.get("ports")  # the compose network only
    assert rabbitmq["environment"]["RABBITMQ_DEFAULT_PASS"].startswith("${RABBITMQ_PASSWORD:?")
    brokers = set()
    for name in ("api", "worker", "flower"):
        env = services[name]["environment"]
        brokers.add(env["ORCHESTRATOR_BROKER_URL"])
        assert env["ORCHESTRATOR_REDIS_URL"] == "redis://redis:6379/0", name  # the run store stays on Redis
        assert env["ORCHESTRATOR_API_KEY"].startswith("${ORCHESTRATOR_API_KEY:?"), name  # merged, not replaced
        depends = services[name]["depends_on"]
        assert depends["rabbitmq"] == {"condition": "service_healthy"} and "redis" in depends, name
    (broker,) = brokers
    assert broker.startswith("amqp://orchestrator:${RABBITMQ_PASSWORD:?") and broker.endswith("@rabbitmq:5672//")
    mounted = {v.split(":")[0]: v.split(":")[1] for v in rabbitmq["volumes"] if v.startswith("./")}
    assert mounted["./deploy/rabbitmq.conf"].startswith("/etc/rabbitmq/conf.d/")  # read besides the image's own
    settings = dict(
        line.split(" = ") for line in (ROOT / "deploy/rabbitmq.conf").read_text().splitlines() if " = " in line
    )
    assert int(settings["consumer_timeout"]) >= 6 * 3600 * 1000  # hours, not RabbitMQ's 30 min


def test_the_prometheus_compose_example_scrapes_the_api_with_its_key_and_loads_the_documented_alerts() -> None:
    compose = merged_compose("docker-compose.prometheus.yml")
    prometheus = compose["services"]["prometheus"]
    assert prometheus["depends_on"]["api"] == {"condition": "service_healthy"}
    assert compose["secrets"]["orchestrator-api-key"] == {"environment": "ORCHESTRATOR_API_KEY"}
    mounts = {v.split(":")[1]: ROOT / v.split(":")[0] for v in prometheus["volumes"] if v.startswith("./")}
    config = yaml.safe_load(mounts["/etc/prometheus/prometheus.yml"].read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics" and job["static_configs"] == [{"targets": ["api:4200"]}]
    assert job["authorization"]["credentials_file"] == "/run/secrets/orchestrator-api-key"
    api_command = compose["services"]["api"]["command"]
    assert api_command[api_command.index("--port") + 1] == "4200"
    (rules,) = config["rule_files"]
    loaded = yaml.safe_load(mounts[rules].read_text())
    documented = (ROOT / "docs/metrics.md").read_text().split("## Sample alert rules", 1)[1]
    documented = documented.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert loaded == yaml.safe_load(documented)  # the example loads exactly the documented rules
    assert {r["alert"] for r in loaded["groups"][0]["rules"]} >= {"OrchestratorLateRuns", "OrchestratorRecorderLag"}


@pytest.mark.parametrize("script", ["scripts/demo.sh", "scripts/test.sh", ".ci/run"])
def test_scripts_are_executable_bash(script: str) -> None:
    done = subprocess.run(["bash", "-n", str(ROOT / script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_services_run_on_their_own_and_two_instances_do_no_double_work(tmp_path: Path) -> None:
    """An API with ORCHESTRATOR_API_SERVICES=false records nothing itself; two `orchestrator
    services start` processes next to it record the runs and send a scheduled run once."""
    with redis_server() as redis_url:
        database = f"sqlite:///{tmp_path / 'svc.db'}"
        env = os.environ.copy() | {"ORCHESTRATOR_REDIS_URL": redis_url, "ORCHESTRATOR_DATABASE_URL": database}
        with (
            worker(redis_url, ["tests.flows"], concurrency=1, log_path=tmp_path / "worker.log"),
            api_server(redis_url, database, extra_env={"ORCHESTRATOR_API_SERVICES": "false"}) as api,
        ):
            assert "not running" in httpx.get(f"{api.url}/health").json()["recorder"]
            services = [
                subprocess.Popen(
                    [sys.executable, "-m", "orchestrator.cli", "services", "start"],
                    env=env | {"ORCHESTRATOR_RECORDER_NAME": f"svc-{i}"},
                    stdout=open(tmp_path / f"services-{i}.log", "wb"),  # noqa: SIM115
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
                for i in range(2)
            ]
            try:
                soon = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2)).isoformat()
                body = {"parameters": {"x": 2}, "scheduled_start": soon}
                created = httpx.post(f"{api.url}/flows/chain-flow/runs", json=body).json()
                assert created["state"] == "Scheduled"

                def final() -> dict[str, Any] | None:
                    run = httpx.get(f"{api.url}/flow-runs/{created['id']}").json()
                    return dict(run) if run["state"] == "Completed" else None

                eventually(final, 60, what="the scheduled run sent and recorded by the services processes")
                states = httpx.get(f"{api.url}/flow-runs/{created['id']}/states", params={"tasks": False}).json()
                applied = [s["state"] for s in states if s["applied"]]
                assert applied == ["Scheduled", "Pending", "Running", "Completed"]
                assert sum(1 for s in states if s["state"] == "Running") == 1  # sent once
            finally:
                for proc in services:
                    stop_process(proc)


def test_redis_away_gives_503_creates_nothing_and_submitting_works_again_without_a_restart(tmp_path: Path) -> None:
    port = free_port()
    database = f"sqlite:///{tmp_path / 'away.db'}"
    redis_url = f"redis://127.0.0.1:{port}/0"
    with redis_server(port=port):
        server = ApiProcess(redis_url, database, log_path=tmp_path / "api.log")
        server.start()
    try:
        # Redis is gone: even the flow's record cannot be read. 503, saying which Redis to check.
        response = httpx.post(f"{server.url}/flows/chain-flow/runs", json={"parameters": {"x": 1}}, timeout=30)
        assert response.status_code == 503, response.text
        assert redis_url in response.text and "Nothing was created" in response.text
        assert httpx.get(f"{server.url}/health", timeout=30).status_code == 503
        assert httpx.get(f"{server.url}/flow-runs").json()["total"] == 0
        with redis_server(port=port) as url:  # Redis is back, same address
            import redis as redis_client

            flow = {"name": "chain-flow", "queue": None, "parameters": {"type": "object"}}
            redis_client.Redis.from_url(url).hset("orc:flows", "chain-flow", json.dumps(flow))
            again = httpx.post(f"{server.url}/flows/chain-flow/runs", json={"parameters": {"x": 1}}, timeout=30)
            assert again.status_code == 201, again.text  # no API restart needed
            assert httpx.get(f"{server.url}/flow-runs").json()["total"] == 1
    finally:
        server.stop()
