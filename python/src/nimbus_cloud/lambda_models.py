"""Typed objects of the Lambda Cloud API (``/api/v1``), one dataclass per schema of
``openapi/lambda.json``. Every field has a default, unknown fields are kept in ``extra``, and
subscripting works like the dicts lambda-cloud-python returns (see ``_model``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from ._model import Model


@dataclass
class Region(Model):
    name: Optional[str] = None
    description: Optional[str] = None


@dataclass
class InstanceTypeSpecs(Model):
    vcpus: Optional[int] = None
    memory_gib: Optional[int] = None
    storage_gib: Optional[int] = None
    gpus: Optional[int] = None


@dataclass
class InstanceType(Model):
    name: Optional[str] = None
    description: Optional[str] = None
    gpu_description: Optional[str] = None
    price_cents_per_hour: Optional[int] = None
    specs: Optional[InstanceTypeSpecs] = None
    _nested = {"specs": InstanceTypeSpecs}


@dataclass
class InstanceTypeEntry(Model):
    """One value of ``GET /instance-types``: the type and the regions that can launch it now."""

    instance_type: Optional[InstanceType] = None
    regions_with_capacity_available: List[Region] = field(default_factory=list)
    _nested = {"instance_type": InstanceType, "regions_with_capacity_available": [Region]}

    @property
    def regions(self) -> List[str]:
        """Names of the regions with capacity."""
        return [r.name for r in self.regions_with_capacity_available if r.name]


@dataclass
class ActionAvailability(Model):
    available: Optional[bool] = None
    reason_code: Optional[str] = None
    reason_description: Optional[str] = None


@dataclass
class InstanceActions(Model):
    migrate: Optional[ActionAvailability] = None
    rebuild: Optional[ActionAvailability] = None
    restart: Optional[ActionAvailability] = None
    cold_reboot: Optional[ActionAvailability] = None
    terminate: Optional[ActionAvailability] = None
    _nested = {k: ActionAvailability for k in ("migrate", "rebuild", "restart", "cold_reboot", "terminate")}


@dataclass
class FileSystemMount(Model):
    mount_point: Optional[str] = None
    file_system_id: Optional[str] = None


@dataclass
class Tag(Model):
    key: Optional[str] = None
    value: Optional[str] = None


@dataclass
class IdRef(Model):
    id: Optional[str] = None


@dataclass
class Instance(Model):
    """An instance as the Lambda API shows it. ``status``: ``booting``, ``active``,
    ``unhealthy``, ``terminating`` or ``terminated``."""

    id: Optional[str] = None
    name: Optional[str] = None
    status: Optional[str] = None
    ip: Optional[str] = None
    private_ip: Optional[str] = None
    hostname: Optional[str] = None
    region: Optional[Region] = None
    instance_type: Optional[InstanceType] = None
    ssh_key_names: List[str] = field(default_factory=list)
    file_system_names: List[str] = field(default_factory=list)
    file_system_mounts: Optional[List[FileSystemMount]] = None
    jupyter_token: Optional[str] = None
    jupyter_url: Optional[str] = None
    actions: Optional[InstanceActions] = None
    tags: Optional[List[Tag]] = None
    firewall_rulesets: Optional[List[IdRef]] = None
    is_reserved: Optional[bool] = None
    _nested = {
        "region": Region,
        "instance_type": InstanceType,
        "file_system_mounts": [FileSystemMount],
        "actions": InstanceActions,
        "tags": [Tag],
        "firewall_rulesets": [IdRef],
    }


@dataclass
class LaunchResult(Model):
    """``POST /instance-operations/launch``: the ids of the new instances."""

    instance_ids: List[str] = field(default_factory=list)


@dataclass
class RestartResult(Model):
    restarted_instances: List[Instance] = field(default_factory=list)
    _nested = {"restarted_instances": [Instance]}


@dataclass
class TerminateResult(Model):
    terminated_instances: List[Instance] = field(default_factory=list)
    _nested = {"terminated_instances": [Instance]}


@dataclass
class SshKey(Model):
    """An SSH key; ``private_key`` only in the answer that generated it."""

    id: Optional[str] = None
    name: Optional[str] = None
    public_key: Optional[str] = None
    private_key: Optional[str] = None


@dataclass
class User(Model):
    id: Optional[str] = None
    email: Optional[str] = None
    status: Optional[str] = None


@dataclass
class FileSystem(Model):
    id: Optional[str] = None
    name: Optional[str] = None
    mount_point: Optional[str] = None
    created: Optional[str] = None
    created_by: Optional[User] = None
    is_in_use: Optional[bool] = None
    region: Optional[Region] = None
    bytes_used: Optional[int] = None
    _nested = {"created_by": User, "region": Region}


@dataclass
class DeleteResult(Model):
    """``DELETE /filesystems/{id}``."""

    deleted_ids: List[str] = field(default_factory=list)


@dataclass
class Image(Model):
    id: Optional[str] = None
    name: Optional[str] = None
    description: Optional[str] = None
    family: Optional[str] = None
    version: Optional[str] = None
    architecture: Optional[str] = None
    region: Optional[Region] = None
    created_time: Optional[str] = None
    updated_time: Optional[str] = None
    _nested = {"region": Region}


@dataclass
class FirewallRule(Model):
    """One inbound allow rule. ``protocol``: ``tcp``, ``udp``, ``icmp`` or ``all``;
    ``port_range``: ``[min, max]`` (absent for icmp); ``source_network``: a CIDR."""

    protocol: Optional[str] = None
    port_range: Optional[List[int]] = None
    source_network: Optional[str] = None
    description: Optional[str] = None

    def to_request(self) -> Dict[str, Any]:
        """The rule as a request body item (absent fields left out)."""
        out: Dict[str, Any] = {"protocol": self.protocol, "source_network": self.source_network}
        if self.port_range is not None:
            out["port_range"] = list(self.port_range)
        if self.description is not None:
            out["description"] = self.description
        return out


@dataclass
class FirewallRuleset(Model):
    id: Optional[str] = None
    name: Optional[str] = None
    region: Optional[Region] = None
    rules: List[FirewallRule] = field(default_factory=list)
    created: Optional[str] = None
    instance_ids: List[str] = field(default_factory=list)
    _nested = {"region": Region, "rules": [FirewallRule]}


@dataclass
class GlobalFirewallRuleset(Model):
    """The rules that apply to every instance (``id`` is ``global``)."""

    id: Optional[str] = None
    name: Optional[str] = None
    rules: List[FirewallRule] = field(default_factory=list)
    _nested = {"rules": [FirewallRule]}


@dataclass
class AuditEvent(Model):
    event_id: Optional[str] = None
    event_time: Optional[str] = None
    service_name: Optional[str] = None
    resource_name: Optional[str] = None
    action: Optional[str] = None
    catalog_version: Optional[str] = None
    resource_lrns: List[str] = field(default_factory=list)
    actor_lrn: Optional[str] = None
    request_api_key_lrn: Optional[str] = None
    resource_owner_lrn: Optional[str] = None
    additional_details: Dict[str, Any] = field(default_factory=dict)


@dataclass
class AuditEventsPage(Model):
    """One page of audit events; pass ``page_token`` to the next call while it is set."""

    events: List[AuditEvent] = field(default_factory=list)
    page_token: Optional[str] = None
    _nested = {"events": [AuditEvent]}
