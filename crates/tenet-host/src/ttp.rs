//! The TTP service (the appendix's T): the host's own entity `DOMAIN:0`
//! answers recovery requests with the decision logic of `tenet-voucher`,
//! keeping each decision in SQLite, once per exchange, forever.
//!
//! The decision runs on a thread of its own (a database write must not hold
//! up routing). A decision is written in one immediate transaction: of
//! concurrent requests for one `h(n2)` (also from other processes sharing
//! the database) the first fixes the decision, and every later request gets
//! the same signed admission back, byte for byte.

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::Receiver;
use std::time::Instant;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};
use tenet_dispatch::Ingress;
use tenet_proto::notice::Refused;
use tenet_proto::{Codec, EntityId, Message, Mtype};
use tenet_voucher::crypto::KeyCrypto;
use tenet_voucher::msg::{self, Admission, ExchangeId, RecoveryRequest};
use tenet_voucher::ttp::{DecisionStore, handle_request};
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

/// Opens the TTP's keys and database from the config.
pub(crate) fn open(
    cfg: &crate::config::TtpSection,
    state_dir: &Path,
) -> Result<(KeyCrypto, SqliteDecisions), HostError> {
    let read =
        |p: &Path| std::fs::read(p).map_err(|e| HostError::Ttp(format!("{}: {e}", p.display())));
    let crypto = KeyCrypto::from_pem(&read(&cfg.key)?, &read(&cfg.cert)?, &read(&cfg.ca)?)
        .map_err(|e| HostError::Ttp(e.to_string()))?;
    let db = cfg
        .database
        .clone()
        .unwrap_or_else(|| state_dir.join("ttp.sqlite"));
    let store = SqliteDecisions::open(&db).map_err(HostError::Ttp)?;
    info!(database = %db.display(), "TTP decisions in SQLite");
    Ok((crypto, store))
}

/// The TTP thread: answers each recovery request sent to the host entity.
pub(crate) fn run(
    shared: Arc<Shared>,
    rx: Receiver<Message>,
    mut crypto: KeyCrypto,
    mut store: SqliteDecisions,
    me: EntityId,
) {
    while let Ok(m) = rx.recv() {
        let answer = match RecoveryRequest::decode(&m.param) {
            Err(e) => Err(format!("malformed recovery request: {e}")),
            Ok(req) => handle_request(&mut crypto, &mut store, m.src(), &req)
                .inspect(|a| {
                    info!(exchange = %a.id, kind = ?a.kind, requester = %m.src(), "TTP admission");
                })
                .map_err(|e| e.to_string()),
        };
        let reply = match answer {
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
        };
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
