//! Two hosts in one process linked by a `MemoryLink`, no socket between
//! them: the same link protocol as over TLS, and the same identity rule —
//! the certificate each end is given must name the other host's domains.

mod support;

use std::path::Path;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use support::{WAIT, echo_eventually};
use tenet_client::Capability;
use tenet_host::transport::MemoryLink;
use tenet_host::{Config, HostBuilder, HostError};
use tenet_pki::{HostFiles, ensure_ca, issue_host};
use tenet_proto::Domain;

fn config(dir: &Path, name: &str, d: Domain, files: &HostFiles) -> Config {
    let text = format!(
        "[host]\nsocket = {:?}\nstate_dir = {:?}\ndomain = \"{d}\"\n\
         [remote]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
        dir.join(format!("{name}.sock")),
        dir.join(format!("{name}-state")),
        files.ca,
        files.cert,
        files.key,
    );
    Config::parse(&text, Path::new(name)).unwrap()
}

fn cert(files: &HostFiles) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(&files.cert).unwrap()
}

#[tokio::test]
async fn hosts_linked_in_memory_route_to_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    ensure_ca(&ca, "test CA").unwrap();
    let (a, b) = (Domain::new([0xa1; 12]), Domain::new([0xb2; 12]));
    let (fa, fb) = (
        issue_host(&ca, "a", &[a]).unwrap(),
        issue_host(&ca, "b", &[b]).unwrap(),
    );
    let (ca_cfg, cb_cfg) = (
        config(dir.path(), "a", a, &fa),
        config(dir.path(), "b", b, &fb),
    );
    let (la, lb) = MemoryLink::pair(cert(&fa), cert(&fb));
    let ha = HostBuilder::new(&ca_cfg)
        .transport(Box::new(la))
        .start()
        .await
        .unwrap();
    let hb = HostBuilder::new(&cb_cfg)
        .transport(Box::new(lb))
        .start()
        .await
        .unwrap();
    let mut app = Capability::acquire(ha.socket_path()).await.unwrap();
    echo_eventually(&mut app, b.owner()).await;
    let mut other = Capability::acquire(hb.socket_path()).await.unwrap();
    echo_eventually(&mut other, a.owner()).await;
    assert_eq!(ha.remote_stats().unwrap().links_up, 1);
    assert_eq!(hb.remote_stats().unwrap().links_up, 1);
    ha.shutdown().await;
    hb.shutdown().await;
}

/// A pair made with a certificate of a third host for B: A refuses B's
/// hello (the certificate does not name B's domain), as it would over TLS.
#[tokio::test]
async fn a_memory_link_with_another_hosts_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    ensure_ca(&ca, "test CA").unwrap();
    let (a, b, c) = (
        Domain::new([0xa1; 12]),
        Domain::new([0xb2; 12]),
        Domain::new([0xc3; 12]),
    );
    let fa = issue_host(&ca, "a", &[a]).unwrap();
    let fb = issue_host(&ca, "b", &[b]).unwrap();
    let fc = issue_host(&ca, "c", &[c]).unwrap();
    let (ca_cfg, cb_cfg) = (
        config(dir.path(), "a", a, &fa),
        config(dir.path(), "b", b, &fb),
    );
    let (la, lb) = MemoryLink::pair(cert(&fa), cert(&fc));
    let ha = HostBuilder::new(&ca_cfg)
        .transport(Box::new(la))
        .start()
        .await
        .unwrap();
    let hb = HostBuilder::new(&cb_cfg)
        .transport(Box::new(lb))
        .start()
        .await
        .unwrap();
    // A dials, B answers with its hello; A refuses it and closes.
    let deadline = tokio::time::Instant::now() + WAIT;
    while ha.remote_stats().unwrap().links_refused == 0 {
        assert!(tokio::time::Instant::now() < deadline, "never refused");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(ha.remote_stats().unwrap().links_up, 0);
    let mut app = Capability::acquire(ha.socket_path()).await.unwrap();
    assert!(
        app.echo(b.owner(), b"", std::time::Duration::from_millis(300))
            .await
            .is_err()
    );
    ha.shutdown().await;
    hb.shutdown().await;
}

/// A host without its TLS identity cannot check a memory link's
/// certificate: it does not start.
#[tokio::test]
async fn a_memory_link_needs_the_hosts_identity() {
    let dir = tempfile::tempdir().unwrap();
    let a = Domain::new([0xa1; 12]);
    let text = format!(
        "[host]\nsocket = {:?}\nstate_dir = {:?}\ndomain = \"{a}\"\n",
        dir.path().join("a.sock"),
        dir.path().join("a-state"),
    );
    let cfg = Config::parse(&text, Path::new("a")).unwrap();
    let ca = dir.path().join("ca");
    ensure_ca(&ca, "test CA").unwrap();
    let f = issue_host(&ca, "x", &[a]).unwrap();
    let (la, _lb) = MemoryLink::pair(cert(&f), cert(&f));
    let err = HostBuilder::new(&cfg)
        .transport(Box::new(la))
        .start()
        .await
        .err()
        .expect("refused");
    assert!(matches!(err, HostError::Remote(_)), "{err}");
    assert!(
        err.to_string().contains("[remote] ca, cert and key"),
        "{err}"
    );
    assert!(!dir.path().join("a.sock").exists(), "no socket left behind");
}
