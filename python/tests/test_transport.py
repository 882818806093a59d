"""The HTTP path: Bearer header, timeouts, Idempotency-Key, retries of 429/503 honouring
Retry-After with backoff and jitter, connection failures. A `FakeServer` (http.server in a
thread) scripts the answers, because a real server cannot be made to answer 503 on demand; the
sleeps are recorded instead of slept."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Tuple

import pytest

from nimbus_cloud import LambdaCloudClient, LambdaCloudError, NimbusApiError, NimbusClient, NimbusConnectionError
from nimbus_cloud._http import parse_retry_after


class FakeServer:
    """Answers each request with the next scripted (status, headers, body, delay_s) and records
    (method, path, headers)."""

    def __init__(self) -> None:
        self.script: List[Tuple[int, Dict[str, str], Any, float]] = []
        self.seen: List[Tuple[str, str, Dict[str, str]]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                if n:
                    self.rfile.read(n)
                fake.seen.append((self.command, self.path, dict(self.headers)))
                status, headers, body, delay = fake.script.pop(0) if fake.script else (200, {}, {"data": {}}, 0.0)
                if delay:
                    time.sleep(delay)
                data = json.dumps(body).encode()
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

            def log_message(self, *a: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.block_on_close = False  # do not wait for a handler still sleeping
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake():
    f = FakeServer()
    yield f
    f.close()


def lambda_client(url: str, **kw: Any) -> Tuple[LambdaCloudClient, List[float]]:
    c = LambdaCloudClient(api_key="secret-key", base_url=url, **kw)
    sleeps: List[float] = []
    c._transport.sleep = sleeps.append
    return c, sleeps


LAMBDA_429 = {"error": {"code": "global/too-many-requests", "message": "slow down"}}


def test_bearer_accept_and_idempotency_headers(fake):
    c, _ = lambda_client(fake.url)
    c.images.list()
    c.ssh_keys.add("k")
    (m1, p1, h1), (m2, p2, h2) = fake.seen
    assert (m1, p1, m2, p2) == ("GET", "/api/v1/images", "POST", "/api/v1/ssh-keys")
    assert h1["Authorization"] == "Bearer secret-key" and h1["Accept"] == "application/json"
    assert "Idempotency-Key" not in h1 and len(h2["Idempotency-Key"]) >= 16


def test_429_retried_after_retry_after_with_the_same_idempotency_key(fake):
    fake.script = [(429, {"Retry-After": "2"}, LAMBDA_429, 0), (200, {}, {"data": {"instance_ids": ["a"]}}, 0)]
    c, sleeps = lambda_client(fake.url)
    assert c.instances.launch("r", "t", ["k"]).instance_ids == ["a"]
    assert len(fake.seen) == 2 and len(sleeps) == 1
    assert 2.0 <= sleeps[0] <= 3.0  # Retry-After, plus at most a second of jitter
    keys = {h["Idempotency-Key"] for _, _, h in fake.seen}
    assert len(keys) == 1


def test_503_backs_off_exponentially_with_jitter(fake):
    body = {"success": False, "error": {"code": "service_unavailable", "message": "busy"}, "metadata": {}}
    fake.script = [(503, {}, body, 0)] * 3 + [(200, {}, {"success": True, "data": [], "metadata": {}}, 0)]
    c = NimbusClient(api_key="k", base_url=fake.url, backoff=0.5, max_retries=3)
    sleeps: List[float] = []
    c._transport.sleep = sleeps.append
    assert list(c.instances.list()) == []
    assert len(sleeps) == 3
    for i, s in enumerate(sleeps):
        assert 0 <= s <= 0.5 * 2**i  # full jitter under a doubling ceiling


def test_retries_exhausted_raise_with_code_and_retry_after(fake):
    body = {"success": False, "error": {"code": "rate_limit_exceeded", "message": "slow", "retry_after": 1}, "metadata": {"request_id": "r1"}}
    fake.script = [(429, {"Retry-After": "1", "X-Request-Id": "r1"}, body, 0)] * 3
    c = NimbusClient(api_key="k", base_url=fake.url, max_retries=2)
    sleeps: List[float] = []
    c._transport.sleep = sleeps.append
    with pytest.raises(NimbusApiError) as ei:
        c.account.get()
    e = ei.value
    assert (e.status, e.code, e.retry_after, e.request_id) == (429, "rate_limit_exceeded", 1.0, "r1")
    assert len(fake.seen) == 3 and len(sleeps) == 2


def test_retry_after_beyond_max_backoff_is_not_waited_for(fake):
    fake.script = [(429, {"Retry-After": "3600"}, LAMBDA_429, 0)]
    c, sleeps = lambda_client(fake.url, max_backoff=30)
    with pytest.raises(LambdaCloudError) as ei:
        c.images.list()
    assert ei.value.code == "global/too-many-requests" and ei.value.retry_after == 3600
    assert sleeps == [] and len(fake.seen) == 1


def test_other_errors_are_not_retried(fake):
    fake.script = [(500, {}, {"error": {"code": "global/internal", "message": "boom"}}, 0)]
    c, sleeps = lambda_client(fake.url)
    with pytest.raises(LambdaCloudError) as ei:
        c.images.list()
    assert ei.value.status == 500 and sleeps == [] and len(fake.seen) == 1


def test_non_json_error_body(fake):
    fake.script = [(502, {}, "bad gateway", 0)]
    c, _ = lambda_client(fake.url)
    with pytest.raises(LambdaCloudError) as ei:
        c.images.list()
    assert ei.value.status == 502 and ei.value.code is None


def test_timeout_on_every_request(fake):
    fake.script = [(200, {}, {"data": []}, 2.0)] * 2
    c, sleeps = lambda_client(fake.url, timeout=0.3, max_retries=1)
    t0 = time.monotonic()
    with pytest.raises(NimbusConnectionError):
        c.images.list()
    assert time.monotonic() - t0 < 1.9  # both attempts timed out at 0.3 s
    assert len(sleeps) == 1


def test_connection_refused_retried_then_raised():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    c, sleeps = lambda_client(f"http://127.0.0.1:{port}", max_retries=2)
    with pytest.raises(NimbusConnectionError, match="127.0.0.1"):
        c.images.list()
    assert len(sleeps) == 2


def test_parse_retry_after():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a past date: now
