//! Persistent host state: the software domain and its port counter.
//!
//! Files in the state directory:
//!
//! - `domain`: the generated software domain, 24 hex digits and a newline
//!   (only when the config sets none).
//! - `ports-DOMAIN`: the first port not yet reserved, decimal.
//!
//! Ports are reserved in blocks of [`PORT_BLOCK`]: the counter file is
//! rewritten (atomically: temporary file, fsync, rename, fsync of the
//! directory) before any port of a new block is handed out. A crash loses at
//! most the rest of a block; a port is never handed out twice, across
//! restarts and crashes alike. Port 0 is the domain owner and never assigned.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use tenet_proto::{Domain, Port};

/// Ports reserved per write of the counter file.
pub const PORT_BLOCK: u32 = 64;

/// A state file problem, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading or writing failed.
    #[error("state file {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file holds something else than expected.
    #[error("state file {path} is corrupt: {detail}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// Every port of the domain has been handed out.
    #[error("port counter of domain {0} is exhausted")]
    Exhausted(Domain),
    /// No randomness for a new domain.
    #[error("cannot generate a domain: {0}")]
    Random(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Replaces `path` with `bytes` so that a crash leaves the old content or
/// the new one, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    fs::rename(&tmp, path).map_err(io(path))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    Ok(())
}

/// Creates the state directory (mode 0700) if needed.
pub fn ensure_dir(dir: &Path) -> Result<(), StateError> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))
}

/// The configured domain, or the one generated earlier, or a new random one
/// (which is then kept).
pub fn load_domain(dir: &Path, configured: Option<Domain>) -> Result<Domain, StateError> {
    if let Some(d) = configured {
        return Ok(d);
    }
    let path = dir.join("domain");
    match fs::read_to_string(&path) {
        Ok(text) => text.trim().parse().map_err(|e| StateError::Corrupt {
            path: path.clone(),
            detail: format!("{e}"),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut b = [0u8; 12];
            getrandom::fill(&mut b).map_err(|e| StateError::Random(e.to_string()))?;
            let d = Domain::new(b);
            write_atomic(&path, format!("{d}\n").as_bytes())?;
            Ok(d)
        }
        Err(e) => Err(io(&path)(e)),
    }
}

/// Hands out the ports of one domain, never twice.
#[derive(Debug)]
pub struct PortAllocator {
    domain: Domain,
    path: PathBuf,
    next: u32,
    reserved_until: u32,
}

impl PortAllocator {
    /// Opens the counter of `domain` in `dir`.
    pub fn open(dir: &Path, domain: Domain) -> Result<Self, StateError> {
        let path = dir.join(format!("ports-{domain}"));
        let next = match fs::read_to_string(&path) {
            Ok(text) => text
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| StateError::Corrupt {
                    path: path.clone(),
                    detail: format!("expected a port number, found {:?}", text.trim()),
                })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 1,
            Err(e) => return Err(io(&path)(e)),
        };
        Ok(Self {
            domain,
            path,
            next,
            reserved_until: next,
        })
    }

    /// The next port, persisted before it is returned.
    pub fn allocate(&mut self) -> Result<Port, StateError> {
        if self.next == self.reserved_until {
            let until = self
                .next
                .checked_add(PORT_BLOCK)
                .ok_or(StateError::Exhausted(self.domain))?;
            write_atomic(&self.path, format!("{until}\n").as_bytes())?;
            self.reserved_until = until;
        }
        let p = Port::new(self.next);
        self.next += 1;
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_never_reused_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let d = Domain::new([5; 12]);
        let mut seen = std::collections::HashSet::new();
        for _restart in 0..5 {
            let mut a = PortAllocator::open(dir.path(), d).unwrap();
            for _ in 0..10 {
                let p = a.allocate().unwrap();
                assert_ne!(p, Port::OWNER);
                assert!(seen.insert(p), "port {p} handed out twice");
            }
            // Dropped without any shutdown step: as after a crash.
        }
    }

    #[test]
    fn domains_have_separate_counters() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = PortAllocator::open(dir.path(), Domain::new([1; 12])).unwrap();
        let mut b = PortAllocator::open(dir.path(), Domain::new([2; 12])).unwrap();
        assert_eq!(a.allocate().unwrap(), Port::new(1));
        assert_eq!(b.allocate().unwrap(), Port::new(1));
    }

    #[test]
    fn corrupt_counter_is_an_error_not_a_reset() {
        let dir = tempfile::tempdir().unwrap();
        let d = Domain::new([1; 12]);
        fs::write(dir.path().join(format!("ports-{d}")), "banana").unwrap();
        assert!(matches!(
            PortAllocator::open(dir.path(), d),
            Err(StateError::Corrupt { .. })
        ));
    }

    #[test]
    fn exhausted_counter_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let d = Domain::new([1; 12]);
        fs::write(
            dir.path().join(format!("ports-{d}")),
            format!("{}", u32::MAX - 1),
        )
        .unwrap();
        let mut a = PortAllocator::open(dir.path(), d).unwrap();
        assert!(matches!(a.allocate(), Err(StateError::Exhausted(_))));
    }

    #[test]
    fn generated_domain_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let d1 = load_domain(dir.path(), None).unwrap();
        let d2 = load_domain(dir.path(), None).unwrap();
        assert_eq!(d1, d2);
        let fixed = Domain::new([9; 12]);
        assert_eq!(load_domain(dir.path(), Some(fixed)).unwrap(), fixed);
    }
}
