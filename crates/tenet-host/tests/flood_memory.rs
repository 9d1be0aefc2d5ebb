//! Many apps that acquire an id and never read, flooded with large messages
//! by one other app: the daemon holds no more than its byte budget
//! (Security II, item 1: 64 such apps, 1,024 messages of 60 kB each, once
//! made a daemon hold 3.8 GB).
//!
//! Scaled to a test: 64 apps, 48 messages of 60 kB offered to each (184 MB
//! in all) on the shipped `[dispatch]` defaults. The daemon runs in this
//! test's process (alone in this test binary), so the process's resident
//! memory is the daemon's plus the apps' small buffers; it is compared with
//! the budget, never with a figure of this machine.

use tenet_client::{Capability, ClientError};
use tenet_host::{Config, HostHandle};
use tenet_proto::{EntityId, Mtype};

mod support;
use support::{WAIT, recv};

/// Apps that never read.
const APPS: usize = 64;
/// Messages offered to each.
const PER_APP: usize = 48;
/// Bytes of each message's param.
const PARAM: usize = 60_000;
/// What the daemon may hold per connection outside the dispatch table: an
/// output buffer of one write batch (64 KiB) plus one message, and a read
/// buffer, with allocator slack.
const PER_CONNECTION: u64 = 256 << 10;
/// The rest of the process's growth that is no message: allocator and
/// runtime bookkeeping.
const SLACK: u64 = 16 << 20;

/// `name` from `/proc/self/status`, in bytes.
fn proc_status(name: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /proc/self/status"));
    kib * 1024
}

async fn host(dir: &std::path::Path) -> HostHandle {
    let mut cfg = Config::default();
    cfg.host.socket = Some(dir.join("host.sock"));
    cfg.host.state_dir = Some(dir.join("state"));
    tenet_host::start(&cfg).await.unwrap()
}

#[tokio::test]
async fn apps_that_never_read_cannot_make_the_daemon_hold_more_than_its_budget() {
    let dir = tempfile::tempdir().unwrap();
    let h = host(dir.path()).await;
    let limits = Config::default().limits().unwrap();
    let mut idle = Vec::new();
    for _ in 0..APPS {
        idle.push(Capability::acquire(h.socket_path()).await.unwrap());
    }
    let ids: Vec<EntityId> = idle.iter().map(Capability::id).collect();
    let mut flooder = Capability::acquire(h.socket_path()).await.unwrap();
    let mut honest = Capability::acquire(h.socket_path()).await.unwrap();
    flooder.echo(h.host_id(), b"", WAIT).await.unwrap();
    let rss_before = proc_status("VmRSS:");

    let mut accepted = vec![0usize; APPS];
    let mut refused = 0usize;
    for k in 0..PER_APP {
        for (i, dst) in ids.iter().enumerate() {
            let mut p = vec![0u8; PARAM];
            p[..8].copy_from_slice(&(k as u64).to_be_bytes());
            match flooder.send(*dst, Mtype(0x8001), p).await {
                Ok(()) => accepted[i] += 1,
                Err(ClientError::QueueFull(_)) => refused += 1,
                Err(e) => panic!("{e}"),
            }
        }
    }
    let hwm = proc_status("VmHWM:");
    let held = h.held();
    let stats = h.stats();
    let offered = (APPS * PER_APP * (PARAM + tenet_proto::HEADER_LEN)) as u64;
    let grown = hwm.saturating_sub(rss_before);
    let allowed = limits.total_bytes as u64 + (APPS as u64 + 2) * PER_CONNECTION + SLACK;
    eprintln!(
        "offered {offered} bytes; accepted {}, refused {refused}; table holds {held:?}, \
         peak {} bytes (budget {}); process grew {grown} bytes at most (allowed {allowed})",
        accepted.iter().sum::<usize>(),
        stats.peak_bytes,
        limits.total_bytes,
    );
    assert!(refused > 0, "the flood went beyond the budget");
    assert!(
        held.bytes <= limits.total_bytes && stats.peak_bytes <= limits.total_bytes as u64,
        "the table held more than its budget: {held:?}, peak {}",
        stats.peak_bytes
    );
    assert!(
        stats.peak_bytes <= limits.per_sender_share.of(limits.total_bytes) as u64,
        "one sender held more than its share of the table: peak {}",
        stats.peak_bytes
    );
    assert!(
        grown <= allowed,
        "the process grew by {grown} bytes, beyond the budget of {} plus {} per \
         connection plus {SLACK}",
        limits.total_bytes,
        PER_CONNECTION
    );

    // Others still get through, to a flooded app too: the flooder holds at
    // most its share of the table and of each destination.
    honest
        .send(ids[0], Mtype(0x8002), vec![1; PARAM])
        .await
        .expect("another sender still gets through");
    let mut other = Capability::acquire(h.socket_path()).await.unwrap();
    honest
        .send(other.id(), Mtype(0x8002), vec![2; PARAM])
        .await
        .unwrap();
    assert_eq!(recv(&mut other).await.param, vec![2; PARAM]);

    // Nothing accepted is lost: each app reads what was accepted for it, in
    // order (the honest message to the first app comes in its turn between
    // them); then the table holds nothing.
    for (i, app) in idle.iter_mut().enumerate() {
        let mut next = 0u64;
        let expected = accepted[i] + usize::from(i == 0);
        for _ in 0..expected {
            let m = recv(app).await;
            if m.src() == honest.id() {
                assert_eq!(i, 0);
                continue;
            }
            assert_eq!(m.src(), flooder.id());
            assert_eq!(u64::from_be_bytes(m.param[..8].try_into().unwrap()), next);
            next += 1;
        }
        assert_eq!(next, accepted[i] as u64);
    }
    let held = h.held();
    assert_eq!((held.messages, held.bytes), (0, 0), "every byte given back");
    h.shutdown().await;
}
