"""Fixtures: one live `nimbus dev --driver sim` for the session, and clients of it.

The binary is `$NIMBUS_BIN`, default `target/debug/nimbus` at the repository root (what
`cargo build -p nimbus` makes; `scripts/test` sets it). It listens on a free port with a temp
data dir and a fixed API key; the session exports `NIMBUS_URL`, `LAMBDA_API_KEY` and
`NIMBUS_API_KEY` so the seed snippets and doc examples find it as a user's shell would. The sim
host is given generous vCPUs and memory so the tests never run out of capacity on a small CI
machine. When a test fails, the tail of the server's log is attached to its report.
"""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List

import pytest

from nimbus_cloud import LambdaCloudClient, NimbusClient

ROOT = Path(__file__).resolve().parents[2]
TESTS = Path(__file__).resolve().parent
API_KEY = "nmb_pysdk_test_key_0123456789abcdef"
ENV_VARS = ("NIMBUS_URL", "LAMBDA_API_KEY", "NIMBUS_API_KEY")

# An ed25519 public key for uploads (the private half is not needed: sim instances are fake).
PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICZUKH4bkuFLWaz1Z6RVWN2q8+AKMNNakUZWtb9FDa0a pysdk@test"


@dataclass
class Server:
    url: str
    key: str
    log: Path
    proc: subprocess.Popen

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"


_SERVER: List[Server] = []


def nimbus_bin() -> Path:
    b = os.environ.get("NIMBUS_BIN")
    p = Path(b) if b else ROOT / "target" / "debug" / "nimbus"
    if not p.is_absolute():
        p = ROOT / p
    return p


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    binary = nimbus_bin()
    if not binary.is_file():
        pytest.fail(f"nimbus binary not found at {binary}: build it (cargo build -p nimbus) or set NIMBUS_BIN", pytrace=False)
    data = Path(tempfile.mkdtemp(prefix="nimbus-pysdk-"))
    log = data / "server.log"
    # The child must not pick up a developer's NIMBUS_* settings (data dir, database, config).
    env = {k: v for k, v in os.environ.items() if not k.startswith("NIMBUS_")}
    env["NIMBUS_LOG"] = "warn"
    args = [
        str(binary), "dev", "--driver", "sim", "--listen", "127.0.0.1:0",
        "--data-dir", str(data / "data"), "--api-key", API_KEY,
        "--sim-vcpus", "64", "--sim-memory-gib", "256", "--sim-disk-gib", "4000",
    ]
    with open(log, "wb") as errf:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=errf, env=env)
    lines: "queue.Queue[str]" = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            lines.put(raw.decode("utf-8", "replace"))
        lines.put("")

    threading.Thread(target=pump, daemon=True).start()
    url = key = ""
    deadline = time.monotonic() + 60
    while not (url and key):
        left = deadline - time.monotonic()
        try:
            line = lines.get(timeout=max(0.1, left))
        except queue.Empty:
            line = None
        if line is None or line == "" or left <= 0:
            proc.kill()
            pytest.fail(f"nimbus dev did not print its URL and key:\n{log.read_text(errors='replace')}", pytrace=False)
        s = line.strip()
        if s.startswith("URL:"):
            url = s[len("URL:"):].strip()
        elif s.startswith("API key:"):
            key = s[len("API key:"):].strip()
    assert key == API_KEY, key
    saved = {k: os.environ.get(k) for k in ENV_VARS}
    os.environ.update({"NIMBUS_URL": url, "LAMBDA_API_KEY": key, "NIMBUS_API_KEY": key})
    srv = Server(url, key, log, proc)
    _SERVER.append(srv)
    try:
        yield srv
    finally:
        _SERVER.clear()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture(scope="session")
def lam(server: Server) -> LambdaCloudClient:
    return LambdaCloudClient(api_key=server.key, base_url=server.url, timeout=30)


@pytest.fixture(scope="session")
def nat(server: Server) -> NimbusClient:
    return NimbusClient(api_key=server.key, base_url=server.url, timeout=30)


@pytest.fixture(scope="session")
def launchable(lam: LambdaCloudClient) -> tuple:
    """(instance type, region): the cheapest type with capacity (cpu_1x_small on `nimbus dev`)."""
    avail = [e for e in lam.instance_types.list().values() if e.regions]
    assert avail, "no instance type has capacity"
    e = min(avail, key=lambda e: (e.instance_type.price_cents_per_hour, e.instance_type.name))
    return e.instance_type.name, e.regions[0]


@pytest.fixture(scope="session")
def ssh_key(lam: LambdaCloudClient):
    """A generated SSH key shared by the tests that launch instances."""
    return lam.ssh_keys.generate("pysdk-shared")


@pytest.fixture
def child_env(server: Server) -> dict:
    """The environment of a user's shell with `NIMBUS_URL` and the key exported, for
    subprocesses (seed snippets, doc examples) that run against the session's server."""
    env = dict(os.environ)
    env.update({"NIMBUS_URL": server.url, "LAMBDA_API_KEY": server.key, "NIMBUS_API_KEY": server.key})
    # The installed package, never a checkout on sys.path by accident.
    env.pop("PYTHONPATH", None)
    return env


def run_python(path_or_code: str, env: dict, *, is_code: bool = False, timeout: float = 120) -> subprocess.CompletedProcess:
    args = [sys.executable, "-c", path_or_code] if is_code else [sys.executable, path_or_code]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout, cwd=tempfile.gettempdir())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):  # type: ignore[no-untyped-def]
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and _SERVER:
        rep.sections.append(("nimbus dev log (tail)", _SERVER[0].log_tail()))
