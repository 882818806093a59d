"""NimbusClient against a live `nimbus dev --driver sim`: seed 001's example (create, wait until
ready, public IP), list/get/update/terminate, stop/start/resize, errors with native codes and
details, idempotency keys, pagination, and the other resource groups."""

from __future__ import annotations

import time
import uuid

import pytest

from nimbus_cloud import NimbusApiError, NimbusClient, Page, WaitTimeout
from nimbus_cloud.native_models import (
    Account,
    ApiKey,
    Estimate,
    FirewallRule,
    Instance,
    InstanceMetrics,
    InstanceNetwork,
    Pagination,
    Quota,
    ServiceAccount,
    Snapshot,
    Usage,
    Volume,
    Vpn,
    Webhook,
)


def uniq(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def poll(fn, what: str, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def expect_error(status: int, code: str, fn, *a, **kw) -> NimbusApiError:
    with pytest.raises(NimbusApiError) as ei:
        fn(*a, **kw)
    e = ei.value
    assert (e.status, e.code) == (status, code), str(e)
    assert e.message and e.request_id
    return e


@pytest.fixture
def instance(nat, launchable, ssh_key):
    itype, region = launchable
    inst = nat.instances.create(name=uniq("py-native"), instance_type=itype, region=region, ssh_keys=[ssh_key.id])
    yield inst
    try:
        nat.instances.terminate(inst.id)
    except NimbusApiError:
        pass


def test_seed001_example(nat, launchable, ssh_key):
    """Seed 001's Python example with this cloud's values: create, wait, public IP."""
    itype, region = launchable
    instance = nat.instances.create(
        name="my-python-instance",
        instance_type=itype,
        region=region,
        image="debian-12",
        ssh_keys=[ssh_key.id],
    )
    assert isinstance(instance, Instance) and instance.id
    assert instance.status in ("pending", "booting", "running")
    instance.wait_until_ready(timeout=60)
    assert instance.status == "running"  # updated in place
    assert instance.public_ip and instance.public_ip == instance.ip
    got = nat.instances.get(instance.id)
    assert got == instance or got.updated_at >= instance.updated_at
    assert instance.id in {i.id for i in nat.instances.iter()}
    instance.terminate()
    assert instance.status in ("terminating", "terminated")
    instance.wait_for_status("terminated", timeout=60)
    assert instance.id not in {i.id for i in nat.instances.iter()}
    with pytest.raises(WaitTimeout):
        instance.wait_until_ready(timeout=5)


def test_list_get_update(nat, instance):
    instance.wait_until_ready(timeout=60)
    page = nat.instances.list(limit=1, status="running", sort="created_at", order="desc")
    assert isinstance(page, Page) and isinstance(page.pagination, Pagination) and len(page) == 1
    assert page.pagination.limit == 1 and page.pagination.total_items >= 1
    assert nat.instances.list(name=instance.name)[0].id == instance.id
    got = nat.instances.get(instance.id)
    assert got.id == instance.id and got.instance_type == instance.instance_type and got.vcpus >= 1
    upd = nat.instances.update(instance.id, name="py-renamed", tags={"env": "test"})
    assert upd.name == "py-renamed" and upd.tags == {"env": "test"}
    instance.update(tags={"env": "prod"})
    assert instance.tags == {"env": "prod"} and instance.name == "py-renamed"
    net = instance.network()
    assert isinstance(net, InstanceNetwork) and net.instance_id == instance.id and net.ssh_port == 22
    m = instance.metrics()
    assert isinstance(m, InstanceMetrics) and m.instance_id == instance.id and m.start and m.step_seconds
    assert instance.gpu_devices() == [] and instance.gpus == 0, "a CPU instance has no GPUs"
    with pytest.raises(NimbusApiError) as e:
        nat.instances.gpus("i-does-not-exist")
    assert e.value.status == 404


def test_stop_start_resize_restart(nat, instance):
    instance.wait_until_ready(timeout=60)
    expect_error(409, "conflict", instance.resize, "cpu_2x_medium")
    instance.stop()
    instance.wait_for_status("stopped", timeout=60)
    instance.resize("cpu_2x_medium")
    assert instance.instance_type == "cpu_2x_medium" and instance.vcpus == 2
    instance.start()
    instance.wait_until_ready(timeout=60)
    instance.restart()
    assert instance.wait_until_ready(timeout=60).status == "running"


def test_errors_carry_native_codes_and_details(nat, launchable, ssh_key, server):
    itype, region = launchable
    e = expect_error(400, "invalid_request", nat.instances.create, instance_type="no_such_type", region=region, ssh_keys=[ssh_key.id])
    assert e.details["field"] == "instance_type" and itype in e.details["allowed_values"]
    assert "allowed" in str(e)
    expect_error(404, "not_found", nat.instances.get, "0" * 32)
    e = expect_error(400, "invalid_request", nat.request, "GET", "/instances", params={"colour": "red"})
    assert e.details.get("field") == "colour"
    bad = NimbusClient(api_key="nmb_not_a_key", base_url=server.url)
    expect_error(401, "authentication_failed", bad.instances.list)


def test_idempotency_key(nat, launchable, ssh_key):
    itype, region = launchable
    key = str(uuid.uuid4())
    a = nat.instances.create(instance_type=itype, region=region, ssh_keys=[ssh_key.id], idempotency_key=key)
    b = nat.instances.create(instance_type=itype, region=region, ssh_keys=[ssh_key.id], idempotency_key=key)
    try:
        assert a.id == b.id
        expect_error(422, "idempotency_key_reused", nat.instances.create, instance_type=itype, region=region, ssh_keys=[ssh_key.id], name="x", idempotency_key=key)
    finally:
        nat.instances.terminate(a.id)
    # without a key, each call is its own (the client sends a fresh key per call)
    c = nat.instances.create(instance_type=itype, region=region, ssh_keys=[ssh_key.id])
    d = nat.instances.create(instance_type=itype, region=region, ssh_keys=[ssh_key.id])
    try:
        assert c.id != d.id
    finally:
        c.terminate()
        d.terminate()


def test_pagination_iter(nat, launchable, ssh_key):
    itype, region = launchable
    made = [nat.instances.create(name=uniq("py-page"), instance_type=itype, region=region, ssh_keys=[ssh_key.id]) for _ in range(3)]
    try:
        p1 = nat.instances.list(limit=2, page=1)
        assert len(p1) == 2 and p1.has_next
        ids = [i.id for i in nat.instances.iter()]
        assert len(ids) == len(set(ids)) and {m.id for m in made} <= set(ids)
    finally:
        for m in made:
            m.terminate()


def test_volumes_and_snapshots(nat, instance, launchable):
    _, region = launchable
    vol = nat.volumes.create(uniq("pyvol"), region, 1)
    assert isinstance(vol, Volume) and vol.status == "available" and vol.size_gib == 1
    assert vol.id in {v.id for v in nat.volumes.list()}
    instance.wait_until_ready(timeout=60)
    vol.attach(instance.id)
    assert vol.instance_id == instance.id and vol.status in ("attaching", "attached")
    poll(lambda: vol.refresh().status == "attached", "volume attached")
    assert nat.volumes.list(instance_id=instance.id)[0].id == vol.id
    vol.detach()
    assert vol.instance_id is None
    vol.resize(2)
    assert vol.size_gib == 2
    snap = nat.snapshots.create(uniq("pysnap"), volume_id=vol.id)
    assert isinstance(snap, Snapshot) and snap.source_id == vol.id
    assert snap.id in {s.id for s in nat.snapshots.list(source_type="volume")}
    poll(lambda: snap.refresh().status != "creating", "snapshot taken")
    assert snap.status == "available", snap.message
    restored = nat.snapshots.restore(snap.id, uniq("pyrestored"))
    assert restored.instance is None and restored.volume.source_snapshot_id == snap.id
    restored.volume.delete()  # bound to the client like any other Volume
    snap.delete()
    vol.delete()
    expect_error(404, "not_found", nat.volumes.get, vol.id)


def test_firewall_rules(nat):
    r = nat.firewall_rules.create("tcp", "10.1.0.0/16", port_range=[9000, 9001], description="py")
    assert isinstance(r, FirewallRule) and r.id and r.port_range == [9000, 9001]
    assert r.id in {x.id for x in nat.firewall_rules.list(protocol="tcp")}
    expect_error(409, "already_exists", nat.firewall_rules.create, "tcp", "10.1.0.0/16", port_range=[9000, 9001], description="py")
    assert nat.firewall_rules.delete(r.id).id == r.id


def test_account_keys_service_accounts(nat, server):
    acct = nat.account.get()
    assert isinstance(acct, Account) and acct.id and acct.plan
    assert nat.account.update(name=acct.name + "-x").name == acct.name + "-x"
    assert nat.account.update(name=acct.name).name == acct.name
    quotas = nat.account.quota()
    assert quotas and all(isinstance(q, Quota) for q in quotas)
    k = nat.api_keys.create(uniq("py-key"), ["READ"], expires_in_days=1)
    assert isinstance(k, ApiKey) and k.secret and k.permissions == ["READ"]
    reader = NimbusClient(api_key=k.secret, base_url=server.url)
    assert isinstance(reader.instances.list(), Page)
    expect_error(403, "forbidden", reader.volumes.create, "nope", "us-east-1", 1)
    assert k.id in {x.id for x in nat.api_keys.list()}
    nat.api_keys.delete(k.id)

    sa = nat.service_accounts.create(uniq("py-sa"), ["READ"], description="ci")
    assert isinstance(sa, ServiceAccount) and sa.permissions == ["READ"]
    assert nat.service_accounts.get(sa.id).name == sa.name
    assert sa.id in {x.id for x in nat.service_accounts.list()}
    sa2 = nat.service_accounts.update(sa.id, permissions=["READ", "CREATE"])
    assert sorted(sa2.permissions) == ["CREATE", "READ"]
    sk = nat.service_accounts.create_key(sa.id, "k1")
    assert sk.secret and sk.service_account_id == sa.id
    assert [x.id for x in nat.service_accounts.list_keys(sa.id)] == [sk.id]
    nat.service_accounts.delete_key(sa.id, sk.id)
    assert nat.service_accounts.delete(sa.id).deleted_at


def test_billing(nat, launchable):
    itype, _ = launchable
    u = nat.billing.usage()
    assert isinstance(u, Usage) and u.total_usd is not None
    invoices = nat.billing.invoices()
    assert isinstance(invoices, list)
    for inv in invoices:
        assert nat.billing.invoice(inv.id).period == inv.period
    expect_error(404, "not_found", nat.billing.invoice, "1999-01")
    est = nat.billing.estimate(instance_type=itype, hours=10)
    assert isinstance(est, Estimate) and est.proposed.hours == 10 and est.proposed.instance_type == itype


def test_webhooks(nat, launchable):
    # `.invalid` never resolves (RFC 2606): deliveries fail at once, nothing leaves the machine.
    w = nat.webhooks.create("https://hooks.invalid/nimbus", ["volume.*"])
    assert isinstance(w, Webhook) and w.secret and w.events == ["volume.*"]
    assert nat.webhooks.get(w.id).secret is None
    assert w.id in {x.id for x in nat.webhooks.list()}
    nat.volumes.create(uniq("pyhook"), launchable[1], 1).delete()
    deliveries = poll(lambda: nat.webhooks.deliveries(w.id, event_type="volume.created"), "a delivery")
    assert isinstance(deliveries, Page) and deliveries[0].event_type == "volume.created"
    again = nat.webhooks.redeliver(w.id, deliveries[0].id)
    assert again.id == deliveries[0].id and again.state in ("pending", "failed", "delivered")
    nat.webhooks.delete(w.id)
    expect_error(404, "not_found", nat.webhooks.get, w.id)


def test_vpn(nat, launchable):
    _, region = launchable
    v = nat.vpns.create(uniq("pyvpn"), region)
    assert isinstance(v, Vpn) and v.client_private_key and v.status
    assert nat.vpns.get(v.id).client_private_key is None
    assert v.id in {x.id for x in nat.vpns.list()}
    nat.vpns.delete(v.id)
