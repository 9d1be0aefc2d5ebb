//! `tenet bench baseline` end to end on small counts. The scenario checks
//! itself (vouchers conserved, every exchange complete, 3 + 2 APDUs per
//! exchange) and fails otherwise; here the JSON's structure and invariants
//! are checked. No times are asserted.

use std::process::Command;

use serde_json::Value;

fn bench(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_tenet"))
        .arg("bench")
        .arg("--json")
        .args(args)
        .env("TENET_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn baseline_runs_end_to_end_on_small_counts() {
    let v = bench(&["baseline", "--exchanges", "4"]);
    assert_eq!(v[0]["name"], "baseline");
    let r = &v[0]["results"];
    // The same number of APDUs each way: one per protocol message.
    assert_eq!(
        r["apdus_per_exchange"]["baseline"],
        serde_json::json!([3, 2])
    );
    assert_eq!(r["apdus_per_exchange"]["ours"], serde_json::json!([3, 2]));
    // Per APDU, ours carries the 34-byte eTP header in every command, and
    // in every response that carries a message (give or take the length of
    // a DER signature, which varies from run to run by a few bytes).
    let (b, o) = (
        r["apdus"]["baseline"].as_array().unwrap(),
        r["apdus"]["ours"].as_array().unwrap(),
    );
    assert_eq!(b.len(), 5);
    assert_eq!(o.len(), 5);
    for (i, (b, o)) in b.iter().zip(o).enumerate() {
        assert_eq!(b["step"], o["step"]);
        let dc = f(&o["command"]) - f(&b["command"]);
        assert!(
            (30.0..=38.0).contains(&dc),
            "step {i}: command {dc} bytes more"
        );
        let dr = f(&o["response"]) - f(&b["response"]);
        if i < 4 {
            assert!(
                (30.0..=38.0).contains(&dr),
                "step {i}: response {dr} bytes more"
            );
        } else {
            assert_eq!(dr, 0.0, "the commitment answers nothing either way");
        }
    }
    let link = &r["link_model_ms"];
    assert!(f(&link["ours"]) > f(&link["baseline"]));
    assert!(f(&link["ratio"]) > 1.0 && f(&link["ratio"]) < 1.5);
    let loc = &r["lines_of_app_code"];
    assert!(f(&loc["ours"]) > 0.0 && f(&loc["ours"]) < f(&loc["baseline"]));
    for side in ["baseline", "ours"] {
        let w = &r["wall_us"][side];
        assert!(f(&w["p50"]) > 0.0 && f(&w["p50"]) <= f(&w["p99"]));
    }
}
