//! `tenet bench cluster` end to end on small counts: every request gets
//! its admission and every exchange swaps (the bench checks both and fails
//! otherwise), and the JSON carries a rate and a ratio, median and range,
//! for every replica and pair count. No times are asserted.

use std::process::Command;

use serde_json::Value;

#[test]
fn bench_cluster_runs_end_to_end_on_small_counts() {
    let out = Command::new(env!("CARGO_BIN_EXE_tenet"))
        .args([
            "bench",
            "--json",
            "cluster",
            "--requests",
            "40",
            "--exchanges",
            "3",
            "--replicas",
            "1,2",
            "--pairs",
            "1,2",
            "--rounds",
            "2",
        ])
        .env("TENET_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["name"], "cluster");
    let r = &v[0]["results"];
    for (key, counts) in [("cluster-decisions", [1, 2]), ("cluster-exchanges", [1, 2])] {
        let rows = r[key].as_array().unwrap();
        let got: Vec<u64> = rows.iter().map(|x| x["count"].as_u64().unwrap()).collect();
        assert_eq!(got, counts, "{key}");
        for x in rows {
            let f = |k: &str| x[k].as_f64().unwrap();
            assert!(f("rate_min") > 0.0, "{key}: {x}");
            assert!(f("rate_min") <= f("rate_median") && f("rate_median") <= f("rate_max"));
            assert!(f("ratio_min") <= f("ratio_median") && f("ratio_median") <= f("ratio_max"));
        }
        // The first count is the base of its round's ratios.
        assert_eq!(rows[0]["ratio_median"].as_f64().unwrap(), 1.0);
    }
}

#[test]
fn bench_cluster_refuses_zero_counts_with_a_clear_error() {
    for (flag, value, expected) in [
        (
            "--replicas",
            "0",
            "--replicas: every count must be at least 1",
        ),
        ("--pairs", "1,0", "--pairs: every count must be at least 1"),
        ("--rounds", "0", "--rounds must be at least 1"),
        ("--requests", "0", "--requests must be at least 1"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_tenet"))
            .args(["bench", "cluster", flag, value])
            .env("TENET_LOG", "warn")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{flag} {value}: {stderr}");
        assert!(stderr.contains(expected), "{flag} {value}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
