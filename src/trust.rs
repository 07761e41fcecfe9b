//! Whether a file may steer this process: the configuration file (which names the code to
//! load and the files to write) and the real module (code run in the process).
//!
//! The rule is the one sshd applies to its own files (StrictModes) and sudo to sudoers:
//! the file, and every directory on its resolved path up to `/`, must be owned by root
//! or by the user the process acts as (its effective uid), and writable by no one else.
//! A directory writable by others is accepted only when it is sticky (`/tmp`) and the
//! entry below it belongs to root or that user, since then no one else can rename or
//! replace that entry. Group write counts as "someone else": group membership changes
//! outside the file's view. ACLs are not consulted.
//!
//! A file that passes cannot be swapped before it is used: every directory leading to it
//! is controlled by root or the process's own user. Callers open the resolved path this
//! returns, never the name they were given again.

use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Why a file is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Untrusted {
    /// The file as named.
    pub file: PathBuf,
    /// The path component at fault (the file itself or a directory above it).
    pub culprit: PathBuf,
    /// Its owner's uid.
    pub owner: u32,
    /// Its permission bits.
    pub mode: u32,
    /// What is wrong with it.
    pub problem: &'static str,
    /// The user the process acts as.
    pub euid: u32,
}

fn user(uid: u32) -> String {
    match crate::os::user_name(uid) {
        Some(n) => format!("{n} (uid {uid})"),
        None => format!("uid {uid}"),
    }
}

impl Untrusted {
    /// Why the file is refused, without naming the file itself (the caller does): the
    /// culprit's owner and mode, and the rule.
    pub fn reason(&self) -> String {
        let whose = if self.culprit == self.file {
            String::new()
        } else {
            format!("its directory {} has ", self.culprit.display())
        };
        format!(
            "{whose}owner {}, mode {:04o}: {}; keytrail uses only files that root or the user \
             it runs as ({}) owns and no one else can write, on a path no one else can change",
            user(self.owner),
            self.mode & 0o7777,
            self.problem,
            user(self.euid),
        )
    }
}

impl fmt::Display for Untrusted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} is refused: {}", self.file.display(), self.reason())
    }
}

impl std::error::Error for Untrusted {}

/// Checks `file` for a process acting as `euid`; returns its resolved path (symbolic
/// links followed), which is what the caller must open. An I/O error (the file does not
/// exist) is returned as such, for the caller to word.
pub fn check(file: &Path, euid: u32) -> Result<PathBuf, TrustError> {
    let resolved = std::fs::canonicalize(file).map_err(TrustError::Io)?;
    let meta = std::fs::metadata(&resolved).map_err(TrustError::Io)?;
    check_opened(file, &resolved, &meta, euid)?;
    Ok(resolved)
}

/// Checks the metadata of a file already opened (its descriptor's `fstat`) and the
/// directories above its resolved path.
pub fn check_opened(
    file: &Path,
    resolved: &Path,
    meta: &std::fs::Metadata,
    euid: u32,
) -> Result<(), TrustError> {
    let untrusted = |culprit: &Path, m: &std::fs::Metadata, problem| {
        TrustError::Untrusted(Untrusted {
            file: file.to_path_buf(),
            culprit: culprit.to_path_buf(),
            owner: m.uid(),
            mode: m.mode(),
            problem,
            euid,
        })
    };
    if let Some(problem) = entry_problem(meta, euid) {
        return Err(untrusted(resolved, meta, problem));
    }
    let mut below_owner = meta.uid();
    for dir in resolved.ancestors().skip(1) {
        let m = std::fs::metadata(dir).map_err(TrustError::Io)?;
        if let Some(problem) = dir_problem(&m, below_owner, euid) {
            return Err(untrusted(dir, &m, problem));
        }
        below_owner = m.uid();
    }
    Ok(())
}

/// Why [`check`] failed.
#[derive(Debug)]
pub enum TrustError {
    /// The file or a directory above it cannot be examined.
    Io(std::io::Error),
    /// The file is not safe to use.
    Untrusted(Untrusted),
}

impl fmt::Display for TrustError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrustError::Io(e) => write!(f, "{e}"),
            TrustError::Untrusted(u) => write!(f, "{u}"),
        }
    }
}

fn trusted_owner(uid: u32, euid: u32) -> bool {
    uid == 0 || uid == euid
}

fn entry_problem(m: &std::fs::Metadata, euid: u32) -> Option<&'static str> {
    if !m.is_file() {
        Some("it is not a regular file")
    } else if !trusted_owner(m.uid(), euid) {
        Some("it belongs to another user")
    } else if m.mode() & 0o022 != 0 {
        Some("group or others may write it")
    } else {
        None
    }
}

fn dir_problem(m: &std::fs::Metadata, below_owner: u32, euid: u32) -> Option<&'static str> {
    const STICKY: u32 = 0o1000;
    if !trusted_owner(m.uid(), euid) {
        Some("that directory belongs to another user")
    } else if m.mode() & 0o022 != 0 && !(m.mode() & STICKY != 0 && trusted_owner(below_owner, euid))
    {
        Some("group or others may write that directory, so they may replace what is in it")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    fn untrusted(r: Result<PathBuf, TrustError>) -> Untrusted {
        match r {
            Err(TrustError::Untrusted(u)) => u,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn own_private_file_in_a_private_directory_is_trusted() {
        let dir = tempfile::tempdir().expect("dir");
        let f = dir.path().join("keytrail.toml");
        std::fs::write(&f, "x").expect("write");
        chmod(&f, 0o644);
        let euid = crate::os::euid();
        assert_eq!(
            check(&f, euid).expect("trusted"),
            std::fs::canonicalize(&f).expect("canonical")
        );
        // System files belong to root: trusted whoever asks.
        check(Path::new("/bin/sh"), 12345).expect("root's file");
    }

    #[test]
    fn writable_by_group_or_others_is_refused_with_owner_and_mode() {
        let dir = tempfile::tempdir().expect("dir");
        let f = dir.path().join("m.so");
        std::fs::write(&f, "x").expect("write");
        let euid = crate::os::euid();
        for mode in [0o664, 0o646, 0o666] {
            chmod(&f, mode);
            let u = untrusted(check(&f, euid));
            assert_eq!(u.culprit, std::fs::canonicalize(&f).expect("canonical"));
            assert_eq!(u.mode & 0o777, mode);
            let msg = u.to_string();
            assert!(msg.contains(&f.display().to_string()), "{msg}");
            assert!(msg.contains(&format!("mode 0{mode:o}")), "{msg}");
            assert!(msg.contains(&format!("uid {euid}")), "{msg}");
        }
        chmod(&f, 0o644);
        chmod(dir.path(), 0o777);
        let u = untrusted(check(&f, euid));
        assert_eq!(u.culprit, std::fs::canonicalize(dir.path()).expect("dir"));
        assert!(u.to_string().contains("its directory"), "{u}");
        // Sticky, like /tmp: others cannot replace an entry they do not own.
        chmod(dir.path(), 0o1777);
        check(&f, euid).expect("sticky directory, own file");
    }

    #[test]
    fn another_users_file_is_refused_and_a_symlink_is_resolved() {
        let dir = tempfile::tempdir().expect("dir");
        let f = dir.path().join("m.so");
        std::fs::write(&f, "x").expect("write");
        let link = dir.path().join("link.so");
        std::os::unix::fs::symlink(&f, &link).expect("symlink");
        let euid = crate::os::euid();
        assert_eq!(
            check(&link, euid).expect("trusted"),
            std::fs::canonicalize(&f).expect("canonical")
        );
        // A file of another user (made so only when root can chown it).
        if euid == 0 {
            std::os::unix::fs::chown(&f, Some(65534), None).expect("chown");
            let u = untrusted(check(&link, 0));
            assert_eq!(u.owner, 65534);
            let msg = u.to_string();
            assert!(msg.contains("another user"), "{msg}");
            assert!(msg.contains(&link.display().to_string()), "{msg}");
        } else {
            let u = untrusted(check(&f, euid + 1));
            assert!(u.to_string().contains("another user"), "{u}");
        }
    }
}
