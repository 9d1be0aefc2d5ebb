//! Where the app socket lives ([`default_socket_path`]) and its folder,
//! checked before daemon or client uses it.
//!
//! Whoever controls the folder that holds the app socket can put a socket
//! of their own there and receive what apps send the daemon, the wallet's
//! `verify-pin` with the PIN first. The default folder of a user without a
//! runtime directory, `/tmp/tenet-UID`, can be created by any local user
//! before the daemon first starts. So both sides check the folder, the way
//! OpenSSH checks the files it trusts, and refuse it unless:
//! - it is a directory, not a symbolic link;
//! - it belongs to the user running the check or to root;
//! - others cannot write to it, unless it has the sticky bit (as `/tmp`):
//!   then no one can remove or replace a socket that is not theirs;
//! - its group can write to it only if that group is the one the socket is
//!   shared with (`host.socket_mode` grants the group access, and the
//!   socket belongs to the folder's group), and only with the sticky bit,
//!   so that no member of the group can remove or replace the daemon's
//!   socket;
//! - every folder above it belongs to root or to the user, and is writable
//!   by no one else unless it has the sticky bit (as `/tmp` has);
//! - for a client, the socket itself belongs to the folder's owner, to
//!   root or to the user.
//!
//! The check reads the file system only; it has no other effect.

use std::fmt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The default app socket path, used by daemon and clients alike:
/// `$TENET_SOCKET` if set; else `$XDG_RUNTIME_DIR/tenet/host.sock`; else
/// `/run/tenet/host.sock` for root; else `/tmp/tenet-UID/host.sock`.
pub fn default_socket_path() -> PathBuf {
    if let Some(p) = std::env::var_os("TENET_SOCKET").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|p| !p.is_empty()) {
        return PathBuf::from(d).join("tenet/host.sock");
    }
    let uid = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m));
    match uid {
        Ok(0) => PathBuf::from("/run/tenet/host.sock"),
        Ok(uid) => PathBuf::from(format!("/tmp/tenet-{uid}/host.sock")),
        Err(_) => PathBuf::from("/run/tenet/host.sock"),
    }
}

/// Why a socket folder is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsafe app socket folder {}: {problem}", dir.display())]
pub struct UnsafeSocketDir {
    /// The folder.
    pub dir: PathBuf,
    /// What is wrong with it, and how to fix it.
    pub problem: Problem,
}

/// What is wrong with a socket folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// It could not be read.
    Unreadable(String),
    /// It is not a directory (or is a symbolic link).
    NotADirectory,
    /// It belongs to another user than the one checking, who is not root.
    Owner {
        /// Its owner.
        owner: u32,
        /// The user checking.
        me: u32,
    },
    /// Others can write to it.
    WritableByOthers {
        /// Its permission bits.
        mode: u32,
    },
    /// Its group can write to it, and the socket is not shared with that
    /// group, or the folder lacks the sticky bit.
    WritableByGroup {
        /// Its permission bits.
        mode: u32,
        /// Its group.
        gid: u32,
    },
    /// A folder above it could be changed by someone else.
    Ancestor {
        /// That folder.
        dir: PathBuf,
        /// Its owner.
        owner: u32,
        /// Its permission bits.
        mode: u32,
    },
    /// The socket belongs to someone else than the folder's owner, root or
    /// the user.
    SocketOwner {
        /// The socket's owner.
        owner: u32,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Unreadable(e) => write!(f, "cannot read it: {e}"),
            Problem::NotADirectory => write!(f, "not a directory (a symbolic link or a file)"),
            Problem::Owner { owner, me } => write!(
                f,
                "owned by uid {owner}, neither you (uid {me}) nor root; \
                 another user may have created it: remove it, or choose another socket path"
            ),
            Problem::WritableByOthers { mode } => write!(
                f,
                "writable by others without the sticky bit (mode {mode:04o}): anyone could \
                 replace the socket; chmod o-w the folder, or choose another socket path"
            ),
            Problem::WritableByGroup { mode, gid } => write!(
                f,
                "writable by its group {gid} (mode {mode:04o}): chmod g-w the folder, or, to \
                 share the socket with that group, give the folder the sticky bit (chmod +t) and \
                 the socket group bits (host.socket_mode) and the folder's group"
            ),
            Problem::Ancestor { dir, owner, mode } => write!(
                f,
                "the folder above it, {} (owner uid {owner}, mode {mode:04o}), could be changed \
                 by another user: it must belong to root or you and be writable by no one else \
                 unless it has the sticky bit",
                dir.display()
            ),
            Problem::SocketOwner { owner } => write!(
                f,
                "the socket in it belongs to uid {owner}, neither the folder's owner, root nor you"
            ),
        }
    }
}

/// Who is checking: the effective user and group ids of this process.
#[allow(unsafe_code)]
fn me() -> (u32, u32) {
    // SAFETY: geteuid and getegid have no preconditions and cannot fail.
    unsafe { (libc::geteuid(), libc::getegid()) }
}

/// The group a socket created in the folder `meta` by this process gets:
/// the folder's own under its set-group-id bit, else this process's.
pub fn socket_group(meta: &std::fs::Metadata) -> u32 {
    if meta.mode() & 0o2000 != 0 {
        meta.gid()
    } else {
        me().1
    }
}

/// Checks the folder `dir` for the daemon, which will create its socket
/// there with permission bits `socket_mode`.
pub fn check_for_daemon(dir: &Path, socket_mode: u32) -> Result<(), UnsafeSocketDir> {
    check(dir, |meta| {
        socket_mode & 0o060 != 0 && socket_group(meta) == meta.gid()
    })
}

/// Checks the folder of the socket `socket` for a client.
pub fn check_for_client(socket: &Path) -> Result<(), UnsafeSocketDir> {
    let Some(dir) = socket.parent().filter(|p| !p.as_os_str().is_empty()) else {
        return Ok(()); // the current directory, chosen by the user
    };
    check(dir, |meta| {
        // Shared with the folder's group only if the socket says so.
        std::fs::symlink_metadata(socket)
            .is_ok_and(|s| s.gid() == meta.gid() && s.permissions().mode() & 0o060 != 0)
    })?;
    if let (Ok(folder), Ok(sock)) = (std::fs::metadata(dir), std::fs::symlink_metadata(socket)) {
        let owner = sock.uid();
        if owner != folder.uid() && owner != 0 && owner != me().0 {
            return Err(UnsafeSocketDir {
                dir: dir.to_owned(),
                problem: Problem::SocketOwner { owner },
            });
        }
    }
    Ok(())
}

fn check(
    dir: &Path,
    shared_with_group: impl Fn(&std::fs::Metadata) -> bool,
) -> Result<(), UnsafeSocketDir> {
    let refuse = |problem| UnsafeSocketDir {
        dir: dir.to_owned(),
        problem,
    };
    let meta =
        std::fs::symlink_metadata(dir).map_err(|e| refuse(Problem::Unreadable(e.to_string())))?;
    if !meta.is_dir() {
        return Err(refuse(Problem::NotADirectory));
    }
    let (uid, _) = me();
    if meta.uid() != uid && meta.uid() != 0 {
        return Err(refuse(Problem::Owner {
            owner: meta.uid(),
            me: uid,
        }));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o002 != 0 && mode & 0o1000 == 0 {
        return Err(refuse(Problem::WritableByOthers { mode }));
    }
    // A public sticky folder (as /tmp) is fine: no one replaces a socket
    // that is not theirs there. A group-writable one must be sticky and
    // shared with that group.
    let public_sticky = mode & 0o1002 == 0o1002;
    if mode & 0o020 != 0 && !public_sticky && (mode & 0o1000 == 0 || !shared_with_group(&meta)) {
        return Err(refuse(Problem::WritableByGroup {
            mode,
            gid: meta.gid(),
        }));
    }
    // The folders above: whoever can rename one can swap the whole path.
    let canonical =
        std::fs::canonicalize(dir).map_err(|e| refuse(Problem::Unreadable(e.to_string())))?;
    for up in canonical.ancestors().skip(1) {
        let m = std::fs::metadata(up).map_err(|e| refuse(Problem::Unreadable(e.to_string())))?;
        let mode = m.permissions().mode() & 0o7777;
        let owner_ok = m.uid() == 0 || m.uid() == uid;
        let others_write = mode & 0o022 != 0 && mode & 0o1000 == 0;
        if !owner_ok || others_write {
            return Err(refuse(Problem::Ancestor {
                dir: up.to_owned(),
                owner: m.uid(),
                mode,
            }));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(mode: u32) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(mode)).unwrap();
        d
    }

    #[test]
    fn a_private_folder_is_accepted() {
        let d = dir_with(0o700);
        assert_eq!(check_for_daemon(d.path(), 0o600), Ok(()));
        assert_eq!(check_for_client(&d.path().join("host.sock")), Ok(()));
        let d = dir_with(0o750);
        assert_eq!(check_for_daemon(d.path(), 0o660), Ok(()));
    }

    #[test]
    fn a_folder_others_can_write_is_refused() {
        let d = dir_with(0o777);
        let e = check_for_daemon(d.path(), 0o660).unwrap_err();
        assert_eq!(e.problem, Problem::WritableByOthers { mode: 0o777 });
        assert!(e.to_string().contains("writable by others"), "{e}");
        let e = check_for_client(&d.path().join("host.sock")).unwrap_err();
        assert_eq!(e.problem, Problem::WritableByOthers { mode: 0o777 });
        // With the sticky bit, as /tmp has it, no one can replace a socket
        // that is not theirs; the client also checks whose the socket is.
        let d = dir_with(0o1777);
        assert_eq!(check_for_daemon(d.path(), 0o600), Ok(()));
    }

    #[test]
    fn a_group_writable_folder_needs_the_socket_shared_with_that_group() {
        // Without the sticky bit, a member of the group could replace the
        // daemon's socket: refused even when shared.
        let d = dir_with(0o2770);
        let e = check_for_daemon(d.path(), 0o660).unwrap_err();
        assert!(matches!(e.problem, Problem::WritableByGroup { .. }), "{e}");
        let d = dir_with(0o3770); // set-group-id (the socket gets the folder's group), sticky
        assert_eq!(check_for_daemon(d.path(), 0o660), Ok(()));
        let e = check_for_daemon(d.path(), 0o600).unwrap_err();
        assert!(matches!(e.problem, Problem::WritableByGroup { .. }), "{e}");
        // The client reads the sharing off the socket itself.
        let sock = d.path().join("host.sock");
        let e = check_for_client(&sock).unwrap_err();
        assert!(
            matches!(e.problem, Problem::WritableByGroup { .. }),
            "no socket: {e}"
        );
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o660)).unwrap();
        assert_eq!(check_for_client(&sock), Ok(()));
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(check_for_client(&sock).is_err());
    }

    #[test]
    fn a_folder_above_that_others_can_change_is_refused() {
        let top = dir_with(0o777);
        let d = top.path().join("run");
        std::fs::create_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
        let e = check_for_daemon(&d, 0o600).unwrap_err();
        assert!(
            matches!(&e.problem, Problem::Ancestor { dir, .. } if dir == &std::fs::canonicalize(top.path()).unwrap()),
            "{e}"
        );
        // With the sticky bit (as /tmp), no one else can rename it away.
        std::fs::set_permissions(top.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert_eq!(check_for_daemon(&d, 0o600), Ok(()));
    }

    #[test]
    fn a_socket_of_another_user_is_refused_by_the_client() {
        assert_eq!(
            me().0,
            0,
            "only root can give a socket away: run this test as root, as the test command does"
        );
        let d = dir_with(0o700);
        let sock = d.path().join("host.sock");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        assert_eq!(check_for_client(&sock), Ok(()));
        std::os::unix::fs::chown(&sock, Some(12345), None).unwrap();
        assert_eq!(
            check_for_client(&sock).unwrap_err().problem,
            Problem::SocketOwner { owner: 12345 }
        );
    }

    #[test]
    fn a_symbolic_link_or_a_file_is_refused() {
        let d = dir_with(0o700);
        let target = d.path().join("real");
        std::fs::create_dir(&target).unwrap();
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert_eq!(
            check_for_daemon(&link, 0o600).unwrap_err().problem,
            Problem::NotADirectory
        );
        let file = d.path().join("file");
        std::fs::write(&file, b"").unwrap();
        assert_eq!(
            check_for_daemon(&file, 0o600).unwrap_err().problem,
            Problem::NotADirectory
        );
    }

    #[test]
    fn a_folder_of_another_user_is_refused() {
        assert_eq!(
            me().0,
            0,
            "only root can give a folder away: run this test as root, as the test command does"
        );
        let d = dir_with(0o700);
        std::os::unix::fs::chown(d.path(), Some(12345), None).unwrap();
        let e = check_for_daemon(d.path(), 0o600).unwrap_err();
        assert_eq!(
            e.problem,
            Problem::Owner {
                owner: 12345,
                me: 0
            }
        );
        assert!(e.to_string().contains("owned by uid 12345"), "{e}");
    }
}
