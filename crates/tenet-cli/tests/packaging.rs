//! The systemd units in contrib/systemd: `systemd-analyze verify` finds
//! nothing wrong with them (their command is the built `tenet`, their
//! documentation the man pages `tenet man` writes), and they carry the
//! hardening the daemons are meant to run with. The test command installs
//! systemd and man-db when missing; without them this test fails.

use std::path::{Path, PathBuf};
use std::process::Command;

const TENET: &str = env!("CARGO_BIN_EXE_tenet");

fn units() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contrib/systemd");
    let mut units: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "service"))
        .collect();
    units.sort();
    units
}

#[test]
fn the_units_pass_systemd_analyze_verify() {
    let units = units();
    assert_eq!(units.len(), 2, "tenet-host and tenet-ttp: {units:?}");
    let tmp = tempfile::tempdir().unwrap();
    let man1 = tmp.path().join("man/man1");
    std::fs::create_dir_all(&man1).unwrap();
    let made = Command::new(TENET)
        .args(["man", man1.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(made.status.success());
    let mut copies = Vec::new();
    for unit in &units {
        let text = std::fs::read_to_string(unit).unwrap();
        assert!(text.contains("ExecStart=/usr/bin/tenet "), "{unit:?}");
        let copy = tmp.path().join(unit.file_name().unwrap());
        std::fs::write(&copy, text.replace("/usr/bin/tenet", TENET)).unwrap();
        copies.push(copy);
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&copies)
        .env("MANPATH", tmp.path().join("man"))
        .output()
        .expect("systemd-analyze runs (Debian: systemd)");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {said}");
    let ours: Vec<&str> = said.lines().filter(|l| l.contains("tenet")).collect();
    assert!(ours.is_empty(), "systemd-analyze verify warns: {ours:?}");
}

#[test]
fn the_units_run_the_daemons_hardened() {
    for unit in units() {
        let text = std::fs::read_to_string(&unit).unwrap();
        let keys: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once('=').map(|(k, _)| k))
            .collect();
        for key in [
            "User",
            "StateDirectory",
            "RuntimeDirectory",
            "NoNewPrivileges",
            "ProtectSystem",
            "ProtectHome",
            "PrivateTmp",
            "CapabilityBoundingSet",
            "RestrictAddressFamilies",
            "SystemCallFilter",
        ] {
            assert!(keys.contains(&key), "{unit:?} lacks {key}");
        }
        assert!(text.contains("\nProtectSystem=strict\n"), "{unit:?}");
        assert!(text.contains("\nNoNewPrivileges=yes\n"), "{unit:?}");
        // The subcommand and its --config exist.
        let exec = text
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart=/usr/bin/tenet "))
            .unwrap();
        let sub = exec.split_whitespace().next().unwrap();
        let help = Command::new(TENET).args([sub, "--help"]).output().unwrap();
        assert!(
            String::from_utf8_lossy(&help.stdout).contains("--config"),
            "tenet {sub} has no --config"
        );
    }
}
