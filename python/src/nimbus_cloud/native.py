"""``NimbusClient``: the native API (``/v1``, seed 001's conventions).

Answers come in ``{"success": true, "data": ..., "metadata": ...}`` envelopes (lists add
``pagination``); this client returns the typed ``data`` (lists as :class:`Page`, a ``list``
with ``.pagination``) and raises :class:`NimbusApiError` with the native error ``code`` and
``details``. Mutating calls send an ``Idempotency-Key`` (yours, or one per call), so the
client's retries of 429/503 and lost connections never do the work twice.

Seed 001's example, on Nimbus::

    client = NimbusClient(api_key="nmb_...")
    instance = client.instances.create(name="box", instance_type="cpu_1x_small",
                                       region="us-east-1", image="debian-12", ssh_keys=[key_id])
    instance.wait_until_ready()
    print(f"SSH: ssh ubuntu@{instance.public_ip}")

:data:`OPERATIONS` maps every ``operationId`` of ``openapi/native.json`` to its method.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Generic, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Type, TypeVar

from ._http import BaseClient, Group, env_api_key
from ._http import path_segment as _seg
from ._model import Model
from .errors import NimbusApiError
from .native_models import (
    Account,
    ApiKey,
    Estimate,
    FirewallRule,
    Instance,
    InstanceGpu,
    InstanceMetrics,
    InstanceNetwork,
    Invoice,
    Pagination,
    Quota,
    RestoreResult,
    ServiceAccount,
    Snapshot,
    Usage,
    Volume,
    Vpn,
    Webhook,
    WebhookDelivery,
)

T = TypeVar("T", bound=Model)

#: operationId of openapi/native.json -> (HTTP method, path under /v1, client method).
OPERATIONS: Dict[str, Tuple[str, str, str]] = {
    "instance_create": ("POST", "/instances", "instances.create"),
    "instances_list": ("GET", "/instances", "instances.list"),
    "instance_get": ("GET", "/instances/{id}", "instances.get"),
    "instance_update": ("PATCH", "/instances/{id}", "instances.update"),
    "instance_delete": ("DELETE", "/instances/{id}", "instances.terminate"),
    "instance_start": ("POST", "/instances/{id}/start", "instances.start"),
    "instance_stop": ("POST", "/instances/{id}/stop", "instances.stop"),
    "instance_restart": ("POST", "/instances/{id}/restart", "instances.restart"),
    "instance_resize": ("POST", "/instances/{id}/resize", "instances.resize"),
    "instance_network_get": ("GET", "/instances/{id}/network", "instances.network"),
    "instance_metrics_get": ("GET", "/instances/{id}/metrics", "instances.metrics"),
    "instance_gpus_list": ("GET", "/instances/{id}/gpus", "instances.gpus"),
    "volume_create": ("POST", "/volumes", "volumes.create"),
    "volumes_list": ("GET", "/volumes", "volumes.list"),
    "volume_get": ("GET", "/volumes/{id}", "volumes.get"),
    "volume_delete": ("DELETE", "/volumes/{id}", "volumes.delete"),
    "volume_attach": ("POST", "/volumes/{id}/attach", "volumes.attach"),
    "volume_detach": ("POST", "/volumes/{id}/detach", "volumes.detach"),
    "volume_resize": ("POST", "/volumes/{id}/resize", "volumes.resize"),
    "snapshot_create": ("POST", "/snapshots", "snapshots.create"),
    "snapshots_list": ("GET", "/snapshots", "snapshots.list"),
    "snapshot_get": ("GET", "/snapshots/{id}", "snapshots.get"),
    "snapshot_delete": ("DELETE", "/snapshots/{id}", "snapshots.delete"),
    "snapshot_restore": ("POST", "/snapshots/{id}/restore", "snapshots.restore"),
    "firewall_rules_list": ("GET", "/firewall/rules", "firewall_rules.list"),
    "firewall_rule_create": ("POST", "/firewall/rules", "firewall_rules.create"),
    "firewall_rule_delete": ("DELETE", "/firewall/rules/{id}", "firewall_rules.delete"),
    "account_get": ("GET", "/account", "account.get"),
    "account_update": ("PATCH", "/account", "account.update"),
    "account_quota": ("GET", "/account/quota", "account.quota"),
    "api_keys_list": ("GET", "/account/api-keys", "api_keys.list"),
    "api_key_create": ("POST", "/account/api-keys", "api_keys.create"),
    "api_key_delete": ("DELETE", "/account/api-keys/{id}", "api_keys.delete"),
    "service_accounts_list": ("GET", "/service-accounts", "service_accounts.list"),
    "service_account_create": ("POST", "/service-accounts", "service_accounts.create"),
    "service_account_get": ("GET", "/service-accounts/{id}", "service_accounts.get"),
    "service_account_update": ("PATCH", "/service-accounts/{id}", "service_accounts.update"),
    "service_account_delete": ("DELETE", "/service-accounts/{id}", "service_accounts.delete"),
    "service_account_api_keys_list": ("GET", "/service-accounts/{id}/api-keys", "service_accounts.list_keys"),
    "service_account_api_key_create": ("POST", "/service-accounts/{id}/api-keys", "service_accounts.create_key"),
    "service_account_api_key_delete": ("DELETE", "/service-accounts/{id}/api-keys/{key_id}", "service_accounts.delete_key"),
    "billing_usage_get": ("GET", "/billing/usage", "billing.usage"),
    "billing_invoices_list": ("GET", "/billing/invoices", "billing.invoices"),
    "billing_invoice_get": ("GET", "/billing/invoices/{id}", "billing.invoice"),
    "billing_estimate_get": ("GET", "/billing/estimate", "billing.estimate"),
    "webhooks_list": ("GET", "/webhooks", "webhooks.list"),
    "webhook_create": ("POST", "/webhooks", "webhooks.create"),
    "webhook_get": ("GET", "/webhooks/{id}", "webhooks.get"),
    "webhook_delete": ("DELETE", "/webhooks/{id}", "webhooks.delete"),
    "webhook_deliveries_list": ("GET", "/webhooks/{id}/deliveries", "webhooks.deliveries"),
    "webhook_delivery_redeliver": ("POST", "/webhooks/{id}/deliveries/{delivery_id}/redeliver", "webhooks.redeliver"),
    "vpns_list": ("GET", "/vpn", "vpns.list"),
    "vpn_create": ("POST", "/vpn", "vpns.create"),
    "vpn_get": ("GET", "/vpn/{id}", "vpns.get"),
    "vpn_delete": ("DELETE", "/vpn/{id}", "vpns.delete"),
}


def _decode_error(status: int, headers: Mapping[str, str], body: Any, request_id: Optional[str], retry_after: Optional[float]) -> NimbusApiError:
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        meta = body.get("metadata") or {}
        ra = err.get("retry_after")
        return NimbusApiError(
            err.get("code"),
            err.get("message") or "",
            status,
            err.get("details"),
            request_id=request_id or meta.get("request_id"),
            retry_after=retry_after if retry_after is not None else (float(ra) if ra is not None else None),
            body=body,
        )
    return NimbusApiError(None, f"HTTP {status}: {str(body)[:300]}", status, request_id=request_id, retry_after=retry_after, body=body)


class Page(List[T], Generic[T]):
    """One page of a list: the items, plus ``pagination`` (page, limit, total_items,
    total_pages, has_next, has_prev)."""

    def __init__(self, items: Iterable[T], pagination: Optional[Pagination]) -> None:
        super().__init__(items)
        self.pagination = pagination

    @property
    def has_next(self) -> bool:
        return bool(self.pagination and self.pagination.has_next)


def _compact(d: Mapping[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


class NimbusClient(BaseClient):
    """Client of the native API.

    Args:
        api_key: sent as ``Authorization: Bearer <api_key>`` on every request.
        base_url: the server root; default ``$NIMBUS_URL``, else ``http://127.0.0.1:8080``.
        timeout: seconds for each HTTP request.
        max_retries, backoff, max_backoff: retries of 429/503 and connection failures
            (exponential backoff with full jitter, ``Retry-After`` honoured).
    """

    PREFIX = "/v1"
    DECODE_ERROR = staticmethod(_decode_error)

    def _attach_groups(self) -> None:
        self.instances = Instances(self)
        self.volumes = Volumes(self)
        self.snapshots = Snapshots(self)
        self.firewall_rules = FirewallRules(self)
        self.account = AccountApi(self)
        self.api_keys = ApiKeys(self)
        self.service_accounts = ServiceAccounts(self)
        self.billing = Billing(self)
        self.webhooks = Webhooks(self)
        self.vpns = Vpns(self)

    @classmethod
    def from_env(cls, base_url: Optional[str] = None, **kwargs: Any) -> "NimbusClient":
        """A client whose key comes from ``$NIMBUS_API_KEY`` (else ``$LAMBDA_API_KEY``) and
        whose server comes from ``base_url``, else ``$NIMBUS_URL``."""
        return cls(api_key=env_api_key("NIMBUS_API_KEY", "LAMBDA_API_KEY"), base_url=base_url, **kwargs)

    # helpers of the resource groups
    def _one(self, cls: Type[T], method: str, path: str, **kw: Any) -> T:
        env = self.request(method, path, **kw)
        return self._wrap(cls, (env or {}).get("data") or {})

    def _page(self, cls: Type[T], path: str, params: Mapping[str, Any]) -> Page[T]:
        env = self.request("GET", path, params=params) or {}
        p = env.get("pagination")
        return Page([self._wrap(cls, x) for x in env.get("data") or []], Pagination.from_dict(p) if p else None)

    def _wrap(self, cls: Type[T], data: Mapping[str, Any]) -> T:
        obj = cls.from_dict(data)
        bind = getattr(obj, "_bind", None)
        if bind is not None:
            bind(self)
        for v in vars(obj).values():  # nested bound objects (a restore's instance or volume)
            if hasattr(v, "_bind"):
                v._bind(self)
        return obj


class _Group(Group):
    _client: NimbusClient


def _list_params(page: Optional[int], limit: Optional[int], sort: Optional[str], order: Optional[str], filters: Mapping[str, Any]) -> Dict[str, Any]:
    return _compact({"page": page, "limit": limit, "sort": sort, "order": order, **filters})


def _iterate(fetch: Callable[..., Page[T]], limit: int, kw: Mapping[str, Any]) -> Iterator[T]:
    page = 1
    while True:
        p = fetch(page=page, limit=limit, **kw)
        yield from p
        if not p.has_next:
            return
        page += 1


class Instances(_Group):
    """``/v1/instances``."""

    def create(
        self,
        *,
        instance_type: str,
        region: str,
        ssh_keys: Sequence[str],
        name: Optional[str] = None,
        image: Optional[str] = None,
        user_data: Optional[str] = None,
        hostname: Optional[str] = None,
        tags: Optional[Mapping[str, str]] = None,
        volumes: Optional[Sequence[str]] = None,
        firewall_ruleset_ids: Optional[Sequence[str]] = None,
        idempotency_key: Optional[str] = None,
    ) -> Instance:
        """Creates an instance (status ``booting``; see ``Instance.wait_until_ready``).

        ``ssh_keys`` are SSH key ids (``LambdaCloudClient.ssh_keys`` manages keys; the ids are
        the same). ``image`` is an image id or family (``debian-12``); the region's default
        when absent. With ``idempotency_key``, a repeated call returns the first instance.
        """
        body = _compact(
            {
                "name": name,
                "instance_type": instance_type,
                "region": region,
                "image": image,
                "ssh_keys": list(ssh_keys),
                "user_data": user_data,
                "hostname": hostname,
                "tags": dict(tags) if tags is not None else None,
                "volumes": list(volumes) if volumes is not None else None,
                "firewall": {"ruleset_ids": list(firewall_ruleset_ids)} if firewall_ruleset_ids is not None else None,
            }
        )
        return self._client._one(Instance, "POST", "/instances", json=body, idempotency_key=idempotency_key)

    def list(
        self,
        *,
        page: Optional[int] = None,
        limit: Optional[int] = None,
        sort: Optional[str] = None,
        order: Optional[str] = None,
        status: Optional[str] = None,
        region: Optional[str] = None,
        instance_type: Optional[str] = None,
        name: Optional[str] = None,
    ) -> Page[Instance]:
        """One page of instances (not terminated), filtered and sorted on the server."""
        filters = {"status": status, "region": region, "instance_type": instance_type, "name": name}
        return self._client._page(Instance, "/instances", _list_params(page, limit, sort, order, filters))

    def iter(self, **filters: Any) -> Iterator[Instance]:
        """Every instance across pages (same filters as :meth:`list`)."""
        return _iterate(self.list, 100, filters)

    def get(self, instance_id: str) -> Instance:
        return self._client._one(Instance, "GET", f"/instances/{_seg(instance_id)}")

    def update(self, instance_id: str, name: Optional[str] = None, tags: Optional[Mapping[str, str]] = None) -> Instance:
        """Renames and/or replaces all tags (what is ``None`` is unchanged)."""
        body = _compact({"name": name, "tags": dict(tags) if tags is not None else None})
        return self._client._one(Instance, "PATCH", f"/instances/{_seg(instance_id)}", json=body)

    def terminate(self, instance_id: str) -> Instance:
        """``DELETE /v1/instances/{id}``: the instance becomes ``terminating``."""
        return self._client._one(Instance, "DELETE", f"/instances/{_seg(instance_id)}")

    delete = terminate

    def start(self, instance_id: str) -> Instance:
        return self._client._one(Instance, "POST", f"/instances/{_seg(instance_id)}/start")

    def stop(self, instance_id: str) -> Instance:
        return self._client._one(Instance, "POST", f"/instances/{_seg(instance_id)}/stop")

    def restart(self, instance_id: str) -> Instance:
        return self._client._one(Instance, "POST", f"/instances/{_seg(instance_id)}/restart")

    def resize(self, instance_id: str, instance_type: str) -> Instance:
        """Changes the type of a ``stopped`` instance (409 otherwise)."""
        return self._client._one(Instance, "POST", f"/instances/{_seg(instance_id)}/resize", json={"instance_type": instance_type})

    def network(self, instance_id: str) -> InstanceNetwork:
        return self._client._one(InstanceNetwork, "GET", f"/instances/{_seg(instance_id)}/network")

    def metrics(self, instance_id: str, start: Optional[str] = None, end: Optional[str] = None, step: Optional[int] = None) -> InstanceMetrics:
        """Means per ``step`` seconds between ``start`` and ``end`` (RFC 3339)."""
        params = {"from": start, "to": end, "step": step}
        return self._client._one(InstanceMetrics, "GET", f"/instances/{_seg(instance_id)}/metrics", params=params)

    def gpus(self, instance_id: str) -> List[InstanceGpu]:
        """The instance's GPUs (or MIG devices) and their health; empty for a CPU instance."""
        return list(self._client._page(InstanceGpu, f"/instances/{_seg(instance_id)}/gpus", {}))

    def wait_until_ready(self, instance_id: str, timeout: float = 600) -> Instance:
        """Waits until the instance is ``running``."""
        return self.get(instance_id).wait_until_ready(timeout=timeout)


class Volumes(_Group):
    """``/v1/volumes`` (see docs/storage.md)."""

    def create(self, name: str, region: str, size_gib: int) -> Volume:
        return self._client._one(Volume, "POST", "/volumes", json={"name": name, "region": region, "size_gib": size_gib})

    def list(self, *, page: Optional[int] = None, limit: Optional[int] = None, sort: Optional[str] = None, order: Optional[str] = None, **filters: Any) -> Page[Volume]:
        """Filters: ``status``, ``region``, ``name``, ``instance_id``."""
        return self._client._page(Volume, "/volumes", _list_params(page, limit, sort, order, filters))

    def get(self, volume_id: str) -> Volume:
        return self._client._one(Volume, "GET", f"/volumes/{_seg(volume_id)}")

    def delete(self, volume_id: str) -> Volume:
        return self._client._one(Volume, "DELETE", f"/volumes/{_seg(volume_id)}")

    def attach(self, volume_id: str, instance_id: str) -> Volume:
        return self._client._one(Volume, "POST", f"/volumes/{_seg(volume_id)}/attach", json={"instance_id": instance_id})

    def detach(self, volume_id: str) -> Volume:
        return self._client._one(Volume, "POST", f"/volumes/{_seg(volume_id)}/detach")

    def resize(self, volume_id: str, size_gib: int) -> Volume:
        return self._client._one(Volume, "POST", f"/volumes/{_seg(volume_id)}/resize", json={"size_gib": size_gib})


class Snapshots(_Group):
    """``/v1/snapshots``."""

    def create(self, name: str, *, instance_id: Optional[str] = None, volume_id: Optional[str] = None) -> Snapshot:
        """A snapshot of exactly one of ``instance_id`` and ``volume_id``."""
        body = _compact({"name": name, "instance_id": instance_id, "volume_id": volume_id})
        return self._client._one(Snapshot, "POST", "/snapshots", json=body)

    def list(self, *, page: Optional[int] = None, limit: Optional[int] = None, sort: Optional[str] = None, order: Optional[str] = None, **filters: Any) -> Page[Snapshot]:
        """Filters: ``status``, ``region``, ``name``, ``source_type``, ``source_id``."""
        return self._client._page(Snapshot, "/snapshots", _list_params(page, limit, sort, order, filters))

    def get(self, snapshot_id: str) -> Snapshot:
        return self._client._one(Snapshot, "GET", f"/snapshots/{_seg(snapshot_id)}")

    def delete(self, snapshot_id: str) -> Snapshot:
        return self._client._one(Snapshot, "DELETE", f"/snapshots/{_seg(snapshot_id)}")

    def restore(
        self,
        snapshot_id: str,
        name: str,
        *,
        size_gib: Optional[int] = None,
        instance_type: Optional[str] = None,
        ssh_keys: Optional[Sequence[str]] = None,
    ) -> RestoreResult:
        """A volume snapshot restores to a new volume (``size_gib``); an instance snapshot to a
        new instance (``instance_type``, ``ssh_keys``)."""
        body = _compact({"name": name, "size_gib": size_gib, "instance_type": instance_type, "ssh_keys": list(ssh_keys) if ssh_keys is not None else None})
        return self._client._one(RestoreResult, "POST", f"/snapshots/{_seg(snapshot_id)}/restore", json=body)


class FirewallRules(_Group):
    """``/v1/firewall/rules``: global rules, or rules of a ruleset (``ruleset_id``)."""

    def list(self, *, page: Optional[int] = None, limit: Optional[int] = None, sort: Optional[str] = None, order: Optional[str] = None, **filters: Any) -> Page[FirewallRule]:
        """Filters: ``protocol``, ``ruleset_id``, ``source``."""
        return self._client._page(FirewallRule, "/firewall/rules", _list_params(page, limit, sort, order, filters))

    def create(
        self,
        protocol: str,
        source: str,
        port_range: Optional[Sequence[int]] = None,
        description: Optional[str] = None,
        ruleset_id: Optional[str] = None,
    ) -> FirewallRule:
        body = _compact(
            {
                "protocol": protocol,
                "source": source,
                "port_range": list(port_range) if port_range is not None else None,
                "description": description,
                "ruleset_id": ruleset_id,
            }
        )
        return self._client._one(FirewallRule, "POST", "/firewall/rules", json=body)

    def delete(self, rule_id: str) -> FirewallRule:
        return self._client._one(FirewallRule, "DELETE", f"/firewall/rules/{_seg(rule_id)}")


class AccountApi(_Group):
    """``/v1/account``."""

    def get(self) -> Account:
        return self._client._one(Account, "GET", "/account")

    def update(
        self,
        name: Optional[str] = None,
        email: Optional[str] = None,
        spend_limit_cents: Optional[int] = None,
        spend_limit_action: Optional[str] = None,
    ) -> Account:
        """Needs ADMIN. ``spend_limit_cents=0`` removes the limit."""
        body = _compact({"name": name, "email": email, "spend_limit_cents": spend_limit_cents, "spend_limit_action": spend_limit_action})
        return self._client._one(Account, "PATCH", "/account", json=body)

    def quota(self) -> List[Quota]:
        return list(self._client._page(Quota, "/account/quota", {}))


class ApiKeys(_Group):
    """``/v1/account/api-keys``."""

    def list(self, *, page: Optional[int] = None, limit: Optional[int] = None, sort: Optional[str] = None, order: Optional[str] = None, **filters: Any) -> Page[ApiKey]:
        return self._client._page(ApiKey, "/account/api-keys", _list_params(page, limit, sort, order, filters))

    def create(self, name: str, permissions: Sequence[str], *, expires_at: Optional[str] = None, expires_in_days: Optional[int] = None) -> ApiKey:
        """A new key; its ``secret`` is in this answer only."""
        body = _compact({"name": name, "permissions": list(permissions), "expires_at": expires_at, "expires_in_days": expires_in_days})
        return self._client._one(ApiKey, "POST", "/account/api-keys", json=body)

    def delete(self, key_id: str) -> ApiKey:
        return self._client._one(ApiKey, "DELETE", f"/account/api-keys/{_seg(key_id)}")


class ServiceAccounts(_Group):
    """``/v1/service-accounts`` (ADMIN)."""

    def list(self, *, page: Optional[int] = None, limit: Optional[int] = None, sort: Optional[str] = None, order: Optional[str] = None, **filters: Any) -> Page[ServiceAccount]:
        return self._client._page(ServiceAccount, "/service-accounts", _list_params(page, limit, sort, order, filters))

    def create(self, name: str, permissions: Sequence[str], description: Optional[str] = None) -> ServiceAccount:
        body = _compact({"name": name, "permissions": list(permissions), "description": description})
        return self._client._one(ServiceAccount, "POST", "/service-accounts", json=body)

    def get(self, account_id: str) -> ServiceAccount:
        return self._client._one(ServiceAccount, "GET", f"/service-accounts/{_seg(account_id)}")

    def update(self, account_id: str, name: Optional[str] = None, description: Optional[str] = None, permissions: Optional[Sequence[str]] = None) -> ServiceAccount:
        body = _compact({"name": name, "description": description, "permissions": list(permissions) if permissions is not None else None})
        return self._client._one(ServiceAccount, "PATCH", f"/service-accounts/{_seg(account_id)}", json=body)

    def delete(self, account_id: str) -> ServiceAccount:
        return self._client._one(ServiceAccount, "DELETE", f"/service-accounts/{_seg(account_id)}")

    def list_keys(self, account_id: str, *, page: Optional[int] = None, limit: Optional[int] = None, sort: Optional[str] = None, order: Optional[str] = None, **filters: Any) -> Page[ApiKey]:
        return self._client._page(ApiKey, f"/service-accounts/{_seg(account_id)}/api-keys", _list_params(page, limit, sort, order, filters))

    def create_key(self, account_id: str, name: Optional[str] = None, *, expires_at: Optional[str] = None, expires_in_days: Optional[int] = None) -> ApiKey:
        """A key of the account; its ``secret`` is in this answer only."""
        body = _compact({"name": name, "expires_at": expires_at, "expires_in_days": expires_in_days})
        return self._client._one(ApiKey, "POST", f"/service-accounts/{_seg(account_id)}/api-keys", json=body)

    def delete_key(self, account_id: str, key_id: str) -> ApiKey:
        return self._client._one(ApiKey, "DELETE", f"/service-accounts/{_seg(account_id)}/api-keys/{_seg(key_id)}")


class Billing(_Group):
    """``/v1/billing``: usage, invoices, estimates (amounts in micro-dollars and exact USD
    strings)."""

    def usage(self, start: Optional[str] = None, end: Optional[str] = None, resource_type: Optional[str] = None, sku: Optional[str] = None) -> Usage:
        params = {"start": start, "end": end, "resource_type": resource_type, "sku": sku}
        return self._client._one(Usage, "GET", "/billing/usage", params=params)

    def invoices(self) -> List[Invoice]:
        return list(self._client._page(Invoice, "/billing/invoices", {}))

    def invoice(self, invoice_id: str) -> Invoice:
        return self._client._one(Invoice, "GET", f"/billing/invoices/{_seg(invoice_id)}")

    def estimate(self, instance_type: Optional[str] = None, hours: Optional[int] = None) -> Estimate:
        return self._client._one(Estimate, "GET", "/billing/estimate", params={"instance_type": instance_type, "hours": hours})


class Webhooks(_Group):
    """``/v1/webhooks``: HMAC-signed event deliveries."""

    def list(self, *, page: Optional[int] = None, limit: Optional[int] = None, sort: Optional[str] = None, order: Optional[str] = None, **filters: Any) -> Page[Webhook]:
        return self._client._page(Webhook, "/webhooks", _list_params(page, limit, sort, order, filters))

    def create(self, url: str, events: Sequence[str], secret: Optional[str] = None, *, idempotency_key: Optional[str] = None) -> Webhook:
        """``events``: types (``instance.created``), wildcards (``instance.*``) or ``*``. The
        signing ``secret`` is generated when absent and returned in this answer only."""
        body = _compact({"url": url, "events": list(events), "secret": secret})
        return self._client._one(Webhook, "POST", "/webhooks", json=body, idempotency_key=idempotency_key)

    def get(self, webhook_id: str) -> Webhook:
        return self._client._one(Webhook, "GET", f"/webhooks/{_seg(webhook_id)}")

    def delete(self, webhook_id: str) -> Webhook:
        return self._client._one(Webhook, "DELETE", f"/webhooks/{_seg(webhook_id)}")

    def deliveries(self, webhook_id: str, *, page: Optional[int] = None, limit: Optional[int] = None, sort: Optional[str] = None, order: Optional[str] = None, **filters: Any) -> Page[WebhookDelivery]:
        """Filters: ``state``, ``event_type``."""
        return self._client._page(WebhookDelivery, f"/webhooks/{_seg(webhook_id)}/deliveries", _list_params(page, limit, sort, order, filters))

    def redeliver(self, webhook_id: str, delivery_id: str) -> WebhookDelivery:
        return self._client._one(WebhookDelivery, "POST", f"/webhooks/{_seg(webhook_id)}/deliveries/{_seg(delivery_id)}/redeliver")


class Vpns(_Group):
    """``/v1/vpn``: WireGuard into the organization's instances."""

    def list(self) -> List[Vpn]:
        return list(self._client._page(Vpn, "/vpn", {}))

    def create(self, name: str, region: str) -> Vpn:
        """The answer carries ``client_private_key``, never shown again."""
        return self._client._one(Vpn, "POST", "/vpn", json={"name": name, "region": region})

    def get(self, vpn_id: str) -> Vpn:
        return self._client._one(Vpn, "GET", f"/vpn/{_seg(vpn_id)}")

    def delete(self, vpn_id: str) -> Vpn:
        return self._client._one(Vpn, "DELETE", f"/vpn/{_seg(vpn_id)}")
