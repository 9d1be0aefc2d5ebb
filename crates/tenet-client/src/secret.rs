//! Secrets (a PIN, a PUK) given to a command: from an owner-only file, or
//! as a value, the file first.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Why a secret file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    /// It cannot be opened or read.
    #[error("PIN file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Others may read or write it.
    #[error(
        "PIN file {0} is readable or writable by others (mode {mode:04o}); fix it with `chmod 600 {0}`",
        path.display()
    )]
    Open {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Its first line is empty.
    #[error("PIN file {} is empty", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
}

/// A secret given as a file or as a value (flag or environment), the file
/// first when both are: it is the channel that does not show in the
/// process list; `None` if neither.
pub fn given(value: Option<&str>, file: Option<&Path>) -> Result<Option<String>, SecretFileError> {
    match (file, value) {
        (Some(f), _) => read_secret_file(f).map(Some),
        (None, v) => Ok(v.map(str::to_owned)),
    }
}

/// The first line of `path`, which only its owner may read (checked on the
/// file as opened, so it cannot be swapped in between).
pub fn read_secret_file(path: &Path) -> Result<String, SecretFileError> {
    let io = |source| SecretFileError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mode = file.metadata().map_err(io)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SecretFileError::Open {
            path: path.to_owned(),
            mode,
        });
    }
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(io)?;
    match text.lines().next().unwrap_or("") {
        "" => Err(SecretFileError::Empty {
            path: path.to_owned(),
        }),
        pin => Ok(pin.to_owned()),
    }
}
