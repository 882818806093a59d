//! `nimbus bench metering`: what metering adds to a state transition, and how long a monthly
//! invoice takes for an organization with 10,000 usage intervals (SQLite in a temp dir).
//!
//! Transitions are the store's conditional update in its own write transaction, timed with and
//! without the metering call in the same transaction (opening the compute interval of a
//! booting → active move). Invoices: 10,000 intervals of 30 to 90 minutes spread over one
//! month, rolled up into the hourly ledger, then `billing::invoices` timed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nimbus_control::config::RateLimits;
use nimbus_control::{admin, agents, billing, instances, metering, Config, Control};
use nimbus_core::auth::Permissions;
use nimbus_core::clock::{parse_rfc3339, ManualClock};
use nimbus_core::instance::InstanceState;
use nimbus_core::model::UsageInterval;
use nimbus_store::{InstanceUpdate, Store};

use crate::bench::temp_dir;

fn e(e: nimbus_core::Error) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

fn p50(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

pub async fn metering(transitions: usize, intervals: usize) -> anyhow::Result<()> {
    let dir = temp_dir("metering")?;
    let url = format!("sqlite://{}?mode=rwc", dir.join("nimbus.db").display());
    let start = parse_rfc3339("2026-03-01T00:00:00Z").ok_or_else(|| anyhow::anyhow!("time"))?;
    let clock = Arc::new(ManualClock::new(start));
    let mut cfg = Config { rate_limits: RateLimits::generous(), ..Config::default() };
    cfg.quotas.instances_per_org = 1_000_000;
    let control = Control::new(Store::connect(&url).await.map_err(e)?, clock.clone(), cfg).await.map_err(e)?;
    let org = admin::org_create(&control, "bench-metering", None).await.map_err(e)?;
    let (_, key) = admin::api_key_create(&control, &org, "bench", Permissions::admin(), None).await.map_err(e)?;
    let actor = nimbus_control::auth::authenticate(&control, &key).await.map_err(e)?;
    let token = admin::host_token_create(&control, "us-east-1").await.map_err(e)?;
    agents::register(
        &control,
        nimbus_proto::RegisterRequest {
            protocol_version: nimbus_proto::PROTOCOL_VERSION,
            token,
            machine_id: "bench".into(),
            inventory: nimbus_proto::Inventory {
                hostname: "bench".into(),
                cpu_model: "bench".into(),
                vcpus: 10_000_000,
                memory_mib: 1 << 40,
                disk_gib: 1 << 40,
                gpus: vec![],
                driver: "sim".into(),
                public_ip: None,
                network: None,
                machines: vec![],
            },
        },
    )
    .await
    .map_err(e)?;
    nimbus_control::ssh_keys::add(
        &control,
        &actor,
        "k",
        Some("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICZUKH4bkuFLWaz1Z6RVWN2q8+AKMNNakUZWtb9FDa0a me@host"),
    )
    .await
    .map_err(e)?;
    let mut ids = Vec::new();
    while ids.len() < transitions * 2 {
        let spec = instances::LaunchSpec {
            region: "us-east-1".into(),
            instance_type: "cpu_1x_small".into(),
            ssh_key_names: vec!["k".into()],
            quantity: 50,
            ..Default::default()
        };
        ids.extend(instances::launch(&control, &actor, spec).await.map_err(e)?);
    }
    let (plain_ids, metered_ids) = ids.split_at(transitions);
    let (mut plain, mut metered) = (Vec::new(), Vec::new());
    // Alternate, so drift hits both alike.
    for (a, b) in plain_ids.iter().zip(metered_ids.iter().take(transitions)) {
        let now = control.now();
        let t = Instant::now();
        let mut tx = control.store().begin().await.map_err(e)?;
        Store::instance_transition_in_txn(&mut tx, a, InstanceState::Booting, InstanceState::Active, &InstanceUpdate::default(), now)
            .await
            .map_err(e)?;
        Store::commit(tx).await.map_err(e)?;
        plain.push(t.elapsed());

        let t = Instant::now();
        let mut tx = control.store().begin().await.map_err(e)?;
        Store::instance_transition_in_txn(&mut tx, b, InstanceState::Booting, InstanceState::Active, &InstanceUpdate::default(), now)
            .await
            .map_err(e)?;
        let inst = Store::instance_get_any_in(&mut tx, b).await.map_err(e)?.ok_or_else(|| anyhow::anyhow!("instance"))?;
        metering::instance_moved(&control, &mut tx, &inst, InstanceState::Booting, InstanceState::Active, now).await.map_err(e)?;
        Store::commit(tx).await.map_err(e)?;
        metered.push(t.elapsed());
    }
    let (pp, mp) = (p50(plain), p50(metered));
    // Close the compute intervals just opened: they belong to the transition measurement only.
    let mut tx = control.store().begin().await.map_err(e)?;
    for id in metered_ids.iter().take(transitions) {
        Store::usage_close_in_txn(&mut tx, id.as_str(), control.now()).await.map_err(e)?;
    }
    Store::commit(tx).await.map_err(e)?;

    // The invoice org: exactly `intervals` intervals in March.
    let inv_org = admin::org_create(&control, "bench-invoice", None).await.map_err(e)?;
    let (_, inv_key) = admin::api_key_create(&control, &inv_org, "bench", Permissions::admin(), None).await.map_err(e)?;
    let inv_actor = nimbus_control::auth::authenticate(&control, &inv_key).await.map_err(e)?;

    // 10,000 intervals over March, in batches.
    let month = 31 * 24 * 3600i64;
    let mut tx = control.store().begin().await.map_err(e)?;
    let mut expect = 0i64;
    for n in 0..intervals {
        let s = start + ((n as i64 * 7_919) % (month - 2 * 3600)) * 1_000_000;
        let len = (1_800 + (n as i64 * 31) % 3_600) * 1_000_000;
        let u = UsageInterval {
            id: nimbus_core::ids::random_hex_id(),
            org_id: inv_org.id.clone(),
            resource_type: "instance".into(),
            resource_id: nimbus_core::ids::random_hex_id(),
            kind: "compute".into(),
            sku: if n % 3 == 0 { "gpu_1x_h100_pcie".into() } else { "cpu_1x_small".into() },
            quantity: 1,
            rate_micros_per_hour: if n % 3 == 0 { 2_490_000 } else { 20_000 },
            started_at: s,
            ended_at: Some(s + len),
        };
        for (_, secs) in nimbus_core::metering::pieces(u.started_at, s + len) {
            expect += nimbus_core::metering::charge(nimbus_core::money::Micros(u.rate_micros_per_hour), secs).0;
        }
        Store::usage_open_in_txn(&mut tx, &u).await.map_err(e)?;
        if n % 1_000 == 999 {
            Store::commit(tx).await.map_err(e)?;
            tx = control.store().begin().await.map_err(e)?;
        }
    }
    Store::commit(tx).await.map_err(e)?;
    clock.advance_secs(month + 3600);
    let t = Instant::now();
    metering::roll_up(&control).await.map_err(e)?;
    let rollup = t.elapsed();
    let mut inv_times = Vec::new();
    let mut total = 0;
    for _ in 0..5 {
        let t = Instant::now();
        let inv = billing::invoices(&control, &inv_actor).await.map_err(e)?;
        inv_times.push(t.elapsed());
        total = inv.iter().find(|i| i.period == "2026-03").map(|i| i.total.0).unwrap_or(0);
    }
    println!("nimbus bench metering: SQLite, {transitions} transitions each way, {intervals} intervals in one month");
    println!("| measure | p50 ms |");
    println!("|---|---|");
    println!("| booting → active, transition only | {:.3} |", pp.as_secs_f64() * 1e3);
    println!("| booting → active, transition + metering | {:.3} |", mp.as_secs_f64() * 1e3);
    println!("| metering adds | {:.3} |", (mp.as_secs_f64() - pp.as_secs_f64()) * 1e3);
    println!("| roll-up of {intervals} intervals into the hourly ledger (once) | {:.1} |", rollup.as_secs_f64() * 1e3);
    println!("| invoices for the org (the month: {intervals} intervals), p50 of 5 | {:.1} |", p50(inv_times).as_secs_f64() * 1e3);
    println!();
    println!(
        "March invoice total: {} USD (the intervals' pieces add up to {} USD)",
        nimbus_core::money::Micros(total),
        nimbus_core::money::Micros(expect)
    );
    if total != expect {
        anyhow::bail!("the invoice does not match its intervals");
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
