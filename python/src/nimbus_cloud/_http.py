"""The one HTTP path of both clients (standard library ``urllib`` only).

Owns: the base URL (argument, else ``NIMBUS_URL``, else ``nimbus dev``'s default address), the
``Authorization: Bearer`` header set once at construction, a timeout on every request, an
``Idempotency-Key`` on every mutating request (the same key on each retry of one call, so a
retried create is done once), and retries of 429/503 answers and connection failures with
exponential backoff and full jitter, honouring ``Retry-After``.

Does not own: the dialects' envelopes and error bodies; a client passes ``decode_error`` to turn
an error answer into its exception.
"""

from __future__ import annotations

import email.utils
import json
import os
import random
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from http.client import HTTPException
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, TypeVar

from .errors import ApiError, NimbusConnectionError

#: Where ``nimbus dev`` listens unless told otherwise (``--listen``).
DEFAULT_URL = "http://127.0.0.1:8080"

#: HTTP statuses that mean "not done, try again later": the server stores neither as an
#: idempotent response, so retrying with the same key is safe.
RETRY_STATUSES = frozenset({429, 503})

MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})

USER_AGENT = "nimbus-cloud-python/0.1.0"


def resolve_base_url(base_url: Optional[str]) -> str:
    """The server root: ``base_url``, else ``$NIMBUS_URL``, else :data:`DEFAULT_URL`."""
    url = base_url or os.environ.get("NIMBUS_URL") or DEFAULT_URL
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    return url


def env_api_key(*names: str) -> str:
    """The first non-empty of the environment variables ``names``; ``ValueError`` naming them
    all when none is set."""
    for n in names:
        v = os.environ.get(n, "").strip()
        if v:
            return v
    raise ValueError(f"no API key: set {' or '.join(names)} (or pass api_key=...)")


def parse_retry_after(value: Optional[str]) -> Optional[float]:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


DecodeError = Callable[[int, Mapping[str, str], Any, Optional[str], Optional[float]], ApiError]


class Transport:
    """Sends requests to one API prefix (``/api/v1`` or ``/v1``) of one server.

    Args:
        api_key: sent as ``Authorization: Bearer <api_key>`` on every request.
        base_url: server root; see :func:`resolve_base_url`.
        prefix: the dialect's path prefix.
        timeout: seconds for each HTTP request (connect and each read).
        max_retries: retries after the first attempt, for 429/503 and connection failures.
        backoff: first backoff in seconds (doubled each retry, full jitter).
        max_backoff: longest single wait; a ``Retry-After`` longer than this is not waited
            for: the error is raised with its ``retry_after``.
        decode_error: turns an error answer into the dialect's exception.
    """

    def __init__(
        self,
        api_key: str,
        base_url: Optional[str],
        prefix: str,
        *,
        timeout: float,
        max_retries: int,
        backoff: float,
        max_backoff: float,
        decode_error: DecodeError,
    ) -> None:
        if not isinstance(api_key, str) or not api_key.strip():
            raise ValueError("api_key must be a non-empty string")
        self.base_url = resolve_base_url(base_url)
        root = self.base_url
        if root.endswith(prefix):  # tolerate a base URL that already names the dialect
            root = root[: -len(prefix)]
        self.root = root
        self.prefix = prefix
        self.timeout = timeout
        self.max_retries = max(0, int(max_retries))
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.decode_error = decode_error
        # Configured once: every request carries these.
        self.headers: Dict[str, str] = {
            "Authorization": f"Bearer {api_key.strip()}",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        self.sleep: Callable[[float], None] = time.sleep  # replaceable in tests
        self._opener = urllib.request.build_opener()

    def url(self, path: str, params: Optional[Mapping[str, Any]] = None) -> str:
        u = self.root + self.prefix + path
        if params:
            pairs = [(k, _query_value(v)) for k, v in params.items() if v is not None]
            if pairs:
                u += "?" + urllib.parse.urlencode(pairs)
        return u

    def _delay(self, attempt: int, retry_after: Optional[float]) -> float:
        """Seconds before retry number ``attempt`` (0-based): full jitter over an exponential
        ceiling; with ``Retry-After``, that long plus a little jitter so clients told the same
        instant do not return together."""
        ceiling = min(self.max_backoff, self.backoff * (2**attempt))
        if retry_after is not None:
            return retry_after + random.uniform(0, min(1.0, ceiling))
        return random.uniform(0, ceiling)

    def _send_once(self, method: str, url: str, body: Optional[bytes], headers: Dict[str, str]) -> Tuple[int, Mapping[str, str], bytes]:
        req = urllib.request.Request(url, data=body, method=method, headers=headers)
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                return resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as e:  # an answer, with an error status
            try:
                data = e.read()
            finally:
                e.close()
            return e.code, e.headers, data

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Optional[Mapping[str, Any]] = None,
        json_body: Any = None,
        idempotency_key: Optional[str] = None,
    ) -> Any:
        """Sends one logical request (with its retries) and returns the decoded JSON body of the
        success; raises the dialect's :class:`ApiError` or :class:`NimbusConnectionError`."""
        method = method.upper()
        url = self.url(path, params)
        headers = dict(self.headers)
        body = None
        if json_body is not None:
            body = json.dumps(json_body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        if method in MUTATING:
            # One key for the whole call: a retry after a lost answer replays the first result
            # instead of doing the work twice.
            headers["Idempotency-Key"] = idempotency_key or str(uuid.uuid4())
        attempt = 0
        while True:
            try:
                status, resp_headers, data = self._send_once(method, url, body, headers)
            except (urllib.error.URLError, HTTPException, socket.timeout, OSError) as e:
                reason = getattr(e, "reason", e)
                if attempt >= self.max_retries:
                    raise NimbusConnectionError(f"{method} {url}: {reason}") from e
                self.sleep(self._delay(attempt, None))
                attempt += 1
                continue
            if 200 <= status < 300:
                if not data:
                    return None
                try:
                    return json.loads(data)
                except ValueError as e:
                    raise ApiError(None, f"invalid JSON in a {status} answer: {data[:200]!r}", status, body=data) from e
            retry_after = parse_retry_after(resp_headers.get("Retry-After"))
            if status in RETRY_STATUSES and attempt < self.max_retries and (retry_after is None or retry_after <= self.max_backoff):
                self.sleep(self._delay(attempt, retry_after))
                attempt += 1
                continue
            try:
                decoded: Any = json.loads(data) if data else None
            except ValueError:
                decoded = data.decode("utf-8", "replace")
            raise self.decode_error(status, resp_headers, decoded, resp_headers.get("X-Request-Id"), retry_after)


def path_segment(v: str) -> str:
    """A path segment, percent-encoded (ids are plain hex, but a name or a typo must not be able
    to reach another path)."""
    return urllib.parse.quote(str(v), safe="")


def _query_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


class BaseClient:
    """What both clients share: a :class:`Transport` to their dialect's prefix, ``request`` for
    any endpoint, and use as a context manager. A subclass sets ``PREFIX`` and ``DECODE_ERROR``
    and attaches its resource groups in ``_attach_groups``."""

    PREFIX = ""
    DECODE_ERROR: DecodeError

    def __init__(
        self,
        api_key: str,
        base_url: Optional[str] = None,
        timeout: float = 60,
        *,
        max_retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
    ) -> None:
        self._transport = Transport(
            api_key,
            base_url,
            self.PREFIX,
            timeout=timeout,
            max_retries=max_retries,
            backoff=backoff,
            max_backoff=max_backoff,
            decode_error=type(self).DECODE_ERROR,
        )
        self.api_key = api_key
        self.base_url = self._transport.base_url
        self.timeout = timeout
        self._attach_groups()

    def _attach_groups(self) -> None:
        """Sets the client's resource groups (``self.instances = ...``)."""

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Optional[Mapping[str, Any]] = None,
        json: Any = None,
        idempotency_key: Optional[str] = None,
    ) -> Any:
        """Any endpoint: ``path`` under the dialect's prefix; returns the whole decoded body."""
        return self._transport.request(method, path, params=params, json_body=json, idempotency_key=idempotency_key)

    def close(self) -> None:
        """Nothing to release (each request has its own connection); kept for ``with``."""

    def __enter__(self: _C) -> _C:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r})"


_C = TypeVar("_C", bound=BaseClient)


class Group:
    """A resource group of a client (``client.instances``, ...)."""

    def __init__(self, client: Any) -> None:
        self._client = client
