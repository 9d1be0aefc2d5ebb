//! Hostile input into the host's own decoder: the configuration text
//! (`Config::parse`: TOML and every check behind it: guard rules, ids,
//! ranges; the offer policy is kept as text here and parsed by the voucher
//! application, whose properties are in tenet-voucher's `tests/hostile.rs`).
//!
//! The property feeds mutated generated configurations, the shipped
//! `docs/host.example.toml`, TOML-token soup and random text (the harness:
//! the tenet-hostile crate) and asserts that `Config::parse` never panics,
//! that every valid configuration parses, and that parsing `n` bytes
//! allocates at most its bound `a·n + c`, counted by the counting global
//! allocator this binary installs. The bound and why it holds are in
//! `docs/hostile-input.md`, with where the other crates' properties live.
//!
//! Cases per property: `TENET_HOSTILE_CASES` (default 2000). A failure
//! prints the shrunk input; `PROPTEST_RNG_SEED=N` fixes a run's random seed.

use std::fmt::Write as _;
use std::path::Path;

use proptest::prelude::*;
use proptest::sample::select;
use tenet_host::Config;
use tenet_hostile::{Bound, Probe, TextInput, cases, check, hostile_text, shape};
use tenet_proto::{Domain, EntityId, Mtype, Port};

tenet_hostile::install_counting_allocator!();

/// Fragments of TOML and of this project's configuration.
const TOML_TOKENS: &[&[u8]] = &[
    b"[",
    b"]",
    b"[[",
    b"]]",
    b"=",
    b" = ",
    b"\"",
    b"'",
    b"\"\"\"",
    b"'''",
    b"\n",
    b"\r\n",
    b"#",
    b".",
    b",",
    b"{",
    b"}",
    b"{ a = 1 }",
    b"[ 1, [2, [3]] ]",
    b"\\",
    b"\\u0000",
    b"\\UFFFFFFFF",
    b"\t",
    b"true",
    b"1e999",
    b"-1e-999",
    b"nan",
    b"-inf",
    b"+inf",
    b"0",
    b"-1",
    b"9223372036854775808",
    b"18446744073709551616",
    b"0x7fff",
    b"0o777",
    b"1_000",
    b"1979-05-27T07:32:00Z",
    b"[host]\n",
    b"[dispatch]\n",
    b"[card]\n",
    b"[remote]\n",
    b"[ttp]\n",
    b"[guard.offers]\n",
    b"[[guard.rules]]\naction = \"drop\"\n",
    b"[[remote.peers]]\naddress = \"a:1\"\n",
    b"[remote.nats]\nurl = \"nats://x\"\n",
    b"danger_plaintext = true\n",
    b"domain = \"00112233445566778899aabb\"\n",
    b"ttl_secs = ",
    b"wait_secs = ",
    b"max_message = ",
    b"rate = ",
    b"policy = \"GIVE>=1:cacacacacacacacacacacaca:x,WANT<=1:cacacacacacacacacacacaca:y\"\n",
    b"a.b.c.d.e.f.g = 1\n",
    b"\xc3\xa9",
    b"\xff",
];

// ---------------------------------------------------------------------------
// Valid values
// ---------------------------------------------------------------------------

// Ids as in tenet-proto's tests/hostile.rs.

fn domain() -> BoxedStrategy<Domain> {
    prop_oneof![
        any::<[u8; 12]>().prop_map(Domain::new),
        select(&[0u8, 0xc0, 0xff][..]).prop_map(|b| Domain::new([b; 12])),
    ]
    .boxed()
}

fn entity() -> BoxedStrategy<EntityId> {
    prop_oneof![
        any::<[u8; 16]>().prop_map(EntityId::from_array),
        (domain(), 0u32..4).prop_map(|(d, p)| EntityId::new(d, Port::new(p))),
    ]
    .boxed()
}

/// An offer policy's text, `GIVE>=N:ISSUER:PROMISE,WANT<=M:ISSUER:PROMISE`
/// as the voucher application's `Policy` prints it (quantities up to the
/// cap of an amount, 2^53 - 1). The host keeps it as text.
fn policy_text() -> BoxedStrategy<String> {
    let promise = "[a-z0-9]([a-z0-9 ]{0,28}[a-z0-9])?";
    let amount = (0..=(1u64 << 53) - 1, domain(), promise);
    (amount.clone(), amount)
        .prop_map(|((gq, gi, gp), (wq, wi, wp))| {
            format!("GIVE>={gq}:{gi}:{gp},WANT<={wq}:{wi}:{wp}")
        })
        .boxed()
}

/// A configuration every part of which is valid (so the whole parses):
/// each section present or not, with values drawn from their valid ranges.
fn config_text() -> BoxedStrategy<String> {
    let host = (
        proptest::option::of(select(&["0660", "0600", "0640", "0700"][..])),
        proptest::option::of(domain()),
        proptest::option::of(any::<bool>()),
        proptest::option::of("/[a-z]{1,8}/[a-z]{1,8}"),
    )
        .prop_map(|(mode, dom, taps, socket)| {
            let mut s = String::from("[host]\n");
            if let Some(m) = mode {
                writeln!(s, "socket_mode = \"{m}\"").unwrap();
            }
            if let Some(d) = dom {
                writeln!(s, "domain = \"{d}\"").unwrap();
            }
            if let Some(t) = taps {
                writeln!(s, "allow_taps = {t}").unwrap();
            }
            if let Some(p) = socket {
                writeln!(s, "socket = \"{p}\"").unwrap();
            }
            s
        });
    let dispatch = (
        proptest::option::of(1usize..100_000),
        proptest::option::of(1usize..1_000_000),
        proptest::option::of(0.001f64..86_400.0),
        proptest::option::of(1usize..5000),
        proptest::option::of(1usize..100),
    )
        .prop_map(|(per, total, ttl, tap, handlers)| {
            let mut s = String::from("[dispatch]\n");
            for (k, v) in [
                ("per_destination", per),
                ("total", total),
                ("tap_queue", tap),
                ("handlers_per_app", handlers),
            ] {
                if let Some(v) = v {
                    writeln!(s, "{k} = {v}").unwrap();
                }
            }
            if let Some(t) = ttl {
                writeln!(s, "ttl_secs = {t:?}").unwrap();
            }
            s
        });
    let names: Vec<&'static str> = Mtype::registry().map(|(_, n)| n).collect();
    let rule = (
        proptest::option::of("[a-z-]{1,12}"),
        proptest::option::of(select(&["app", "card", "remote", "internal", "any"][..])),
        proptest::option::of(entity()),
        proptest::option::of(domain()),
        proptest::option::of(prop_oneof![
            select(names),
            any::<u16>().prop_map(|m| format!("{m:#06x}").leak() as &str)
        ]),
        prop_oneof![
            select(&["allow", "drop", "log"][..]).prop_map(|a| (a, None, None)),
            (0.01f64..1e6, proptest::option::of(1u32..10_000)).prop_map(|(r, b)| (
                "rate-limit",
                Some(r),
                b
            )),
        ],
    )
        .prop_map(
            |(name, ingress, src, dst_domain, mtype, (action, rate, burst))| {
                let mut s = String::from("[[guard.rules]]\n");
                if let Some(n) = name {
                    writeln!(s, "name = \"{n}\"").unwrap();
                }
                if let Some(i) = ingress {
                    writeln!(s, "ingress = \"{i}\"").unwrap();
                }
                if let Some(e) = src {
                    writeln!(s, "src = \"{e}\"").unwrap();
                }
                if let Some(d) = dst_domain {
                    writeln!(s, "dst_domain = \"{d}\"").unwrap();
                }
                if let Some(m) = mtype {
                    writeln!(s, "mtype = \"{m}\"").unwrap();
                }
                writeln!(s, "action = \"{action}\"").unwrap();
                if let Some(r) = rate {
                    writeln!(s, "rate = {r:?}").unwrap();
                }
                if let Some(b) = burst {
                    writeln!(s, "burst = {b}").unwrap();
                }
                s
            },
        );
    let card = (
        proptest::option::of("/[a-z]{1,8}/[a-z]{1,8}"),
        proptest::option::of(0.0f64..3600.0),
        proptest::option::of(34usize..=65_535),
        proptest::option::of(entity()),
        proptest::option::of(any::<bool>()),
    )
        .prop_map(|(virt, wait, max, ttp, short)| {
            let mut s = String::from("[card]\n");
            // `ttp` names the TTP of a virtual card only.
            let ttp = ttp.filter(|_| virt.is_some());
            if let Some(v) = virt {
                writeln!(s, "virtual = \"{v}\"").unwrap();
            }
            if let Some(w) = wait {
                writeln!(s, "wait_secs = {w:?}").unwrap();
            }
            if let Some(m) = max {
                writeln!(s, "max_message = {m}").unwrap();
            }
            if let Some(t) = ttp {
                writeln!(s, "ttp = \"{t}\"").unwrap();
            }
            if let Some(b) = short {
                writeln!(s, "short_apdus = {b}").unwrap();
            }
            s
        });
    let peer = (
        "[a-z]{1,8}:[1-9][0-9]{0,3}",
        proptest::collection::vec(domain(), 0..3),
    );
    let nats = (
        "nats://[a-z]{1,8}:[0-9]{1,4}",
        proptest::option::of("[a-z0-9]{1,12}"),
        proptest::option::of("[a-z]{1,8}"),
    );
    let remote = (
        proptest::option::of(1usize..5000),
        proptest::option::of(0.1f64..1e5),
        proptest::option::of(0.1f64..1e5),
        proptest::collection::vec(peer, 0..3),
        proptest::option::of(nats),
    )
        .prop_map(|(window, rate, burst, peers, nats)| {
            let mut s = String::from("[remote]\ndanger_plaintext = true\n");
            if let Some(w) = window {
                writeln!(s, "window = {w}").unwrap();
            }
            if let Some(r) = rate {
                writeln!(s, "rate = {r:?}").unwrap();
            }
            if let Some(b) = burst {
                writeln!(s, "burst = {b:?}").unwrap();
            }
            for (address, domains) in peers {
                let list: Vec<String> = domains.iter().map(|d| format!("\"{d}\"")).collect();
                write!(
                    s,
                    "[[remote.peers]]\naddress = \"{address}\"\ndomains = [{}]\n",
                    list.join(", ")
                )
                .unwrap();
            }
            if let Some((url, token, prefix)) = nats {
                writeln!(s, "[remote.nats]\nurl = \"{url}\"").unwrap();
                if let Some(t) = token {
                    writeln!(s, "token = \"{t}\"").unwrap();
                }
                if let Some(p) = prefix {
                    writeln!(s, "prefix = \"{p}\"").unwrap();
                }
            }
            s
        });
    let ttp = proptest::option::of(proptest::option::of("/[a-z]{1,8}\\.sqlite")).prop_map(|t| {
        t.map(|db| {
            let mut s = String::from("[ttp]\nkey = \"k.pem\"\ncert = \"c.pem\"\nca = \"ca.pem\"\n");
            if let Some(d) = db {
                writeln!(s, "database = \"{d}\"").unwrap();
            }
            s
        })
        .unwrap_or_default()
    });
    (
        proptest::option::of(host),
        proptest::option::of(dispatch),
        proptest::collection::vec(rule, 0..3),
        proptest::option::of(policy_text()),
        proptest::option::of(card),
        proptest::option::of(remote),
        ttp,
    )
        .prop_map(|(host, dispatch, rules, policy, card, remote, ttp)| {
            let mut s = String::new();
            s.push_str(&host.unwrap_or_default());
            s.push_str(&dispatch.unwrap_or_default());
            for r in rules {
                s.push_str(&r);
            }
            if let Some(p) = policy {
                writeln!(s, "[guard.offers]\npolicy = \"{p}\"").unwrap();
            }
            s.push_str(&card.unwrap_or_default());
            s.push_str(&remote.unwrap_or_default());
            s.push_str(&ttp);
            s
        })
        .boxed()
}

// ---------------------------------------------------------------------------
// The configuration
// ---------------------------------------------------------------------------

/// The shipped example configuration.
const EXAMPLE_CONFIG: &str = include_str!("../../../docs/host.example.toml");

/// The TOML parser (a third-party crate) lexes the text, builds a document
/// tree (tables, keys, values with their spans) and deserializes it; it
/// also records an error for every token it cannot place. Each token, node
/// and error stems from at least one input byte and costs a bounded number
/// of bytes, so the total is linear; nesting is limited by the parser (80
/// levels). The factor is measured, not derived: the worst shape found (an
/// unclosed array followed by closing braces, one error each) costs about
/// 400 bytes per input byte at every size from 1 KB to 200 KB; the bound
/// leaves a factor 2.5 above that.
const CONFIG: Bound = Bound::new(1024, 64 * 1024);

/// Hostile text into `Config::parse`: no panic, allocation within the
/// bound, every generated valid configuration and the shipped example
/// parse.
#[test]
fn config_parse() {
    let seeds = prop_oneof![
        4 => config_text(),
        1 => Just(EXAMPLE_CONFIG.to_owned()),
    ]
    .boxed();
    let probe = Probe::new("Config::parse", CONFIG);
    let path = Path::new("hostile.toml");
    let strategy = prop_oneof![
        9 => hostile_text(seeds, TOML_TOKENS),
        1 => "(\\[|\\]|=|\"|'|\\{|\\}|,|\\.|\n|[a-z_]{1,8}|[0-9]{1,3}| ){0,200}"
            .prop_map(|text| TextInput { text, pristine: false }),
    ];
    check(strategy, |input| {
        let out = probe.run(input.text.len(), || Config::parse(&input.text, path))?;
        if input.pristine {
            prop_assert!(
                out.is_ok(),
                "a valid configuration was refused: {:?}\n{}",
                out.err(),
                input.text
            );
        }
        Ok(())
    });
    probe.finish(cases());
}

// ---------------------------------------------------------------------------
// Worst-case shapes
// ---------------------------------------------------------------------------

/// Large configurations of the shapes that cost the TOML parser most per
/// byte (the measured factor of [`CONFIG`]).
#[test]
fn worst_case_shapes_stay_within_the_bounds() {
    let path = Path::new("shape.toml");
    let toml_shapes: Vec<(&str, String)> = vec![
        (
            "unknown top-level keys",
            (0..6000).map(|i| format!("k{i}=1\n")).collect(),
        ),
        (
            "many tables",
            (0..6000).map(|i| format!("[t{i}]\n")).collect(),
        ),
        (
            "many arrays of tables",
            "[[remote.peers]]\naddress=\"a\"\n".repeat(2000),
        ),
        ("long array", format!("x=[{}]", "1,".repeat(30_000))),
        (
            "long inline table",
            format!(
                "x={{{}}}",
                (0..6000).map(|i| format!("a{i}=1,")).collect::<String>()
            ),
        ),
        (
            "deep arrays",
            format!("x={}{}", "[".repeat(5000), "]".repeat(5000)),
        ),
        ("deep inline tables", format!("x={}", "{a=".repeat(5000))),
        (
            "long dotted key",
            format!("{}=1", vec!["a"; 20_000].join(".")),
        ),
        (
            "escapes",
            format!("[host]\nsocket=\"{}\"", "\\u0041".repeat(10_000)),
        ),
        (
            "long bad line",
            format!("[host]\nsocket_mode = {}", "@".repeat(60_000)),
        ),
        (
            "many rules",
            "[[guard.rules]]\naction=\"log\"\nmtype=\"echo-request\"\n".repeat(1200),
        ),
        (
            "array of empty arrays",
            format!("x=[{}]", "[],".repeat(20_000)),
        ),
        (
            "array of empty tables",
            format!("x=[{}]", "{},".repeat(20_000)),
        ),
        (
            "array of one-element arrays",
            format!("x=[{}]", "[1],".repeat(15_000)),
        ),
        (
            "dotted keys",
            (0..6000).map(|i| format!("a.b{i}=1\n")).collect(),
        ),
        (
            "nested table headers",
            (0..3000).map(|i| format!("[a.b.c{i}]\n")).collect(),
        ),
        (
            "array of strings",
            format!("x=[{}]", "\"\",".repeat(20_000)),
        ),
        (
            "inline table of arrays",
            format!(
                "x={{{}}}",
                (0..5000).map(|i| format!("a{i}=[],")).collect::<String>()
            ),
        ),
        (
            "closing braces in an array",
            format!("a=[{}", "}".repeat(60_000)),
        ),
        ("commas", ",".repeat(60_000)),
        ("newlines", "\n".repeat(60_000)),
        ("dots", "a=1\n".to_owned() + &".".repeat(60_000)),
        ("brackets", "[".repeat(60_000)),
        ("quotes", "\"".repeat(60_000)),
        ("equals", "=".repeat(60_000)),
        (
            "deep dotted table headers",
            (0..2000)
                .map(|i| format!("[{}.k{i}]\n", ["a"; 10].join(".")))
                .collect(),
        ),
    ];
    for (name, text) in &toml_shapes {
        shape(
            &format!("Config::parse, {name}"),
            CONFIG,
            text.as_bytes(),
            |b| Config::parse(std::str::from_utf8(b).unwrap(), path),
        );
    }
}
