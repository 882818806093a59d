"""Exceptions of both clients.

Every error the server answers becomes an :class:`ApiError` carrying the API's own error
``code`` (``global/object-does-not-exist`` in the Lambda dialect, ``not_found`` in the native
one), the HTTP ``status``, the ``message`` and the ``request_id`` (``X-Request-Id``) to quote in
a bug report. Failures to reach the server at all are :class:`NimbusConnectionError`.
"""

from __future__ import annotations

from typing import Any, Optional


class NimbusError(Exception):
    """Base class of every exception this package raises."""


class NimbusConnectionError(NimbusError):
    """The server could not be reached (refused, reset, timed out), after the retries."""


class ApiError(NimbusError):
    """The server answered with an error status.

    Attributes:
        code: the API's error code (``None`` only when the body was not an API error).
        message: the API's message.
        status: the HTTP status.
        request_id: the ``X-Request-Id`` of the response, when present.
        retry_after: seconds from ``Retry-After`` (429/503), when present.
        body: the decoded JSON body (or the text when it was not JSON).
    """

    def __init__(
        self,
        code: Optional[str],
        message: str,
        status: int,
        *,
        request_id: Optional[str] = None,
        retry_after: Optional[float] = None,
        body: Any = None,
    ) -> None:
        super().__init__(code, message, status)
        self.code = code
        self.message = message
        self.status = status
        self.request_id = request_id
        self.retry_after = retry_after
        self.body = body

    def __str__(self) -> str:
        s = f"{self.status} {self.code}: {self.message}"
        if self.request_id:
            s += f" (request id {self.request_id})"
        return s


class LambdaCloudError(ApiError):
    """An error of the Lambda Cloud API: ``{"error": {"code", "message", "suggestion"}}``.

    ``code`` is Lambda's, e.g. ``global/invalid-api-key``, ``global/object-does-not-exist``,
    ``global/invalid-parameters``, ``instance-operations/launch/insufficient-capacity``.
    """

    def __init__(
        self,
        code: Optional[str],
        message: str,
        status: int,
        suggestion: Optional[str] = None,
        **kw: Any,
    ) -> None:
        super().__init__(code, message, status, **kw)
        self.suggestion = suggestion

    def __str__(self) -> str:
        s = super().__str__()
        if self.suggestion:
            s += f" Suggestion: {self.suggestion}"
        return s


class NimbusApiError(ApiError):
    """An error of the native API: ``{"success": false, "error": {"code", "message", "details"?,
    "retry_after"?}}``.

    ``code`` is one of ``invalid_request``, ``authentication_failed``, ``forbidden``,
    ``quota_exceeded``, ``not_found``, ``already_exists``, ``conflict``,
    ``insufficient_capacity``, ``idempotency_key_reused``, ``rate_limit_exceeded``,
    ``server_error``, ``service_unavailable``. ``details`` is ``{field, value, allowed_values}``
    when the server names the offending field.
    """

    def __init__(self, code: Optional[str], message: str, status: int, details: Optional[dict] = None, **kw: Any) -> None:
        super().__init__(code, message, status, **kw)
        self.details = details or {}

    def __str__(self) -> str:
        s = super().__str__()
        allowed = self.details.get("allowed_values")
        if self.details.get("field"):
            s += f" [field {self.details['field']}"
            s += f"; allowed: {', '.join(allowed)}]" if allowed else "]"
        return s


class WaitTimeout(NimbusError):
    """A wait (``wait_until_ready``, ``wait_for_status``) gave up: the instance did not reach
    ``wanted`` in time, or reached a state it cannot leave towards it (``terminated``).

    Attributes: ``instance_id``, ``wanted``, ``last_status``.
    """

    def __init__(self, instance_id: str, wanted: str, last_status: Optional[str], why: str) -> None:
        super().__init__(f"instance {instance_id} did not become {wanted} ({why}; last status {last_status})")
        self.instance_id = instance_id
        self.wanted = wanted
        self.last_status = last_status
