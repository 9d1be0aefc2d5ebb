//! Golden tests: what the `tenet` command shows its users today, pinned in
//! files under `tests/golden/`, so that a refactor can show it changed
//! none of it.
//!
//! - `help/*.txt`: the `--help` of every command path (`help/tenet.txt`
//!   for `tenet --help`, `help/card_pin_change.txt` for `tenet card pin
//!   change --help`). A path without a file fails, and so does a file for
//!   a path that no longer exists.
//! - `demo*.json`, `demo*.txt`: `tenet demo [--json]`, with and without
//!   each `--interrupt-after STEP` that `tenet demo --help` offers.
//! - `config_example.txt`: docs/host.example.toml as the daemon reads it,
//!   and the line `tenet host --config` prints when it starts with it.
//! - `config_refused.txt`: configs that `tenet host --config FILE` refuses,
//!   each with the exact error it prints, as `CASE: TOML => ERROR` (both
//!   on one line, a line break written `\n`).
//! - `config_keys.txt`: every key path the host config accepts.
//!
//! Blessing: `TENET_BLESS=1 cargo test -p tenet --test golden` writes the
//! golden files from today's behaviour instead of comparing (and removes
//! the files of command paths and demo steps that no longer exist); review
//! the result with `git diff`. When blessing, each output is computed
//! twice and a file is written only if both runs agree.
//!
//! Masked, as `<masked>`, so that the files hold only what is the same on
//! every run:
//! - the demo's times: the JSON numbers under a key that names a time
//!   (`ms`, `*_ms`, `*_us`, `*_secs`, `elapsed`), the text's `time ms`
//!   column and its "N ms" totals: wall-clock;
//! - the demo's `bytes` of the messages that carry ECDSA signatures and
//!   certificates made for the run (agreement, confirmation,
//!   recovery-request, admission): DER encoding makes their length vary by
//!   a few bytes from run to run; the other messages' sizes are pinned;
//! - the exchange id in the demo's "recovered exchange ID" lines: random;
//! - the temporary directory of the config cases, written `$DIR`.
//!
//! The JSON is compared pretty-printed with its keys sorted (serde_json's
//! map), so it pins the values, not the order of the keys. Help runs with
//! `COLUMNS=100` (clap, built without its `wrap_help` feature, lays out
//! for 100 columns and wraps nothing; with the feature it would read
//! `COLUMNS` on a pipe) and without any `TENET_*` variable, since clap
//! shows an environment variable's value in the help of an option that
//! reads it.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

const TENET: &str = env!("CARGO_BIN_EXE_tenet");
const MASK: &str = "<masked>";

/// The demo's messages whose size varies from run to run (they carry DER
/// signatures and certificates made for the run).
const SIGNED: [&str; 4] = ["agreement", "confirmation", "recovery-request", "admission"];

// ---------------------------------------------------------------------
// Running the binary, golden files.

/// `tenet ARGS` with a fixed terminal width and no `TENET_*` variable.
fn tenet(args: &[&str]) -> Command {
    let mut c = Command::new(TENET);
    c.args(args)
        .env("COLUMNS", "100")
        .env_remove("CLICOLOR_FORCE");
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("TENET_") {
            c.env_remove(key);
        }
    }
    c
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Whether this run writes the golden files.
fn blessing() -> bool {
    std::env::var_os("TENET_BLESS").is_some_and(|v| v == "1")
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// `produce`'s output; when blessing, produced twice, and both must agree.
fn stable(what: &str, produce: impl Fn() -> String) -> String {
    let out = produce();
    if blessing() {
        let again = produce();
        assert!(
            out == again,
            "{what} differs between two runs, not blessed:\n--- first\n{out}\n--- second\n{again}"
        );
    }
    out
}

/// Compares `actual` with the golden file `name` (or writes it when
/// blessing); the mismatch, if any.
fn check(name: &str, actual: &str) -> Option<String> {
    let path = golden_dir().join(name);
    if blessing() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return None;
    }
    let expected = match std::fs::read_to_string(&path) {
        Ok(e) => e,
        Err(e) => {
            return Some(format!(
                "{name}: no golden file ({e}); TENET_BLESS=1 writes it\n--- actual\n{actual}"
            ));
        }
    };
    if expected == actual {
        return None;
    }
    let (e, a): (Vec<&str>, Vec<&str>) = (expected.lines().collect(), actual.lines().collect());
    let line = e
        .iter()
        .zip(&a)
        .position(|(x, y)| x != y)
        .unwrap_or(e.len().min(a.len()));
    Some(format!(
        "{name}: differs from the golden file at line {}\n  golden: {:?}\n  actual: {:?}\n\
         --- golden\n{expected}\n--- actual\n{actual}\n--- \
         (TENET_BLESS=1 rewrites the golden files)",
        line + 1,
        e.get(line),
        a.get(line),
    ))
}

/// Fails with every mismatch at once.
fn assert_all(failures: &[String]) {
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// The golden files named `prefix*` (relative to the golden directory)
/// other than `wanted`: the ones of things that no longer exist. When
/// blessing, they are removed.
fn stale(dir: &str, prefix: &str, wanted: &BTreeSet<String>) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(golden_dir().join(dir)) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries {
        let file = entry.unwrap().file_name().to_string_lossy().into_owned();
        let name = if dir.is_empty() {
            file.clone()
        } else {
            format!("{dir}/{file}")
        };
        if file.starts_with(prefix) && !wanted.contains(&name) {
            if blessing() {
                std::fs::remove_file(golden_dir().join(&name)).unwrap();
            } else {
                out.push(format!("{name}: a golden file for nothing that exists now"));
            }
        }
    }
    out
}

// ---------------------------------------------------------------------
// 1. Help.

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

/// `tenet PATH --help`.
fn help(path: &[String]) -> String {
    let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
    args.push("--help");
    let out = tenet(&args).output().unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "tenet {args:?}: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Every command path, `[]` (tenet itself) first, then `["card"]`,
/// `["card", "pin"]`, `["card", "pin", "change"]` ..., found by walking the
/// help texts.
fn command_paths() -> Vec<Vec<String>> {
    let mut paths = vec![vec![]];
    let mut todo: Vec<Vec<String>> = vec![vec![]];
    while let Some(path) = todo.pop() {
        for sub in subcommands(&help(&path)) {
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
fn help_of_every_command_path() {
    let paths = command_paths();
    assert!(paths.len() > 30, "{paths:?}");
    let mut wanted = BTreeSet::new();
    let mut failures = Vec::new();
    for path in &paths {
        let name = if path.is_empty() {
            "tenet".to_owned()
        } else {
            path.join("_")
        };
        let file = format!("help/{name}.txt");
        let out = stable(&file, || help(path));
        failures.extend(check(&file, &out));
        assert!(wanted.insert(file), "two paths named {name}");
    }
    failures.extend(stale("help", "", &wanted));
    assert_all(&failures);
}

// ---------------------------------------------------------------------
// 2. The demo.

/// The steps `tenet demo --interrupt-after` takes, from its help.
fn interrupt_steps() -> Vec<String> {
    let help = help(&["demo".to_owned()]);
    let steps: Vec<String> = help
        .lines()
        .skip_while(|l| l.trim() != "Possible values:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.trim().strip_prefix("- "))
        .filter_map(|l| l.split(':').next())
        .map(str::to_owned)
        .collect();
    assert!(!steps.is_empty(), "no steps in tenet demo --help:\n{help}");
    steps
}

/// `tenet demo ARGS`, which must succeed and write nothing on stderr.
fn demo(args: &[&str]) -> String {
    let mut all = vec!["demo"];
    all.extend(args);
    let out = tenet(&all).output().unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "tenet {all:?}:\n{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Whether a JSON key names a time.
fn is_time(key: &str) -> bool {
    key == "ms" || key == "elapsed" || ["_ms", "_us", "_secs"].iter().any(|s| key.ends_with(s))
}

/// Masks the numbers under time keys, and `bytes` beside a signed `mtype`.
fn mask_json(v: &mut Value) {
    match v {
        Value::Object(map) => {
            let signed = map
                .get("mtype")
                .and_then(Value::as_str)
                .is_some_and(|m| SIGNED.contains(&m));
            for (key, x) in map.iter_mut() {
                if x.is_number() && (is_time(key) || (signed && key == "bytes")) {
                    *x = Value::from(MASK);
                } else {
                    mask_json(x);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(mask_json),
        _ => {}
    }
}

/// The byte ranges of a line's whitespace-separated words.
fn words(line: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in line.char_indices().chain([(line.len(), ' ')]) {
        match (start, c == ' ') {
            (None, false) => start = Some(i),
            (Some(s), true) => {
                out.push((s, i));
                start = None;
            }
            _ => {}
        }
    }
    out
}

/// `line` with `line[from..to]`, a right-aligned word and the spaces
/// before it, replaced by `MASK` right-aligned at the same column.
fn mask_right_aligned(line: &str, from: usize, to: usize) -> String {
    let width = to - from;
    assert!(width > MASK.len(), "no room for {MASK} in {line:?}");
    format!("{}{MASK:>width$}{}", &line[..from], &line[to..])
}

/// A flow table row (`step src -> dst mtype bytes time`): the time
/// masked, and the bytes of a signed message.
fn mask_row(row: &str) -> String {
    let w = words(row);
    let n = w.len();
    assert!(n >= 6, "not a flow row: {row:?}");
    let (mtype, bytes, time) = (w[n - 3], w[n - 2], w[n - 1]);
    for (s, e) in [bytes, time] {
        assert!(
            row[s..e].parse::<f64>().is_ok(),
            "not a number in the row {row:?}"
        );
    }
    // Right to left, so that the ranges on the left stay valid.
    let mut out = mask_right_aligned(row, bytes.1, time.1);
    if SIGNED.contains(&&row[mtype.0..mtype.1]) {
        out = mask_right_aligned(&out, mtype.1, bytes.1);
    }
    out
}

/// The demo's text: times, signed sizes and exchange ids masked.
fn mask_demo_text(out: &str) -> String {
    let mut masked = Vec::new();
    let mut in_table = false;
    for line in out.lines() {
        let tokens: Vec<&str> = line.split(' ').collect();
        masked.push(
            if line.trim_start().starts_with("step ") && line.ends_with(" time ms") {
                in_table = true;
                line.to_owned()
            } else if let Some((head, rest)) = line.split_once("recovered exchange ") {
                let (id, tail) = rest.split_once(':').expect("recovered exchange ID: PHASE");
                assert!(
                    !id.is_empty() && id.chars().all(|c| c.is_ascii_hexdigit()),
                    "not an exchange id: {line:?}"
                );
                format!("{head}recovered exchange {MASK}:{tail}")
            } else if line.is_empty() {
                in_table = false;
                String::new()
            } else if in_table {
                mask_row(line)
            } else {
                // "... took 6.4 ms ...", "... recovered in 1131.3 ms".
                tokens
                    .iter()
                    .enumerate()
                    .map(|(i, w)| {
                        if tokens.get(i + 1) == Some(&"ms") && w.parse::<f64>().is_ok() {
                            MASK
                        } else {
                            w
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            },
        );
    }
    masked.join("\n") + "\n"
}

/// One demo run as pinned: masked, the JSON pretty-printed.
fn demo_pinned(interrupt: Option<&str>, json: bool) -> String {
    let mut args = Vec::new();
    if let Some(step) = interrupt {
        args.extend(["--interrupt-after", step]);
    }
    if json {
        args.push("--json");
        let out = demo(&args);
        let mut v: Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("tenet demo {args:?}: not JSON ({e}):\n{out}"));
        mask_json(&mut v);
        serde_json::to_string_pretty(&v).unwrap() + "\n"
    } else {
        mask_demo_text(&demo(&args))
    }
}

#[test]
fn demo_output_json_and_text() {
    let steps = interrupt_steps();
    let runs: Vec<(Option<&str>, bool)> = std::iter::once(None)
        .chain(steps.iter().map(|s| Some(s.as_str())))
        .flat_map(|step| [(step, true), (step, false)])
        .collect();
    // The interrupted runs wait for the lost message a while: all at once.
    let pinned: Vec<(String, String)> = std::thread::scope(|scope| {
        let running: Vec<_> = runs
            .iter()
            .map(|&(step, json)| {
                let file = format!(
                    "demo{}.{}",
                    step.map_or(String::new(), |s| format!("_interrupt_{s}")),
                    if json { "json" } else { "txt" }
                );
                scope.spawn(move || {
                    let out = stable(&file, || demo_pinned(step, json));
                    (file, out)
                })
            })
            .collect();
        running.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let mut failures = Vec::new();
    let mut wanted = BTreeSet::new();
    for (file, out) in &pinned {
        failures.extend(check(file, out));
        wanted.insert(file.clone());
    }
    failures.extend(stale("", "demo", &wanted));
    assert_all(&failures);
}

// ---------------------------------------------------------------------
// 3. The host configuration.

fn example_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/host.example.toml")
}

/// An optional value, or `unset`.
fn or_unset<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or("unset".to_owned(), |v| v.to_string())
}

/// What the daemon makes of a config, by its public accessors.
fn summary(c: &tenet_host::Config) -> Vec<String> {
    let path = |p: &Option<PathBuf>| or_unset(p.as_ref().map(|p| p.display()));
    let limits = c.limits().unwrap();
    let (rate, burst) = c.acquire_limit().unwrap();
    let mut out = vec![
        format!("host.socket = {}", path(&c.host.socket)),
        format!("host.socket_mode = {:04o}", c.socket_mode().unwrap()),
        format!("host.state_dir = {}", path(&c.host.state_dir)),
        format!("host.domain = {}", or_unset(c.domain().unwrap())),
        format!("host.allow_taps = {}", c.allow_taps()),
        format!("host.acquire_rate = {rate}"),
        format!("host.acquire_burst = {burst}"),
        format!("dispatch.per_destination = {}", limits.per_destination),
        format!(
            "dispatch.per_destination_bytes = {}",
            limits.per_destination_bytes
        ),
        format!("dispatch.total = {}", limits.total),
        format!("dispatch.total_bytes = {}", limits.total_bytes),
        format!(
            "dispatch.per_sender_share = {}",
            limits.per_sender_share.fraction()
        ),
        format!("dispatch.ttl_secs = {}", limits.ttl.as_secs_f64()),
        format!("dispatch.tap_queue = {}", limits.tap_queue),
        format!(
            "dispatch.handlers_per_app = {}",
            limits.handlers_per_endpoint
        ),
        format!("guard.rules = {}", c.rule_guard().unwrap().len()),
    ];
    for (i, r) in c.guard.rules.iter().enumerate() {
        let fields = [
            ("ingress", &r.ingress),
            ("src", &r.src),
            ("dst", &r.dst),
            ("src_domain", &r.src_domain),
            ("dst_domain", &r.dst_domain),
            ("mtype", &r.mtype),
        ];
        let mut rule = format!(
            "guard.rules[{i}] = {}: action {}",
            or_unset(r.name.as_ref()),
            r.action
        );
        for (k, v) in fields {
            if let Some(v) = v {
                rule += &format!(", {k} {v}");
            }
        }
        if let Some(x) = r.rate {
            rule += &format!(", rate {x}");
        }
        if let Some(x) = r.burst {
            rule += &format!(", burst {x}");
        }
        out.push(rule);
    }
    out.extend([
        format!(
            "guard.offers.policy = {}",
            or_unset(c.guard.offers.policy.as_ref())
        ),
        format!(
            "guard.offers.redeem = {}",
            or_unset(c.guard.offers.redeem.as_ref())
        ),
        format!("card.virtual = {}", path(&c.card.virtual_store)),
        format!("card.reader = {}", or_unset(c.card.reader.as_ref())),
        format!("card.short_apdus = {}", or_unset(c.card.short_apdus)),
        format!("card.wait_secs = {}", c.card_wait().unwrap().as_secs_f64()),
        format!("card.clock_secs = {}", c.card_clock().unwrap().as_secs()),
        format!(
            "card.max_message = {}",
            c.card_limits().unwrap().max_message
        ),
        format!("card.ttp = {}", or_unset(c.card_ttp().unwrap())),
        format!("remote.listen = {}", or_unset(c.remote.listen.as_ref())),
        format!("remote.ca = {}", path(&c.remote.ca)),
        format!("remote.cert = {}", path(&c.remote.cert)),
        format!("remote.key = {}", path(&c.remote.key)),
        format!(
            "remote.danger_plaintext = {}",
            or_unset(c.remote.danger_plaintext)
        ),
        format!("remote.window = {}", or_unset(c.remote.window)),
        format!("remote.rate = {}", or_unset(c.remote.rate)),
        format!("remote.burst = {}", or_unset(c.remote.burst)),
        format!("remote.peers = {}", c.remote_checked().unwrap().len()),
        format!(
            "remote.nats = {}",
            or_unset(c.remote.nats.as_ref().map(|n| &n.url))
        ),
        format!("ttp = {}", if c.ttp.is_some() { "set" } else { "unset" }),
    ]);
    out
}

/// The example with the socket, state directory and domain of a test
/// daemon in `dir`, set in its `[host]` section.
fn example_in(dir: &Path) -> String {
    let example = std::fs::read_to_string(example_path()).unwrap();
    let (before, after) = example
        .split_once("\n[host]\n")
        .expect("a [host] section in the example");
    format!(
        "{before}\n[host]\nsocket = {:?}\nstate_dir = {:?}\ndomain = \"00112233445566778899aabb\"\n{after}",
        dir.join("host.sock"),
        dir.join("state"),
    )
}

/// What `tenet host --config` says when it starts with the example (in a
/// temporary directory), then stops it.
fn example_started() -> String {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("host.toml");
    std::fs::write(&config, example_in(dir.path())).unwrap();
    let mut child = tenet(&["host", "--config", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let running = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();
    assert!(running, "the daemon exited: {line}");
    line.trim_end()
        .replace(dir.path().to_str().unwrap(), "$DIR")
}

#[test]
fn the_example_config_is_accepted() {
    let out = stable("config_example.txt", || {
        let c = tenet_host::Config::load(&example_path())
            .unwrap_or_else(|e| panic!("docs/host.example.toml: {e}"));
        let mut lines = vec!["# docs/host.example.toml as the daemon reads it".to_owned()];
        lines.extend(summary(&c));
        lines.push(String::new());
        lines.push(
            "# tenet host --config with it, socket, state_dir and domain set in [host]".to_owned(),
        );
        lines.push(example_started());
        lines.join("\n") + "\n"
    });
    assert_all(&Vec::from_iter(check("config_example.txt", &out)));
}

/// Configs the daemon refuses, one a line: `CASE: TOML`, a line break in
/// the TOML written `\n`, `$DIR` a temporary directory; `#` starts a
/// comment line. Cases the parser accepts (refused later, at startup) keep
/// their socket and state in `$DIR`.
const REFUSED: &str = r#"
# The file.
syntax: [host\nsocket = "/x"
unknown_section: [hots]
top_level_key: socket = "/x"
section_not_a_table: host = 1
# [host]
host.unknown_key: [host]\nsokcet = "/x"
host.socket_not_a_string: [host]\nsocket = 1
host.socket_mode_for_others: [host]\nsocket_mode = "0666"
host.socket_mode_setuid: [host]\nsocket_mode = "4660"
host.socket_mode_not_octal: [host]\nsocket_mode = "rw"
host.socket_mode_integer: [host]\nsocket_mode = 660
host.domain_short: [host]\ndomain = "12"
host.domain_not_hex: [host]\ndomain = "zz112233445566778899aabb"
host.allow_taps_string: [host]\nallow_taps = "yes"
host.acquire_rate_zero: [host]\nacquire_rate = 0.0
host.acquire_rate_too_high: [host]\nacquire_rate = 2e6
host.acquire_rate_nan: [host]\nacquire_rate = nan
host.acquire_burst_zero: [host]\nacquire_burst = 0
host.acquire_burst_negative: [host]\nacquire_burst = -1
host.acquire_burst_float: [host]\nacquire_burst = 1.5
# [dispatch]
dispatch.unknown_key: [dispatch]\nmax_queue = 5
dispatch.per_destination_zero: [dispatch]\nper_destination = 0
dispatch.total_zero: [dispatch]\ntotal = 0
dispatch.total_negative: [dispatch]\ntotal = -5
dispatch.total_bytes_zero: [dispatch]\ntotal_bytes = 0
dispatch.tap_queue_zero: [dispatch]\ntap_queue = 0
dispatch.handlers_per_app_zero: [dispatch]\nhandlers_per_app = 0
dispatch.ttl_negative: [dispatch]\nttl_secs = -1.0
dispatch.ttl_zero: [dispatch]\nttl_secs = 0
dispatch.ttl_over_a_day: [dispatch]\nttl_secs = 86401
dispatch.ttl_nan: [dispatch]\nttl_secs = nan
dispatch.ttl_string: [dispatch]\nttl_secs = "soon"
dispatch.share_zero: [dispatch]\nper_sender_share = 0.0
dispatch.share_above_one: [dispatch]\nper_sender_share = 1.5
dispatch.share_below_one_message: [dispatch]\nper_destination_bytes = 100000
dispatch.per_destination_bytes_above_total: [dispatch]\nper_destination_bytes = 9000000\ntotal_bytes = 8000000
# [guard]
guard.unknown_key: [guard]\nrule = []
guard.rules_not_an_array: [guard]\nrules = 1
guard.rules.unknown_key: [[guard.rules]]\naction = "drop"\nport = 1
guard.rules.no_action: [[guard.rules]]\nname = "x"
guard.rules.bad_action: [[guard.rules]]\naction = "explode"
guard.rules.bad_ingress: [[guard.rules]]\ningress = "usb"\naction = "drop"
guard.rules.bad_src: [[guard.rules]]\nname = "r"\nsrc = "nope"\naction = "drop"
guard.rules.bad_dst_domain: [[guard.rules]]\ndst_domain = "12"\naction = "drop"
guard.rules.bad_mtype: [[guard.rules]]\nmtype = "no-such-type"\naction = "drop"
guard.rules.rate_limit_without_rate: [[guard.rules]]\naction = "rate-limit"
guard.rules.rate_limit_zero_rate: [[guard.rules]]\naction = "rate-limit"\nrate = 0.0
guard.offers.unknown_key: [guard.offers]\npolicies = ""
guard.offers.bad_policy: [guard.offers]\npolicy = "GIVE>=2:coffee"
guard.offers.bad_redeem: [guard.offers]\nredeem = "GIVE>=2:cacacacacacacacacacacaca:coffee"
# [card]
card.unknown_key: [card]\nvirtaul = "a.card"
card.virtual_and_reader: [card]\nvirtual = "a"\nreader = "b"
card.short_apdus_string: [card]\nshort_apdus = "no"
card.wait_negative: [card]\nwait_secs = -3.0
card.wait_over_an_hour: [card]\nwait_secs = 3601
card.clock_zero: [card]\nclock_secs = 0
card.clock_over_an_hour: [card]\nclock_secs = 3601
card.clock_negative: [card]\nclock_secs = -1
card.max_message_below_header: [card]\nmax_message = 33
card.max_message_above_max: [card]\nmax_message = 70000
card.ttp_without_virtual: [card]\nttp = "777777777777777777777777:0"
card.ttp_malformed: [card]\nvirtual = "a.card"\nttp = "nope"
card.virtual_missing: [host]\nsocket = "$DIR/host.sock"\nstate_dir = "$DIR/state"\n[card]\nvirtual = "$DIR/missing.card"
# [remote]
remote.unknown_key: [remote]\nlisten_on = "127.0.0.1:1"
remote.listen_without_tls: [remote]\nlisten = "127.0.0.1:1"
remote.peers_without_tls: [[remote.peers]]\naddress = "127.0.0.1:1"
remote.peers.address_without_port: [remote]\ndanger_plaintext = true\n[[remote.peers]]\naddress = "nonsense"
remote.peers.address_port_zero: [remote]\ndanger_plaintext = true\n[[remote.peers]]\naddress = "127.0.0.1:0"
remote.window_zero: [remote]\ndanger_plaintext = true\nwindow = 0
remote.rate_zero: [remote]\nrate = 0.0
remote.burst_negative: [remote]\nburst = -1.0
remote.rate_infinite: [remote]\nrate = inf
remote.danger_plaintext_string: [remote]\ndanger_plaintext = "yes"
remote.peers.unknown_key: [remote]\ndanger_plaintext = true\n[[remote.peers]]\naddress = "x:1"\nport = 1
remote.peers.no_address: [remote]\ndanger_plaintext = true\n[[remote.peers]]\ndomains = []
remote.peers.bad_domain: [remote]\ndanger_plaintext = true\n[[remote.peers]]\naddress = "x:1"\ndomains = ["zz"]
remote.peers.domains_not_an_array: [remote]\ndanger_plaintext = true\n[[remote.peers]]\naddress = "x:1"\ndomains = "b2b2b2b2b2b2b2b2b2b2b2b2"
remote.peers.bad_host: [remote]\ndanger_plaintext = true\n[[remote.peers]]\naddress = "x:1"\nhost = "zz:0"
remote.peers.host_not_a_host: [remote]\ndanger_plaintext = true\n[[remote.peers]]\naddress = "x:1"\nhost = "b2b2b2b2b2b2b2b2b2b2b2b2:7"
remote.peers.two_hosts_at_one_address: [remote]\ndanger_plaintext = true\n[[remote.peers]]\naddress = "x:1"\nhost = "b2b2b2b2b2b2b2b2b2b2b2b2:0"\n[[remote.peers]]\naddress = "x:1"\nhost = "c3c3c3c3c3c3c3c3c3c3c3c3:0"
remote.listen_without_port: [host]\nsocket = "$DIR/host.sock"\nstate_dir = "$DIR/state"\n[remote]\ndanger_plaintext = true\nlisten = "127.0.0.1"
remote.listen_port_out_of_range: [host]\nsocket = "$DIR/host.sock"\nstate_dir = "$DIR/state"\n[remote]\ndanger_plaintext = true\nlisten = "127.0.0.1:99999"
remote.tls_files_missing: [host]\nsocket = "$DIR/host.sock"\nstate_dir = "$DIR/state"\n[remote]\nlisten = "127.0.0.1:0"\nca = "$DIR/ca.pem"\ncert = "$DIR/h.pem"\nkey = "$DIR/h.key"
# [remote.nats]
remote.nats.unknown_key: [remote.nats]\nurl = "nats://n"\nsubject = "x"
remote.nats.no_url: [remote.nats]\ntoken = "t"
remote.nats.user_without_password: [remote.nats]\nurl = "nats://n"\nuser = "u"
remote.nats.two_logins: [remote.nats]\nurl = "nats://n"\ntoken = "t"\ncreds = "c"
remote.nats.tls_cert_without_key: [remote.nats]\nurl = "nats://n"\ntls_cert = "h.pem"
remote.nats.queue_empty: [remote.nats]\nurl = "nats://n"\nqueue = ""
remote.nats.queue_with_space: [remote.nats]\nurl = "nats://n"\nqueue = "a b"
remote.nats.prefix_empty_token: [remote.nats]\nurl = "nats://n"\nprefix = "a..b"
remote.nats.prefix_wildcard: [remote.nats]\nurl = "nats://n"\nprefix = "a.*"
# [ttp]
ttp.unknown_key: [ttp]\nkey = "k"\ncert = "c"\nca = "a"\ndb = "d"
ttp.no_key: [ttp]\ncert = "c"\nca = "a"
ttp.database_and_postgres: [ttp]\nkey = "k"\ncert = "c"\nca = "a"\ndatabase = "d"\npostgres = "host=x"
ttp.files_missing: [host]\nsocket = "$DIR/host.sock"\nstate_dir = "$DIR/state"\n[ttp]\nkey = "$DIR/ttp.key"\ncert = "$DIR/ttp.pem"\nca = "$DIR/ca.pem"
# [metrics]
metrics.unknown_key: [metrics]\naddress = "127.0.0.1:9464"
metrics.listen_not_a_string: [metrics]\nlisten = 9464
metrics.listen_host_name: [metrics]\nlisten = "localhost:9464"
metrics.listen_without_port: [metrics]\nlisten = "127.0.0.1"
metrics.listen_port_out_of_range: [metrics]\nlisten = "127.0.0.1:99999"
"#;

/// The cases of [`REFUSED`]: (case, TOML).
fn refused_cases() -> Vec<(&'static str, String)> {
    REFUSED
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (case, toml) = l.split_once(": ").expect("CASE: TOML");
            (case, toml.replace("\\n", "\n"))
        })
        .collect()
}

/// Lines on one line: a line break written `\n`.
fn one_line(s: &str) -> String {
    s.replace('\n', "\\n")
}

/// `cmd`'s output; fails (and kills it) if it runs longer than `limit`.
fn output_within(mut cmd: Command, limit: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            // SAFETY: a signal to our child, which has not been waited for
            // (the thread waiting for it has not returned).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("{cmd:?} still ran after {limit:?}");
        }
    }
}

/// `tenet host --config FILE` with the case's TOML in FILE: its error, on
/// one line, with the case.
fn refusal(case: &str, toml: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let config_text = toml.replace("$DIR", d);
    // A case the parser (the host's and the voucher application's checks)
    // accepts starts a daemon: only inside $DIR.
    if tenet_host::Config::parse(&config_text, Path::new("case.toml"))
        .is_ok_and(|c| tenet_voucher_app::validate(&c).is_ok())
    {
        assert!(
            toml.contains("socket = \"$DIR/") && toml.contains("state_dir = \"$DIR/"),
            "{case}: the parser accepts it; give it a socket and state_dir in $DIR"
        );
    }
    let config = dir.path().join("host.toml");
    std::fs::write(&config, config_text).unwrap();
    let out = output_within(
        tenet(&["host", "--config", config.to_str().unwrap()]),
        Duration::from_secs(30),
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{case}: tenet host did not refuse it: {}",
        text(&out.stderr)
    );
    assert!(out.stdout.is_empty(), "{case}: {}", text(&out.stdout));
    let err = text(&out.stderr).replace(d, "$DIR");
    format!("{case}: {} => {}", one_line(toml), one_line(err.trim_end()))
}

#[test]
fn configs_the_host_refuses_and_what_it_says() {
    let cases = refused_cases();
    let mut names = BTreeSet::new();
    for (case, _) in &cases {
        assert!(names.insert(case), "two cases named {case}");
    }
    assert!(cases.len() >= 25, "{} cases", cases.len());
    let out = stable("config_refused.txt", || {
        let mut lines: Vec<String> = cases
            .iter()
            .map(|(case, toml)| refusal(case, toml))
            .collect();
        lines.push(String::new());
        lines.join("\n")
    });
    assert_all(&Vec::from_iter(check("config_refused.txt", &out)));
}

/// Configs that together set every key: one valid config with all keys
/// but the alternatives to some of them, then those alternatives. Each is
/// (name, the build feature its validation needs, TOML).
const EVERY_KEY: &[(&str, Option<&str>, &str)] = &[
    (
        "all",
        None,
        r#"
[host]
socket = "/run/tenet/host.sock"
socket_mode = "0660"
state_dir = "/var/lib/tenet"
domain = "00112233445566778899aabb"
allow_taps = true
acquire_rate = 16.0
acquire_burst = 256

[dispatch]
per_destination = 1024
per_destination_bytes = 8388608
total = 65536
total_bytes = 67108864
per_sender_share = 0.5
ttl_secs = 30
tap_queue = 1024
handlers_per_app = 64

[[guard.rules]]
name = "limit-echo"
ingress = "remote"
src = "b2b2b2b2b2b2b2b2b2b2b2b2:0"
dst = "00112233445566778899aabb:0"
src_domain = "b2b2b2b2b2b2b2b2b2b2b2b2"
dst_domain = "00112233445566778899aabb"
mtype = "echo-request"
action = "rate-limit"
rate = 100.0
burst = 20

[guard.offers]
policy = "GIVE>=2:cacacacacacacacacacacaca:coffee,WANT<=1:cbcbcbcbcbcbcbcbcbcbcbcb:ticket"
redeem = "REDEEM<=2:cacacacacacacacacacacaca:coffee"

[card]
virtual = "/var/lib/tenet/card.store"
short_apdus = false
wait_secs = 10
clock_secs = 7
max_message = 65535
ttp = "777777777777777777777777:0"

[remote]
listen = "127.0.0.1:7001"
ca = "certs/ca.pem"
cert = "certs/a.pem"
key = "certs/a.key"
danger_plaintext = false
window = 1024
rate = 20000.0
burst = 40000.0

[[remote.peers]]
address = "127.0.0.1:7002"
domains = ["b2b2b2b2b2b2b2b2b2b2b2b2"]
host = "b2b2b2b2b2b2b2b2b2b2b2b2:0"

[remote.nats]
url = "tls://127.0.0.1:4222"
user = "a"
password = "secret"
tls_ca = "certs/ca.pem"
tls_cert = "certs/a.pem"
tls_key = "certs/a.key"
tls_required = true
prefix = "tenet"
queue = "ttp"

[ttp]
key = "ca/ttp-entity.key"
cert = "ca/ttp-entity.pem"
ca = "ca/ca.pem"
database = "/var/lib/tenet/ttp.sqlite"

[metrics]
listen = "127.0.0.1:9464"
"#,
    ),
    (
        "a card in a reader",
        Some("pcsc"),
        "[card]\nreader = \"Virtual PCD 00 00\"",
    ),
    (
        "NATS with a token",
        None,
        "[remote.nats]\nurl = \"nats://n\"\ntoken = \"t\"",
    ),
    (
        "NATS with a creds file",
        None,
        "[remote.nats]\nurl = \"nats://n\"\ncreds = \"a.creds\"",
    ),
    (
        "NATS with an NKey seed",
        None,
        "[remote.nats]\nurl = \"nats://n\"\nnkey_seed_file = \"a.nk\"",
    ),
    (
        "a TTP on PostgreSQL",
        Some("postgres"),
        "[ttp]\nkey = \"k\"\ncert = \"c\"\nca = \"a\"\npostgres = \"host=/run/postgresql\"",
    ),
];

/// Whether this build has the feature `name`.
fn has_feature(name: &str) -> bool {
    match name {
        "pcsc" => cfg!(feature = "pcsc"),
        "postgres" => cfg!(feature = "postgres"),
        other => panic!("unknown feature {other}"),
    }
}

/// The key paths of a TOML table and the type of each value; an array of
/// tables is written `name[]`.
fn key_paths(t: &toml::Table, prefix: &str, out: &mut Vec<(String, String)>) {
    for (k, v) in t {
        let path = format!("{prefix}{k}");
        match v {
            toml::Value::Table(sub) => key_paths(sub, &format!("{path}."), out),
            toml::Value::Array(items)
                if items.iter().all(toml::Value::is_table) && !items.is_empty() =>
            {
                for item in items {
                    key_paths(item.as_table().unwrap(), &format!("{path}[]."), out);
                }
            }
            toml::Value::Array(items) => out.push((
                path,
                format!(
                    "array of {}",
                    items.first().map_or("nothing", toml::Value::type_str)
                ),
            )),
            other => out.push((path, other.type_str().to_owned())),
        }
    }
}

/// `t` with the key at `path` renamed to `NAME_x` (in the first table of
/// an array of tables).
fn rename(t: &mut toml::Table, path: &[&str]) {
    let (first, rest) = path.split_first().unwrap();
    if rest.is_empty() {
        let v = t.remove(*first).unwrap();
        t.insert(format!("{first}_x"), v);
        return;
    }
    let next = match first.strip_suffix("[]") {
        Some(k) => &mut t.get_mut(k).unwrap().as_array_mut().unwrap()[0],
        None => t.get_mut(*first).unwrap(),
    };
    rename(next.as_table_mut().unwrap(), rest);
}

/// Every key the configs of [`EVERY_KEY`] set, each checked: the config
/// is accepted (the schema; and the values too where this build can
/// validate them), and the same config with that one key misspelt is
/// refused.
fn accepted_keys() -> String {
    let mut all = BTreeSet::new();
    for (name, feature, toml) in EVERY_KEY {
        let schema = toml::from_str::<tenet_host::Config>(toml);
        assert!(
            schema.is_ok(),
            "{name}: {:?}",
            schema.err().map(|e| e.to_string())
        );
        if feature.is_none_or(has_feature)
            && let Err(e) = tenet_host::Config::parse(toml, Path::new("every-key.toml"))
        {
            panic!("{name}: {e}");
        }
        let table: toml::Table = toml::from_str(toml).unwrap();
        let mut keys = Vec::new();
        key_paths(&table, "", &mut keys);
        for (path, kind) in keys {
            let mut misspelt = table.clone();
            let segments: Vec<&str> = path.split('.').collect();
            rename(&mut misspelt, &segments);
            let text = toml::to_string(&misspelt).unwrap();
            let refused = toml::from_str::<tenet_host::Config>(&text)
                .err()
                .map(|e| e.to_string());
            assert!(
                refused
                    .as_deref()
                    .is_some_and(|e| e.contains("unknown field")),
                "{name}: {path} misspelt is not refused as unknown: {refused:?}\n{text}"
            );
            all.insert(format!("{path}: {kind}"));
        }
    }
    // The example sets no key the others do not.
    let example: toml::Table =
        toml::from_str(&std::fs::read_to_string(example_path()).unwrap()).unwrap();
    let mut keys = Vec::new();
    key_paths(&example, "", &mut keys);
    for (path, kind) in keys {
        assert!(
            all.contains(&format!("{path}: {kind}")),
            "docs/host.example.toml sets {path} ({kind}), which no EVERY_KEY config sets"
        );
    }
    let mut out =
        String::from("# Every key of the host config: path (`[]`: an array of tables): type\n");
    for line in all {
        out += &line;
        out.push('\n');
    }
    out
}

#[test]
fn every_key_the_host_config_accepts() {
    let out = stable("config_keys.txt", accepted_keys);
    assert_all(&Vec::from_iter(check("config_keys.txt", &out)));
}
