//! The wallet's journal: every operation of its card, beyond the card's
//! memory, in SQLite in the wallet's state folder.
//!
//! The card keeps only its last finished runs (exchanges, gifts,
//! redemptions), numbered as they finish, and with recovery done by the
//! cards they finish while no wallet runs. Whenever a wallet connects it
//! pulls the runs numbered after the last one its journal holds
//! ([`Journal::sync`]); when the card forgot some before the wallet could
//! read them, the journal records the gap and says so. What only the
//! wallet sees (mints, offers made, presentations, withdrawals,
//! delegations) it records itself ([`Journal::note`]).
//!
//! One file per card (`journal-<card domain>.sqlite`), created owner-only
//! in a folder created owner-only.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};
use tenet_proto::{Codec, EntityId};
use tenet_voucher::card::{Log, LogEntry, Role};
use tenet_voucher::redeem::{Delegation, Receipt};

use crate::wallet::{Wallet, WalletError};

/// Why the journal failed.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The state folder or the file could not be made or opened.
    #[error("journal {path}: {source}")]
    Open {
        /// The file or folder.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// SQLite refused.
    #[error("journal {path}: {source}")]
    Sql {
        /// The file.
        path: PathBuf,
        /// Why.
        source: rusqlite::Error,
    },
    /// Talking to the card failed.
    #[error(transparent)]
    Wallet(#[from] WalletError),
    /// No state folder given and none found (no HOME).
    #[error("no state folder for the journal: give --state DIR or TENET_WALLET_STATE")]
    NoStateDir,
    /// A file read or written failed.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file is not what it should be.
    #[error("{path}: {detail}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// Why.
        detail: String,
    },
}

impl Journal {
    /// Has `w`'s card (the issuer of `class`) delegate its redemption to
    /// card `to` for `days`, writes the delegation to `out` and notes it;
    /// returns what it did in words.
    pub async fn delegate(
        &self,
        w: &mut Wallet,
        to: EntityId,
        class: tenet_voucher::model::VoucherClass,
        days: u32,
        out: &Path,
    ) -> Result<String, JournalError> {
        let until = tenet_proto::time::unix_now() + u64::from(days) * 86_400;
        let d = w.delegate(to, class, until).await?;
        std::fs::write(out, d.to_bytes()).map_err(|source| JournalError::File {
            path: out.to_owned(),
            source,
        })?;
        self.note(
            "delegate",
            &format!("let {to} redeem {} until {until}", d.class),
        )?;
        Ok(format!("delegation for {to} written to {}", out.display()))
    }

    /// Installs the delegation in `file` on `w`'s card and notes it.
    pub async fn install_delegation(
        &self,
        w: &mut Wallet,
        file: &Path,
    ) -> Result<String, JournalError> {
        let d = read_delegation(file)?;
        w.install_delegation(&d).await?;
        let until = tenet_proto::time::Utc(d.until);
        let text = format!("this card now redeems {} (until {until})", d.class);
        self.note("install-delegation", &text)?;
        Ok(text)
    }
}

/// Opens the journal of `w`'s card in `dir` (or [`default_dir`]) and pulls
/// what it lacks from the card; returns it with a note for the user, if
/// any: the runs the card forgot before a wallet read them, or why the
/// card's log could not be read (the command goes on: the next one reads
/// it again).
pub async fn open_synced(
    dir: Option<&Path>,
    w: &mut Wallet,
) -> Result<(Journal, Option<String>), JournalError> {
    let dir = dir
        .map(Path::to_owned)
        .or_else(default_dir)
        .ok_or(JournalError::NoStateDir)?;
    let mut j = Journal::open(&dir, w.card())?;
    let note = match j.sync(w).await {
        Ok(s) if s.missed > 0 => Some(format!(
            "the card forgot {} finished runs before a wallet read them",
            s.missed
        )),
        Ok(_) => None,
        Err(e @ JournalError::Wallet(_)) => Some(format!(
            "the journal could not read the card's log ({e}); the next command tries again"
        )),
        Err(e) => return Err(e),
    };
    Ok((j, note))
}

/// Files a wallet reads are small; more is refused unread.
const MAX_FILE: u64 = 64 * 1024;

/// Reads a small file (at most 64 KiB).
pub fn read_small(path: &Path) -> Result<Vec<u8>, JournalError> {
    use std::io::Read;
    let err = |source| JournalError::File {
        path: path.to_owned(),
        source,
    };
    let mut b = Vec::new();
    std::fs::File::open(path)
        .map_err(err)?
        .take(MAX_FILE + 1)
        .read_to_end(&mut b)
        .map_err(err)?;
    if b.len() as u64 > MAX_FILE {
        return Err(JournalError::Malformed {
            path: path.to_owned(),
            detail: format!("larger than {MAX_FILE} bytes"),
        });
    }
    Ok(b)
}

/// Reads a delegation file (`tenet wallet delegate --out`).
pub fn read_delegation(path: &Path) -> Result<Delegation, JournalError> {
    Delegation::decode(&read_small(path)?).map_err(|e| JournalError::Malformed {
        path: path.to_owned(),
        detail: format!("not a delegation: {e}"),
    })
}

/// Reads a receipt file (`tenet wallet receipts --out`).
pub fn read_receipt(path: &Path) -> Result<Receipt, JournalError> {
    Receipt::decode(&read_small(path)?).map_err(|e| JournalError::Malformed {
        path: path.to_owned(),
        detail: format!("not a receipt: {e}"),
    })
}

/// Prints the journal's receipts on `out`, one line each, and writes each
/// as `DIR/ID.receipt` with `dir`.
pub fn print_receipts(
    j: &Journal,
    dir: Option<&Path>,
    out: &mut impl std::io::Write,
) -> Result<(), JournalError> {
    let receipts = j.receipts()?;
    let io = |source| JournalError::File {
        path: PathBuf::from("stdout"),
        source,
    };
    if receipts.is_empty() {
        writeln!(out, "(no receipts)").map_err(io)?;
    }
    for r in receipts {
        writeln!(out, "{r}").map_err(io)?;
        if let Some(d) = dir {
            let hex: String = r.id().0.iter().map(|b| format!("{b:02x}")).collect();
            let path = d.join(format!("{hex}.receipt"));
            std::fs::create_dir_all(d)
                .and_then(|()| std::fs::write(&path, r.to_bytes()))
                .map_err(|source| JournalError::File {
                    path: path.clone(),
                    source,
                })?;
            writeln!(out, "  written to {}", path.display()).map_err(io)?;
        }
    }
    Ok(())
}

/// The journal's entries as text (one line each) or JSON (an array).
pub fn history(entries: &[Entry], json: bool) -> String {
    if json {
        let all: Vec<serde_json::Value> = entries
            .iter()
            .map(|e| {
                serde_json::json!({
                    "n": e.n,
                    "at": e.at,
                    "seq": e.seq,
                    "kind": e.kind,
                    "id": e.id,
                    "text": e.text,
                    "receipt": e.receipt.is_some(),
                })
            })
            .collect();
        return serde_json::to_string_pretty(&all).unwrap_or_default() + "\n";
    }
    if entries.is_empty() {
        return "(nothing yet)\n".into();
    }
    entries
        .iter()
        .map(|e| {
            let seq = e.seq.map_or_else(|| "-".into(), |s| s.to_string());
            let at = tenet_proto::time::Utc(e.at);
            format!(
                "{:>5}  {at}  card #{seq:<5} {:<18} {}\n",
                e.n, e.kind, e.text
            )
        })
        .collect()
}

/// One line of the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its place in the journal.
    pub n: i64,
    /// When the journal wrote it (seconds since the Unix epoch).
    pub at: u64,
    /// The card's sequence number, for a run read from its log.
    pub seq: Option<u64>,
    /// `exchange`, `gift`, `redemption`, `gap`, or what the wallet noted
    /// (`mint`, `offer`, `present`, ...).
    pub kind: String,
    /// The run's id (hex), if any.
    pub id: Option<String>,
    /// In words.
    pub text: String,
    /// The receipt, for a redemption this card made as holder.
    pub receipt: Option<Vec<u8>>,
}

/// What one [`Journal::sync`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Synced {
    /// Runs newly recorded.
    pub added: u64,
    /// Runs the card forgot before the journal read them.
    pub missed: u64,
}

/// A card's journal.
pub struct Journal {
    db: Connection,
    path: PathBuf,
}

/// The default state folder: `$TENET_WALLET_STATE`, else
/// `$XDG_STATE_HOME/tenet`, else `~/.local/state/tenet`.
pub fn default_dir() -> Option<PathBuf> {
    let env = |k| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    env("TENET_WALLET_STATE")
        .or_else(|| env("XDG_STATE_HOME").map(|d| d.join("tenet")))
        .or_else(|| env("HOME").map(|h| h.join(".local/state/tenet")))
}

impl Journal {
    /// Opens (or creates) the journal of `card` in `dir`.
    pub fn open(dir: &Path, card: EntityId) -> Result<Self, JournalError> {
        let open_err = |path: &Path| {
            let path = path.to_owned();
            move |source| JournalError::Open { path, source }
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(open_err(dir))?;
        let path = dir.join(format!("journal-{}.sqlite", card.domain()));
        // Created owner-only before SQLite opens it.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(open_err(&path))?;
        let sql = |source| JournalError::Sql {
            path: path.clone(),
            source,
        };
        let db = Connection::open(&path).map_err(sql)?;
        db.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sql)?;
        db.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE IF NOT EXISTS journal (
                n INTEGER PRIMARY KEY AUTOINCREMENT,
                at INTEGER NOT NULL,
                epoch INTEGER NOT NULL DEFAULT 0,
                seq INTEGER,
                kind TEXT NOT NULL,
                id TEXT,
                text TEXT NOT NULL,
                receipt BLOB,
                UNIQUE (epoch, seq)
             );
             CREATE TABLE IF NOT EXISTS cursor (
                one INTEGER PRIMARY KEY CHECK (one = 1),
                next INTEGER NOT NULL,
                epoch INTEGER NOT NULL DEFAULT 0
             );",
        )
        .map_err(sql)?;
        Ok(Self { db, path })
    }

    fn sql(&self) -> impl Fn(rusqlite::Error) -> JournalError + '_ {
        |source| JournalError::Sql {
            path: self.path.clone(),
            source,
        }
    }

    /// The card sequence number the journal asks from next, and the
    /// number of the card it follows (one more for each card of the same
    /// domain personalized again).
    pub fn next(&self) -> Result<(u64, i64), JournalError> {
        let n: Option<(i64, i64)> = self
            .db
            .query_row("SELECT next, epoch FROM cursor WHERE one = 1", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
            .map_err(self.sql())?;
        Ok(n.map_or((0, 0), |(n, e)| (n as u64, e)))
    }

    /// Records what the wallet did itself.
    pub fn note(&self, kind: &str, text: &str) -> Result<(), JournalError> {
        self.db
            .execute(
                "INSERT INTO journal (at, kind, text) VALUES (?1, ?2, ?3)",
                params![tenet_proto::time::unix_now() as i64, kind, text],
            )
            .map_err(self.sql())?;
        Ok(())
    }

    /// Records the card's `log`, asked from `since`: its runs, and the gap
    /// if the card forgot some first. One transaction: a crash records all
    /// or nothing, and the next sync asks again.
    pub fn record(&mut self, epoch: i64, since: u64, log: &Log) -> Result<Synced, JournalError> {
        let path = self.path.clone();
        let sql = move |source| JournalError::Sql {
            path: path.clone(),
            source,
        };
        let tx = self.db.transaction().map_err(&sql)?;
        let now = tenet_proto::time::unix_now() as i64;
        let mut synced = Synced::default();
        let mut entries: Vec<&LogEntry> = log.entries.iter().filter(|e| e.seq >= since).collect();
        entries.sort_by_key(|e| e.seq);
        // The runs this page covers: up to its last run if more pages
        // follow, else up to the card's next number. A number in that
        // range the card does not hold was forgotten before this journal
        // read it (the card keeps unread receipts longer than other runs,
        // so its holes need not be at the start).
        let end = match entries.last() {
            Some(e) if e.seq.saturating_add(1) < log.next => e.seq.saturating_add(1),
            _ => log.next.max(since),
        };
        let mut expected = since;
        let mut gaps = Vec::new();
        for seq in entries.iter().map(|e| e.seq).chain([end]) {
            if seq > expected {
                gaps.push((expected, seq - 1));
            }
            expected = expected.max(seq.saturating_add(1));
        }
        for (from, to) in gaps {
            synced.missed += to - from + 1;
            let text = format!("the card forgot runs {from} to {to} before this journal read them");
            tx.execute(
                "INSERT INTO journal (at, kind, text) VALUES (?1, 'gap', ?2)",
                params![now, text],
            )
            .map_err(&sql)?;
        }
        for e in entries {
            let (kind, text) = describe(e);
            let id: String = e.summary.id.0.iter().map(|b| format!("{b:02x}")).collect();
            let receipt = e.receipt.as_ref().map(Codec::to_bytes);
            let added = tx
                .execute(
                    "INSERT OR IGNORE INTO journal (at, epoch, seq, kind, id, text, receipt)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![now, epoch, e.seq as i64, kind, id, text, receipt],
                )
                .map_err(&sql)?;
            synced.added += added as u64;
        }
        // Committed with the runs: a sync cut off between pages asks again
        // from here, not from the card's next number.
        let next = end;
        tx.execute(
            "INSERT INTO cursor (one, next, epoch) VALUES (1, ?1, ?2)
             ON CONFLICT (one) DO UPDATE SET next = excluded.next, epoch = excluded.epoch",
            params![next as i64, epoch],
        )
        .map_err(&sql)?;
        tx.commit().map_err(&sql)?;
        Ok(synced)
    }

    /// Pulls from `w`'s card every finished run the journal lacks.
    ///
    /// A card whose log numbers fewer runs than the journal read is not
    /// the card the journal followed (one personalized again with the same
    /// domain): the journal says so and reads the new card's log from its
    /// start.
    pub async fn sync(&mut self, w: &mut Wallet) -> Result<Synced, JournalError> {
        let (mut since, mut epoch) = self.next()?;
        let mut log = w.log(since).await?;
        if log.next < since {
            self.note(
                "restart",
                &format!(
                    "the card numbers {} runs, this journal read {since}: another card of this domain; reading it from its start",
                    log.next
                ),
            )?;
            (since, epoch) = (0, epoch + 1);
            log = w.log(0).await?;
        }
        // The card answers a page at a time: ask again from where the
        // journal now stands, until it has the card's next number. Once
        // done, one more request tells the card the journal holds every
        // run it read (so the card may let their receipts go).
        let mut total = Synced::default();
        loop {
            let s = self.record(epoch, since, &log)?;
            total.added += s.added;
            total.missed += s.missed;
            let (now, _) = self.next()?;
            if now <= since || now >= log.next {
                if total.added > 0 {
                    w.log(now).await?;
                }
                return Ok(total);
            }
            since = now;
            log = w.log(since).await?;
        }
    }

    /// Every entry, oldest first.
    pub fn entries(&self) -> Result<Vec<Entry>, JournalError> {
        let mut q = self
            .db
            .prepare("SELECT n, at, seq, kind, id, text, receipt FROM journal ORDER BY n")
            .map_err(self.sql())?;
        let rows = q
            .query_map([], |r| {
                Ok(Entry {
                    n: r.get(0)?,
                    at: r.get::<_, i64>(1)? as u64,
                    seq: r.get::<_, Option<i64>>(2)?.map(|s| s as u64),
                    kind: r.get(3)?,
                    id: r.get(4)?,
                    text: r.get(5)?,
                    receipt: r.get(6)?,
                })
            })
            .map_err(self.sql())?;
        rows.collect::<Result<_, _>>().map_err(self.sql())
    }

    /// The receipts of this card's redemptions, oldest first.
    pub fn receipts(&self) -> Result<Vec<Receipt>, JournalError> {
        Ok(self
            .entries()?
            .into_iter()
            .filter_map(|e| e.receipt.and_then(|r| Receipt::decode(&r).ok()))
            .collect())
    }
}

/// A run's kind and its line in words.
fn describe(e: &LogEntry) -> (&'static str, String) {
    let s = &e.summary;
    let o = &s.offer;
    let kind = if o.is_redemption() {
        "redemption"
    } else if o.is_gift() {
        "gift"
    } else {
        "exchange"
    };
    let phase = s.phase;
    let text = match (kind, s.role) {
        ("redemption", Role::Initiator) => format!(
            "{phase:?}: redeemed {} at {}{}",
            o.give,
            o.responder,
            if e.receipt.is_some() {
                ", receipt kept"
            } else {
                ""
            }
        ),
        ("redemption", Role::Responder) => {
            format!("{phase:?}: took {} from {} to destroy", o.give, o.initiator)
        }
        ("gift", Role::Initiator) => format!("{phase:?}: gave {} to {}", o.give, o.responder),
        ("gift", Role::Responder) => format!("{phase:?}: got {} from {}", o.give, o.initiator),
        _ => {
            let want = o
                .want
                .as_ref()
                .map_or_else(String::new, ToString::to_string);
            let (gave, got, peer) = match s.role {
                Role::Initiator => (o.give.to_string(), want, o.responder),
                Role::Responder => (want, o.give.to_string(), o.initiator),
            };
            format!("{phase:?}: gave {gave}, got {got}, with {peer}")
        }
    };
    (kind, text)
}

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};

#[cfg(test)]
mod tests {
    use super::*;
    use tenet_proto::Domain;
    use tenet_voucher::card::{ExchangeSummary, Phase};
    use tenet_voucher::model::{Amount, VoucherClass};
    use tenet_voucher::msg::{ExchangeId, Offer};

    fn entry(seq: u64) -> LogEntry {
        let card = |b| Domain::new([b; 12]).owner();
        LogEntry {
            seq,
            summary: ExchangeSummary {
                id: ExchangeId([seq as u8; 32]),
                role: Role::Initiator,
                phase: Phase::Committed,
                offer: Offer {
                    knows: None,
                    initiator: card(1),
                    responder: card(2),
                    give: Amount {
                        class: VoucherClass {
                            issuer: Domain::new([1; 12]),
                            promise: "coffee".into(),
                        },
                        quantity: 2,
                    },
                    want: None,
                    n1: [seq as u8; 16],
                    expires: None,
                    redeem: None,
                },
            },
            receipt: None,
        }
    }

    fn log(first: u64, next: u64) -> Log {
        Log {
            first,
            next,
            entries: (first..next).map(entry).collect(),
        }
    }

    /// Each run is recorded once however often it is read; runs the card
    /// forgot before the journal read them are recorded as a gap; the
    /// journal survives reopening.
    #[test]
    fn runs_are_recorded_once_and_a_gap_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let card = Domain::new([1; 12]).owner();
        let mut j = Journal::open(dir.path(), card).unwrap();
        assert_eq!(j.next().unwrap(), (0, 0));
        let s = j.record(0, 0, &log(0, 3)).unwrap();
        assert_eq!(
            s,
            Synced {
                added: 3,
                missed: 0
            }
        );
        assert_eq!(j.record(0, 0, &log(0, 3)).unwrap().added, 0, "read twice");
        assert_eq!(j.next().unwrap(), (3, 0));
        // The card finished runs 3 to 24 and forgot 3 to 8 meanwhile.
        let s = j.record(0, 3, &log(9, 25)).unwrap();
        assert_eq!(
            s,
            Synced {
                added: 16,
                missed: 6
            }
        );
        let e = Journal::open(dir.path(), card).unwrap().entries().unwrap();
        assert_eq!(e.len(), 3 + 1 + 16);
        assert_eq!(e[3].kind, "gap");
        assert!(e[3].text.contains("runs 3 to 8"), "{}", e[3].text);
        assert!(e.iter().all(|x| x.kind == "gap" || x.kind == "gift"));
        // A card personalized again numbers from 0: a new epoch keeps both.
        j.record(1, 0, &log(0, 2)).unwrap();
        assert_eq!(j.entries().unwrap().len(), 22);
        assert_eq!(j.next().unwrap(), (2, 1));
        let text = history(&j.entries().unwrap(), false);
        assert!(text.contains("gave 2 x"), "{text}");
        let json: serde_json::Value = serde_json::from_str(&history(&[], true)).unwrap();
        assert_eq!(json, serde_json::json!([]));
    }

    /// A page that is not the last moves the cursor only past its own
    /// runs (a sync cut off there asks again from them, not from the
    /// card's next number), and a hole among the runs the card holds (it
    /// keeps unread receipts longer than other runs) is recorded as a gap.
    #[test]
    fn pages_move_the_cursor_by_their_own_runs_and_holes_are_gaps() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path(), Domain::new([1; 12]).owner()).unwrap();
        let page = |seqs: &[u64], next| Log {
            first: seqs[0],
            next,
            entries: seqs.iter().map(|s| entry(*s)).collect(),
        };
        let s = j.record(0, 0, &page(&[0, 1, 5], 10)).unwrap();
        assert_eq!(
            s,
            Synced {
                added: 3,
                missed: 3
            }
        );
        assert_eq!(j.next().unwrap(), (6, 0), "past this page only");
        let s = j.record(0, 6, &page(&[6, 7, 8, 9], 10)).unwrap();
        assert_eq!(
            s,
            Synced {
                added: 4,
                missed: 0
            }
        );
        assert_eq!(j.next().unwrap(), (10, 0));
        let gaps: Vec<String> = j
            .entries()
            .unwrap()
            .into_iter()
            .filter(|e| e.kind == "gap")
            .map(|e| e.text)
            .collect();
        assert_eq!(gaps.len(), 1);
        assert!(gaps[0].contains("runs 2 to 4"), "{gaps:?}");
    }
}
