//! The trail's directory, held open: every file keytrail writes is opened relative to it
//! (`openat`) and never through a symbolic link, so no one can redirect records by
//! replacing the directory or a name in it with a link between a check and an open.
//!
//! The directory must be one that no other user can change: owned by this process's user
//! (or by root), and writable by no one else — unless it is sticky and this process's user
//! owns it, since then others cannot rename or remove what keytrail created in it. Group
//! write counts as someone else, as in [`crate::trust`].

use rustix::fs::{AtFlags, Mode, OFlags};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

const STICKY: u32 = 0o1000;

/// An open trail directory.
pub struct TrailDir {
    fd: OwnedFd,
    path: PathBuf,
    dev: u64,
    ino: u64,
}

/// Identity and size of a name in the directory, as `lstat` sees it.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    /// Device.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
    /// Size in bytes.
    pub len: u64,
    /// Owner.
    pub uid: u32,
    /// A regular file (not a link, device or FIFO).
    pub regular: bool,
}

fn err(message: String) -> std::io::Error {
    std::io::Error::other(message)
}

fn user(uid: u32) -> String {
    match crate::os::user_name(uid) {
        Some(n) => format!("{n} (uid {uid})"),
        None => format!("uid {uid}"),
    }
}

/// Why this directory may not hold a trail, if it may not.
fn dir_problem(uid: u32, mode: u32, euid: u32) -> Option<&'static str> {
    let others_write = mode & 0o022 != 0;
    if uid != euid && uid != 0 {
        Some("it belongs to another user, who could replace the trail's files")
    } else if others_write && !(mode & STICKY != 0 && uid == euid) {
        Some(
            "group or others may write it and it is not a sticky directory of this \
             process's user, so they could replace or remove the trail's files",
        )
    } else {
        None
    }
}

impl TrailDir {
    /// Opens (creating it 0700 if missing) the directory `path`, refusing a symbolic link
    /// and a directory that another user could change.
    pub fn open(path: &Path) -> std::io::Result<TrailDir> {
        let path = if path.as_os_str().is_empty() {
            Path::new(".")
        } else {
            path
        };
        if std::fs::symlink_metadata(path).is_err() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(path)?;
        }
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| {
            let link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
            if link {
                err(format!(
                    "the trail directory {} is a symbolic link; keytrail never writes through one",
                    path.display()
                ))
            } else {
                // Kept as the OS error: running out of descriptors is told apart by its
                // errno (the caller names the trail's path).
                std::io::Error::from(e)
            }
        })?;
        let st = rustix::fs::fstat(&fd)?;
        let euid = crate::os::euid();
        let mode = st.st_mode & 0o7777;
        if let Some(problem) = dir_problem(st.st_uid, mode, euid) {
            return Err(err(format!(
                "the trail directory {} (owner {}, mode {mode:04o}) is refused: {problem}; \
                 keytrail writes only into a directory that root or the user it runs as ({}) \
                 owns and no one else can write",
                path.display(),
                user(st.st_uid),
                user(euid),
            )));
        }
        Ok(TrailDir {
            fd,
            path: path.to_path_buf(),
            dev: st.st_dev,
            ino: st.st_ino,
        })
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the directory's path still names this directory (not removed, replaced or
    /// swapped for a link).
    pub fn still_there(&self) -> bool {
        rustix::fs::lstat(&self.path).is_ok_and(|st| st.st_dev == self.dev && st.st_ino == self.ino)
    }

    /// Opens `name` in the directory for appending: created 0600, never through a link,
    /// never another user's file, a loose mode made 0600. Write-only: opened for reading
    /// too, a FIFO would never block the writer.
    pub fn open_file(&self, name: &OsStr) -> std::io::Result<File> {
        self.open_file_with(name, OFlags::empty())
    }

    fn open_file_with(&self, name: &OsStr, extra: OFlags) -> std::io::Result<File> {
        let shown = self.path.join(name);
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::WRONLY
                | OFlags::APPEND
                | OFlags::CREATE
                | OFlags::NOFOLLOW
                | OFlags::CLOEXEC
                | extra,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| {
            if e == rustix::io::Errno::LOOP {
                err(format!(
                    "{} is a symbolic link; keytrail never writes through one",
                    shown.display()
                ))
            } else {
                std::io::Error::from(e)
            }
        })?;
        let st = rustix::fs::fstat(&fd)?;
        let euid = crate::os::euid();
        if st.st_uid != euid {
            return Err(err(format!(
                "{} is owned by {}, not by this process's user ({}), who could edit it; \
                 refusing it (mode {:04o})",
                shown.display(),
                user(st.st_uid),
                user(euid),
                st.st_mode & 0o7777
            )));
        }
        if st.st_mode & 0o077 != 0 {
            // A trail readable or writable by others is made private before anything is
            // added to it.
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o600))?;
        }
        Ok(File::from(fd))
    }

    /// What `name` is in the directory, without following a link.
    pub fn entry(&self, name: &OsStr) -> Option<Entry> {
        let st = rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW).ok()?;
        Some(Entry {
            dev: st.st_dev,
            ino: st.st_ino,
            len: st.st_size as u64,
            uid: st.st_uid,
            regular: st.st_mode & libc::S_IFMT == libc::S_IFREG,
        })
    }

    /// The names in the directory.
    pub fn names(&self) -> Vec<OsString> {
        let Ok(dir) = rustix::fs::Dir::read_from(self.fd.as_fd()) else {
            return Vec::new();
        };
        dir.filter_map(Result::ok)
            .map(|e| OsStr::from_bytes(e.file_name().to_bytes()).to_os_string())
            .filter(|n| n != "." && n != "..")
            .collect()
    }

    /// Reads up to `buf.len()` bytes from the start of `name`, without following a link.
    pub fn read_head(&self, name: &OsStr, buf: &mut [u8]) -> usize {
        let Ok(fd) = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
            Mode::empty(),
        ) else {
            return 0;
        };
        let mut n = 0;
        while n < buf.len() {
            match rustix::io::read(&fd, &mut buf[n..]) {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k,
            }
        }
        n
    }

    /// Removes `name` from the directory (a link itself, never what it points to).
    pub fn remove(&self, name: &OsStr) -> std::io::Result<()> {
        rustix::fs::unlinkat(&self.fd, name, AtFlags::empty()).map_err(Into::into)
    }
}

/// Opens a file for appending as the trail's files are opened: its directory held open and
/// checked, the file itself never through a link, never another user's, made 0600.
pub fn open_checked(path: &Path) -> std::io::Result<File> {
    let name = path
        .file_name()
        .ok_or_else(|| err(format!("{} names no file", path.display())))?;
    let dir = TrailDir::open(path.parent().unwrap_or(Path::new("")))?;
    dir.open_file(name)
}

/// Checks that a file could be opened as [`open_checked`] opens it, without waiting: a
/// FIFO with no reader is an error here rather than a caller blocked in open().
pub fn probe_checked(path: &Path) -> std::io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| err(format!("{} names no file", path.display())))?;
    let dir = TrailDir::open(path.parent().unwrap_or(Path::new("")))?;
    dir.open_file_with(name, OFlags::NONBLOCK).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    #[test]
    fn directory_rules() {
        let me = 1000;
        assert!(dir_problem(me, 0o700, me).is_none());
        assert!(
            dir_problem(0, 0o755, me).is_none(),
            "root's, not writable by others"
        );
        assert!(
            dir_problem(0, 0o1777, me).is_some(),
            "root's /tmp for another user"
        );
        assert!(dir_problem(0, 0o1777, 0).is_none(), "root's /tmp for root");
        assert!(
            dir_problem(me, 0o1777, me).is_none(),
            "own sticky directory"
        );
        assert!(dir_problem(me, 0o777, me).is_some());
        assert!(dir_problem(me, 0o770, me).is_some(), "group write");
        assert!(dir_problem(4242, 0o700, me).is_some(), "another user's");
    }

    #[test]
    fn a_linked_or_shared_directory_is_refused_naming_path_owner_and_mode() {
        let base = tempfile::tempdir().expect("dir");
        let real = base.path().join("real");
        std::fs::create_dir(&real).expect("real");
        let link = base.path().join("link");
        std::os::unix::fs::symlink(&real, &link).expect("link");
        let e = TrailDir::open(&link).err().expect("a link is refused");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert!(e.to_string().contains(&link.display().to_string()), "{e}");
        chmod(&real, 0o777);
        let e = TrailDir::open(&real).err().expect("world-writable refused");
        let msg = e.to_string();
        assert!(msg.contains("mode 0777"), "{msg}");
        assert!(msg.contains(&real.display().to_string()), "{msg}");
        assert!(msg.contains(&format!("uid {}", crate::os::euid())), "{msg}");
        chmod(&real, 0o1777);
        TrailDir::open(&real).expect("own sticky directory");
        chmod(&real, 0o700);
        let d = TrailDir::open(&real).expect("own private directory");
        std::os::unix::fs::symlink("/etc/passwd", real.join("k.jsonl")).expect("planted");
        let e = d
            .open_file(OsStr::new("k.jsonl"))
            .expect_err("a link is refused");
        assert!(e.to_string().contains("symbolic link"), "{e}");
    }
}
