//! The TTP service (the appendix's T): the host's own entity `DOMAIN:0`
//! answers recovery requests with the decision logic of `tenet-voucher`,
//! keeping each decision in SQLite, once per exchange, forever.
//!
//! The decisions run on a thread of their own (a database write must not
//! hold up routing), which serves the requesters fairly:
//! - requests wait in their requester's domain's queue ([`FairQueue`]),
//!   bounded by `dispatch.per_destination` per domain, and the domains take
//!   turns, one request a turn. A request beyond its domain's bound is not
//!   kept: its sender gets a `refused` notice ("the TTP is busy"), and it
//!   is logged and counted ([`crate::HostHandle::ttp_busy`]).
//! - each request first gets the checks that cost no cryptography (the
//!   sender is the party entitled to it, sizes, the agreement fits the
//!   offer), then the signature verifications and the decision.
//!
//! So a peer that floods the TTP, with requests in someone else's name or
//! with signatures that do not verify, delays an honest requester of
//! another domain by at most one of its requests, and a request it is not
//! entitled to make costs no signature verification.
//!
//! A decision is written in one immediate transaction: of concurrent
//! requests for one `h(n2)` (also from other processes sharing the
//! database) the first fixes the decision, and every later request gets
//! the same signed admission back, byte for byte.

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::Receiver;
use std::time::Instant;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};
use tenet_dispatch::Ingress;
use tenet_proto::notice::Refused;
use tenet_proto::{Codec, EntityId, Message, Mtype};
use tenet_voucher::crypto::{Crypto, KeyCrypto};
use tenet_voucher::msg::{self, Admission, ExchangeId, RecoveryRequest};
use tenet_voucher::ttp::{DecisionStore, FairQueue, Full, handle_request};
use tracing::{info, warn};

use crate::server::{HostError, Shared, drain_events, lock, run_events};

/// Decisions in a SQLite database.
pub struct SqliteDecisions {
    conn: Connection,
}

impl SqliteDecisions {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, String> {
        let conn = Connection::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA busy_timeout = 5000;
             CREATE TABLE IF NOT EXISTS decisions (
                 exchange BLOB PRIMARY KEY,
                 kind INTEGER NOT NULL,
                 admission BLOB NOT NULL,
                 decided_at INTEGER NOT NULL
             );",
        )
        .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Self { conn })
    }

    /// Number of decisions kept.
    pub fn count(&self) -> Result<u64, String> {
        self.conn
            .query_row("SELECT COUNT(*) FROM decisions", [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(|e| e.to_string())
    }
}

impl DecisionStore for SqliteDecisions {
    fn decide(
        &mut self,
        id: &ExchangeId,
        make: &mut dyn FnMut() -> Admission,
    ) -> Result<Admission, String> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| e.to_string())?;
        let existing: Option<Vec<u8>> = tx
            .query_row(
                "SELECT admission FROM decisions WHERE exchange = ?1",
                [&id.0[..]],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| e.to_string())?;
        if let Some(bytes) = existing {
            return Admission::decode(&bytes)
                .map_err(|e| format!("stored admission unreadable: {e}"));
        }
        let a = make();
        let kind = match a.kind {
            msg::Kind::Resolve => 1,
            msg::Kind::Abort => 2,
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        tx.execute(
            "INSERT INTO decisions (exchange, kind, admission, decided_at) VALUES (?1, ?2, ?3, ?4)",
            rusqlite::params![&id.0[..], kind, a.to_bytes(), now],
        )
        .map_err(|e| e.to_string())?;
        tx.commit().map_err(|e| e.to_string())?;
        Ok(a)
    }
}

/// Decisions in PostgreSQL, for a TTP served by several processes.
#[cfg(feature = "postgres")]
pub struct PgDecisions {
    client: postgres::Client,
}

#[cfg(feature = "postgres")]
impl PgDecisions {
    /// Connects and creates the table if needed.
    pub fn connect(conn: &str) -> Result<Self, String> {
        let pg = |e: postgres::Error| match e.as_db_error() {
            Some(d) => format!("PostgreSQL: {}: {}", d.severity(), d.message()),
            None => format!("PostgreSQL: {e}"),
        };
        let mut client = postgres::Client::connect(conn, postgres::NoTls).map_err(pg)?;
        // An advisory lock serializes table creation among TTP processes
        // starting at once (CREATE TABLE IF NOT EXISTS alone can race).
        client
            .batch_execute(
                "BEGIN;
                 SELECT pg_advisory_xact_lock(73617765);
                 CREATE TABLE IF NOT EXISTS tenet_decisions (
                     exchange BYTEA PRIMARY KEY,
                     kind SMALLINT NOT NULL,
                     admission BYTEA NOT NULL,
                     decided_at TIMESTAMPTZ NOT NULL DEFAULT now()
                 );
                 COMMIT;",
            )
            .map_err(pg)?;
        Ok(Self { client })
    }

    /// Number of decisions kept.
    pub fn count(&mut self) -> Result<u64, String> {
        let row = self
            .client
            .query_one("SELECT COUNT(*) FROM tenet_decisions", &[])
            .map_err(|e| e.to_string())?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    fn stored(&mut self, key: &[u8]) -> Result<Option<Admission>, String> {
        let rows = self
            .client
            .query(
                "SELECT admission FROM tenet_decisions WHERE exchange = $1",
                &[&key],
            )
            .map_err(|e| e.to_string())?;
        rows.first()
            .map(|r| {
                Admission::decode(r.get::<_, &[u8]>(0))
                    .map_err(|e| format!("stored admission unreadable: {e}"))
            })
            .transpose()
    }
}

#[cfg(feature = "postgres")]
impl DecisionStore for PgDecisions {
    fn decide(
        &mut self,
        id: &ExchangeId,
        make: &mut dyn FnMut() -> Admission,
    ) -> Result<Admission, String> {
        let key: &[u8] = &id.0;
        if let Some(a) = self.stored(key)? {
            return Ok(a);
        }
        let a = make();
        let kind: i16 = match a.kind {
            msg::Kind::Resolve => 1,
            msg::Kind::Abort => 2,
        };
        // The primary key makes the first insert win; a concurrent loser
        // reads the winner's admission.
        self.client
            .execute(
                "INSERT INTO tenet_decisions (exchange, kind, admission) VALUES ($1, $2, $3) \
                 ON CONFLICT (exchange) DO NOTHING",
                &[&key, &kind, &a.to_bytes()],
            )
            .map_err(|e| e.to_string())?;
        self.stored(key)?
            .ok_or_else(|| "decision vanished".to_owned())
    }
}

/// Opens the TTP's keys and decision store from the config.
pub(crate) fn open(
    cfg: &crate::config::TtpSection,
    state_dir: &Path,
) -> Result<(KeyCrypto, Box<dyn DecisionStore + Send>), HostError> {
    let read =
        |p: &Path| std::fs::read(p).map_err(|e| HostError::Ttp(format!("{}: {e}", p.display())));
    let crypto = KeyCrypto::from_pem(&read(&cfg.key)?, &read(&cfg.cert)?, &read(&cfg.ca)?)
        .map_err(|e| HostError::Ttp(e.to_string()))?;
    #[cfg(feature = "postgres")]
    if let Some(conn) = &cfg.postgres {
        let store = PgDecisions::connect(conn).map_err(HostError::Ttp)?;
        info!("TTP decisions in PostgreSQL");
        return Ok((crypto, Box::new(store)));
    }
    let db = cfg
        .database
        .clone()
        .unwrap_or_else(|| state_dir.join("ttp.sqlite"));
    let store = SqliteDecisions::open(&db).map_err(HostError::Ttp)?;
    info!(database = %db.display(), "TTP decisions in SQLite");
    Ok((crypto, Box::new(store)))
}

/// The TTP thread: decides the recovery requests sent to the host entity,
/// one domain's at a time in turn.
///
/// Requests come from the routing side through a hand-off channel bounded
/// by `dispatch.per_destination` (beyond it routing refuses them as busy).
/// Before each decision the thread moves everything that arrived during the
/// last one into its domain's queue, so the channel's order never decides
/// who waits: a request that arrived during a decision is decided after at
/// most one request of each other domain.
pub(crate) fn run(
    shared: Arc<Shared>,
    rx: Receiver<Message>,
    mut crypto: KeyCrypto,
    mut store: Box<dyn DecisionStore + Send>,
    me: EntityId,
) {
    // Each domain may have as many requests waiting as any reader of the
    // dispatch table; so many also fill the hand-off channel.
    let per_destination = lock(&shared.table).limits().per_destination;
    let mut queue = FairQueue::new(per_destination);
    loop {
        let first = match queue.is_empty() {
            true => match rx.recv() {
                Ok(m) => Some(m),
                Err(_) => return,
            },
            false => None,
        };
        let arrived = first
            .into_iter()
            .chain(std::iter::from_fn(|| rx.try_recv().ok()).take(per_destination));
        let mut busy = Vec::new();
        for m in arrived {
            if let Err(full) = queue.push(m.src().domain(), m) {
                busy.push(full);
            }
        }
        if !busy.is_empty() {
            refuse_busy(&shared, me, busy);
        }
        let Some((_, m)) = queue.pop() else { continue };
        let reply = answer(&mut crypto, store.as_mut(), me, &m);
        let events = {
            let mut t = lock(&shared.table);
            if let Err(e) = t.store(Ingress::Internal, reply, Instant::now()) {
                warn!(error = %e, "TTP answer not stored");
            }
            drain_events(&mut t)
        };
        run_events(&shared, events);
    }
}

/// Tells the senders of requests beyond their domain's bound that the TTP
/// is busy, and counts them.
fn refuse_busy(shared: &Shared, me: EntityId, refused: Vec<Full<Message>>) {
    shared
        .ttp_busy
        .fetch_add(refused.len() as u64, std::sync::atomic::Ordering::Relaxed);
    let mut domains = std::collections::BTreeMap::<_, u64>::new();
    for full in &refused {
        *domains.entry(full.domain).or_default() += 1;
    }
    for (domain, n) in domains {
        warn!(
            %domain,
            refused = n,
            bound = refused[0].bound,
            "TTP busy: recovery requests beyond their domain's queue refused"
        );
    }
    let events = {
        let mut t = lock(&shared.table);
        for full in refused {
            let src = full.request.src();
            let text = format!("the TTP is busy: {full}; ask again later");
            let notice = Message::new(
                me,
                src,
                Mtype::REFUSED,
                Refused {
                    mtype: msg::RECOVERY_REQUEST,
                    text,
                }
                .to_bytes(),
            );
            if let Err(e) = t.store(Ingress::Internal, notice, Instant::now()) {
                warn!(error = %e, to = %src, "TTP busy notice not stored");
            }
        }
        drain_events(&mut t)
    };
    run_events(shared, events);
}

/// The TTP's answer to the request `m`: an admission, or a `refused` notice
/// saying why.
fn answer(
    crypto: &mut dyn Crypto,
    store: &mut dyn DecisionStore,
    me: EntityId,
    m: &Message,
) -> Message {
    let answer = match RecoveryRequest::decode(&m.param) {
        Err(e) => Err(format!("malformed recovery request: {e}")),
        Ok(req) => handle_request(crypto, store, m.src(), &req)
            .inspect(|a| {
                info!(exchange = %a.id, kind = ?a.kind, requester = %m.src(), "TTP admission");
            })
            .map_err(|e| e.to_string()),
    };
    match answer {
        Ok(a) => Message::new(me, m.src(), msg::ADMISSION, a.to_bytes()),
        Err(text) => {
            warn!(requester = %m.src(), %text, "recovery request refused");
            Message::new(
                me,
                m.src(),
                Mtype::REFUSED,
                Refused {
                    mtype: msg::RECOVERY_REQUEST,
                    text,
                }
                .to_bytes(),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tenet_voucher::msg::Kind;

    fn admission(kind: Kind, n: u8) -> Admission {
        Admission {
            kind,
            id: ExchangeId([1; 32]),
            signature: vec![n; 8],
            certificate: vec![0x30],
        }
    }

    #[test]
    fn one_decision_per_exchange_kept_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("ttp.sqlite");
        let id = ExchangeId([1; 32]);
        let first = SqliteDecisions::open(&db)
            .unwrap()
            .decide(&id, &mut || admission(Kind::Abort, 1))
            .unwrap();
        let mut again = SqliteDecisions::open(&db).unwrap();
        let second = again
            .decide(&id, &mut || admission(Kind::Resolve, 2))
            .unwrap();
        assert_eq!(first, second, "the first decision stands, byte for byte");
        assert_eq!(second.kind, Kind::Abort);
        assert_eq!(again.count().unwrap(), 1);
    }

    #[test]
    fn concurrent_requests_for_one_exchange_yield_one_decision() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("ttp.sqlite");
        SqliteDecisions::open(&db).unwrap();
        let handles: Vec<_> = (0..8u8)
            .map(|n| {
                let db = db.clone();
                std::thread::spawn(move || {
                    let kind = if n % 2 == 0 {
                        Kind::Resolve
                    } else {
                        Kind::Abort
                    };
                    let mut s = SqliteDecisions::open(&db).unwrap();
                    s.decide(&ExchangeId([1; 32]), &mut || admission(kind, n))
                        .unwrap()
                })
            })
            .collect();
        let results: Vec<Admission> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert!(results.windows(2).all(|w| w[0] == w[1]), "{results:?}");
        assert_eq!(SqliteDecisions::open(&db).unwrap().count().unwrap(), 1);
    }
}

/// Against a real PostgreSQL named by `TENET_TEST_POSTGRES` (the test
/// command starts one).
#[cfg(all(test, feature = "postgres"))]
mod pg_tests {
    use super::*;
    use tenet_voucher::msg::Kind;

    fn conn() -> String {
        std::env::var("TENET_TEST_POSTGRES")
            .expect("TENET_TEST_POSTGRES names the test PostgreSQL (scripts/test.sh starts one)")
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

    #[test]
    fn postgres_keeps_one_decision_across_connections() {
        let id = fresh_id();
        let first = PgDecisions::connect(&conn())
            .unwrap()
            .decide(&id, &mut || admission(id, Kind::Resolve, 1))
            .unwrap();
        let second = PgDecisions::connect(&conn())
            .unwrap()
            .decide(&id, &mut || admission(id, Kind::Abort, 2))
            .unwrap();
        assert_eq!(first, second);
        assert_eq!(second.kind, Kind::Resolve);
    }

    #[test]
    fn concurrent_postgres_clients_yield_one_decision() {
        let id = fresh_id();
        let handles: Vec<_> = (0..8u8)
            .map(|n| {
                let c = conn();
                std::thread::spawn(move || {
                    let kind = if n % 2 == 0 {
                        Kind::Resolve
                    } else {
                        Kind::Abort
                    };
                    PgDecisions::connect(&c)
                        .unwrap()
                        .decide(&id, &mut || admission(id, kind, n))
                        .unwrap()
                })
            })
            .collect();
        let results: Vec<Admission> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert!(results.windows(2).all(|w| w[0] == w[1]), "{results:?}");
        let mut c = postgres::Client::connect(&conn(), postgres::NoTls).unwrap();
        let n: i64 = c
            .query_one(
                "SELECT COUNT(*) FROM tenet_decisions WHERE exchange = $1",
                &[&&id.0[..]],
            )
            .unwrap()
            .get(0);
        assert_eq!(n, 1);
    }
}
