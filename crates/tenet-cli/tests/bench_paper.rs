//! `tenet bench baseline` and `tenet bench table2` end to end on small
//! counts. The scenarios check themselves (vouchers conserved, every
//! exchange complete, 3 + 2 APDUs per exchange, the expected signatures and
//! verifications per message) and fail otherwise; here the JSON's structure
//! and invariants are checked. No times are asserted.

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
    // Per APDU, ours carries an eTP header in the compact form (applet
    // version 2: the card's own id implied) in every command, and in every
    // response that carries a message: 7 bytes for a message from the
    // card's own wallet (start, accept), 19 for the offer to the other
    // card's wallet, 15 from or to the other card.
    let (b, o) = (
        r["apdus"]["baseline"].as_array().unwrap(),
        r["apdus"]["ours"].as_array().unwrap(),
    );
    assert_eq!(b.len(), 5);
    assert_eq!(o.len(), 5);
    let header = [
        (7.0, 19.0),
        (7.0, 15.0),
        (15.0, 15.0),
        (15.0, 15.0),
        (15.0, 0.0),
    ];
    for (i, (b, o)) in b.iter().zip(o).enumerate() {
        assert_eq!(b["step"], o["step"]);
        let dc = f(&o["command"]) - f(&b["command"]);
        let dr = f(&o["response"]) - f(&b["response"]);
        assert_eq!(
            (dc, dr),
            header[i],
            "step {i}: bytes more in command and response"
        );
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

#[test]
fn table2_runs_end_to_end_on_small_counts() {
    let v = bench(&["table2", "--exchanges", "2"]);
    assert_eq!(v[0]["name"], "table2");
    let r = &v[0]["results"];
    let rows = r["rows"].as_array().unwrap();
    let names: Vec<&str> = rows
        .iter()
        .map(|x| x["message"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "start-exchange",
            "accept (m1)",
            "agreement (m2)",
            "confirmation (m3)",
            "commitment (m4)"
        ]
    );
    // The crypto each message costs, as counted on the cards.
    let crypto: Vec<(f64, f64)> = rows
        .iter()
        .map(|x| (f(&x["ops"]["signs"]), f(&x["ops"]["verifies"])))
        .collect();
    assert_eq!(
        crypto,
        [(0.0, 0.0), (1.0, 0.0), (1.0, 2.0), (0.0, 2.0), (0.0, 0.0)]
    );
    let (mut cpu, mut io) = (0.0, 0.0);
    for x in rows {
        assert_eq!(f(&x["ops"]["commits"]), 1.0, "one store update per message");
        assert!(f(&x["ops"]["eeprom_pages"]) >= 1.0);
        let k = &x["cpu_by_kind_ms"];
        let by_kind = f(&k["crypto"]) + f(&k["sha256"]) + f(&k["eeprom"]) + f(&k["other"]);
        assert!((by_kind - f(&x["cpu_ms"])).abs() < 1e-6);
        assert!((f(&x["cpu_ms"]) + f(&x["io_ms"]) - f(&x["total_ms"])).abs() < 1e-6);
        cpu += f(&x["cpu_ms"]);
        io += f(&x["io_ms"]);
    }
    let w = &r["whole"];
    assert!((f(&w["cpu_ms"]) - cpu).abs() < 1e-6 && (f(&w["io_ms"]) - io).abs() < 1e-6);
    assert_eq!(f(&w["paper_total_ms"]), 1788.0);
    // The sensitivity at the paper's stated 32 kbps: the same CPU, less I/O,
    // still above the 3,200 bytes/s model's I/O times 0.8 (fixed costs).
    let st = &r["sensitivity_paper_stated_32kbps"];
    assert!(f(&st["io_ms"]) < io && f(&st["io_ms"]) > 0.8 * io);
    assert!((f(&st["total_ms"]) - cpu - f(&st["io_ms"])).abs() < 1e-6);
    // The baseline does the same card work over shorter APDUs.
    let b = &r["baseline"];
    assert!(f(&b["io_ms"]) < io);
    let o = &r["framework_overhead"];
    assert!(f(&o["card_link_ratio"]) > 1.0);
    assert!(f(&o["extra_ms"]) > 0.0);
}
