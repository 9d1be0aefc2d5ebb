//! The TTP's decisions in PostgreSQL over TLS, with libpq's `sslmode` and
//! `sslrootcert`, against the test command's PostgreSQL on 127.0.0.1
//! (`TENET_TEST_POSTGRES_TLS`): it lets in TLS connections only, with a
//! certificate for `127.0.0.1` and `localhost` from a development root.
#![cfg(feature = "postgres")]

use std::path::Path;

use tenet_voucher::msg::{Admission, ExchangeId, Kind};
use tenet_voucher::ttp::DecisionStore;
use tenet_voucher_app::ttp::{PgDecisions, PgError};

/// The test PostgreSQL over TLS, `sslmode=verify-full` with its root.
fn tls_conn() -> String {
    std::env::var("TENET_TEST_POSTGRES_TLS").expect(
        "TENET_TEST_POSTGRES_TLS names the test PostgreSQL over TLS (scripts/test.sh starts one)",
    )
}

/// The test connection with `sslmode` or `sslrootcert` given again (the
/// last one wins).
fn with(keys: &str) -> String {
    format!("{} {keys}", tls_conn())
}

fn connect(conn: &str) -> Result<PgDecisions, PgError> {
    PgDecisions::connect(conn)
}

fn refused(conn: &str) -> String {
    match connect(conn) {
        Ok(_) => panic!("connected with {conn}"),
        Err(e) => e.to_string(),
    }
}

fn fresh_id() -> ExchangeId {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).unwrap();
    ExchangeId(b)
}

fn admission(id: ExchangeId, kind: Kind, n: u8) -> Admission {
    Admission {
        kind,
        id,
        signature: vec![n; 8],
        certificate: vec![0x30],
    }
}

/// A root certificate the test server's certificate does not chain to.
fn other_root(dir: &Path) -> String {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let path = dir.join("other-root.pem");
    std::fs::write(&path, params.self_signed(&key).unwrap().pem()).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn a_decision_is_made_over_tls_checked_against_the_root() {
    let id = fresh_id();
    let first = connect(&with("sslmode=verify-full"))
        .unwrap()
        .decide(&id, &mut || admission(id, Kind::Resolve, 1))
        .unwrap();
    let second = connect(&with("sslmode=verify-full"))
        .unwrap()
        .decide(&id, &mut || admission(id, Kind::Abort, 2))
        .unwrap();
    assert_eq!(first, second, "the first decision stands");
    assert_eq!(second.kind, Kind::Resolve);
}

#[test]
fn a_server_certificate_from_another_root_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = other_root(dir.path());
    // A named root is checked in every mode that uses TLS, as in libpq.
    for mode in ["verify-full", "verify-ca", "require", "prefer"] {
        let e = refused(&with(&format!("sslmode={mode} sslrootcert={root}")));
        assert!(
            e.contains("the server's TLS certificate is refused")
                && e.contains(&format!("does not chain to the root certificate in {root}")),
            "{mode}: {e}"
        );
    }
}

#[test]
fn verify_full_checks_the_host_name_and_verify_ca_does_not() {
    // The address stays 127.0.0.1; the name checked is `host`.
    let conn = tls_conn();
    assert!(conn.starts_with("host=127.0.0.1 "), "{conn}");
    let elsewhere = conn.replacen("host=127.0.0.1", "host=db.invalid hostaddr=127.0.0.1", 1);
    let e = refused(&format!("{elsewhere} sslmode=verify-full"));
    assert!(
        e.contains("does not name the host") && e.contains("db.invalid"),
        "{e}"
    );
    let id = fresh_id();
    connect(&format!("{elsewhere} sslmode=verify-ca"))
        .unwrap()
        .decide(&id, &mut || admission(id, Kind::Abort, 1))
        .unwrap();
}

#[test]
fn require_without_a_root_encrypts_without_checking_the_server() {
    let id = fresh_id();
    connect(&with("sslmode=require sslrootcert=''"))
        .unwrap()
        .decide(&id, &mut || admission(id, Kind::Abort, 1))
        .unwrap();
}

/// So the cases above went through TLS: the server refuses a link without.
#[test]
fn the_test_server_lets_in_tls_connections_only() {
    let e = refused(&with("sslmode=disable"));
    assert!(e.contains("no encryption"), "{e}");
    // And only with this run's password: any local user reaches the port.
    let e = refused(&with("password=wrong"));
    assert!(e.contains("password authentication failed"), "{e}");
}

#[test]
fn a_missing_or_unusable_root_certificate_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let e = refused(&with(&format!("sslrootcert={}", missing.display())));
    assert!(
        e.contains(&format!("sslrootcert {}", missing.display())) && e.contains("No such file"),
        "{e}"
    );

    let text = dir.path().join("text.pem");
    std::fs::write(&text, "not a certificate\n").unwrap();
    let e = refused(&with(&format!("sslrootcert={}", text.display())));
    assert!(e.contains("no certificate in the file"), "{e}");

    let garbage = dir.path().join("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let e = refused(&with(&format!("sslrootcert={}", garbage.display())));
    assert!(e.contains("not a usable certificate"), "{e}");

    for mode in ["verify-ca", "verify-full"] {
        let e = refused(&with(&format!("sslmode={mode} sslrootcert=''")));
        assert!(
            e.contains(&format!("sslmode={mode} needs sslrootcert=FILE")),
            "{e}"
        );
    }
}
