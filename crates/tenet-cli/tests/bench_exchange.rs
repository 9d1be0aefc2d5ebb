//! `tenet bench exchange` end to end on small counts: every exchange
//! completes with the vouchers swapped one for one (the bench checks that and
//! fails otherwise), and the JSON carries the figures. No times are asserted.

use std::process::Command;

use serde_json::Value;

#[test]
fn bench_exchange_runs_end_to_end_on_small_counts() {
    let out = Command::new(env!("CARGO_BIN_EXE_tenet"))
        .args([
            "bench",
            "--json",
            "exchange",
            "--exchanges",
            "5",
            "--pairs",
            "1,3",
            "--stores",
            "tmpfs,disk",
        ])
        .env("TENET_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let r = &v[0]["results"];
    assert_eq!(v[0]["name"], "exchange");
    assert!(r["crypto_floor_us"].as_f64().unwrap() > 0.0);
    let latency = r["latency"].as_array().unwrap();
    assert_eq!(latency.len(), 2, "disk and tmpfs");
    for l in latency {
        assert!(l["p50_us"].as_f64().unwrap() <= l["p99_us"].as_f64().unwrap());
    }
    // The same on tmpfs with every thread on one CPU.
    let one = &r["one_core"];
    assert_eq!(one["stores"], "tmpfs");
    assert!(one["p50_us"].as_f64().unwrap() <= one["p99_us"].as_f64().unwrap());
    assert!(r["p50_tmpfs_one_core_over_floor"].as_f64().unwrap() > 0.0);
    let t = r["throughput"].as_array().unwrap();
    let runs: Vec<(&str, u64)> = t
        .iter()
        .map(|x| (x["stores"].as_str().unwrap(), x["pairs"].as_u64().unwrap()))
        .collect();
    assert_eq!(runs, [("tmpfs", 1), ("tmpfs", 3), ("disk", 1), ("disk", 3)]);
    // Each pair runs max(10, 4 x 5 / pairs) exchanges.
    let total: Vec<u64> = t.iter().map(|x| x["exchanges"].as_u64().unwrap()).collect();
    assert_eq!(total, [20, 30, 20, 30]);
    for x in t {
        assert!(x["cpu_us_per_exchange"].as_f64().unwrap() > 0.0);
        let share = x["share_of_crypto_bound"].as_f64().unwrap();
        assert!(share > 0.0 && share < 1.0, "{share}");
        // Three rounds; the reported one is their median.
        let rates: Vec<f64> = x["rounds_exchanges_per_s"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_f64().unwrap())
            .collect();
        assert_eq!(rates.len(), 3);
        assert!(rates[0] <= rates[1] && rates[1] <= rates[2], "{rates:?}");
        assert_eq!(x["exchanges_per_s"].as_f64().unwrap(), rates[1]);
    }
    // Both crypto floors: a repeat skips the CA's signatures.
    let first = r["crypto_floor_first_contact_us"].as_f64().unwrap();
    assert!(first > 0.0);
}

#[test]
fn bench_exchange_refuses_zero_counts_with_a_clear_error() {
    for (flag, value, expected) in [
        ("--exchanges", "0", "--exchanges must be at least 1"),
        ("--pairs", "0", "--pairs: every count must be at least 1"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_tenet"))
            .args(["bench", "exchange", "--stores", "tmpfs", flag, value])
            .env("TENET_LOG", "warn")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{flag} {value}: {stderr}");
        assert!(stderr.contains(expected), "{flag} {value}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
