"""``lambda_cloud``: the import name of Lambda's Python client, served by Nimbus's SDK.

Code written for Lambda's client runs unmodified against Nimbus::

    from lambda_cloud import LambdaCloudClient
    client = LambdaCloudClient(api_key=api_key)   # server: $NIMBUS_URL

Everything here is :mod:`nimbus_cloud`'s Lambda client (the same objects, not copies), plus
lambda-cloud-python's endpoint classes (``Instances(client)``, ``SSHKeys(client)``, ...).
"""

from nimbus_cloud import __version__
from nimbus_cloud.errors import LambdaCloudError, NimbusConnectionError, NimbusError, WaitTimeout
from nimbus_cloud.lambda_api import (
    AuditEvents,
    FileSystems,
    FirewallRules,
    FirewallRulesets,
    Images,
    Instances,
    InstanceTypes,
    LambdaCloudClient,
    SSHKeys,
)
from nimbus_cloud.lambda_models import (
    ActionAvailability,
    AuditEvent,
    AuditEventsPage,
    DeleteResult,
    FileSystem,
    FileSystemMount,
    FirewallRule,
    FirewallRuleset,
    GlobalFirewallRuleset,
    IdRef,
    Image,
    Instance,
    InstanceActions,
    InstanceType,
    InstanceTypeEntry,
    InstanceTypeSpecs,
    LaunchResult,
    Region,
    RestartResult,
    SshKey,
    Tag,
    TerminateResult,
    User,
)

__all__ = [
    "LambdaCloudClient",
    "Instances",
    "InstanceTypes",
    "SSHKeys",
    "FileSystems",
    "Images",
    "FirewallRules",
    "FirewallRulesets",
    "AuditEvents",
    "LambdaCloudError",
    "NimbusConnectionError",
    "NimbusError",
    "WaitTimeout",
    "__version__",
    # typed objects
    "ActionAvailability",
    "AuditEvent",
    "AuditEventsPage",
    "DeleteResult",
    "FileSystem",
    "FileSystemMount",
    "FirewallRule",
    "FirewallRuleset",
    "GlobalFirewallRuleset",
    "IdRef",
    "Image",
    "Instance",
    "InstanceActions",
    "InstanceType",
    "InstanceTypeEntry",
    "InstanceTypeSpecs",
    "LaunchResult",
    "Region",
    "RestartResult",
    "SshKey",
    "Tag",
    "TerminateResult",
    "User",
]
