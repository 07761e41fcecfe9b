//! The trail's files: created 0600 in a directory created 0700, appended with O_APPEND
//! (so several processes sharing a file each write whole lines), rotated by time and by
//! size under names that sort in time order, and pruned to a retention count.
//!
//! Every file is opened relative to the trail's directory, held open ([`TrailDir`]), and
//! never through a symbolic link. Rotation never renames a file: each process appends to
//! the file named for the current period and index, so processes sharing a trail never
//! race on a rename. Retention deletes only files that keytrail wrote (a name it makes,
//! owned by this user, starting with a trail record) and that sort before the file in use.
//! (tracing-appender was considered; it creates files with the umask's permissions, has no
//! size limit, and renames are unsafe with several writer processes.)

use super::dir::TrailDir;
use crate::config::Rotate;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The trail's file set.
pub struct TrailFile {
    template: PathBuf,
    rotate: Rotate,
    max_bytes: Option<u64>,
    keep: Option<usize>,
    dir: Option<TrailDir>,
    current: Option<Current>,
    /// A write failed, possibly part-way through a line: the next write starts on a fresh
    /// line so the torn fragment cannot swallow the next record.
    torn: bool,
}

struct Current {
    file: File,
    name: OsString,
    path: PathBuf,
    period: String,
    index: u32,
    dev: u64,
    ino: u64,
    /// The file's tail is still to be checked before the first record: it may end
    /// mid-line (a process died or the disk filled mid-write), and the line is closed.
    check_tail: bool,
    /// The descriptor was inherited from the parent process (this child had none left to
    /// open its own): it is checked by path, with no directory descriptor.
    inherited: bool,
}

/// Something worth a record that happened while writing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// The file keytrail was writing was removed or replaced; it was reopened.
    Reopened { path: PathBuf },
    /// A new file was started.
    Rotated { path: PathBuf },
}

/// The trail file this process is writing, for a child after fork that has no descriptor
/// left to open its own (RLIMIT_NOFILE): the parent's descriptor is still open in the
/// child, which takes it over. Published before the previous file is closed, so the
/// descriptor named here is always open.
static INHERITABLE: parking_lot::Mutex<Option<(RawFd, u32, PathBuf)>> =
    parking_lot::Mutex::new(None);

fn publish(current: Option<&Current>) {
    // Only this process's writer takes the lock, and only for a moment; a child reads it
    // with try_lock, so a lock held across fork cannot hang it.
    if let Some(mut slot) = INHERITABLE.try_lock_for(std::time::Duration::from_millis(50)) {
        let pid = crate::os::pid();
        match current {
            Some(c) => *slot = Some((c.file.as_raw_fd(), pid, c.path.clone())),
            // A child that has not opened a file of its own keeps its parent's offer.
            None if slot.as_ref().is_some_and(|(_, by, _)| *by != pid) => {}
            None => *slot = None,
        }
    }
}

/// In a child after fork, the parent's trail descriptor (once: the child then owns it).
fn take_inherited() -> Option<(File, PathBuf)> {
    let mut slot = INHERITABLE.try_lock()?;
    match slot.take() {
        Some((fd, pid, path)) if pid != crate::os::pid() => {
            // SAFETY: the descriptor was open in the parent at fork (it is published before
            // the file it replaces is closed), so it is open in this child; the parent's
            // `File` for it lives in the parent's sink, which the child never drops, so
            // this `File` is its only owner here.
            let file = unsafe { File::from_raw_fd(fd) };
            Some((file, path))
        }
        other => {
            *slot = other;
            None
        }
    }
}

fn out_of_descriptors(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

impl TrailFile {
    /// A file set for a path template whose `{pid}` is already expanded.
    pub fn new(
        template: PathBuf,
        rotate: Rotate,
        max_bytes: Option<u64>,
        keep: Option<usize>,
    ) -> TrailFile {
        TrailFile {
            template,
            rotate,
            max_bytes,
            keep,
            dir: None,
            current: None,
            torn: false,
        }
    }

    /// The file being written, or that would be written now.
    pub fn current_path(&self) -> PathBuf {
        match &self.current {
            Some(c) => c.path.clone(),
            None => self.name(&period(self.rotate, SystemTime::now()), 0),
        }
    }

    /// Appends `buf` in one write, rotating or reopening first when needed. On failure
    /// says how many bytes of `buf` did reach the file.
    pub fn write(&mut self, buf: &[u8], now: SystemTime) -> Result<Option<Note>, WriteError> {
        self.write_inner(buf, now, &mut 0)
    }

    fn write_inner(
        &mut self,
        buf: &[u8],
        now: SystemTime,
        written: &mut usize,
    ) -> Result<Option<Note>, WriteError> {
        self.try_write(buf, now, written)
            .map_err(|error| WriteError {
                error,
                written: *written,
            })
    }

    /// The size of the file in use, if its name still leads to it (and its directory is
    /// still the one held open).
    fn still_current(&self, c: &Current) -> Option<u64> {
        if c.inherited {
            let m = std::fs::symlink_metadata(&c.path).ok()?;
            return (m.dev() == c.dev && m.ino() == c.ino).then_some(m.len());
        }
        let dir = self.dir.as_ref().filter(|d| d.still_there())?;
        let e = dir.entry(&c.name)?;
        (e.dev == c.dev && e.ino == c.ino).then_some(e.len)
    }

    fn try_write(
        &mut self,
        buf: &[u8],
        now: SystemTime,
        written: &mut usize,
    ) -> std::io::Result<Option<Note>> {
        if buf.is_empty() {
            // Nothing to add: no file is opened, rotated or recreated for nothing.
            return Ok(None);
        }
        let period = period(self.rotate, now);
        let mut note = None;
        let stale = match &self.current {
            None => true,
            Some(c) if c.period != period => {
                note = Some(Note::Rotated {
                    path: PathBuf::new(),
                });
                true
            }
            Some(c) => match self.still_current(c) {
                Some(len) => {
                    if self
                        .max_bytes
                        .is_some_and(|max| len > 0 && len + buf.len() as u64 > max)
                    {
                        let next = c.index + 1;
                        let new = self.open(&period, next)?;
                        self.set_current(Some(new));
                        note = Some(Note::Rotated {
                            path: PathBuf::new(),
                        });
                    }
                    false
                }
                None => {
                    note = Some(Note::Reopened {
                        path: c.path.clone(),
                    });
                    true
                }
            },
        };
        if stale {
            // Forget the old file first: if the new one cannot be opened, the failure is
            // what gets reported, not a reopening that never happened. The directory is
            // opened (and checked) again too: it may have been removed or replaced.
            self.set_current(None);
            self.dir = None;
            let new = match TrailDir::open(&self.dir_path()) {
                Ok(dir) => {
                    self.dir = Some(dir);
                    let index = self.first_index(&period);
                    self.open(&period, index)
                }
                Err(e) => Err(e),
            };
            let new = match new {
                Ok(c) => c,
                Err(e) if out_of_descriptors(&e) => self.inherited(&period).ok_or(e)?,
                Err(e) => return Err(e),
            };
            self.set_current(Some(new));
        }
        let c = self
            .current
            .as_mut()
            .ok_or_else(|| std::io::Error::other("trail file not open"))?;
        if let Some(Note::Rotated { path }) = &mut note {
            *path = c.path.clone();
        }
        // Other processes append to the same file. Their batches span pages, and a
        // concurrent reader can see a size that ends inside one: the tail is judged, and
        // the batch written, only while no other keytrail process is writing.
        let result = {
            let lock = Exclusive::lock(&c.file);
            let torn_tail = std::mem::take(&mut c.check_tail) && ends_torn(lock.0);
            let mut result = Ok(());
            if self.torn || torn_tail {
                result = (&mut &*lock.0).write_all(b"\n");
            }
            if result.is_ok() {
                result = write_counted(lock.0, buf, written);
            }
            result
        };
        self.torn = result.is_err();
        if result.is_err() {
            self.set_current(None);
        }
        result.map(|()| note)
    }

    /// Replaces the file in use; the new descriptor is published for a child after fork
    /// before the old one is closed.
    fn set_current(&mut self, new: Option<Current>) {
        publish(new.as_ref());
        self.current = new;
    }

    /// A child after fork with no descriptor to spare writes through its parent's.
    fn inherited(&self, period: &str) -> Option<Current> {
        let (file, path) = take_inherited()?;
        let m = file.metadata().ok()?;
        crate::diag::report(&format!(
            "no file descriptor is left to open the trail; this process (forked) appends \
             through its parent's descriptor for {}",
            path.display()
        ));
        Some(Current {
            file,
            name: path
                .file_name()
                .map(OsStr::to_os_string)
                .unwrap_or_default(),
            path,
            period: period.to_string(),
            index: 0,
            dev: m.dev(),
            ino: m.ino(),
            check_tail: false,
            inherited: true,
        })
    }

    /// Lets go of the file and its directory: the next write opens them by name again
    /// (SIGHUP in the agent, after logrotate moved the file).
    pub fn reopen(&mut self) {
        self.set_current(None);
        self.dir = None;
    }

    /// Flushes file data to the disk.
    pub fn sync(&mut self) {
        if let Some(c) = &self.current {
            let _ = c.file.sync_data();
        }
    }

    fn open(&self, period: &str, index: u32) -> std::io::Result<Current> {
        let dir = self
            .dir
            .as_ref()
            .ok_or_else(|| std::io::Error::other("trail directory not open"))?;
        let path = self.name(period, index);
        let name = path
            .file_name()
            .map(OsStr::to_os_string)
            .ok_or_else(|| std::io::Error::other(format!("{} names no file", path.display())))?;
        let file = dir.open_file(&name)?;
        let m = file.metadata()?;
        let current = Current {
            check_tail: true,
            file,
            name,
            path,
            period: period.to_string(),
            index,
            dev: m.dev(),
            ino: m.ino(),
            inherited: false,
        };
        self.prune(dir, &current);
        Ok(current)
    }

    /// Opens `path` (the anchor file) as the trail's own files are opened: through the
    /// trail's directory descriptor when it is in that directory.
    pub fn open_sibling(&self, path: &Path) -> std::io::Result<File> {
        match (&self.dir, path.parent(), path.file_name()) {
            (Some(dir), Some(parent), Some(name)) if same_dir(parent, dir.path()) => {
                dir.open_file(name)
            }
            _ => super::dir::open_checked(path),
        }
    }

    /// With a size limit, continue the newest file of the period that still has room.
    fn first_index(&self, period: &str) -> u32 {
        let (Some(max), Some(dir)) = (self.max_bytes, &self.dir) else {
            return 0;
        };
        let entry = |index| {
            self.name(period, index)
                .file_name()
                .and_then(|n| dir.entry(n))
        };
        let mut index = 0;
        while entry(index + 1).is_some() {
            index += 1;
        }
        match entry(index) {
            Some(e) if e.len >= max => index + 1,
            _ => index,
        }
    }

    fn rotating(&self) -> bool {
        self.rotate != Rotate::Never || self.max_bytes.is_some()
    }

    fn dir_path(&self) -> PathBuf {
        self.parts().0
    }

    fn parts(&self) -> (PathBuf, String, String) {
        let dir = self
            .template
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let name = self
            .template
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "keytrail.jsonl".into());
        let (stem, ext) = match name.rsplit_once('.') {
            Some((s, e)) if !s.is_empty() => (s.to_string(), e.to_string()),
            _ => (name, "jsonl".to_string()),
        };
        (dir, stem, ext)
    }

    /// `stem[.period][.index].ext`; names sort in time order.
    fn name(&self, period: &str, index: u32) -> PathBuf {
        if !self.rotating() {
            return self.template.clone();
        }
        let (dir, stem, ext) = self.parts();
        let mut name = stem;
        if !period.is_empty() {
            name.push('.');
            name.push_str(period);
        }
        if self.max_bytes.is_some() {
            name.push_str(&format!(".{index:04}"));
        }
        name.push('.');
        name.push_str(&ext);
        dir.join(name)
    }

    /// The period and index of a name this file set makes, if it is one.
    fn parse_name(&self, name: &str) -> Option<(String, u32)> {
        let (_, stem, ext) = self.parts();
        let middle = name
            .strip_prefix(&stem)?
            .strip_prefix('.')?
            .strip_suffix(&ext)?
            .strip_suffix('.')?;
        let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
        let (period, index) = match (self.rotate, self.max_bytes.is_some()) {
            (Rotate::Never, false) => return None,
            (Rotate::Never, true) => ("", middle),
            (_, true) => middle.rsplit_once('.')?,
            (_, false) => (middle, ""),
        };
        let period_ok = match self.rotate {
            Rotate::Never => period.is_empty(),
            Rotate::Daily => digits(period, 8),
            Rotate::Hourly => {
                period.len() == 11
                    && digits(&period[..8], 8)
                    && &period[8..9] == "T"
                    && digits(&period[9..], 2)
            }
        };
        let index = if self.max_bytes.is_some() {
            // Exactly as `name` writes it: `00001` is no name of this set.
            let n: u32 = index.parse().ok()?;
            if format!("{n:04}") != index {
                return None;
            }
            n
        } else {
            0
        };
        period_ok.then(|| (period.to_string(), index))
    }

    /// Deletes the oldest files of the set beyond the retention count. Only files keytrail
    /// wrote count or are deleted: a name it makes that sorts before the file in use, a
    /// regular file owned by this user whose first line is a trail record. A file planted
    /// under a later name, or anything else, is left alone and pushes nothing out.
    fn prune(&self, dir: &TrailDir, current: &Current) {
        let Some(keep) = self.keep.filter(|_| self.rotating()) else {
            return;
        };
        let in_use = (current.period.clone(), current.index);
        let euid = crate::os::euid();
        let mut older: Vec<((String, u32), OsString)> = dir
            .names()
            .into_iter()
            .filter_map(|n| {
                let key = self.parse_name(n.to_str()?)?;
                (key < in_use).then_some((key, n))
            })
            .filter(|(_, n)| {
                dir.entry(n)
                    .is_some_and(|e| e.regular && e.uid == euid && e.ino != current.ino)
                    && starts_with_a_record(dir, n)
            })
            .collect();
        older.sort();
        // The file in use is one of the `keep`.
        let excess = (older.len() + 1).saturating_sub(keep);
        for (_, name) in older.iter().take(excess) {
            let _ = dir.remove(name);
        }
    }
}

/// Whether a file begins with a trail record: keytrail's fixed opening and a stream id.
fn starts_with_a_record(dir: &TrailDir, name: &OsStr) -> bool {
    let mut head = [0u8; 4096];
    let n = dir.read_head(name, &mut head);
    let head = &head[..n];
    let line = head.split(|b| *b == b'\n').next().unwrap_or(&[]);
    line.starts_with(b"{\"@timestamp\":\"")
        && memchr::memmem::find(line, b",\"integrity\":{\"stream\":\"").is_some()
}

fn same_dir(a: &Path, b: &Path) -> bool {
    let norm = |p: &Path| {
        if p.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            p.to_path_buf()
        }
    };
    norm(a) == norm(b)
}

/// A failed write, and how much of the buffer reached the file before it failed.
#[derive(Debug)]
pub struct WriteError {
    /// What failed.
    pub error: std::io::Error,
    /// Bytes of the buffer that were written.
    pub written: usize,
}

/// write_all, counting what was written.
fn write_counted(mut file: &File, buf: &[u8], written: &mut usize) -> std::io::Result<()> {
    while *written < buf.len() {
        match file.write(&buf[*written..]) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(k) => *written += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The rotation period a time falls in: `""`, `YYYYMMDDTHH` or `YYYYMMDD` (UTC).
fn period(rotate: Rotate, now: SystemTime) -> String {
    let stamp = humantime::format_rfc3339_seconds(now).to_string();
    // 2026-11-28T17:42:28Z
    let date: String = stamp.get(..10).unwrap_or("").replace('-', "");
    match rotate {
        Rotate::Never => String::new(),
        Rotate::Daily => date,
        Rotate::Hourly => format!("{date}T{}", stamp.get(11..13).unwrap_or("00")),
    }
}

/// Whether a regular file's last byte is not a newline: an earlier process died or hit
/// ENOSPC mid-line. The file is read through its own descriptor's /proc entry, which
/// names the same inode, so no path can be swapped in between.
fn ends_torn(file: &File) -> bool {
    use std::os::fd::AsRawFd;
    let len = match file.metadata() {
        Ok(m) if m.is_file() && m.len() > 0 => m.len(),
        _ => return false,
    };
    let mut last = [0u8; 1];
    File::open(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .and_then(|r| std::os::unix::fs::FileExt::read_exact_at(&r, &mut last, len - 1))
        .is_ok_and(|()| last[0] != b'\n')
}

/// An advisory lock on a trail file that keytrail processes take around each write,
/// released when dropped. Failing to lock (a FIFO, a file system without locks) only
/// loses the guarantee, never the write.
struct Exclusive<'a>(&'a File);

impl<'a> Exclusive<'a> {
    fn lock(file: &'a File) -> Exclusive<'a> {
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a descriptor this File owns; it touches no memory.
        unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        Exclusive(file)
    }
}

impl Drop for Exclusive<'_> {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: as in `lock`.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// Opens a trail file for appending: created 0600 (its directory 0700 if missing), its
/// directory held open and checked, never through a link, never another user's file.
pub fn open_trail(path: &Path) -> std::io::Result<File> {
    super::dir::open_checked(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    #[test]
    fn links_other_owners_and_loose_modes_are_refused_or_fixed() {
        let dir = tempfile::tempdir().expect("dir");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"").expect("victim");
        let link = dir.path().join("trail.jsonl");
        std::os::unix::fs::symlink(&victim, &link).expect("link");
        let e = open_trail(&link).expect_err("a link is refused");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        let loose = dir.path().join("loose.jsonl");
        std::fs::write(&loose, b"").expect("loose");
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        open_trail(&loose).expect("own file");
        let mode = std::fs::metadata(&loose)
            .expect("meta")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let other = dir.path().join("other.jsonl");
            std::fs::write(&other, b"").expect("other");
            std::os::unix::fs::chown(&other, Some(65534), Some(65534)).expect("chown");
            let e = open_trail(&other).expect_err("another user's file is refused");
            assert!(e.to_string().contains("uid 65534)"), "{e}");
        }
    }

    #[test]
    fn a_line_torn_by_an_earlier_process_is_closed_before_the_first_record() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("trail.jsonl");
        std::fs::write(&path, b"{\"torn\":").expect("torn");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let mut f = TrailFile::new(path.clone(), Rotate::Never, None, None);
        f.write(b"{\"a\":1}\n", SystemTime::now()).expect("write");
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text, "{\"torn\":\n{\"a\":1}\n");
    }

    /// A line that begins as trail records do, `len` bytes with its newline.
    fn record(len: usize) -> Vec<u8> {
        let mut r = b"{\"@timestamp\":\"t\",\"integrity\":{\"stream\":\"s\"}}".to_vec();
        r.resize(len - 1, b' ');
        r.push(b'\n');
        r
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn an_empty_write_opens_no_file_after_a_rotation() {
        let dir = tempfile::tempdir().expect("dir");
        let mut t = TrailFile::new(dir.path().join("t.jsonl"), Rotate::Never, Some(100), None);
        let now = SystemTime::now();
        // Batches larger than the limit, each followed by a write with nothing in it (as
        // the writer makes after a rotation, when it has nothing to report).
        for _ in 0..3 {
            t.write(&record(150), now).expect("write");
            t.write(b"", now).expect("empty write");
        }
        assert_eq!(
            names(dir.path()),
            ["t.0000.jsonl", "t.0001.jsonl", "t.0002.jsonl"]
        );
    }

    #[test]
    fn only_names_the_set_makes_are_its_own() {
        let t = |rotate, max| TrailFile::new(PathBuf::from("/d/k.jsonl"), rotate, max, Some(1));
        let daily = t(Rotate::Daily, None);
        let hourly = t(Rotate::Hourly, Some(10));
        let none: Option<(&str, u32)> = None;
        let cases = [
            (&daily, "k.20261204.jsonl", Some(("20261204", 0))),
            (&daily, "k.2026120.jsonl", none),
            (&daily, "k.20261204T01.jsonl", none),
            (&daily, "k.jsonl", none),
            (&daily, "x.20261204.jsonl", none),
            (
                &hourly,
                "k.20261204T01.0003.jsonl",
                Some(("20261204T01", 3)),
            ),
            (&hourly, "k.20261204T01.003.jsonl", none),
            (&hourly, "k.20261204T01.00003.jsonl", none),
            (&hourly, "k.20261204.0003.jsonl", none),
        ];
        for (set, name, want) in cases {
            let want = want.map(|(p, i)| (p.to_string(), i));
            assert_eq!(set.parse_name(name), want, "{name}");
        }
        assert_eq!(t(Rotate::Never, None).parse_name("k.0001.jsonl"), None);
    }

    #[test]
    fn retention_deletes_only_its_own_older_files() {
        let dir = tempfile::tempdir().expect("dir");
        let d = dir.path();
        // Planted: later-sorting names, a name keytrail never makes, a file that is no
        // trail, and a link.
        for planted in ["t.9999.jsonl", "t.zzzz.jsonl", "t.00001.jsonl"] {
            std::fs::write(d.join(planted), record(60)).expect("plant");
        }
        std::fs::write(d.join("t.0000.jsonl"), b"not a trail\n").expect("plant");
        std::os::unix::fs::symlink("/etc/passwd", d.join("t.0001.jsonl")).expect("link");
        let mut t = TrailFile::new(d.join("t.jsonl"), Rotate::Never, Some(100), Some(2));
        let now = SystemTime::now();
        // The link at t.0001 is refused (never written through, never deleted): the
        // writes fail until the name is cleared.
        let mut refused = 0;
        for _ in 0..2 {
            if let Err(e) = t.write(&record(60), now) {
                assert!(e.error.to_string().contains("symbolic link"), "{}", e.error);
                refused += 1;
            }
        }
        assert!(refused > 0, "a link at a rotated name is refused");
        assert_eq!(
            std::fs::read_link(d.join("t.0001.jsonl")).expect("link"),
            Path::new("/etc/passwd")
        );
        std::fs::remove_file(d.join("t.0001.jsonl")).expect("clear");
        for _ in 0..5 {
            t.write(&record(60), now).expect("write");
        }
        let left = names(d);
        for planted in [
            "t.9999.jsonl",
            "t.zzzz.jsonl",
            "t.00001.jsonl",
            "t.0000.jsonl",
        ] {
            assert!(
                left.contains(&planted.to_string()),
                "{planted} kept: {left:?}"
            );
        }
        // 0000 (the planted non-trail, continued first, so it starts with no record) and
        // 0001..=0004 were written; of the genuine ones the two newest remain.
        let genuine: Vec<&String> = left
            .iter()
            .filter(|n| {
                ![
                    "t.9999.jsonl",
                    "t.zzzz.jsonl",
                    "t.00001.jsonl",
                    "t.0000.jsonl",
                ]
                .contains(&n.as_str())
            })
            .collect();
        assert_eq!(genuine, ["t.0003.jsonl", "t.0004.jsonl"], "{left:?}");
    }

    #[test]
    fn files_are_private_and_rotate_by_size_with_retention() {
        let dir = tempfile::tempdir().expect("dir");
        let base = dir.path().join("sub").join("trail.jsonl");
        let mut t = TrailFile::new(base, Rotate::Never, Some(100), Some(2));
        let line = record(60);
        let now = SystemTime::now();
        for _ in 0..4 {
            t.write(&line, now).expect("write");
        }
        let sub = dir.path().join("sub");
        let mode = std::fs::metadata(&sub).expect("dir").permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let mut names: Vec<String> = std::fs::read_dir(&sub)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, vec!["trail.0002.jsonl", "trail.0003.jsonl"]);
        let f = sub.join("trail.0003.jsonl");
        assert_eq!(
            std::fs::metadata(&f).expect("file").permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn daily_rotation_names_the_day_and_a_removed_file_is_reopened() {
        let dir = tempfile::tempdir().expect("dir");
        let mut t = TrailFile::new(dir.path().join("k.jsonl"), Rotate::Daily, None, None);
        let day1 = humantime::parse_rfc3339("2026-11-28T23:59:59Z").expect("time");
        let day2 = day1 + Duration::from_secs(2);
        assert_eq!(t.write(b"a\n", day1).expect("write"), None);
        let first = dir.path().join("k.20261128.jsonl");
        assert!(first.exists());
        std::fs::remove_file(&first).expect("remove");
        let note = t.write(b"b\n", day1).expect("write");
        assert_eq!(
            note,
            Some(Note::Reopened {
                path: first.clone()
            })
        );
        assert_eq!(std::fs::read_to_string(&first).expect("read"), "b\n");
        let note = t.write(b"c\n", day2).expect("write");
        let second = dir.path().join("k.20261129.jsonl");
        assert_eq!(
            note,
            Some(Note::Rotated {
                path: second.clone()
            })
        );
        assert_eq!(std::fs::read_to_string(&second).expect("read"), "c\n");
    }
}
