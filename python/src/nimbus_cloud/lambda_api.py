"""``LambdaCloudClient``: the Lambda Cloud API v1 (``/api/v1``) as Nimbus serves it.

The constructor is the one of Lambda's Python client documentation (seed 002):
``LambdaCloudClient(api_key="...")`` configures Bearer authentication once, and every call after
that is authenticated. The server is ``base_url``, else ``$NIMBUS_URL``, else ``nimbus dev``'s
``http://127.0.0.1:8080``. ``LambdaCloudClient.from_env()`` also reads the key from
``$LAMBDA_API_KEY`` (or ``$NIMBUS_API_KEY``).

Endpoints are grouped as in lambda-cloud-python (``client.instances.launch(...)``, or
``Instances(client).launch(...)``); each returns the typed objects of ``lambda_models`` and
raises :class:`LambdaCloudError` with Lambda's error code. :data:`OPERATIONS` maps every
``operationId`` of ``openapi/lambda.json`` to its method (a test keeps them in step).
"""

from __future__ import annotations

import time
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

from ._http import BaseClient, Group, env_api_key
from ._http import path_segment as _seg
from .errors import LambdaCloudError, WaitTimeout
from .lambda_models import (
    AuditEvent,
    AuditEventsPage,
    DeleteResult,
    FileSystem,
    FirewallRule,
    FirewallRuleset,
    GlobalFirewallRuleset,
    Image,
    Instance,
    InstanceTypeEntry,
    LaunchResult,
    RestartResult,
    SshKey,
    TerminateResult,
)

#: operationId of openapi/lambda.json -> (HTTP method, path under /api/v1, client method).
OPERATIONS: Dict[str, Tuple[str, str, str]] = {
    "instance_types_list": ("GET", "/instance-types", "instance_types.list"),
    "instances_list": ("GET", "/instances", "instances.list"),
    "instance_get": ("GET", "/instances/{id}", "instances.get"),
    "instance_update": ("POST", "/instances/{id}", "instances.update"),
    "instances_launch": ("POST", "/instance-operations/launch", "instances.launch"),
    "instances_restart": ("POST", "/instance-operations/restart", "instances.restart"),
    "instances_terminate": ("POST", "/instance-operations/terminate", "instances.terminate"),
    "ssh_keys_list": ("GET", "/ssh-keys", "ssh_keys.list"),
    "ssh_key_create": ("POST", "/ssh-keys", "ssh_keys.add"),
    "ssh_key_delete": ("DELETE", "/ssh-keys/{id}", "ssh_keys.delete"),
    "file_systems_list": ("GET", "/file-systems", "file_systems.list"),
    "file_system_create": ("POST", "/filesystems", "file_systems.create"),
    "file_system_delete": ("DELETE", "/filesystems/{id}", "file_systems.delete"),
    "images_list": ("GET", "/images", "images.list"),
    "firewall_rules_list": ("GET", "/firewall-rules", "firewall_rules.list"),
    "firewall_rules_replace": ("PUT", "/firewall-rules", "firewall_rules.replace"),
    "firewall_rulesets_list": ("GET", "/firewall-rulesets", "firewall_rulesets.list"),
    "firewall_ruleset_create": ("POST", "/firewall-rulesets", "firewall_rulesets.create"),
    "firewall_ruleset_get": ("GET", "/firewall-rulesets/{id}", "firewall_rulesets.get"),
    "firewall_ruleset_update": ("PATCH", "/firewall-rulesets/{id}", "firewall_rulesets.update"),
    "firewall_ruleset_delete": ("DELETE", "/firewall-rulesets/{id}", "firewall_rulesets.delete"),
    "firewall_ruleset_global_get": ("GET", "/firewall-rulesets/global", "firewall_rulesets.get_global"),
    "firewall_ruleset_global_update": ("PATCH", "/firewall-rulesets/global", "firewall_rulesets.update_global"),
    "audit_events_list": ("GET", "/audit-events", "audit_events.list"),
}

RuleLike = Union[FirewallRule, Mapping[str, Any]]


def _decode_error(status: int, headers: Mapping[str, str], body: Any, request_id: Optional[str], retry_after: Optional[float]) -> LambdaCloudError:
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        return LambdaCloudError(
            err.get("code"),
            err.get("message") or "",
            status,
            err.get("suggestion"),
            request_id=request_id,
            retry_after=retry_after,
            body=body,
        )
    return LambdaCloudError(None, f"HTTP {status}: {str(body)[:300]}", status, request_id=request_id, retry_after=retry_after, body=body)


def _rules(rules: Iterable[RuleLike]) -> List[Dict[str, Any]]:
    return [r.to_request() if isinstance(r, FirewallRule) else dict(r) for r in rules]


class LambdaCloudClient(BaseClient):
    """Client of the Lambda Cloud API v1.

    Args:
        api_key: your API key, sent as ``Authorization: Bearer <api_key>`` on every request.
        base_url: the server root (``https://cloud.example.com``); default ``$NIMBUS_URL``,
            else ``http://127.0.0.1:8080``. A trailing ``/api/v1`` is accepted.
        timeout: seconds for each HTTP request.
        max_retries: retries of a request answered 429/503 or that could not connect.
        backoff: first retry wait in seconds (doubles each time, with jitter).
        max_backoff: longest single wait (a longer ``Retry-After`` raises instead).

    Example::

        client = LambdaCloudClient(api_key="your-api-key")
        for name, entry in client.instance_types.list().items():
            print(name, entry.regions)
    """

    PREFIX = "/api/v1"
    DECODE_ERROR = staticmethod(_decode_error)

    def _attach_groups(self) -> None:
        self.instances = Instances(self)
        self.instance_types = InstanceTypes(self)
        self.ssh_keys = SSHKeys(self)
        self.file_systems = FileSystems(self)
        self.filesystems = self.file_systems  # lambda-cloud-python's spelling
        self.images = Images(self)
        self.firewall_rules = FirewallRules(self)
        self.firewall_rulesets = FirewallRulesets(self)
        self.audit_events = AuditEvents(self)

    @classmethod
    def from_env(cls, base_url: Optional[str] = None, **kwargs: Any) -> "LambdaCloudClient":
        """A client whose key comes from ``$LAMBDA_API_KEY`` (else ``$NIMBUS_API_KEY``) and
        whose server comes from ``base_url``, else ``$NIMBUS_URL``. ``ValueError`` when no key
        is set."""
        return cls(api_key=env_api_key("LAMBDA_API_KEY", "NIMBUS_API_KEY"), base_url=base_url, **kwargs)

    def _request(self, method: str, path: str, params: Optional[Mapping[str, Any]] = None, json: Any = None) -> Any:
        """lambda-cloud-python's low-level call: ``path`` includes ``/api/v1``."""
        if path.startswith("/api/v1"):
            path = path[len("/api/v1") :]
        return self.request(method, path, params=params, json=json)

    def _data(self, method: str, path: str, **kw: Any) -> Any:
        body = self.request(method, path, **kw)
        return body.get("data") if isinstance(body, dict) else body


class _Group(Group):
    _client: LambdaCloudClient


class Instances(_Group):
    """``/instances`` and ``/instance-operations``."""

    def list(self, cluster_id: Optional[str] = None) -> List[Instance]:
        """Your instances that are not terminated."""
        data = self._client._data("GET", "/instances", params={"cluster_id": cluster_id})
        return [Instance.from_dict(x) for x in data or []]

    def get(self, instance_id: str) -> Instance:
        """One instance (terminated ones too)."""
        return Instance.from_dict(self._client._data("GET", f"/instances/{_seg(instance_id)}"))

    def update(self, instance_id: str, name: str) -> Instance:
        """Renames an instance (``POST /instances/{id}``)."""
        return Instance.from_dict(self._client._data("POST", f"/instances/{_seg(instance_id)}", json={"name": name}))

    rename = update

    def launch(
        self,
        region_name: str,
        instance_type_name: str,
        ssh_key_names: Sequence[str],
        name: Optional[str] = None,
        file_system_names: Optional[Sequence[str]] = None,
        image: Union[None, str, Mapping[str, str]] = None,
        user_data: Optional[str] = None,
        *,
        quantity: Optional[int] = None,
        hostname: Optional[str] = None,
        tags: Union[None, Mapping[str, str], Sequence[Mapping[str, str]]] = None,
        file_system_mounts: Optional[Sequence[Mapping[str, str]]] = None,
        firewall_rulesets: Optional[Sequence[Union[str, Mapping[str, str]]]] = None,
        idempotency_key: Optional[str] = None,
    ) -> LaunchResult:
        """Launches ``quantity`` (default 1) instances; returns their ids (they start
        ``booting``; see :meth:`wait_until_active`).

        ``image`` is ``{"id": ...}`` or ``{"family": ...}``, or a string naming a family.
        ``tags`` is ``{key: value}`` or Lambda's ``[{"key", "value"}]``. ``firewall_rulesets``
        takes ruleset ids. ``idempotency_key`` makes a repeated call return the first launch
        (one is generated per call otherwise, so the client's own retries never launch twice).
        """
        body: Dict[str, Any] = {
            "region_name": region_name,
            "instance_type_name": instance_type_name,
            "ssh_key_names": list(ssh_key_names),
        }
        if name is not None:
            body["name"] = name
        if file_system_names is not None:
            body["file_system_names"] = list(file_system_names)
        if image is not None:
            body["image"] = {"family": image} if isinstance(image, str) else dict(image)
        if user_data is not None:
            body["user_data"] = user_data
        if quantity is not None:
            body["quantity"] = quantity
        if hostname is not None:
            body["hostname"] = hostname
        if tags is not None:
            body["tags"] = [{"key": k, "value": v} for k, v in tags.items()] if isinstance(tags, Mapping) else [dict(t) for t in tags]
        if file_system_mounts is not None:
            body["file_system_mounts"] = [dict(m) for m in file_system_mounts]
        if firewall_rulesets is not None:
            body["firewall_rulesets"] = [{"id": r} if isinstance(r, str) else dict(r) for r in firewall_rulesets]
        data = self._client._data("POST", "/instance-operations/launch", json=body, idempotency_key=idempotency_key)
        return LaunchResult.from_dict(data)

    def restart(self, instance_ids: Union[str, Sequence[str]]) -> RestartResult:
        """Restarts instances (``active`` -> ``restarting``... -> ``active``)."""
        ids = [instance_ids] if isinstance(instance_ids, str) else list(instance_ids)
        return RestartResult.from_dict(self._client._data("POST", "/instance-operations/restart", json={"instance_ids": ids}))

    def terminate(self, instance_ids: Union[str, Sequence[str]]) -> TerminateResult:
        """Terminates instances; they leave :meth:`list` once gone."""
        ids = [instance_ids] if isinstance(instance_ids, str) else list(instance_ids)
        return TerminateResult.from_dict(self._client._data("POST", "/instance-operations/terminate", json={"instance_ids": ids}))

    def wait_for_status(self, instance_id: str, status: str, timeout: float = 600, poll_interval: float = 2.0) -> Instance:
        """Polls :meth:`get` until the instance has ``status``; :class:`WaitTimeout` after
        ``timeout`` seconds, or at once when it is terminating/terminated and ``status`` is
        not one of those."""
        deadline = time.monotonic() + timeout
        delay = min(0.1, poll_interval)
        while True:
            inst = self.get(instance_id)
            if inst.status == status:
                return inst
            if inst.status in ("terminating", "terminated") and status not in ("terminating", "terminated"):
                raise WaitTimeout(instance_id, status, inst.status, "it is being terminated")
            if time.monotonic() >= deadline:
                raise WaitTimeout(instance_id, status, inst.status, f"not within {timeout:g} s")
            time.sleep(delay)
            delay = min(delay * 2, poll_interval)

    def wait_until_active(self, instance_ids: Union[str, Sequence[str]], timeout: float = 600) -> List[Instance]:
        """Waits until every instance is ``active`` (e.g. the ids of :meth:`launch`)."""
        ids = [instance_ids] if isinstance(instance_ids, str) else list(instance_ids)
        deadline = time.monotonic() + timeout
        return [self.wait_for_status(i, "active", timeout=max(0.0, deadline - time.monotonic())) for i in ids]


class InstanceTypes(_Group):
    """``/instance-types``."""

    def list(self) -> Dict[str, InstanceTypeEntry]:
        """Instance type name -> the type and the regions with capacity for it now."""
        data = self._client._data("GET", "/instance-types") or {}
        return {k: InstanceTypeEntry.from_dict(v) for k, v in data.items()}


class SSHKeys(_Group):
    """``/ssh-keys``."""

    def list(self) -> List[SshKey]:
        return [SshKey.from_dict(x) for x in self._client._data("GET", "/ssh-keys") or []]

    def add(self, name: str, public_key: Optional[str] = None) -> SshKey:
        """Uploads ``public_key``; without it, the server generates a key pair and this answer
        (only) carries its ``private_key``."""
        body: Dict[str, Any] = {"name": name}
        if public_key is not None:
            body["public_key"] = public_key
        return SshKey.from_dict(self._client._data("POST", "/ssh-keys", json=body))

    create = add

    def generate(self, name: str) -> SshKey:
        """Generates a key pair; save ``private_key`` now, it is never shown again."""
        return self.add(name)

    def delete(self, key_id: str) -> None:
        self._client._data("DELETE", f"/ssh-keys/{_seg(key_id)}")


class FileSystems(_Group):
    """``/file-systems`` (list) and ``/filesystems`` (create, delete)."""

    def list(self) -> List[FileSystem]:
        return [FileSystem.from_dict(x) for x in self._client._data("GET", "/file-systems") or []]

    def create(self, name: str, region: str) -> FileSystem:
        """A file system in ``region``, mounted at ``/lambda/nfs/<name>`` in instances launched
        with it."""
        return FileSystem.from_dict(self._client._data("POST", "/filesystems", json={"name": name, "region": region}))

    def delete(self, filesystem_id: str) -> DeleteResult:
        """Deletes a file system that no instance uses."""
        return DeleteResult.from_dict(self._client._data("DELETE", f"/filesystems/{_seg(filesystem_id)}"))


class Images(_Group):
    """``/images``."""

    def list(self) -> List[Image]:
        return [Image.from_dict(x) for x in self._client._data("GET", "/images") or []]


class FirewallRules(_Group):
    """``/firewall-rules``: the global inbound rules (every instance)."""

    def list(self) -> List[FirewallRule]:
        return [FirewallRule.from_dict(x) for x in self._client._data("GET", "/firewall-rules") or []]

    def replace(self, rules: Iterable[RuleLike]) -> List[FirewallRule]:
        """Replaces all global rules with ``rules`` (``FirewallRule`` objects or dicts)."""
        data = self._client._data("PUT", "/firewall-rules", json={"data": _rules(rules)})
        return [FirewallRule.from_dict(x) for x in data or []]


class FirewallRulesets(_Group):
    """``/firewall-rulesets``: named rule sets, attached at launch, and the global one."""

    def list(self) -> List[FirewallRuleset]:
        return [FirewallRuleset.from_dict(x) for x in self._client._data("GET", "/firewall-rulesets") or []]

    def create(self, name: str, region: str, rules: Iterable[RuleLike]) -> FirewallRuleset:
        body = {"name": name, "region": region, "rules": _rules(rules)}
        return FirewallRuleset.from_dict(self._client._data("POST", "/firewall-rulesets", json=body))

    def get(self, ruleset_id: str) -> FirewallRuleset:
        return FirewallRuleset.from_dict(self._client._data("GET", f"/firewall-rulesets/{_seg(ruleset_id)}"))

    def update(self, ruleset_id: str, name: Optional[str] = None, rules: Optional[Iterable[RuleLike]] = None) -> FirewallRuleset:
        """Renames and/or replaces the rules of a ruleset (what is ``None`` is unchanged)."""
        body: Dict[str, Any] = {}
        if name is not None:
            body["name"] = name
        if rules is not None:
            body["rules"] = _rules(rules)
        return FirewallRuleset.from_dict(self._client._data("PATCH", f"/firewall-rulesets/{_seg(ruleset_id)}", json=body))

    def delete(self, ruleset_id: str) -> None:
        self._client._data("DELETE", f"/firewall-rulesets/{_seg(ruleset_id)}")

    def get_global(self) -> GlobalFirewallRuleset:
        return GlobalFirewallRuleset.from_dict(self._client._data("GET", "/firewall-rulesets/global"))

    def update_global(self, rules: Optional[Iterable[RuleLike]] = None, name: Optional[str] = None) -> GlobalFirewallRuleset:
        body: Dict[str, Any] = {}
        if name is not None:
            body["name"] = name
        if rules is not None:
            body["rules"] = _rules(rules)
        return GlobalFirewallRuleset.from_dict(self._client._data("PATCH", "/firewall-rulesets/global", json=body))


class AuditEvents(_Group):
    """``/audit-events``: who did what, newest pages by ``page_token``."""

    def list(
        self,
        start: Optional[str] = None,
        end: Optional[str] = None,
        page_token: Optional[str] = None,
        resource_type: Optional[str] = None,
    ) -> AuditEventsPage:
        """One page; ``start``/``end`` are RFC 3339 instants, ``resource_type`` e.g.
        ``cloud.instance``."""
        params = {"start": start, "end": end, "page_token": page_token, "resource_type": resource_type}
        return AuditEventsPage.from_dict(self._client._data("GET", "/audit-events", params=params))

    def iter(self, start: Optional[str] = None, end: Optional[str] = None, resource_type: Optional[str] = None) -> Iterator[AuditEvent]:
        """Every event, following ``page_token`` across pages."""
        token: Optional[str] = None
        while True:
            page = self.list(start=start, end=end, page_token=token, resource_type=resource_type)
            yield from page.events
            if not page.page_token or page.page_token == token:
                return
            token = page.page_token

