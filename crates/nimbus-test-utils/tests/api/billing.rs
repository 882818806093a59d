//! Metering with a controllable clock: a known sequence of launches, stops, starts and
//! terminations gives exact charges, to the micro-dollar, across a month boundary, in the usage
//! endpoint and in the hourly ledger alike.

use std::sync::Arc;

use nimbus_core::clock::{parse_rfc3339, ManualClock};
use nimbus_test_utils::{sim_host, TestServer};
use serde_json::{json, Value};

use crate::add_key;

#[tokio::test]
async fn exact_charges_across_a_month_boundary() {
    let (s, clock) = crate::one_small_host_at("2026-01-31T22:00:00Z").await;
    let key_id = add_key(&s, "k").await["id"].as_str().unwrap().to_owned();
    // cpu_1x_small: 2 ¢/h = 20,000 µ$/h, 10 GiB disk; storage 137 µ$/GiB-h → 1,370 µ$/h.
    let body = json!({"instance_type": "cpu_1x_small", "region": "us-east-1", "ssh_keys": [key_id]});
    let id = s.nexpect("POST", "/instances", Some(body), 201).await["id"].as_str().unwrap().to_owned();
    let path = format!("/instances/{id}");
    s.wait_native_status(&path, "running").await; // compute from 22:00:00

    clock.advance_secs(30 * 60 + 7);
    s.nexpect("POST", &format!("{path}/stop"), None, 200).await; // 22:30:07: compute → storage
    s.wait_native_status(&path, "stopped").await;
    clock.advance_secs(2 * 3600);
    s.nexpect("POST", &format!("{path}/start"), None, 200).await; // 00:30:07 (Feb 1)
    s.wait_native_status(&path, "running").await; // storage → compute at 00:30:07
    clock.advance_secs(3600);
    s.nexpect("DELETE", &path, None, 200).await; // 01:30:07: compute ends

    // compute 22:00:00–22:30:07 = 1,807 s → 10,038; storage 22:30:07–00:30:07 in hourly pieces
    // 1,793 s → 682, 3,600 s → 1,370, 1,807 s → 687; compute 00:30:07–01:30:07 in pieces
    // 1,793 s → 9,961 and 1,807 s → 10,038. Each piece rounds down to the micro-dollar.
    let jan = (10_038 + 682 + 1_370, "2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z");
    let feb = (687 + 9_961 + 10_038, "2026-02-01T00:00:00Z", "2026-03-01T00:00:00Z");
    for (want, start, end) in [jan, feb] {
        let u = s.nexpect("GET", &format!("/billing/usage?start={start}&end={end}"), None, 200).await;
        assert_eq!(u["total_micros"], want, "{start}: {u}");
    }
    let u = s.nexpect("GET", "/billing/usage?start=2026-01-31T00:00:00Z&end=2026-02-02T00:00:00Z", None, 200).await;
    assert_eq!(u["total_micros"], 32_776);
    assert_eq!(u["total_usd"], "0.032776");
    let compute: i64 =
        u["lines"].as_array().unwrap().iter().filter(|l| l["kind"] == "compute").map(|l| l["seconds"].as_i64().unwrap()).sum();
    let storage: i64 =
        u["lines"].as_array().unwrap().iter().filter(|l| l["kind"] == "storage").map(|l| l["seconds"].as_i64().unwrap()).sum();
    assert_eq!((compute, storage), (1_807 + 3_600, 7_200), "per-second granularity");

    // The hourly ledger holds the same pieces: roll up past the last hour and compare.
    clock.advance_secs(3600);
    nimbus_control::metering::roll_up(&s.control).await.unwrap();
    nimbus_control::metering::roll_up(&s.control).await.unwrap(); // idempotent
    let sum = |from: &str, to: &str| {
        let (f, t) = (parse_rfc3339(from).unwrap() / 1_000_000, parse_rfc3339(to).unwrap() / 1_000_000);
        let s = &s;
        async move { s.control.store().ledger_list_by_org(&s.org.id, f, t).await.unwrap().iter().map(|e| e.amount_micros).sum::<i64>() }
    };
    assert_eq!(sum(jan.1, jan.2).await, jan.0);
    assert_eq!(sum(feb.1, feb.2).await, feb.0);

    // Invoices: one per month from the ledger, newest first, with lines and running balances.
    let inv = s.nexpect("GET", "/billing/invoices", None, 200).await;
    let inv = inv.as_array().unwrap();
    assert_eq!(inv.len(), 2, "{inv:?}");
    let (f, j) = (&inv[0], &inv[1]);
    assert_eq!((j["period"].as_str(), j["status"].as_str(), j["total_micros"].as_i64()), (Some("2026-01"), Some("final"), Some(jan.0)));
    assert_eq!((f["period"].as_str(), f["status"].as_str(), f["total_micros"].as_i64()), (Some("2026-02"), Some("open"), Some(feb.0)));
    assert_eq!((f["balance_start_micros"].as_i64(), f["balance_end_micros"].as_i64()), (Some(jan.0), Some(jan.0 + feb.0)));
    let jl = j["lines"].as_array().unwrap();
    assert!(jl.iter().any(|l| l["sku"] == "cpu_1x_small" && l["seconds"] == 1_807 && l["amount_micros"] == 10_038), "{jl:?}");
    assert!(jl.iter().any(|l| l["sku"] == "storage" && l["seconds"] == 5_393 && l["amount_micros"] == 2_052), "{jl:?}");
    let one = s.nexpect("GET", &format!("/billing/invoices/{}", j["id"].as_str().unwrap()), None, 200).await;
    assert_eq!(one["total_micros"], jan.0);
    s.nexpect("GET", "/billing/invoices/0123456789abcdef0123456789abcdef", None, 404).await;
    let (_, other) = s.org_with_key("billing-other", "ADMIN").await;
    assert_eq!(s.native(&other, "GET", &format!("/billing/invoices/{}", j["id"].as_str().unwrap()), None).await.0, 404);
    assert_eq!(s.native(&other, "GET", "/billing/usage?start=2026-01-01T00:00:00Z", None).await.1["data"]["total_micros"], 0);

    // Estimates: a proposal, and nothing left running.
    let e = s.nexpect("GET", "/billing/estimate?instance_type=cpu_1x_small&hours=10", None, 200).await;
    assert_eq!((e["proposed"]["amount_micros"].as_i64(), e["proposed"]["amount_usd"].as_str()), (Some(200_000), Some("0.200000")));
    assert_eq!((e["month_to_date_micros"].as_i64(), e["current_to_month_end_micros"].as_i64()), (Some(feb.0), Some(0)));
    assert_eq!(e["month_end"], "2026-03-01T00:00:00.000Z");
    // With one instance running, the rest of the month is its rate times the seconds left.
    let body = json!({"instance_type": "cpu_1x_small", "region": "us-east-1", "ssh_keys": [key_id]});
    let id2 = s.nexpect("POST", "/instances", Some(body), 201).await["id"].as_str().unwrap().to_owned();
    s.wait_native_status(&format!("/instances/{id2}"), "running").await;
    let left = (parse_rfc3339("2026-03-01T00:00:00Z").unwrap() - s.control.now()) / 1_000_000;
    let e = s.nexpect("GET", "/billing/estimate", None, 200).await;
    assert_eq!(e["current_to_month_end_micros"].as_i64(), Some(20_000 * left / 3600), "{e}");
    s.nexpect("GET", "/billing/estimate?instance_type=nope", None, 400).await;

    // The Voltage Park dialect reads the same ledger: hourly transactions, monthly reports with
    // balances, and the current hourly rate (one cpu_1x_small running: 2 ¢/h).
    let vp = |path: String| {
        let s = &s;
        async move {
            let r = s.http.get(format!("{}/api/v1{path}", s.url)).header("x-api-token", &s.key).send().await.unwrap();
            assert_eq!(r.status(), 200, "{path}");
            r.json::<serde_json::Value>().await.unwrap()
        }
    };
    let micros = |v: &serde_json::Value| -> i64 {
        let (d, f) = v.as_str().unwrap().split_once('.').unwrap();
        d.parse::<i64>().unwrap() * 1_000_000 + f.parse::<i64>().unwrap()
    };
    let all = vp("/billing/transactions?limit=100".into()).await;
    let txs = all["results"].as_array().unwrap();
    assert_eq!(all["total_result_count"], 6, "one per interval and hour: {all}");
    assert_eq!(txs.iter().map(|t| micros(&t["total_amount"])).sum::<i64>(), jan.0 + feb.0);
    assert!(txs[0]["timestamp_creation"].as_str().unwrap() >= txs[5]["timestamp_creation"].as_str().unwrap(), "newest first");
    assert!(txs.iter().any(|t| t["details"]["linked_instance"]["type"] == "virtual_machine_instance"));
    let febs = vp("/billing/transactions?earliest=2026-02-01&limit=100".into()).await;
    assert_eq!(febs["results"].as_array().unwrap().iter().map(|t| micros(&t["total_amount"])).sum::<i64>(), feb.0);
    let none = vp("/billing/transactions?types=credit".into()).await;
    assert_eq!(none["total_result_count"], 0);
    // A credit granted now (February) lowers February's balance and shows as a credit.
    nimbus_control::admin::org_credit(&s.control, &s.org, 1, "goodwill").await.unwrap();
    let feb = (feb.0 - 10_000, feb.1, feb.2);
    let credits = vp("/billing/transactions?types=credit".into()).await;
    assert_eq!((credits["total_result_count"].as_i64(), credits["results"][0]["total_amount"].as_str()), (Some(1), Some("-0.010000")));
    let inv = s.nexpect("GET", "/billing/invoices", None, 200).await;
    assert_eq!((inv[0]["credits_micros"].as_i64(), inv[0]["balance_end_micros"].as_i64()), (Some(10_000), Some(jan.0 + feb.0)));
    for (y, m, start, delta) in [(2026, 1, 0, jan.0), (2026, 2, jan.0, feb.0)] {
        let r = vp(format!("/billing/reports/{y}/{m}/transactions")).await;
        assert_eq!(
            (micros(&r["balance_at_period_start"]), micros(&r["balance_delta_in_period"]), micros(&r["balance_at_period_end"])),
            (start, delta, start + delta),
            "{r}"
        );
    }
    assert_eq!(vp("/billing/hourly-rate".into()).await, json!({"rate_hourly": "0.020000"}));
    s.nexpect("GET", "/billing/estimate?hours=0&instance_type=cpu_1x_small", None, 400).await;
}

#[tokio::test]
async fn spend_limit_refuses_launches_and_stops_the_running_set() {
    // Four hours before the month ends: an H100 SXM5 (329 ¢/h) projects to 1,316 ¢ this month.
    let clock = Arc::new(ManualClock::new(parse_rfc3339("2026-01-31T20:00:00Z").unwrap()));
    let s = TestServer::builder()
        .clock(clock.clone())
        .config(|c| {
            c.agents.host_timeout_ms = 30 * 24 * 3_600_000;
            c.webhooks.allow_private_targets = true;
            c.webhooks.poll_interval_ms = 50;
        })
        .host("us-east-1", sim_host("h", 64, 8))
        .start()
        .await;
    let key_id = add_key(&s, "k").await["id"].as_str().unwrap().to_owned();
    let receiver = nimbus_test_utils::webhook_receiver::WebhookReceiver::start(0).await;
    let hook = json!({"url": receiver.url, "events": ["billing.*"], "secret": "spend-limit-secret-0123"});
    s.nexpect("POST", "/webhooks", Some(hook), 201).await;
    let e = s.nexpect("PATCH", "/account", Some(json!({"spend_limit_cents": 1320, "spend_limit_action": "explode"})), 400).await;
    assert_eq!(e["error"]["details"]["field"], "spend_limit_action");
    let a = s.nexpect("PATCH", "/account", Some(json!({"spend_limit_cents": 1320, "spend_limit_action": "stop"})), 200).await;
    assert_eq!((a["spend_limit_cents"].as_i64(), a["spend_limit_action"].as_str()), (Some(1320), Some("stop")));

    let gpu = json!({"instance_type": "gpu_1x_h100_sxm5", "region": "us-east-1", "ssh_keys": [key_id]});
    let id = s.nexpect("POST", "/instances", Some(gpu), 201).await["id"].as_str().unwrap().to_owned();
    s.wait_native_status(&format!("/instances/{id}"), "running").await;
    // 1,316 ¢ running to month end + 8 ¢ for a small one > 1,320 ¢: refused, in both dialects.
    let small = json!({"instance_type": "cpu_1x_small", "region": "us-east-1", "ssh_keys": [key_id]});
    let e = s.nexpect("POST", "/instances", Some(small), 403).await;
    assert_eq!(e["error"]["code"], "quota_exceeded");
    assert!(e["error"]["message"].as_str().unwrap().contains("spend limit"), "{e}");
    let (st, v) = s
        .call(
            &s.key,
            "POST",
            "/instance-operations/launch",
            Some(json!({"region_name": "us-east-1", "instance_type_name": "cpu_1x_small", "ssh_key_names": ["k"]})),
        )
        .await;
    assert_ne!(st, 200, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("spend limit"), "{v}");

    // Lower the limit below what two hours will cost; once spend reaches it, the running set is
    // stopped and the outbox says so, once.
    s.nexpect("PATCH", "/account", Some(json!({"spend_limit_cents": 500})), 200).await;
    clock.advance_secs(3600);
    assert_eq!(nimbus_control::billing::enforce_spend_limits(&s.control).await.unwrap(), 0, "329 ¢ spent: under 500");
    clock.advance_secs(3600);
    // The server's own reconcile pass enforces limits too and may get there first: either way
    // it is acted on exactly once (the one audit event below), and not again this month.
    let acted = nimbus_control::billing::enforce_spend_limits(&s.control).await.unwrap();
    assert!(acted <= 1, "658 ¢ spent: over 500, acted on {acted} times");
    assert_eq!(nimbus_control::billing::enforce_spend_limits(&s.control).await.unwrap(), 0, "acted on once per month");
    s.wait_native_status(&format!("/instances/{id}"), "stopped").await;
    let (_, ev) = s.call(&s.key, "GET", "/audit-events?resource_type=organization", None).await;
    let reached: Vec<&serde_json::Value> =
        ev["data"]["events"].as_array().unwrap().iter().filter(|e| e["action"] == "billing.spend_limit_reached").collect();
    assert_eq!(reached.len(), 1, "{ev}");
    assert_eq!(reached[0]["additional_details"]["stopped"], json!([id]));
    assert_eq!(reached[0]["additional_details"]["spent_micros"], 6_580_000);
    let got = receiver
        .wait_until("the spend-limit webhook", std::time::Duration::from_secs(10), |r| {
            r.iter().any(|x| x.json()["type"] == "billing.spend_limit_reached")
        })
        .await;
    assert_eq!(got.iter().filter(|x| x.json()["type"] == "billing.spend_limit_reached").count(), 1);
}

/// Voltage Park rentals in the ledger: a VM's plain stop is billed like running (its
/// reservation is held), its disassociated stop bills the disk only; a bare-metal node is billed
/// at its fixed whole-host price and its charges name the rental.
#[tokio::test]
async fn voltage_park_stops_and_bare_metal_in_the_ledger() {
    let (s, clock) = crate::two_h100_hosts_at("2026-03-02T10:00:00Z").await;
    let vp = |m: &'static str, p: String, body: Option<Value>| {
        let s = &s;
        async move { crate::vp_ok(s, m, &p, body).await }
    };
    let presets = vp("GET", "/instant-deploy-presets".into(), None).await;
    let preset = presets.as_array().unwrap().iter().find(|p| p["compute_rate_hourly"] == "3.290000").unwrap()["id"].clone();
    let vm = vp("POST", "/virtual-machines/instant".into(), Some(json!({"config_id": preset, "name": "vm", "ssh_keys": [crate::PUBKEY]})))
        .await["vm_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let status = |want: &'static str| {
        let vp = &vp;
        let vm = vm.clone();
        let s = &s;
        async move { s.wait_for(want, || async { vp("GET", format!("/virtual-machines/{vm}"), None).await["status"] == want }).await }
    };
    status("Running").await; // 10:00 compute
    clock.advance_secs(3600);
    vp("PUT", format!("/virtual-machines/{vm}/power-status"), Some(json!({"status": "stopped"}))).await;
    status("Stopped").await; // 11:00 still compute (reserved)
    clock.advance_secs(3600);
    vp("PUT", format!("/virtual-machines/{vm}/power-status"), Some(json!({"status": "stopped_disassociated"}))).await;
    status("Disassociated").await; // 12:00 storage only
    clock.advance_secs(3600);
    vp("DELETE", format!("/virtual-machines/{vm}"), None).await; // 13:00 ends

    // The bare-metal rental takes the other (whole) host from 13:00 to 14:00.
    let loc = vp("GET", "/bare-metal/locations".into(), None).await["results"][0]["id"].clone();
    let rental = vp(
        "POST",
        "/bare-metal/".into(),
        Some(json!({"location_id": loc, "gpu_count": 8, "name": "bm", "network_type": "ethernet", "ssh_keys": [crate::PUBKEY]})),
    )
    .await["rental_id"]
        .as_str()
        .unwrap()
        .to_owned();
    s.wait_for("the node running", || async { vp("GET", "/bare-metal/".into(), None).await["results"][0]["status"] == "Running" }).await;
    clock.advance_secs(3600);
    vp("DELETE", format!("/bare-metal/{rental}"), None).await;
    clock.advance_secs(3600);
    nimbus_control::metering::roll_up(&s.control).await.unwrap();

    let txs = vp("GET", "/billing/transactions?limit=100".into(), None).await;
    let amounts = |pred: &dyn Fn(&Value) -> bool| -> Vec<String> {
        let mut v: Vec<String> = txs["results"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| pred(&t["details"]["linked_instance"]))
            .map(|t| t["total_amount"].as_str().unwrap().to_owned())
            .collect();
        v.sort();
        v
    };
    // VM: two compute hours (running, then stopped but reserved) and one disk-only hour.
    assert_eq!(
        amounts(&|l| l["type"] == "virtual_machine_instance"),
        vec!["0.385792".to_owned(), "3.290000".to_owned(), "3.290000".to_owned()],
        "{txs}"
    );
    // Bare metal: one hour of a whole 8-GPU host at 8 × 3.29, linked to the rental.
    assert_eq!(amounts(&|l| l["type"] == "baremetal_rental" && l["id"] == rental.as_str()), vec!["26.320000".to_owned()], "{txs}");
}
