//! The CLI as documentation: every command's `--help` explains it and
//! shows an example, `tenet man DIR` writes the man pages, `tenet
//! completions SHELL` the completion scripts; and the CLI is quiet: only
//! warnings on stderr unless asked (`-v`, `TENET_LOG`).

use std::path::Path;
use std::process::{Command, Output};

const TENET: &str = env!("CARGO_BIN_EXE_tenet");

fn tenet(args: &[&str]) -> Output {
    Command::new(TENET)
        .args(args)
        .env_remove("TENET_LOG")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The subcommand names in a help text's "Commands:" section, without
/// `help`.
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| l.trim_end() != "Commands:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect()
}

/// Every command path below `tenet` (`["card", "pin", "change"]` ...),
/// found by walking the help texts.
fn command_paths() -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    let mut todo: Vec<Vec<String>> = vec![vec![]];
    while let Some(path) = todo.pop() {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let out = tenet(&args);
        assert!(
            out.status.success(),
            "tenet {args:?}: {}",
            text(&out.stderr)
        );
        for sub in subcommands(&text(&out.stdout)) {
            let mut p = path.clone();
            p.push(sub);
            todo.push(p.clone());
            paths.push(p);
        }
    }
    paths.sort();
    paths
}

#[test]
fn every_command_help_has_a_description_and_an_example() {
    let paths = command_paths();
    for top in [
        "host", "ping", "tap", "demo", "ttp", "wallet", "ca", "card", "bench",
    ] {
        assert!(paths.contains(&vec![top.to_owned()]), "{top} in {paths:?}");
    }
    assert!(paths.len() > 30, "{paths:?}");
    let mut missing = Vec::new();
    for path in std::iter::once(&vec![]).chain(&paths) {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let help = text(&tenet(&args).stdout);
        let head = help.split("\nUsage:").next().unwrap_or_default();
        let paragraphs: Vec<&str> = head
            .split("\n\n")
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect();
        let described = paragraphs
            .iter()
            .filter(|p| !p.starts_with("Example"))
            .count()
            >= 2;
        let name = format!("tenet {}", path.join(" ")).trim_end().to_owned();
        let example = paragraphs
            .iter()
            .any(|p| p.starts_with("Example") && p.contains(&name));
        if !described || !example {
            missing.push(format!(
                "{name}: description {described}, example {example}\n{head}"
            ));
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n---\n"));
}

/// A global option a command ignores is not offered there: `--socket` is
/// refused after `ca init`, accepted after `wallet` (and still before it).
#[test]
fn socket_is_offered_only_where_it_is_used() {
    let help = text(&tenet(&["ca", "init", "--help"]).stdout);
    assert!(!help.contains("--socket"), "{help}");
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let out = tenet(&[
        "ca",
        "init",
        "--socket",
        "/x",
        "--dir",
        ca.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    for path in [
        &["wallet", "balance"][..],
        &["ping"],
        &["tap"],
        &["host"],
        &["card", "pin", "change"],
    ] {
        let mut args = path.to_vec();
        args.push("--help");
        let help = text(&tenet(&args).stdout);
        assert!(help.contains("--socket"), "{path:?}: {help}");
    }
    // Before the command or after it: the same socket.
    let sock = dir.path().join("none.sock");
    let s = sock.to_str().unwrap();
    for args in [
        &[
            "--socket",
            s,
            "ping",
            "-c",
            "1",
            "00112233445566778899aabb:0",
        ][..],
        &[
            "ping",
            "--socket",
            s,
            "-c",
            "1",
            "00112233445566778899aabb:0",
        ],
    ] {
        let out = tenet(args);
        assert!(!out.status.success());
        let err = text(&out.stderr);
        assert!(
            err.contains(&format!("not running at {s}")),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn man_writes_a_page_per_command() {
    let dir = tempfile::tempdir().unwrap();
    let out = tenet(&["man", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut pages = vec!["tenet.1".to_owned()];
    pages.extend(
        command_paths()
            .iter()
            .map(|p| format!("tenet-{}.1", p.join("-"))),
    );
    let groff = Command::new("groff").arg("--version").output().is_ok();
    for page in &pages {
        let file = dir.path().join(page);
        let roff = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{page}: {e}"));
        let name = page.trim_end_matches(".1");
        assert!(
            roff.lines()
                .any(|l| l.starts_with(".TH") && l.contains(name)),
            "{page} has no .TH header"
        );
        if groff {
            render(&file);
        }
    }
}

/// Renders a man page with groff, which must not complain.
fn render(page: &Path) {
    let out = Command::new("groff")
        .args(["-man", "-Tutf8", "-ww", "-z"])
        .arg(page)
        .output()
        .unwrap();
    assert!(out.status.success(), "{page:?}: {}", text(&out.stderr));
    assert!(out.stderr.is_empty(), "{page:?}: {}", text(&out.stderr));
}

#[test]
fn completions_bash_mentions_the_subcommands() {
    let out = tenet(&["completions", "bash"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let script = text(&out.stdout);
    assert!(script.contains("complete -F _tenet"), "{script}");
    for word in [
        "host",
        "wallet",
        "offer",
        "completions",
        "--socket",
        "--verbose",
    ] {
        assert!(script.contains(word), "{word} missing");
    }
    for shell in ["zsh", "fish"] {
        let out = tenet(&["completions", shell]);
        assert!(out.status.success() && !out.stdout.is_empty(), "{shell}");
    }
}

/// The demo's output is its flow table and its outcome: nothing on stderr,
/// with or without an interruption (whose dropped message the table shows).
#[test]
fn the_demo_writes_nothing_to_stderr_by_default() {
    for args in [&["demo"][..], &["demo", "--interrupt-after", "accept"]] {
        let out = tenet(args);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(text(&out.stdout).contains("outcome: "));
        assert_eq!(text(&out.stderr), "", "{args:?} wrote to stderr");
    }
}

#[test]
fn verbose_shows_info_lines() {
    let out = tenet(&["-v", "demo"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains(" INFO "), "{err}");
    assert!(!err.contains(" DEBUG "), "{err}");
    assert!(!err.contains('\x1b'), "colours on a pipe: {err}");
    // The flag goes after the command too, and TENET_LOG does the same.
    let out = tenet(&["demo", "-vv"]);
    assert!(text(&out.stderr).contains(" DEBUG "));
    let out = Command::new(TENET)
        .arg("demo")
        .env("TENET_LOG", "info")
        .output()
        .unwrap();
    assert!(text(&out.stderr).contains(" INFO "));
}
