"""Nimbus's Python SDK.

- :class:`LambdaCloudClient`: the Lambda Cloud API v1 (``/api/v1``), with the constructor of
  Lambda's Python client (``LambdaCloudClient(api_key=...)``); also importable as
  ``from lambda_cloud import LambdaCloudClient``.
- :class:`NimbusClient`: the native API (``/v1``): ``client.instances.create(...)``,
  ``instance.wait_until_ready()``, ``instance.public_ip``.

Both take the server from ``base_url``, else ``$NIMBUS_URL``, else ``http://127.0.0.1:8080``
(``nimbus dev``), and have ``from_env()`` to read the key from ``$LAMBDA_API_KEY`` /
``$NIMBUS_API_KEY``. Standard library only. Guide: docs/python-sdk.md.
"""

from . import lambda_models, native_models
from ._http import DEFAULT_URL
from .errors import ApiError, LambdaCloudError, NimbusApiError, NimbusConnectionError, NimbusError, WaitTimeout
from .lambda_api import (
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
from .native import NimbusClient, Page

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_URL",
    "LambdaCloudClient",
    "NimbusClient",
    "Page",
    "Instances",
    "InstanceTypes",
    "SSHKeys",
    "FileSystems",
    "Images",
    "FirewallRules",
    "FirewallRulesets",
    "AuditEvents",
    "NimbusError",
    "ApiError",
    "LambdaCloudError",
    "NimbusApiError",
    "NimbusConnectionError",
    "WaitTimeout",
    "lambda_models",
    "native_models",
    "__version__",
]
