"""Typed objects of the native API (``/v1``), one dataclass per schema of ``openapi/native.json``.

``Instance``, ``Volume`` and ``Snapshot`` returned by a :class:`~nimbus_cloud.NimbusClient` are
*bound* to it: ``instance.wait_until_ready()``, ``instance.terminate()``, ``volume.attach(...)``
call the API and update the object in place, so a variable keeps showing the latest state
(``instance.public_ip`` after ``wait_until_ready()``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from ._model import Model
from .errors import NimbusError, WaitTimeout

if TYPE_CHECKING:
    from .native import NimbusClient


@dataclass
class Pagination(Model):
    page: Optional[int] = None
    limit: Optional[int] = None
    total_items: Optional[int] = None
    total_pages: Optional[int] = None
    has_next: Optional[bool] = None
    has_prev: Optional[bool] = None


class _Bound(Model):
    """A model that remembers the client that fetched it (not a field: not in ``repr``/``==``)."""

    def _bind(self, client: "NimbusClient") -> Any:
        object.__setattr__(self, "_client", client)
        return self

    def _c(self) -> "NimbusClient":
        c = getattr(self, "_client", None)
        if c is None:
            raise NimbusError(f"this {type(self).__name__} is not bound to a client (build it with a NimbusClient call)")
        return c

    def _replace_with(self, other: Model) -> Any:
        """Takes every field of ``other`` (a fresh copy of the same object) in place."""
        for f in fields(self):
            setattr(self, f.name, getattr(other, f.name))
        object.__setattr__(self, "extra", other.extra)
        object.__setattr__(self, "_json", getattr(other, "_json", None))
        return self


@dataclass
class Instance(_Bound):
    """An instance. ``status``: ``pending``, ``booting``, ``running``, ``restarting``,
    ``stopping``, ``stopped``, ``starting``, ``unhealthy``, ``terminating`` or ``terminated``."""

    id: Optional[str] = None
    name: Optional[str] = None
    status: Optional[str] = None
    instance_type: Optional[str] = None
    region: Optional[str] = None
    hostname: Optional[str] = None
    ip: Optional[str] = None
    private_ip: Optional[str] = None
    vcpus: Optional[int] = None
    memory_gib: Optional[int] = None
    storage_gib: Optional[int] = None
    gpus: Optional[int] = None
    #: ``container`` or ``vm``: what it runs as on its host (older servers do not say: container).
    machine: Optional[str] = None
    ssh_key_names: List[str] = field(default_factory=list)
    tags: Dict[str, str] = field(default_factory=dict)
    created_at: Optional[str] = None
    updated_at: Optional[str] = None

    @property
    def public_ip(self) -> Optional[str]:
        """The address to SSH to (``ip``); ``None`` until the host has reported it."""
        return self.ip

    def refresh(self) -> "Instance":
        """Re-reads the instance (in place) and returns it."""
        return self._replace_with(self._c().instances.get(self.id or ""))

    def wait_for_status(self, status: str, timeout: float = 600, poll_interval: float = 2.0) -> "Instance":
        """Polls until ``status`` (updating this object); :class:`WaitTimeout` after ``timeout``
        seconds, or at once when the instance is being terminated and ``status`` is not
        ``terminating``/``terminated``."""
        deadline = time.monotonic() + timeout
        delay = min(0.05, poll_interval)
        while True:
            self.refresh()
            if self.status == status:
                return self
            if self.status in ("terminating", "terminated") and status not in ("terminating", "terminated"):
                raise WaitTimeout(self.id or "", status, self.status, "it is being terminated")
            if time.monotonic() >= deadline:
                raise WaitTimeout(self.id or "", status, self.status, f"not within {timeout:g} s")
            time.sleep(delay)
            delay = min(delay * 2, poll_interval)

    def wait_until_ready(self, timeout: float = 600, poll_interval: float = 2.0) -> "Instance":
        """Waits until the instance is ``running`` (it then has its ``public_ip``)."""
        return self.wait_for_status("running", timeout=timeout, poll_interval=poll_interval)

    def update(self, name: Optional[str] = None, tags: Optional[Dict[str, str]] = None) -> "Instance":
        """Renames and/or replaces the tags."""
        return self._replace_with(self._c().instances.update(self.id or "", name=name, tags=tags))

    def terminate(self) -> "Instance":
        """Terminates the instance (``DELETE``); it becomes ``terminating``."""
        return self._replace_with(self._c().instances.terminate(self.id or ""))

    delete = terminate

    def stop(self) -> "Instance":
        return self._replace_with(self._c().instances.stop(self.id or ""))

    def start(self) -> "Instance":
        return self._replace_with(self._c().instances.start(self.id or ""))

    def restart(self) -> "Instance":
        return self._replace_with(self._c().instances.restart(self.id or ""))

    def resize(self, instance_type: str) -> "Instance":
        """Changes the type of a ``stopped`` instance."""
        return self._replace_with(self._c().instances.resize(self.id or "", instance_type))

    def network(self) -> "InstanceNetwork":
        return self._c().instances.network(self.id or "")

    def metrics(self, **kw: Any) -> "InstanceMetrics":
        return self._c().instances.metrics(self.id or "", **kw)

    def gpu_devices(self) -> List["InstanceGpu"]:
        """Its GPUs (or MIG devices) with their health; ``gpus`` is only their number."""
        return self._c().instances.gpus(self.id or "")


@dataclass
class InstanceNetwork(Model):
    instance_id: Optional[str] = None
    region: Optional[str] = None
    hostname: Optional[str] = None
    ip: Optional[str] = None
    private_ip: Optional[str] = None
    ssh_port: Optional[int] = None
    firewall_ruleset_ids: List[str] = field(default_factory=list)


@dataclass
class InstanceGpu(Model):
    """A GPU, or MIG device, of an instance, with its health (``ok`` ... ``service_required``)."""

    index: Optional[int] = None
    uuid: Optional[str] = None
    model: Optional[str] = None
    memory_mib: Optional[int] = None
    mig_profile: Optional[str] = None
    health: Optional[str] = None
    reasons: List[str] = field(default_factory=list)


@dataclass
class MetricPoint(Model):
    timestamp: Optional[str] = None
    cpu_millicores: Optional[int] = None
    memory_bytes: Optional[int] = None
    disk_bytes: Optional[int] = None
    net_rx_bytes_per_sec: Optional[int] = None
    net_tx_bytes_per_sec: Optional[int] = None
    gpu_utilization_pct: Optional[float] = None
    gpu_memory_bytes: Optional[int] = None


@dataclass
class InstanceMetrics(Model):
    instance_id: Optional[str] = None
    start: Optional[str] = None
    to: Optional[str] = None
    step_seconds: Optional[int] = None
    points: List[MetricPoint] = field(default_factory=list)
    _nested = {"points": [MetricPoint]}

    @classmethod
    def from_dict(cls, data: Any) -> "InstanceMetrics":  # `from` is a Python keyword
        d = dict(data)
        if "from" in d:
            d["start"] = d.pop("from")
        obj = super().from_dict(d)
        object.__setattr__(obj, "_json", dict(data))
        return obj


@dataclass
class Volume(_Bound):
    """A block volume; ``status``: ``available``, ``attaching`` or ``attached``."""

    id: Optional[str] = None
    name: Optional[str] = None
    region: Optional[str] = None
    size_gib: Optional[int] = None
    status: Optional[str] = None
    mount_point: Optional[str] = None
    instance_id: Optional[str] = None
    source_snapshot_id: Optional[str] = None
    created_at: Optional[str] = None
    updated_at: Optional[str] = None

    def refresh(self) -> "Volume":
        return self._replace_with(self._c().volumes.get(self.id or ""))

    def attach(self, instance_id: str) -> "Volume":
        return self._replace_with(self._c().volumes.attach(self.id or "", instance_id))

    def detach(self) -> "Volume":
        return self._replace_with(self._c().volumes.detach(self.id or ""))

    def resize(self, size_gib: int) -> "Volume":
        return self._replace_with(self._c().volumes.resize(self.id or "", size_gib))

    def delete(self) -> "Volume":
        return self._replace_with(self._c().volumes.delete(self.id or ""))


@dataclass
class Snapshot(_Bound):
    """A copy of an instance's disk or a volume; ``status``: ``creating``, ``available`` or
    ``failed`` (see ``message``)."""

    id: Optional[str] = None
    name: Optional[str] = None
    region: Optional[str] = None
    status: Optional[str] = None
    source_type: Optional[str] = None
    source_id: Optional[str] = None
    size_gib: Optional[int] = None
    size_bytes: Optional[int] = None
    message: Optional[str] = None
    created_at: Optional[str] = None
    updated_at: Optional[str] = None

    def refresh(self) -> "Snapshot":
        return self._replace_with(self._c().snapshots.get(self.id or ""))

    def delete(self) -> "Snapshot":
        return self._replace_with(self._c().snapshots.delete(self.id or ""))


@dataclass
class RestoreResult(Model):
    """What a restore made: a ``volume`` or an ``instance``."""

    volume: Optional[Volume] = None
    instance: Optional[Instance] = None
    _nested = {"volume": Volume, "instance": Instance}


@dataclass
class FirewallRule(Model):
    """An inbound allow rule: global (no ``ruleset_id``) or in a ruleset."""

    id: Optional[str] = None
    protocol: Optional[str] = None
    port_range: Optional[List[int]] = None
    source: Optional[str] = None
    description: Optional[str] = None
    ruleset_id: Optional[str] = None


@dataclass
class RateLimitPlan(Model):
    requests_per_hour: Optional[int] = None
    burst: Optional[int] = None


@dataclass
class Account(Model):
    id: Optional[str] = None
    name: Optional[str] = None
    email: Optional[str] = None
    plan: Optional[str] = None
    rate_limit: Optional[RateLimitPlan] = None
    spend_limit_cents: Optional[int] = None
    spend_limit_action: Optional[str] = None
    created_at: Optional[str] = None
    _nested = {"rate_limit": RateLimitPlan}


@dataclass
class Quota(Model):
    resource: Optional[str] = None
    used: Optional[int] = None
    limit: Optional[int] = None
    unit: Optional[str] = None


@dataclass
class ApiKey(Model):
    """An API key; ``secret`` only in the answer that created it."""

    id: Optional[str] = None
    name: Optional[str] = None
    prefix: Optional[str] = None
    permissions: List[str] = field(default_factory=list)
    created_at: Optional[str] = None
    created_by: Optional[str] = None
    expires_at: Optional[str] = None
    service_account_id: Optional[str] = None
    secret: Optional[str] = None


@dataclass
class ServiceAccount(Model):
    id: Optional[str] = None
    name: Optional[str] = None
    description: Optional[str] = None
    permissions: List[str] = field(default_factory=list)
    created_at: Optional[str] = None
    deleted_at: Optional[str] = None


@dataclass
class UsageLine(Model):
    resource_type: Optional[str] = None
    resource_id: Optional[str] = None
    kind: Optional[str] = None
    sku: Optional[str] = None
    quantity: Optional[int] = None
    rate_micros_per_hour: Optional[int] = None
    seconds: Optional[int] = None
    amount_micros: Optional[int] = None
    amount_usd: Optional[str] = None


@dataclass
class Usage(Model):
    start: Optional[str] = None
    end: Optional[str] = None
    total_micros: Optional[int] = None
    total_usd: Optional[str] = None
    lines: List[UsageLine] = field(default_factory=list)
    _nested = {"lines": [UsageLine]}


@dataclass
class InvoiceLine(Model):
    sku: Optional[str] = None
    kind: Optional[str] = None
    seconds: Optional[int] = None
    amount_micros: Optional[int] = None
    amount_usd: Optional[str] = None


@dataclass
class Invoice(Model):
    id: Optional[str] = None
    period: Optional[str] = None
    period_start: Optional[str] = None
    period_end: Optional[str] = None
    status: Optional[str] = None
    lines: List[InvoiceLine] = field(default_factory=list)
    total_micros: Optional[int] = None
    total_usd: Optional[str] = None
    credits_micros: Optional[int] = None
    balance_start_micros: Optional[int] = None
    balance_end_micros: Optional[int] = None
    _nested = {"lines": [InvoiceLine]}


@dataclass
class ProposedCost(Model):
    instance_type: Optional[str] = None
    hours: Optional[int] = None
    amount_micros: Optional[int] = None
    amount_usd: Optional[str] = None


@dataclass
class Estimate(Model):
    month_to_date_micros: Optional[int] = None
    current_to_month_end_micros: Optional[int] = None
    projected_month_total_micros: Optional[int] = None
    projected_month_total_usd: Optional[str] = None
    month_end: Optional[str] = None
    proposed: Optional[ProposedCost] = None
    _nested = {"proposed": ProposedCost}


@dataclass
class Webhook(Model):
    """A webhook; ``secret`` only in the answer that created it."""

    id: Optional[str] = None
    url: Optional[str] = None
    events: List[str] = field(default_factory=list)
    secret: Optional[str] = None
    created_at: Optional[str] = None
    updated_at: Optional[str] = None


@dataclass
class WebhookAttempt(Model):
    attempt: Optional[int] = None
    started_at: Optional[str] = None
    duration_ms: Optional[float] = None
    status_code: Optional[int] = None
    error: Optional[str] = None


@dataclass
class WebhookDelivery(Model):
    id: Optional[str] = None
    webhook_id: Optional[str] = None
    event_id: Optional[str] = None
    event_type: Optional[str] = None
    state: Optional[str] = None
    attempts: Optional[int] = None
    give_up_at: Optional[str] = None
    next_attempt_at: Optional[str] = None
    delivered_at: Optional[str] = None
    last_error: Optional[str] = None
    last_status_code: Optional[int] = None
    history: List[WebhookAttempt] = field(default_factory=list)
    created_at: Optional[str] = None
    updated_at: Optional[str] = None
    _nested = {"history": [WebhookAttempt]}


@dataclass
class Vpn(Model):
    """A WireGuard VPN; ``client_private_key`` only in the answer that created it."""

    id: Optional[str] = None
    name: Optional[str] = None
    region: Optional[str] = None
    status: Optional[str] = None
    message: Optional[str] = None
    gateway_public_key: Optional[str] = None
    gateway_address: Optional[str] = None
    client_address: Optional[str] = None
    client_public_key: Optional[str] = None
    client_private_key: Optional[str] = None
    endpoint: Optional[str] = None
    network: Optional[str] = None
    #: Every instance subnet of the region the tunnel reaches (the client's AllowedIPs).
    networks: List[str] = field(default_factory=list)
    config: Optional[str] = None
    created_at: Optional[str] = None
