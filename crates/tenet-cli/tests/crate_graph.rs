//! The crate graph is the architecture: a strict stack. Each workspace
//! crate has a layer, and may depend only on crates of lower layers; the
//! host runtime links no application, no database and no certificate
//! generator. Read from `cargo metadata`, so a new edge that breaks the
//! stack fails here, with the edge named.

use std::collections::BTreeMap;
use std::process::Command;

use serde_json::Value;

/// Every workspace crate and its layer. Crates of one layer do not depend
/// on each other; a new crate must be placed here.
const LAYERS: &[(&str, u32)] = &[
    ("tenet-proto", 0),
    ("tenet-hostile", 0),
    ("tenet-pki", 1),
    ("tenet-dispatch", 1),
    ("tenet-card", 1),
    ("tenet-voucher", 2),
    ("tenet-client", 3),
    ("tenet-host", 3),
    ("tenet-voucher-app", 4),
    ("tenet-attest", 4),
    ("tenet-testkit", 5),
    ("tenet-bench", 6),
    ("tenet", 7),
];

/// Crates the host runtime must not link (without a feature asking).
const NOT_IN_HOST: &[&str] = &[
    "rusqlite",
    "postgres",
    "rcgen",
    "tenet-voucher",
    "tenet-voucher-app",
    "tenet-client",
];

struct Dep {
    name: String,
    kind: Option<String>,
    optional: bool,
    features: Vec<String>,
}

fn workspace() -> BTreeMap<String, Vec<Dep>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON");
    let mut crates = BTreeMap::new();
    for p in meta["packages"].as_array().expect("packages") {
        let deps = p["dependencies"]
            .as_array()
            .expect("dependencies")
            .iter()
            .map(|d| Dep {
                name: d["name"].as_str().expect("name").to_owned(),
                kind: d["kind"].as_str().map(str::to_owned),
                optional: d["optional"].as_bool().unwrap_or(false),
                features: d["features"]
                    .as_array()
                    .map(|f| {
                        f.iter()
                            .filter_map(|x| x.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default(),
            })
            .collect();
        crates.insert(p["name"].as_str().expect("name").to_owned(), deps);
    }
    crates
}

fn layer(name: &str) -> Option<u32> {
    LAYERS.iter().find(|(n, _)| *n == name).map(|(_, l)| *l)
}

#[test]
fn every_workspace_crate_has_a_layer_and_depends_only_downwards() {
    let crates = workspace();
    let mut wrong = Vec::new();
    for (name, deps) in &crates {
        let Some(mine) = layer(name) else {
            wrong.push(format!("{name} has no layer in LAYERS"));
            continue;
        };
        for d in deps {
            let Some(theirs) = layer(&d.name) else {
                continue;
            };
            let dev = d.kind.as_deref() == Some("dev");
            // Normal and build edges go strictly down; tests may use a
            // crate of the same layer, never one above (a cycle through
            // dev-dependencies builds the crate twice).
            let ok = if dev { theirs <= mine } else { theirs < mine };
            if !ok || d.name == *name {
                wrong.push(format!(
                    "{name} (layer {mine}) -> {} (layer {theirs}){}",
                    d.name,
                    if dev { " [dev]" } else { "" }
                ));
            }
        }
    }
    for (name, _) in LAYERS {
        if !crates.contains_key(*name) {
            wrong.push(format!("{name} is in LAYERS but not in the workspace"));
        }
    }
    assert!(
        wrong.is_empty(),
        "the crate stack is broken:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_host_runtime_links_no_application_database_or_certificate_maker() {
    let crates = workspace();
    let host = &crates["tenet-host"];
    for d in host.iter().filter(|d| d.kind.is_none()) {
        assert!(
            !NOT_IN_HOST.contains(&d.name.as_str()),
            "tenet-host depends on {}",
            d.name
        );
        if d.name == "tenet-pki" {
            assert!(
                !d.features.iter().any(|f| f == "issue"),
                "tenet-host makes certificates (tenet-pki feature issue)"
            );
        }
    }
    // Only the PKI crate parses X.509; only it makes certificates, and only
    // with its feature.
    for (name, deps) in &crates {
        for d in deps.iter().filter(|d| d.kind.is_none()) {
            if matches!(d.name.as_str(), "x509-parser" | "rcgen" | "rustls-webpki") {
                assert_eq!(name, "tenet-pki", "{name} depends on {}", d.name);
            }
            if d.name == "rcgen" {
                assert!(
                    d.optional,
                    "tenet-pki makes certificates without its feature"
                );
            }
        }
    }
}
