"""Redis over TLS (``rediss://``): the run store, the broker and the result backend all verify
the server's certificate, and a flow run travels end to end over TLS through a real worker.

Certificates are made here with ``openssl`` (a CA, a server certificate it signs for
127.0.0.1, and a second CA nobody trusts); each test runs a ``redis-server`` of its own that
listens only on a TLS port.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator.config.settings import Settings
from orchestrator.devstack.localstack import free_port, stop_process, worker
from orchestrator.errors import ConnectionProblem
from orchestrator.runstate.store import RunStore
from orchestrator.transport.celery_app import make_celery_app
from tests import flows
from tests.api_support import sdk_settings


@dataclass
class Pki:
    ca: Path  # the CA clients trust
    cert: Path  # server certificate signed by ``ca``
    key: Path
    rogue_cert: Path  # server certificate signed by a CA nobody trusts
    rogue_key: Path


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(folder: Path, name: str) -> tuple[Path, Path]:
    key, cert = folder / f"{name}.key", folder / f"{name}.crt"
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
            "-keyout", str(key), "-out", str(cert), cwd=folder)  # fmt: skip
    return cert, key


def make_server_cert(folder: Path, name: str, ca: tuple[Path, Path]) -> tuple[Path, Path]:
    key, csr, cert, ext = (folder / f"{name}.{kind}" for kind in ("key", "csr", "crt", "ext"))
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(csr),
            cwd=folder)  # fmt: skip
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
            "-days", "2", "-extfile", str(ext), "-out", str(cert), cwd=folder)  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca = make_ca(folder, "trusted-ca")
    cert, key = make_server_cert(folder, "server", ca)
    rogue_cert, rogue_key = make_server_cert(folder, "rogue", make_ca(folder, "rogue-ca"))
    return Pki(ca[0], cert, key, rogue_cert, rogue_key)


@contextlib.contextmanager
def tls_redis(cert: Path, key: Path, ca: Path) -> Iterator[str]:
    """A redis-server that listens only on a TLS port; yields its ``rediss://`` URL."""
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="orc-tls-redis-")
    args = ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", workdir, "--tls-cert-file", str(cert), "--tls-key-file", str(key),
            "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no"]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while not port_open(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server with TLS on port {port} did not start (is it built with TLS?)")
            time.sleep(0.05)
        yield f"rediss://127.0.0.1:{port}/0"
    finally:
        stop_process(proc)
        shutil.rmtree(workdir, ignore_errors=True)


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def client_of(url: str, ca: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """This process (and the workers it starts) use ``url`` and trust only the CA ``ca``."""
    with sdk_settings(monkeypatch, ORCHESTRATOR_REDIS_URL=url, ORCHESTRATOR_REDIS_TLS_CA_FILE=str(ca)):
        yield Settings()


def test_a_flow_run_travels_over_tls_through_a_real_worker(
    pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Broker, result backend (the map's chord counts its parts there) and run store, all on rediss://."""
    with (
        tls_redis(pki.cert, pki.key, pki.ca) as url,
        client_of(url, pki.ca, monkeypatch),
        worker(url, ["tests.flows"], concurrency=2, log_path=tmp_path / "worker.log"),
    ):
        run = flows.map_upstream_flow.delay(n=6)
        assert run.result(timeout=60) == sum(2 * i for i in range(6))


def test_every_client_refuses_a_redis_whose_certificate_it_cannot_verify(
    pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server certificate signed by a CA the clients do not trust (a man in the middle): the run
    store, the broker connection and the result backend each refuse to talk to it."""
    with tls_redis(pki.rogue_cert, pki.rogue_key, pki.ca) as url, client_of(url, pki.ca, monkeypatch) as settings:
        with pytest.raises(ConnectionProblem, match="certificate verify failed"):
            RunStore(url).ping()
        app = make_celery_app("tls-client", settings)
        with pytest.raises(Exception, match="certificate verify failed"), app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1)
        with pytest.raises(Exception, match="certificate verify failed"):
            app.backend.client.ping()


def test_verification_is_on_by_default_and_off_only_when_asked() -> None:
    on = Settings(redis_url="rediss://127.0.0.1:1/0")
    app = make_celery_app("tls-defaults", on, send_only=True)
    assert app.conf.broker_use_ssl["ssl_cert_reqs"] is ssl.CERT_REQUIRED
    assert app.conf.redis_backend_use_ssl["ssl_cert_reqs"] is ssl.CERT_REQUIRED
    assert app.conf.broker_use_ssl["ssl_check_hostname"] is True
    off = make_celery_app("tls-off", on.model_copy(update={"redis_tls_verify": False}), send_only=True)
    assert off.conf.broker_use_ssl["ssl_cert_reqs"] is ssl.CERT_NONE
    plain = make_celery_app("plain", Settings(redis_url="redis://127.0.0.1:1/0"), send_only=True)
    assert not plain.conf.broker_use_ssl
