"""Every operation of the checked-in OpenAPI documents has a client method, and that method sends
exactly that HTTP method and path (no server needed: a recording transport stands in).

openapi/lambda.json and openapi/native.json are generated from the server's code and
drift-tested there, so a new endpoint fails this test until the SDK's tables
(`nimbus_cloud.lambda_api.OPERATIONS`, `nimbus_cloud.native.OPERATIONS`) and methods have it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

from nimbus_cloud import LambdaCloudClient, NimbusClient
from nimbus_cloud import lambda_api, native

ROOT = Path(__file__).resolve().parents[2]

# Arguments for calling each method once: (positional, keyword). Absent: no arguments.
LAMBDA_CALLS: Dict[str, Tuple[tuple, dict]] = {
    "instances.get": (("X",), {}),
    "instances.update": (("X", "name"), {}),
    "instances.launch": (("us-east-1", "cpu_1x_small", ["k"]), {}),
    "instances.restart": ((["X"],), {}),
    "instances.terminate": ((["X"],), {}),
    "ssh_keys.add": (("k",), {}),
    "ssh_keys.delete": (("X",), {}),
    "file_systems.create": (("fs", "us-east-1"), {}),
    "file_systems.delete": (("X",), {}),
    "firewall_rules.replace": (([],), {}),
    "firewall_rulesets.create": (("rs", "us-east-1", []), {}),
    "firewall_rulesets.get": (("X",), {}),
    "firewall_rulesets.update": (("X",), {"name": "n"}),
    "firewall_rulesets.delete": (("X",), {}),
    "firewall_rulesets.update_global": ((), {"rules": []}),
}

NATIVE_CALLS: Dict[str, Tuple[tuple, dict]] = {
    "instances.create": ((), {"instance_type": "t", "region": "r", "ssh_keys": ["k"]}),
    "instances.get": (("X",), {}),
    "instances.update": (("X",), {"name": "n"}),
    "instances.terminate": (("X",), {}),
    "instances.start": (("X",), {}),
    "instances.stop": (("X",), {}),
    "instances.restart": (("X",), {}),
    "instances.resize": (("X", "t"), {}),
    "instances.network": (("X",), {}),
    "instances.metrics": (("X",), {}),
    "instances.gpus": (("X",), {}),
    "volumes.create": (("v", "r", 1), {}),
    "volumes.get": (("X",), {}),
    "volumes.delete": (("X",), {}),
    "volumes.attach": (("X", "i"), {}),
    "volumes.detach": (("X",), {}),
    "volumes.resize": (("X", 2), {}),
    "snapshots.create": (("s",), {"volume_id": "v"}),
    "snapshots.get": (("X",), {}),
    "snapshots.delete": (("X",), {}),
    "snapshots.restore": (("X", "n"), {}),
    "firewall_rules.create": (("tcp", "0.0.0.0/0"), {"port_range": [22, 22]}),
    "firewall_rules.delete": (("X",), {}),
    "account.update": ((), {"name": "n"}),
    "api_keys.create": (("k", ["READ"]), {}),
    "api_keys.delete": (("X",), {}),
    "service_accounts.create": (("sa", ["READ"]), {}),
    "service_accounts.get": (("X",), {}),
    "service_accounts.update": (("X",), {"name": "n"}),
    "service_accounts.delete": (("X",), {}),
    "service_accounts.list_keys": (("X",), {}),
    "service_accounts.create_key": (("X",), {}),
    "service_accounts.delete_key": (("X", "X"), {}),
    "billing.invoice": (("X",), {}),
    "webhooks.create": (("https://example.com/h", ["*"]), {}),
    "webhooks.get": (("X",), {}),
    "webhooks.delete": (("X",), {}),
    "webhooks.deliveries": (("X",), {}),
    "webhooks.redeliver": (("X", "X"), {}),
    "vpns.create": (("v", "r"), {}),
    "vpns.get": (("X",), {}),
    "vpns.delete": (("X",), {}),
}


class Recorder:
    """Stands in for the HTTP transport: records (method, path) and answers an empty success."""

    def __init__(self, native_shape: bool) -> None:
        self.calls: List[Tuple[str, str, Any]] = []
        self.native_shape = native_shape

    def request(self, method: str, path: str, *, params=None, json_body=None, idempotency_key=None) -> Any:
        self.calls.append((method, path, json_body))
        return {"success": True, "data": {}, "metadata": {}} if self.native_shape else {"data": {}}


def operations(doc: str) -> List[Tuple[str, str, str]]:
    spec = json.loads((ROOT / "openapi" / doc).read_text())
    out = []
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            out.append((op["operationId"], method.upper(), path))
    assert out, f"no operations in {doc}"
    return out


def resolve(client: Any, dotted: str) -> Any:
    obj = client
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


CASES = [("lambda.json", LambdaCloudClient, lambda_api.OPERATIONS, LAMBDA_CALLS, False), ("native.json", NimbusClient, native.OPERATIONS, NATIVE_CALLS, True)]


@pytest.mark.parametrize("doc,cls,table,calls,native_shape", CASES, ids=["lambda", "native"])
def test_every_operation_has_a_method_that_sends_it(doc, cls, table, calls, native_shape):
    ops = operations(doc)
    missing = [op for op, _, _ in ops if op not in table]
    assert not missing, f"{doc} operations without a client method (add them to OPERATIONS): {missing}"
    stale = sorted(set(table) - {op for op, _, _ in ops})
    assert not stale, f"OPERATIONS lists operations {doc} no longer has: {stale}"
    for op_id, method, path in ops:
        want_method, want_path, dotted = table[op_id]
        assert (want_method, want_path) == (method, path), f"{op_id}: table says {want_method} {want_path}, {doc} says {method} {path}"
        client = cls(api_key="k", base_url="http://127.0.0.1:1")
        rec = Recorder(native_shape)
        client._transport = rec
        fn = resolve(client, dotted)
        assert callable(fn), dotted
        args, kwargs = calls.get(dotted, ((), {}))
        fn(*args, **kwargs)
        assert len(rec.calls) == 1, f"{dotted} made {len(rec.calls)} requests"
        sent_method, sent_path, _ = rec.calls[0]
        expected = re.sub(r"\{[^}]+\}", "X", path)
        assert (sent_method, sent_path) == (method, expected), f"{dotted} sent {sent_method} {sent_path}, {op_id} is {method} {path}"
