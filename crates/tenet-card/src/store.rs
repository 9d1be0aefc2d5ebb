//! The card's persistent store: its EEPROM.
//!
//! A store holds one record (the card's whole persistent state) and
//! replaces it atomically: after a power cut at any moment the store holds
//! the old record or the new one, never a mix.
//!
//! [`FileStore`] keeps two slots in one file and writes each new record into
//! the slot that does not hold the current one, then syncs:
//!
//! ```text
//! header  16 bytes  "TENETEE1" ‖ capacity u32 ‖ 0u32
//! slot 0  48 + capacity bytes
//! slot 1  48 + capacity bytes
//! slot    seq u64 ‖ len u32 ‖ 0u32 ‖ sha256(seq ‖ len ‖ data) ‖ data (capacity bytes, zero padded)
//! ```
//!
//! On open, the valid slot (length within capacity, hash matching) with the
//! highest sequence number is the current record. A torn write can only
//! damage the slot being written, whose hash then fails.
//!
//! A commit may also be unsynced ([`Storage::commit_unsynced`]): written
//! but not waited for, so a power cut may lose it, never an earlier synced
//! record. Every write, synced or not, goes into the slot that does not
//! hold the last synced record, so that record stays whole whatever the
//! power cut tears; the next synced commit (or [`Storage::sync`]) makes
//! everything before it durable too. The file is locked
//! (`flock`) for as long as the store is open, so two processes cannot run
//! the same card.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ring::digest;

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file could not be read or written.
    #[error("card store {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a card store.
    #[error("card store {path} is not a TENeT card store: {detail}")]
    NotAStore {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// Another process has the store open.
    #[error("card store {0} is in use by another process")]
    InUse(PathBuf),
    /// Group or others may read or write the store: it holds the card's
    /// private key and PIN hashes.
    #[error(
        "card store {} is open to group or others (mode {mode:04o}): it holds the card's key; fix it with `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    Exposed {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The record exceeds the store's capacity.
    #[error("record of {len} bytes exceeds the card's storage budget of {capacity}")]
    Full {
        /// The record's size.
        len: usize,
        /// The capacity.
        capacity: usize,
    },
    /// A write or a sync failed while the store held unsynced commits, or
    /// a sync failed: what the disk holds is no longer known (a second
    /// fsync may report success for pages the first one dropped), so the
    /// store takes no more commits until it is opened again.
    #[error(
        "card store {0} stopped after a failed write or sync; restart the card to open it again"
    )]
    Stopped(PathBuf),
    /// A test store was told to fail.
    #[error("injected store failure")]
    Injected,
}

/// An atomic single-record store.
pub trait Storage: Send {
    /// The current record, if one was ever committed.
    fn load(&mut self) -> Result<Option<Vec<u8>>, StoreError>;
    /// Replaces the record atomically and durably: on the medium before
    /// it returns.
    fn commit(&mut self, record: &[u8]) -> Result<(), StoreError>;
    /// Replaces the record atomically, without waiting for the medium: a
    /// power cut may lose it (and any unsynced commit before it), never an
    /// earlier [`commit`](Self::commit). For a step whose loss the card's
    /// protocol recovers from. By default, the same as `commit`.
    fn commit_unsynced(&mut self, record: &[u8]) -> Result<(), StoreError> {
        self.commit(record)
    }
    /// Makes the unsynced commits durable, if there are any.
    fn sync(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
    /// The largest record.
    fn capacity(&self) -> usize;
}

const MAGIC: &[u8; 8] = b"TENETEE1";
const HEADER: u64 = 16;
const SLOT_META: usize = 48;

/// Default storage budget of a virtual card.
pub const DEFAULT_CAPACITY: usize = 32 * 1024;

/// Commits of every [`FileStore`] in this process, synced or not: what a
/// benchmark divides by its exchanges.
static FILE_COMMITS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// The `fdatasync` calls of every [`FileStore`] in this process.
static FILE_SYNCS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many [`FileStore`] commits this process made, synced or not.
pub fn file_commits() -> u64 {
    FILE_COMMITS.load(std::sync::atomic::Ordering::Relaxed)
}

/// How many times a [`FileStore`] of this process waited for the disk
/// (`fdatasync`): a synced commit, or a [`Storage::sync`] with unsynced
/// commits to make durable.
pub fn file_syncs() -> u64 {
    FILE_SYNCS.load(std::sync::atomic::Ordering::Relaxed)
}

/// The two-slot file store.
#[derive(Debug)]
pub struct FileStore {
    file: File,
    path: PathBuf,
    capacity: usize,
    seq: u64,
    current: Option<usize>,
    /// The slot holding the last synced record: never written until
    /// another slot holds a synced one.
    durable: Option<usize>,
    /// A write or sync failed with unsynced commits at stake
    /// ([`StoreError::Stopped`]).
    stopped: bool,
}

impl FileStore {
    /// Creates a new store file; an existing file is never overwritten.
    pub fn create(path: &Path, capacity: usize) -> Result<Self, StoreError> {
        let io = |source| StoreError::Io {
            path: path.to_owned(),
            source,
        };
        let cap = u32::try_from(capacity).map_err(|_| StoreError::NotAStore {
            path: path.to_owned(),
            detail: format!("capacity {capacity} is too large"),
        })?;
        // Owner-only from the first byte, whatever the umask (which can
        // only take bits away).
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        lock(&file, path)?;
        let mut header = Vec::with_capacity(HEADER as usize);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&cap.to_be_bytes());
        header.extend_from_slice(&[0; 4]);
        file.write_all_at(&header, 0).map_err(io)?;
        file.set_len(HEADER + 2 * (SLOT_META + capacity) as u64)
            .map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(Self {
            file,
            path: path.to_owned(),
            capacity,
            seq: 0,
            current: None,
            durable: None,
            stopped: false,
        })
    }

    /// Opens an existing store file.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let io = |source| StoreError::Io {
            path: path.to_owned(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io)?;
        let mode = file.metadata().map_err(io)?.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(StoreError::Exposed {
                path: path.to_owned(),
                mode,
            });
        }
        lock(&file, path)?;
        let mut header = [0u8; HEADER as usize];
        file.read_exact_at(&mut header, 0)
            .map_err(|e| StoreError::NotAStore {
                path: path.to_owned(),
                detail: format!("header unreadable: {e}"),
            })?;
        if &header[..8] != MAGIC {
            return Err(StoreError::NotAStore {
                path: path.to_owned(),
                detail: "bad magic".into(),
            });
        }
        let capacity = u32::from_be_bytes([header[8], header[9], header[10], header[11]]) as usize;
        let need = HEADER + 2 * (SLOT_META + capacity) as u64;
        let len = file.metadata().map_err(io)?.len();
        if len < need {
            return Err(StoreError::NotAStore {
                path: path.to_owned(),
                detail: format!("file is {len} bytes, expected {need}"),
            });
        }
        let mut s = Self {
            file,
            path: path.to_owned(),
            capacity,
            seq: 0,
            current: None,
            durable: None,
            stopped: false,
        };
        for slot in 0..2 {
            if let Some((seq, _)) = s.read_slot(slot)?
                && (s.current.is_none() || seq > s.seq)
            {
                s.seq = seq;
                s.current = Some(slot);
            }
        }
        // The current record may be an unsynced commit of a process that
        // ended: made durable before the other slot is written again.
        if s.current.is_some() {
            s.file.sync_data().map_err(io)?;
            s.durable = s.current;
        }
        Ok(s)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn slot_offset(&self, slot: usize) -> u64 {
        HEADER + (slot * (SLOT_META + self.capacity)) as u64
    }

    fn read_slot(&self, slot: usize) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let mut buf = vec![0u8; SLOT_META + self.capacity];
        self.file
            .read_exact_at(&mut buf, self.slot_offset(slot))
            .map_err(|source| StoreError::Io {
                path: self.path.clone(),
                source,
            })?;
        let seq = u64::from_be_bytes(buf[0..8].try_into().expect("8 bytes"));
        let len = u32::from_be_bytes(buf[8..12].try_into().expect("4 bytes")) as usize;
        if seq == 0 || len > self.capacity {
            return Ok(None);
        }
        let data = &buf[SLOT_META..SLOT_META + len];
        if hash(seq, data).as_ref() != &buf[16..48] {
            return Ok(None);
        }
        Ok(Some((seq, data.to_vec())))
    }
}

fn lock(file: &File, path: &Path) -> Result<(), StoreError> {
    match file.try_lock() {
        Ok(()) => Ok(()),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::InUse(path.to_owned())),
        Err(std::fs::TryLockError::Error(source)) => Err(StoreError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

fn hash(seq: u64, data: &[u8]) -> digest::Digest {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(&seq.to_be_bytes());
    ctx.update(&(data.len() as u32).to_be_bytes());
    ctx.update(data);
    ctx.finish()
}

impl Storage for FileStore {
    fn load(&mut self) -> Result<Option<Vec<u8>>, StoreError> {
        match self.current {
            None => Ok(None),
            Some(slot) => Ok(self.read_slot(slot)?.map(|(_, d)| d)),
        }
    }

    fn commit(&mut self, record: &[u8]) -> Result<(), StoreError> {
        self.write(record)?;
        self.sync()
    }

    fn commit_unsynced(&mut self, record: &[u8]) -> Result<(), StoreError> {
        self.write(record)
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        if self.stopped {
            return Err(StoreError::Stopped(self.path.clone()));
        }
        if self.current == self.durable {
            return Ok(());
        }
        if let Err(source) = self.file.sync_data() {
            // The kernel may have dropped the pages it could not write and
            // report the next fsync clean: the slot cannot be trusted.
            self.stopped = true;
            return Err(StoreError::Io {
                path: self.path.clone(),
                source,
            });
        }
        FILE_SYNCS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.durable = self.current;
        Ok(())
    }

    fn capacity(&self) -> usize {
        self.capacity
    }
}

impl FileStore {
    /// Writes `record` into the slot that does not hold the last synced
    /// record, without waiting for the disk.
    fn write(&mut self, record: &[u8]) -> Result<(), StoreError> {
        if self.stopped {
            return Err(StoreError::Stopped(self.path.clone()));
        }
        if record.len() > self.capacity {
            return Err(StoreError::Full {
                len: record.len(),
                capacity: self.capacity,
            });
        }
        let slot = match self.durable {
            Some(s) => 1 - s,
            None => 0,
        };
        let seq = self.seq + 1;
        let mut buf = Vec::with_capacity(SLOT_META + record.len());
        buf.extend_from_slice(&seq.to_be_bytes());
        buf.extend_from_slice(&(record.len() as u32).to_be_bytes());
        buf.extend_from_slice(&[0; 4]);
        buf.extend_from_slice(hash(seq, record).as_ref());
        buf.extend_from_slice(record);
        let io = |source| StoreError::Io {
            path: self.path.clone(),
            source,
        };
        if let Err(e) = self.file.write_all_at(&buf, self.slot_offset(slot)) {
            // The slot may be torn: the last synced record is the one
            // whole record on the disk. If the torn slot held unsynced
            // commits the card still counts on, the store stops: the card
            // must not report them, nor build on them.
            if self.current != self.durable {
                self.stopped = true;
            }
            self.current = self.durable;
            return Err(io(e));
        }
        FILE_COMMITS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.seq = seq;
        self.current = Some(slot);
        Ok(())
    }
}

/// A store in memory, for tests; it can be told to fail.
#[derive(Debug, Default, Clone)]
pub struct MemStore {
    record: Option<Vec<u8>>,
    /// What a power cut leaves: the last synced record.
    synced: Option<Vec<u8>>,
    /// A failed commit lost unsynced ones ([`StoreError::Stopped`]).
    stopped: bool,
    capacity: usize,
    /// When set, the next commits fail with [`StoreError::Injected`].
    pub fail_commits: bool,
    /// Number of successful commits.
    pub commits: u64,
}

impl MemStore {
    /// An empty store of the given capacity.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            ..Self::default()
        }
    }

    /// A power cut: unsynced commits are lost, the last synced record is
    /// what the store holds.
    pub fn power_cut(&mut self) {
        self.record = self.synced.clone();
    }

    fn write(&mut self, record: &[u8]) -> Result<(), StoreError> {
        if self.stopped {
            return Err(StoreError::Stopped(PathBuf::from("(memory)")));
        }
        if self.fail_commits {
            // As the file store: unsynced commits are gone with the torn
            // slot, and the store stops.
            if self.record != self.synced {
                self.record.clone_from(&self.synced);
                self.stopped = true;
            }
            return Err(StoreError::Injected);
        }
        if record.len() > self.capacity {
            return Err(StoreError::Full {
                len: record.len(),
                capacity: self.capacity,
            });
        }
        self.record = Some(record.to_vec());
        self.commits += 1;
        Ok(())
    }
}

impl Storage for MemStore {
    fn load(&mut self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.record.clone())
    }

    fn commit(&mut self, record: &[u8]) -> Result<(), StoreError> {
        self.write(record)?;
        self.sync()
    }

    fn commit_unsynced(&mut self, record: &[u8]) -> Result<(), StoreError> {
        self.write(record)
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        if self.stopped {
            return Err(StoreError::Stopped(PathBuf::from("(memory)")));
        }
        self.synced.clone_from(&self.record);
        Ok(())
    }

    fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Damages the current slot's record as a write torn by a power cut
    /// would.
    fn tear(s: &FileStore) {
        let off = s.slot_offset(s.current.unwrap()) + SLOT_META as u64;
        s.file.write_all_at(b"XX", off).unwrap();
    }

    /// The record the store at `p` holds, opened again.
    fn reopened(p: &std::path::Path) -> Option<Vec<u8>> {
        FileStore::open(p).unwrap().load().unwrap()
    }

    #[test]
    fn records_survive_reopen_and_alternate_slots() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("card");
        let mut s = FileStore::create(&p, 100).unwrap();
        assert_eq!(s.load().unwrap(), None);
        s.commit(b"one").unwrap();
        s.commit(b"two").unwrap();
        drop(s);
        let mut s = FileStore::open(&p).unwrap();
        assert_eq!(s.load().unwrap().as_deref(), Some(&b"two"[..]));
        s.commit(b"three").unwrap();
        drop(s);
        assert_eq!(reopened(&p).as_deref(), Some(&b"three"[..]));
    }

    #[test]
    fn torn_write_of_new_slot_keeps_old_record() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("card");
        let mut s = FileStore::create(&p, 64).unwrap();
        s.commit(b"old").unwrap();
        s.commit(b"newer").unwrap();
        // Damage the slot holding "newer" as a torn write would.
        tear(&s);
        drop(s);
        assert_eq!(reopened(&p).as_deref(), Some(&b"old"[..]));
    }

    #[test]
    fn unsynced_commits_never_overwrite_the_last_synced_record() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("card");
        let mut s = FileStore::create(&p, 64).unwrap();
        s.commit(b"synced").unwrap();
        let synced = s.current;
        s.commit_unsynced(b"one").unwrap();
        s.commit_unsynced(b"two").unwrap();
        assert_ne!(s.current, synced, "unsynced commits go to the other slot");
        assert_eq!(s.load().unwrap().as_deref(), Some(&b"two"[..]));
        // A power cut tears the slot being written: the synced record is
        // whole.
        tear(&s);
        drop(s);
        let mut s = FileStore::open(&p).unwrap();
        assert_eq!(s.load().unwrap().as_deref(), Some(&b"synced"[..]));
        // A synced commit after unsynced ones takes their slot and is the
        // one the next unsynced commit keeps.
        s.commit_unsynced(b"three").unwrap();
        s.commit(b"four").unwrap();
        let four = s.current;
        s.commit_unsynced(b"five").unwrap();
        assert_ne!(s.current, four);
        tear(&s);
        drop(s);
        assert_eq!(reopened(&p).as_deref(), Some(&b"four"[..]));
    }

    #[test]
    fn an_unsynced_record_left_by_a_process_is_read_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("card");
        let mut s = FileStore::create(&p, 64).unwrap();
        s.commit(b"synced").unwrap();
        s.commit_unsynced(b"last").unwrap();
        drop(s);
        // The process ended, the machine did not: the page cache holds it.
        let mut s = FileStore::open(&p).unwrap();
        assert_eq!(s.load().unwrap().as_deref(), Some(&b"last"[..]));
        // Opening made it durable, so the next write takes the other slot.
        let last = s.current;
        s.commit_unsynced(b"next").unwrap();
        assert_ne!(s.current, last);
    }

    #[test]
    fn a_power_cut_loses_only_unsynced_commits_in_memory_too() {
        let mut s = MemStore::new(64);
        s.commit(b"synced").unwrap();
        s.commit_unsynced(b"lost").unwrap();
        s.power_cut();
        assert_eq!(s.load().unwrap().as_deref(), Some(&b"synced"[..]));
        s.commit_unsynced(b"kept").unwrap();
        s.sync().unwrap();
        s.power_cut();
        assert_eq!(s.load().unwrap().as_deref(), Some(&b"kept"[..]));
    }

    #[test]
    fn a_failed_commit_that_loses_unsynced_ones_stops_the_store() {
        let mut s = MemStore::new(64);
        s.commit(b"synced").unwrap();
        // Without unsynced commits at stake a failure only fails.
        s.fail_commits = true;
        assert!(matches!(s.commit(b"x"), Err(StoreError::Injected)));
        s.fail_commits = false;
        s.commit_unsynced(b"unsynced").unwrap();
        s.fail_commits = true;
        assert!(matches!(s.commit(b"y"), Err(StoreError::Injected)));
        s.fail_commits = false;
        // The unsynced commit is gone: nothing may be reported or built on
        // it until the store is opened again.
        assert_eq!(s.load().unwrap().as_deref(), Some(&b"synced"[..]));
        assert!(matches!(s.sync(), Err(StoreError::Stopped(_))));
        assert!(matches!(s.commit(b"z"), Err(StoreError::Stopped(_))));
        assert!(matches!(
            s.commit_unsynced(b"z"),
            Err(StoreError::Stopped(_))
        ));
    }

    #[test]
    fn over_budget_record_is_refused_and_old_kept() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("card");
        let mut s = FileStore::create(&p, 8).unwrap();
        s.commit(b"ok").unwrap();
        assert!(matches!(
            s.commit(&[0; 9]),
            Err(StoreError::Full {
                len: 9,
                capacity: 8
            })
        ));
        assert_eq!(s.load().unwrap().as_deref(), Some(&b"ok"[..]));
    }

    #[test]
    fn second_opener_is_refused_and_foreign_files_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("card");
        let _s = FileStore::create(&p, 8).unwrap();
        assert!(matches!(FileStore::open(&p), Err(StoreError::InUse(_))));
        assert!(FileStore::create(&p, 8).is_err(), "never overwrites");
        let q = dir.path().join("other");
        std::fs::write(&q, b"hello world, not a store").unwrap();
        std::fs::set_permissions(&q, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            FileStore::open(&q),
            Err(StoreError::NotAStore { .. })
        ));
    }

    #[test]
    fn a_store_is_owner_only_and_an_exposed_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("card");
        drop(FileStore::create(&p, 8).unwrap());
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&p), 0o600);
        for exposed in [0o640, 0o604, 0o660, 0o606] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(exposed)).unwrap();
            let Err(e) = FileStore::open(&p) else {
                panic!("mode {exposed:04o} was accepted");
            };
            assert!(
                matches!(e, StoreError::Exposed { mode, .. } if mode == exposed),
                "{e}"
            );
            assert!(e.to_string().contains("chmod 600"), "{e}");
        }
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(FileStore::open(&p).is_ok());
    }
}
