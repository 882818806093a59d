"""LambdaCloudClient against a live `nimbus dev --driver sim`: every Lambda endpoint, typed
answers, errors with Lambda's codes, idempotency, the environment helpers."""

from __future__ import annotations

import uuid

import pytest

import lambda_cloud
import nimbus_cloud
from nimbus_cloud import DEFAULT_URL, LambdaCloudClient, LambdaCloudError
from nimbus_cloud.lambda_models import (
    AuditEventsPage,
    DeleteResult,
    FileSystem,
    FirewallRule,
    FirewallRuleset,
    GlobalFirewallRuleset,
    Image,
    Instance,
    InstanceType,
    InstanceTypeEntry,
    LaunchResult,
    Region,
    SshKey,
)

from conftest import PUBLIC_KEY


def uniq(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def expect_error(status: int, code: str, fn, *a, **kw) -> LambdaCloudError:
    with pytest.raises(LambdaCloudError) as ei:
        fn(*a, **kw)
    e = ei.value
    assert (e.status, e.code) == (status, code), str(e)
    assert e.message and e.request_id
    return e


# --- construction and environment ------------------------------------------------------------


def test_alias_module_is_the_same_client():
    assert lambda_cloud.LambdaCloudClient is nimbus_cloud.LambdaCloudClient
    assert lambda_cloud.Instances is nimbus_cloud.Instances
    assert lambda_cloud.LambdaCloudError is nimbus_cloud.LambdaCloudError


def test_base_url_from_nimbus_url(server, monkeypatch):
    c = LambdaCloudClient(api_key="k")
    assert c.base_url == server.url
    assert c._transport.headers["Authorization"] == "Bearer k"
    monkeypatch.delenv("NIMBUS_URL")
    assert LambdaCloudClient(api_key="k").base_url == DEFAULT_URL == "http://127.0.0.1:8080"
    assert LambdaCloudClient(api_key="k", base_url="http://h:1/api/v1/").base_url == "http://h:1/api/v1"
    assert LambdaCloudClient(api_key="k", base_url="http://h:1/api/v1/")._transport.url("/images") == "http://h:1/api/v1/images"


def test_from_env(server, monkeypatch):
    c = LambdaCloudClient.from_env()
    assert c.api_key == server.key and c.base_url == server.url
    assert c.images.list()
    monkeypatch.setenv("LAMBDA_API_KEY", "from-lambda-var")
    assert LambdaCloudClient.from_env().api_key == "from-lambda-var"
    monkeypatch.delenv("LAMBDA_API_KEY")
    assert LambdaCloudClient.from_env().api_key == server.key  # falls back to NIMBUS_API_KEY
    monkeypatch.delenv("NIMBUS_API_KEY")
    with pytest.raises(ValueError, match="LAMBDA_API_KEY"):
        LambdaCloudClient.from_env()


def test_empty_key_is_refused():
    with pytest.raises(ValueError):
        LambdaCloudClient(api_key="")


def test_bad_key_is_invalid_api_key(server):
    bad = LambdaCloudClient(api_key="nmb_not_a_key", base_url=server.url)
    e = expect_error(401, "global/invalid-api-key", bad.instances.list)
    assert e.suggestion


# --- catalog ----------------------------------------------------------------------------------


def test_instance_types(lam, launchable):
    types = lam.instance_types.list()
    assert "cpu_1x_small" in types
    e = types["cpu_1x_small"]
    assert isinstance(e, InstanceTypeEntry) and isinstance(e.instance_type, InstanceType)
    assert e.instance_type.specs.vcpus == 1 and e.instance_type.price_cents_per_hour >= 0
    assert all(isinstance(r, Region) for r in e.regions_with_capacity_available)
    itype, region = launchable
    assert region in types[itype].regions
    # dict-style access, as lambda-cloud-python's dicts
    assert e["instance_type"]["specs"]["vcpus"] == 1
    assert e.to_dict()["instance_type"]["name"] == "cpu_1x_small"


def test_images(lam):
    imgs = lam.images.list()
    assert imgs and all(isinstance(i, Image) for i in imgs)
    assert {"debian-12"} <= {i.family for i in imgs}
    assert imgs[0].region.name


# --- SSH keys ---------------------------------------------------------------------------------


def test_ssh_keys_add_generate_list_delete(lam):
    name, gen_name = uniq("py-key"), uniq("py-gen")
    k = lam.ssh_keys.add(name, public_key=PUBLIC_KEY)
    assert isinstance(k, SshKey) and k.public_key == PUBLIC_KEY and k.private_key is None
    g = lam.ssh_keys.generate(gen_name)
    assert g.private_key and "PRIVATE KEY" in g.private_key and g.public_key.startswith("ssh-")
    listed = {x.name: x for x in lam.ssh_keys.list()}
    assert listed[name].id == k.id and listed[gen_name].private_key is None
    expect_error(400, "global/invalid-parameters", lam.ssh_keys.add, name, public_key=PUBLIC_KEY)
    assert lam.ssh_keys.delete(k.id) is None
    lam.ssh_keys.delete(g.id)
    assert not {name, gen_name} & {x.name for x in lam.ssh_keys.list()}
    # (Lambda answers an unknown key id on delete with invalid-parameters; Nimbus does the same)
    expect_error(400, "global/invalid-parameters", lam.ssh_keys.delete, k.id)


# --- instances --------------------------------------------------------------------------------


def test_instance_lifecycle(lam, launchable, ssh_key):
    itype, region = launchable
    name = uniq("py-inst")
    res = lam.instances.launch(region, itype, [ssh_key.name], name=name, quantity=2, tags={"team": "sdk"})
    assert isinstance(res, LaunchResult) and len(res.instance_ids) == 2
    assert res["instance_ids"] == res.instance_ids
    ids = res.instance_ids
    try:
        active = lam.instances.wait_until_active(ids, timeout=60)
        assert [i.status for i in active] == ["active", "active"]
        i = lam.instances.get(ids[0])
        assert isinstance(i, Instance) and i.name == name and i.ip and i.private_ip
        assert i.region.name == region and i.instance_type.name == itype
        assert i.ssh_key_names == [ssh_key.name]
        assert i.actions.terminate.available is True
        assert {(t.key, t.value) for t in i.tags} == {("team", "sdk")}
        assert set(ids) <= {x.id for x in lam.instances.list()}

        renamed = lam.instances.update(ids[0], "py-renamed")
        assert renamed.name == "py-renamed" and lam.instances.get(ids[0]).name == "py-renamed"

        rs = lam.instances.restart([ids[0]])
        assert [x.id for x in rs.restarted_instances] == [ids[0]]
        assert lam.instances.wait_for_status(ids[0], "active", timeout=60).status == "active"
    finally:
        tr = lam.instances.terminate(ids)
    assert sorted(x.id for x in tr.terminated_instances) == sorted(ids)
    assert all(isinstance(x, Instance) for x in tr.terminated_instances)
    lam.instances.wait_for_status(ids[0], "terminated", timeout=60)
    assert not set(ids) & {x.id for x in lam.instances.list()}
    assert lam.instances.get(ids[1]).status in ("terminating", "terminated")


def test_launch_with_image_family_and_idempotency_key(lam, launchable, ssh_key):
    itype, region = launchable
    key = str(uuid.uuid4())
    a = lam.instances.launch(region, itype, [ssh_key.name], image="debian-12", idempotency_key=key)
    b = lam.instances.launch(region, itype, [ssh_key.name], image="debian-12", idempotency_key=key)
    try:
        assert a.instance_ids == b.instance_ids and len(a.instance_ids) == 1
    finally:
        lam.instances.terminate(a.instance_ids)
    # same key, another body: refused with Lambda's code
    expect_error(422, "global/idempotency-key-reused", lam.instances.launch, region, itype, [ssh_key.name], name="other", idempotency_key=key)


def test_launch_errors_carry_lambda_codes(lam, launchable, ssh_key):
    itype, region = launchable
    expect_error(404, "global/object-does-not-exist", lam.instances.launch, region, "no_such_type", [ssh_key.name])
    expect_error(404, "global/object-does-not-exist", lam.instances.launch, region, itype, ["no-such-key"])
    full = [n for n, e in lam.instance_types.list().items() if not e.regions]
    assert full, "every type has capacity?"
    e = expect_error(400, "instance-operations/launch/insufficient-capacity", lam.instances.launch, region, full[0], [ssh_key.name])
    assert e.suggestion
    expect_error(404, "global/object-does-not-exist", lam.instances.get, "0" * 32)


def test_endpoint_classes_of_lambda_cloud_python(lam):
    """lambda-cloud-python's style: endpoint classes over a client, low-level _request."""
    from lambda_cloud import FileSystems, Images, InstanceTypes, Instances, SSHKeys

    client = lambda_cloud.LambdaCloudClient(api_key=lam.api_key, base_url=lam.base_url)
    with client:
        assert isinstance(Instances(client).list(), list)
        assert SSHKeys(client).list() is not None
        assert FileSystems(client).list() is not None
        assert Images(client).list()[0]["family"]
        assert "cpu_1x_small" in InstanceTypes(client).list()
        raw = client._request("GET", "/api/v1/instance-types")
        assert "cpu_1x_small" in raw["data"]


# --- file systems -----------------------------------------------------------------------------


def test_file_systems(lam, launchable):
    _, region = launchable
    name = uniq("pyfs")
    fs = lam.file_systems.create(name, region)
    assert isinstance(fs, FileSystem) and fs.name == name and fs.mount_point == f"/lambda/nfs/{name}"
    assert fs.region.name == region and fs.is_in_use is False and fs.created_by.email
    assert fs.id in {x.id for x in lam.filesystems.list()}
    expect_error(400, "global/duplicate", lam.file_systems.create, name, region)
    d = lam.file_systems.delete(fs.id)
    assert isinstance(d, DeleteResult) and d.deleted_ids == [fs.id]
    expect_error(404, "global/object-does-not-exist", lam.file_systems.delete, fs.id)


# --- firewall ---------------------------------------------------------------------------------


def test_firewall_rules_replace_and_restore(lam):
    orig = lam.firewall_rules.list()
    assert all(isinstance(r, FirewallRule) for r in orig)
    try:
        new = [
            FirewallRule(protocol="tcp", port_range=[443, 443], source_network="0.0.0.0/0", description="https"),
            {"protocol": "icmp", "source_network": "10.0.0.0/8", "description": "ping"},
        ]
        got = lam.firewall_rules.replace(new)
        assert [(r.protocol, r.port_range, r.source_network) for r in got] == [("tcp", [443, 443], "0.0.0.0/0"), ("icmp", None, "10.0.0.0/8")]
        assert lam.firewall_rules.list() == got
        expect_error(400, "global/invalid-parameters", lam.firewall_rules.replace, [{"protocol": "tcp", "source_network": "nope"}])
    finally:
        lam.firewall_rules.replace(orig)
    assert lam.firewall_rules.list() == orig


def test_firewall_rulesets(lam, launchable):
    _, region = launchable
    rules = [FirewallRule(protocol="tcp", port_range=[8000, 8080], source_network="192.168.0.0/16", description="web")]
    rs = lam.firewall_rulesets.create(uniq("py-rs"), region, rules)
    assert isinstance(rs, FirewallRuleset) and rs.region.name == region and rs.rules[0].port_range == [8000, 8080]
    assert rs.id in {x.id for x in lam.firewall_rulesets.list()}
    assert lam.firewall_rulesets.get(rs.id).name == rs.name
    up = lam.firewall_rulesets.update(rs.id, name=rs.name + "-2", rules=rules + [{"protocol": "udp", "port_range": [53, 53], "source_network": "0.0.0.0/0"}])
    assert up.name == rs.name + "-2" and len(up.rules) == 2
    assert lam.firewall_rulesets.delete(rs.id) is None
    expect_error(404, "global/object-does-not-exist", lam.firewall_rulesets.get, rs.id)

    g = lam.firewall_rulesets.get_global()
    assert isinstance(g, GlobalFirewallRuleset) and g.id == "global"
    try:
        g2 = lam.firewall_rulesets.update_global(rules=[{"protocol": "tcp", "port_range": [22, 22], "source_network": "10.0.0.0/8"}])
        assert [r.source_network for r in g2.rules] == ["10.0.0.0/8"]
        assert lam.firewall_rules.list() == g2.rules  # one model: the global ruleset is /firewall-rules
    finally:
        lam.firewall_rulesets.update_global(rules=g.rules)


# --- audit events -----------------------------------------------------------------------------


def test_audit_events(lam):
    lam.ssh_keys.delete(lam.ssh_keys.generate(uniq("py-audit")).id)
    page = lam.audit_events.list()
    assert isinstance(page, AuditEventsPage) and page.events
    e = page.events[0]
    assert e.event_id and e.event_time and e.action and isinstance(e.resource_lrns, list)
    events = list(lam.audit_events.iter())
    assert len(events) >= len(page.events)
    assert len({x.event_id for x in events}) == len(events)
