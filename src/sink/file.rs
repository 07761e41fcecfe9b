//! The trail's files: created 0600 in a directory created 0700, appended with O_APPEND
//! (so several processes sharing a file each write whole lines), rotated by time and by
//! size under names that sort in time order, and pruned to a retention count.
//!
//! Rotation never renames a file: each process appends to the file named for the current
//! period and index, so processes sharing a trail never race on a rename.
//! (tracing-appender was considered; it creates files with the umask's permissions, has no
//! size limit, and renames are unsafe with several writer processes.)

use crate::config::Rotate;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The trail's file set.
pub struct TrailFile {
    template: PathBuf,
    rotate: Rotate,
    max_bytes: Option<u64>,
    keep: Option<usize>,
    current: Option<Current>,
    /// A write failed, possibly part-way through a line: the next write starts on a fresh
    /// line so the torn fragment cannot swallow the next record.
    torn: bool,
}

struct Current {
    file: File,
    path: PathBuf,
    period: String,
    index: u32,
    dev: u64,
    ino: u64,
    /// The file's tail is still to be checked before the first record: it may end
    /// mid-line (a process died or the disk filled mid-write), and the line is closed.
    check_tail: bool,
}

/// Something worth a record that happened while writing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// The file keytrail was writing was removed or replaced; it was reopened.
    Reopened { path: PathBuf },
    /// A new file was started.
    Rotated { path: PathBuf },
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

    fn try_write(
        &mut self,
        buf: &[u8],
        now: SystemTime,
        written: &mut usize,
    ) -> std::io::Result<Option<Note>> {
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
            Some(c) => match std::fs::metadata(&c.path) {
                Ok(m) if m.dev() == c.dev && m.ino() == c.ino => {
                    if self
                        .max_bytes
                        .is_some_and(|max| m.len() > 0 && m.len() + buf.len() as u64 > max)
                    {
                        let next = c.index + 1;
                        self.current = Some(self.open(&period, next)?);
                        note = Some(Note::Rotated {
                            path: PathBuf::new(),
                        });
                    }
                    false
                }
                _ => {
                    note = Some(Note::Reopened {
                        path: c.path.clone(),
                    });
                    true
                }
            },
        };
        if stale {
            // Forget the old file first: if the new one cannot be opened, the failure is
            // what gets reported, not a reopening that never happened.
            self.current = None;
            let index = self.first_index(&period);
            self.current = Some(self.open(&period, index)?);
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
            self.current = None;
        }
        result.map(|()| note)
    }

    /// Flushes file data to the disk.
    pub fn sync(&mut self) {
        if let Some(c) = &self.current {
            let _ = c.file.sync_data();
        }
    }

    fn open(&self, period: &str, index: u32) -> std::io::Result<Current> {
        let path = self.name(period, index);
        let file = open_trail(&path)?;
        let m = file.metadata()?;
        let current = Current {
            check_tail: true,
            file,
            path,
            period: period.to_string(),
            index,
            dev: m.dev(),
            ino: m.ino(),
        };
        self.prune();
        Ok(current)
    }

    /// With a size limit, continue the newest file of the period that still has room.
    fn first_index(&self, period: &str) -> u32 {
        let Some(max) = self.max_bytes else {
            return 0;
        };
        let mut index = 0;
        while self.name(period, index + 1).exists() {
            index += 1;
        }
        match std::fs::metadata(self.name(period, index)) {
            Ok(m) if m.len() >= max => index + 1,
            _ => index,
        }
    }

    fn rotating(&self) -> bool {
        self.rotate != Rotate::Never || self.max_bytes.is_some()
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

    /// Deletes the oldest rotated files beyond the retention count.
    fn prune(&self) {
        let Some(keep) = self.keep.filter(|_| self.rotating()) else {
            return;
        };
        let (dir, stem, ext) = self.parts();
        let Ok(entries) = std::fs::read_dir(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            &dir
        }) else {
            return;
        };
        let prefix = format!("{stem}.");
        let suffix = format!(".{ext}");
        let mut files: Vec<String> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| {
                n.starts_with(&prefix)
                    && n.ends_with(&suffix)
                    && n.len() > prefix.len() + suffix.len()
            })
            .collect();
        files.sort();
        if files.len() > keep {
            for old in &files[..files.len() - keep] {
                let _ = std::fs::remove_file(dir.join(old));
            }
        }
    }
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

/// Opens a trail file for appending: created 0600, its directory 0700 if missing.
pub fn open_trail(path: &Path) -> std::io::Result<File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
    }
    // Never follow a link planted at the file's name: records would go wherever it points.
    // Write-only: opened for reading too, a FIFO would never block the writer, and the
    // writer could read back its own records.
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                std::io::Error::other(format!(
                    "{} is a symbolic link; keytrail never writes through one",
                    path.display()
                ))
            } else {
                e
            }
        })?;
    let meta = file.metadata()?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(std::io::Error::other(format!(
            "{} is owned by uid {}, not by this process's user (uid {me}), who could edit it; refusing it",
            path.display(),
            meta.uid()
        )));
    }
    if meta.mode() & 0o077 != 0 {
        // A trail readable or writable by others is made private before anything is added.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(file)
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
            assert!(e.to_string().contains("owned by uid 65534"), "{e}");
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

    #[test]
    fn files_are_private_and_rotate_by_size_with_retention() {
        let dir = tempfile::tempdir().expect("dir");
        let base = dir.path().join("sub").join("trail.jsonl");
        let mut t = TrailFile::new(base, Rotate::Never, Some(100), Some(2));
        let line = [b'x'; 60];
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
