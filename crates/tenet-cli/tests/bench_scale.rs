//! `tenet bench scale` end to end on small counts: every app connects,
//! every message arrives, the JSON has its fields. No times are asserted.

use std::process::Command;

use serde_json::Value;

const TENET: &str = env!("CARGO_BIN_EXE_tenet");

fn dbus_daemon_installed() -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("dbus-daemon").is_file()))
        || std::path::Path::new("/usr/bin/dbus-daemon").is_file()
}

fn num(v: &Value, what: &str) -> f64 {
    v.as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {v}"))
}

#[test]
fn bench_scale_runs_end_to_end_on_small_counts() {
    let out = Command::new(TENET)
        .args([
            "bench",
            "scale",
            "--apps",
            "20,50",
            "--messages",
            "1000",
            "--queued",
            "1000",
            "--dispatch",
            "10000",
            "--endpoints",
            "100",
            "--rounds",
            "50",
            "--json",
        ])
        .env("TENET_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tenet bench scale failed: {stderr}");
    let doc: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    let s = &doc[0];
    assert_eq!(s["name"], "scale");
    assert!(
        s["command"]
            .as_str()
            .unwrap()
            .starts_with("tenet bench scale")
    );
    let r = &s["results"];

    assert!(num(&r["rss_idle_kib"], "idle RSS") > 0.0);
    let levels = r["levels"].as_array().expect("levels");
    assert_eq!(levels.len(), 2, "{levels:?}");
    for (l, apps) in levels.iter().zip([20, 50]) {
        assert_eq!(l["apps_requested"], apps);
        assert_eq!(l["apps_connected"], apps, "all apps connected: {l}");
        assert!(l["stopped"].is_null(), "{l}");
        assert_eq!(l["messages_sent"], 1000, "{l}");
        assert_eq!(
            l["messages_delivered"], 1000,
            "every message delivered: {l}"
        );
        assert!(num(&l["rss_connected_kib"], "RSS") > 0.0);
        assert!(num(&l["rss_after_traffic_kib"], "RSS") > 0.0);
        num(&l["kib_per_app"], "memory per app");
        assert!(num(&l["messages_per_s"], "throughput") > 0.0);
        assert!(num(&l["echo"]["p50_us"], "echo p50") > 0.0);
    }

    let q = &r["queued"];
    assert_eq!(q["messages"], 1000);
    assert_eq!(q["delivered"], 1000, "every queued message delivered: {q}");
    assert!(num(&q["rss_queued_kib"], "queued RSS") > 0.0);
    num(&q["bytes_per_message"], "bytes per queued message");
    assert!(num(&q["fill_messages_per_s"], "fill rate") > 0.0);
    assert!(num(&q["drain_messages_per_s"], "drain rate") > 0.0);

    assert_eq!(r["dispatch"]["endpoints"], 100);
    assert_eq!(r["dispatch"]["messages"], 10000);
    assert!(num(&r["dispatch"]["messages_per_s"], "dispatch rate") > 0.0);

    let rt = &r["round_trips"];
    assert!(num(&rt["card"]["p50_us"], "card p50") > 0.0);
    assert!(num(&rt["app"]["p50_us"], "app p50") > 0.0);

    let d = &r["dbus"];
    if cfg!(feature = "dbus") && dbus_daemon_installed() {
        assert_eq!(d["available"], true, "D-Bus baseline expected: {d}");
        assert!(num(&d["round_trip"]["p50_us"], "D-Bus p50") > 0.0);
        assert!(num(&d["card_vs_dbus_p50_ratio"], "ratio") > 0.0);
        assert!(num(&d["app_vs_dbus_p50_ratio"], "ratio") > 0.0);
    } else {
        assert_eq!(d["available"], false, "{d}");
        assert!(
            d["reason"].as_str().is_some_and(|r| r.contains("dbus")),
            "the run says why there is no D-Bus baseline: {d}"
        );
    }
}
