//! The real daemon on a temporary socket, with several clients.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tenet_client::{Capability, ClientError, Incoming};
use tenet_host::{Config, HostHandle};
use tenet_proto::app::{ClientFrame, DaemonFrame, ErrorCode, SubscriptionId};
use tenet_proto::notice::{Refused, Undeliverable, UndeliverableReason};
use tenet_proto::{Codec, EntityId, Filter, Message, Mtype, Port};
use tokio::io::AsyncWriteExt;

mod support;
use support::{Raw, WAIT, error_code, recv};

struct TestHost {
    dir: tempfile::TempDir,
    handle: Option<HostHandle>,
}

impl TestHost {
    async fn start(tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let handle = start_in(dir.path(), tweak).await;
        Self {
            dir,
            handle: Some(handle),
        }
    }

    fn socket(&self) -> PathBuf {
        self.handle.as_ref().unwrap().socket_path().to_owned()
    }

    fn host_id(&self) -> EntityId {
        self.handle.as_ref().unwrap().host_id()
    }

    async fn app(&self) -> Capability {
        Capability::acquire(self.socket()).await.unwrap()
    }

    async fn restart(&mut self) {
        self.handle.take().unwrap().shutdown().await;
        self.handle = Some(start_in(self.dir.path(), |_| {}).await);
    }
}

async fn start_in(dir: &Path, tweak: impl FnOnce(&mut Config)) -> HostHandle {
    let mut cfg = Config::default();
    cfg.host.socket = Some(dir.join("run/host.sock"));
    cfg.host.state_dir = Some(dir.join("state"));
    tweak(&mut cfg);
    tenet_host::start(&cfg).await.unwrap()
}

#[tokio::test]
async fn apps_exchange_messages_through_the_daemon() {
    let h = TestHost::start(|_| {}).await;
    let mut a = h.app().await;
    let mut b = h.app().await;
    let mut c = h.app().await;
    assert_ne!(a.id(), b.id());
    assert_eq!(
        a.id().domain(),
        h.host_id().domain(),
        "apps get ids in the host's domain"
    );
    for (i, x) in [&mut a, &mut c].into_iter().enumerate() {
        x.send(b.id(), Mtype(0x8001), vec![i as u8; 3])
            .await
            .unwrap();
    }
    let m1 = recv(&mut b).await;
    let m2 = recv(&mut b).await;
    assert_eq!(
        (m1.src(), m1.dst(), m1.mtype(), m1.param.clone()),
        (a.id(), b.id(), Mtype(0x8001), vec![0; 3])
    );
    assert_eq!((m2.src(), m2.param.clone()), (c.id(), vec![1; 3]));
    b.send(a.id(), Mtype(0x8002), b"back".to_vec())
        .await
        .unwrap();
    assert_eq!(recv(&mut a).await.param, b"back");
}

#[tokio::test]
async fn every_entity_answers_echo() {
    let h = TestHost::start(|_| {}).await;
    let mut a = h.app().await;
    let mut b = h.app().await;
    let b_id = b.id();
    a.echo(h.host_id(), b"x", WAIT)
        .await
        .expect("the host entity answers");
    let responder = tokio::spawn(async move {
        let _ = b.receive().await;
    });
    a.echo(b_id, b"y", WAIT)
        .await
        .expect("an app answers while it reads");
    responder.abort();
}

#[tokio::test]
async fn host_entity_refuses_other_mtypes() {
    let h = TestHost::start(|_| {}).await;
    let mut a = h.app().await;
    a.send(h.host_id(), Mtype(0x8123), vec![]).await.unwrap();
    let m = recv(&mut a).await;
    assert_eq!((m.src(), m.mtype()), (h.host_id(), Mtype::REFUSED));
    assert_eq!(Refused::decode(&m.param).unwrap().mtype, Mtype(0x8123));
}

#[tokio::test]
async fn forged_src_is_rejected_and_never_delivered() {
    let h = TestHost::start(|_| {}).await;
    let mut victim = h.app().await;
    let mut target = h.app().await;
    let mut rogue = Raw::connect(&h.socket()).await;
    let rogue_id = rogue.acquire().await;
    let forged = Message::new(victim.id(), target.id(), Mtype(0x8001), b"forged".to_vec());
    let reply = rogue.request(&ClientFrame::Send(forged)).await;
    assert_eq!(error_code(reply), ErrorCode::FORGED_SRC);
    // The same connection may still send as itself.
    let honest = Message::new(rogue_id, target.id(), Mtype(0x8001), b"honest".to_vec());
    assert_eq!(
        rogue.request(&ClientFrame::Send(honest)).await,
        DaemonFrame::Ok(0)
    );
    let got = recv(&mut target).await;
    assert_eq!(
        (got.src(), got.param.as_slice()),
        (rogue_id, &b"honest"[..]),
        "the forged message was not stored"
    );
    // And the victim got nothing either (no notice about a message it never
    // sent): the refusal was the daemon's answer, so anything it caused is
    // already waiting, and would be served before a message sent now.
    target
        .send(victim.id(), Mtype(0x8002), b"after".to_vec())
        .await
        .unwrap();
    let next = recv(&mut victim).await;
    assert_eq!(
        (next.src(), next.mtype()),
        (target.id(), Mtype(0x8002)),
        "the victim's first message is the one sent after the forgery"
    );
}

#[tokio::test]
async fn requests_before_acquire_and_double_acquire_are_refused() {
    let h = TestHost::start(|_| {}).await;
    let mut raw = Raw::connect(&h.socket()).await;
    let m = Message::new(h.host_id(), h.host_id(), Mtype::ECHO_REQUEST, vec![]);
    assert_eq!(
        error_code(raw.request(&ClientFrame::Send(m)).await),
        ErrorCode::NOT_ACQUIRED
    );
    assert_eq!(
        error_code(raw.request(&ClientFrame::Tap(Filter::ANY)).await),
        ErrorCode::NOT_ACQUIRED
    );
    raw.acquire().await;
    assert_eq!(
        error_code(raw.request(&ClientFrame::Acquire).await),
        ErrorCode::ALREADY_ACQUIRED
    );
}

#[tokio::test]
async fn malformed_frames_get_errors_and_harm_no_one() {
    let h = TestHost::start(|_| {}).await;
    let mut bystander = h.app().await;
    let mut raw = Raw::connect(&h.socket()).await;
    let id = raw.acquire().await;
    for bad in [&[0x7fu8][..], &[], &[0x02, 1, 2, 3], &[0x05, 0]] {
        raw.send_bytes(bad).await;
        assert_eq!(
            error_code(raw.read().await.unwrap()),
            ErrorCode::MALFORMED,
            "{bad:?}"
        );
    }
    // Still usable after bad frames.
    let ok = Message::new(id, bystander.id(), Mtype(0x8001), vec![]);
    assert_eq!(
        raw.request(&ClientFrame::Send(ok)).await,
        DaemonFrame::Ok(0)
    );
    // An oversized length prefix loses the framing: error, then close.
    raw.s
        .write_all(&0x00ff_ffffu32.to_be_bytes())
        .await
        .unwrap();
    assert_eq!(error_code(raw.read().await.unwrap()), ErrorCode::TOO_LARGE);
    assert_eq!(raw.read().await, None, "connection closed");
    assert_eq!(recv(&mut bystander).await.src(), id);
    bystander
        .echo(h.host_id(), b"", WAIT)
        .await
        .expect("daemon still serves others");
}

#[tokio::test]
async fn oversized_message_is_refused_by_the_library() {
    let h = TestHost::start(|_| {}).await;
    let mut a = h.app().await;
    let err = a
        .send(
            h.host_id(),
            Mtype(1),
            vec![0; tenet_proto::MAX_PARAM_LEN + 1],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::TooLarge { .. }), "{err}");
    a.send(
        h.host_id(),
        Mtype::ECHO_REPLY,
        vec![0; tenet_proto::MAX_PARAM_LEN],
    )
    .await
    .expect("the maximum itself fits");
}

#[tokio::test]
async fn socket_is_owner_and_group_only() {
    let h = TestHost::start(|_| {}).await;
    let mode = std::fs::metadata(h.socket()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    let h2 = TestHost::start(|c| c.host.socket_mode = Some("0600".into())).await;
    let mode = std::fs::metadata(h2.socket()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::default();
    cfg.host.socket = Some(dir.path().join("s.sock"));
    cfg.host.state_dir = Some(dir.path().join("state"));
    cfg.host.socket_mode = Some("0666".into());
    let err = tenet_host::start(&cfg)
        .await
        .err()
        .expect("world-accessible socket refused");
    assert!(err.to_string().contains("socket_mode"), "{err}");
    assert!(!dir.path().join("s.sock").exists());
}

#[tokio::test]
async fn second_daemon_on_the_same_socket_is_refused() {
    let h = TestHost::start(|_| {}).await;
    let mut cfg = Config::default();
    cfg.host.socket = Some(h.socket());
    cfg.host.state_dir = Some(h.dir.path().join("state2"));
    let err = tenet_host::start(&cfg).await.err().expect("refused");
    assert!(
        matches!(err, tenet_host::HostError::AlreadyRunning(_)),
        "{err}"
    );
    h.app()
        .await
        .echo(h.host_id(), b"", WAIT)
        .await
        .expect("the first one still serves");
}

#[tokio::test]
async fn client_names_the_path_when_no_daemon_runs() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("nobody.sock");
    let err = Capability::acquire(&p).await.unwrap_err();
    assert!(matches!(err, ClientError::NotRunning { .. }));
    assert!(err.to_string().contains("nobody.sock"), "{err}");
}

#[tokio::test]
async fn ports_are_never_reused_across_restarts() {
    let mut h = TestHost::start(|_| {}).await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(h.app().await.id());
    }
    h.restart().await;
    let after = h.app().await.id();
    assert!(!seen.contains(&after));
    assert!(
        seen.iter().all(|s| s.port() < after.port()),
        "{seen:?} then {after}"
    );
    assert!(seen.iter().all(|s| s.port() != Port::OWNER));
}

#[tokio::test]
async fn unknown_destination_and_departed_app_are_undeliverable() {
    let h = TestHost::start(|_| {}).await;
    let mut a = h.app().await;
    let nobody = EntityId::new(h.host_id().domain(), Port::new(999_999));
    let err = a.echo(nobody, b"", WAIT).await.unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Undeliverable {
                reason: UndeliverableReason::UNKNOWN_DESTINATION,
                ..
            }
        ),
        "{err}"
    );
    let b_id = h.app().await.id(); // connects, then drops
    departed(&mut a, b_id).await;
    let foreign = EntityId::from_array([0xee; 16]);
    let err = a.echo(foreign, b"", WAIT).await.unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Undeliverable {
                reason: UndeliverableReason::NO_ROUTE,
                ..
            }
        ),
        "{err}"
    );
}

/// Waits, at most [`WAIT`], until an echo to the app `gone`, which has
/// disconnected, is undeliverable: the daemon notices the disconnection in
/// the background. An echo sent before that either waits in the table and
/// comes back as *destination gone* when the app's endpoint is removed, or
/// was handed to the closing connection and is lost (no answer within a
/// short while: send another).
async fn departed(a: &mut Capability, gone: EntityId) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match a.echo(gone, b"", Duration::from_millis(500)).await {
            Err(ClientError::Undeliverable { .. }) => return,
            Err(ClientError::Timeout { .. }) if tokio::time::Instant::now() < deadline => {}
            other => panic!("an echo to the departed {gone}: {other:?}"),
        }
    }
}

/// Sends large messages to an app that never reads until the daemon says
/// "queue full"; returns how many were accepted.
async fn fill(a: &mut Capability, dst: EntityId) -> usize {
    for accepted in 0..1000 {
        match a
            .send(dst, Mtype(0x8001), vec![accepted as u8; 60_000])
            .await
        {
            Ok(()) => {}
            Err(ClientError::QueueFull(_)) => return accepted,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    panic!("the queue never filled");
}

#[tokio::test]
async fn full_queue_refuses_the_sender_and_loses_nothing() {
    // One sender may fill the whole queue here (no per-sender share).
    let h = TestHost::start(|c| {
        c.dispatch.per_destination = Some(4);
        c.dispatch.per_sender_share = Some(1.0);
    })
    .await;
    let mut a = h.app().await;
    let mut b = h.app().await;
    let accepted = fill(&mut a, b.id()).await;
    assert!(accepted >= 4, "at least the bound was accepted: {accepted}");
    // Everything accepted arrives, in order, exactly once.
    for i in 0..accepted {
        let m = recv(&mut b).await;
        assert_eq!(m.param[0], i as u8);
    }
    // Nothing extra: one sender's messages keep their order, so a
    // duplicate, or a refused message stored after all, would arrive before
    // this one.
    a.send(b.id(), Mtype(0x8002), vec![1])
        .await
        .expect("room again once read");
    let next = recv(&mut b).await;
    assert_eq!((next.mtype(), next.param), (Mtype(0x8002), vec![1]));
}

#[tokio::test]
async fn messages_that_outlive_their_ttl_are_returned_as_undeliverable() {
    let h = TestHost::start(|c| {
        c.dispatch.per_destination = Some(4);
        // One sender may fill the whole queue here (no per-sender share).
        c.dispatch.per_sender_share = Some(1.0);
        c.dispatch.ttl_secs = Some(0.3);
    })
    .await;
    let mut a = h.app().await;
    let b = h.app().await; // never reads
    let accepted = fill(&mut a, b.id()).await;
    assert!(accepted >= 4);
    // The ones still in the table (at least the 4 that filled it) expire.
    let mut expired = 0;
    while let Ok(m) = tokio::time::timeout(Duration::from_secs(2), a.receive()).await {
        let m = m.unwrap();
        let n = Undeliverable::decode(&m.param).unwrap();
        assert_eq!((n.reason, n.dst), (UndeliverableReason::EXPIRED, b.id()));
        expired += 1;
    }
    assert!(expired >= 4, "{expired} of {accepted} expired");
    drop(b);
}

#[tokio::test]
async fn subscriptions_tag_own_messages_and_cannot_claim_others() {
    let h = TestHost::start(|_| {}).await;
    let mut a = h.app().await;
    let mut b = h.app().await;
    let sub = b
        .subscribe(Filter {
            mtype: Some(Mtype(0x8042)),
            ..Filter::ANY
        })
        .await
        .unwrap();
    assert_ne!(sub, SubscriptionId(0));
    a.send(b.id(), Mtype(0x8042), vec![]).await.unwrap();
    a.send(b.id(), Mtype(0x8043), vec![]).await.unwrap();
    let tags: Vec<_> = [b.next().await.unwrap(), b.next().await.unwrap()]
        .into_iter()
        .map(|i| match i {
            Incoming::Message { subscription, .. } => subscription,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(tags, [sub, SubscriptionId(0)]);
    let err = b.subscribe(Filter::to(a.id())).await.unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Daemon {
                code: ErrorCode::PERMISSION_DENIED,
                ..
            }
        ),
        "{err}"
    );
    let err = b
        .subscribe(Filter::to_domain(a.id().domain()))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Daemon {
                code: ErrorCode::PERMISSION_DENIED,
                ..
            }
        ),
        "{err}"
    );
    b.unsubscribe(sub).await.unwrap();
    assert!(b.unsubscribe(sub).await.is_err());
}

#[tokio::test]
async fn taps_observe_other_apps_traffic_without_consuming_it() {
    let h = TestHost::start(|_| {}).await;
    let mut watcher = h.app().await;
    let mut a = h.app().await;
    let mut b = h.app().await;
    let tap = watcher
        .tap(Filter {
            src: Some(a.id()),
            ..Filter::ANY
        })
        .await
        .unwrap();
    a.send(b.id(), Mtype(0x8001), vec![1, 2]).await.unwrap();
    b.send(a.id(), Mtype(0x8001), vec![3]).await.unwrap();
    match tokio::time::timeout(WAIT, watcher.next())
        .await
        .unwrap()
        .unwrap()
    {
        Incoming::Tapped {
            tap: t, message, ..
        } => {
            assert_eq!(t, tap);
            assert_eq!(
                (message.src(), message.dst(), message.param),
                (a.id(), b.id(), vec![1, 2])
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(recv(&mut b).await.param, vec![1, 2], "b still gets it");
    // b's reply did not match: copies wait in the order their messages were
    // stored, and the next copy is of a's message sent after b's.
    a.send(b.id(), Mtype(0x8001), vec![4]).await.unwrap();
    match tokio::time::timeout(WAIT, watcher.next())
        .await
        .unwrap()
        .unwrap()
    {
        Incoming::Tapped { message, .. } => {
            assert_eq!((message.src(), message.param), (a.id(), vec![4]))
        }
        other => panic!("{other:?}"),
    }
    watcher.untap(tap).await.unwrap();
}

#[tokio::test]
async fn taps_can_be_disabled() {
    let h = TestHost::start(|c| c.host.allow_taps = Some(false)).await;
    let mut w = h.app().await;
    let err = w.tap(Filter::ANY).await.unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Daemon {
                code: ErrorCode::PERMISSION_DENIED,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn rule_guard_from_config_rejects_with_reason() {
    let h = TestHost::start(|c| {
        c.guard.rules = vec![
            toml::from_str("name = \"no-0x8066\"\nmtype = \"0x8066\"\naction = \"drop\"").unwrap(),
        ];
    })
    .await;
    let mut a = h.app().await;
    let err = a
        .send(h.host_id(), Mtype(0x8066), vec![])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::RejectedByGuard(r) if r.contains("no-0x8066")),
        "{err}"
    );
    a.send(h.host_id(), Mtype::ECHO_REPLY, vec![])
        .await
        .expect("other mtypes pass");
}

#[tokio::test]
async fn many_clients_at_once() {
    let h = TestHost::start(|_| {}).await;
    let host = h.host_id();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let socket = h.socket();
        tasks.push(tokio::spawn(async move {
            let mut c = Capability::acquire(&socket).await.unwrap();
            for _ in 0..50 {
                c.echo(host, b"load", WAIT).await.unwrap();
            }
            c.id()
        }));
    }
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        assert!(ids.insert(t.await.unwrap()), "ids are unique");
    }
}
