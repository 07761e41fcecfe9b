//! The library's side of the agent: one connection per process, made at `C_Initialize`
//! (and again in a child after fork), and the ring the calling threads write into.

use super::shm::{PushError, Ring, SharedFd};
use super::wire::{self, Clock};
use crate::audit::event::{Event, OpRecord};
use crate::config::OnFull;
use std::cell::RefCell;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long connecting may take before the agent counts as unavailable.
const HANDSHAKE: Duration = Duration::from_secs(2);

thread_local! {
    /// Each thread's encoding buffer, reused: encoding allocates nothing once warm.
    static BUF: RefCell<wire::Encoder> = const { RefCell::new(wire::Encoder::new()) };
    /// Each thread's last operation record, which the next one of the same operation
    /// copies (`wire::encode_op_kept`).
    static KEPT: RefCell<wire::OpKept> = const { RefCell::new(wire::OpKept::new()) };
}

/// This process's connection to the agent.
pub struct Connection {
    ring: Ring,
    /// The socket: kept open for the life of the process, so that the agent learns of its
    /// end (even by SIGKILL) when the kernel closes it.
    socket: SharedFd,
    /// Wakes the agent when it sleeps.
    wake: SharedFd,
    clock: Clock,
    /// The ring's memfd, kept to hand to a restarted agent.
    memfd: SharedFd,
    /// Where the agent listens, and what the hello says.
    path: std::path::PathBuf,
    service: String,
    /// A thread is reconnecting.
    reconnecting: AtomicBool,
    /// When (coarse ms) a full ring may next look for a restarted agent.
    next_look: AtomicU64,
}

impl Connection {
    /// Connects to the agent at `path`, says hello, and maps the ring it sends.
    pub fn connect(path: &Path, service: Option<&str>) -> std::io::Result<Connection> {
        Self::connect_on(dial(path)?, path, service, None)
    }

    /// As [`Connection::connect`], on a socket already connected by [`dial`]; `note` says
    /// where the process recorded while the agent was unavailable.
    pub fn connect_on(
        s: UnixStream,
        path: &Path,
        service: Option<&str>,
        note: Option<&FellBack>,
    ) -> std::io::Result<Connection> {
        let service = service.unwrap_or("").to_owned();
        let (s, fds) = handshake(s, &service, None, note)?;
        let mut fds = fds.into_iter();
        let (Some(memfd), Some(eventfd)) = (fds.next(), fds.next()) else {
            return Err(std::io::Error::other(
                "the agent sent no ring (is it a keytrail agent of this version?)",
            ));
        };
        let ring = Ring::open(&memfd)?;
        Ok(Connection {
            ring,
            socket: SharedFd::new(s.into()),
            wake: SharedFd::new(eventfd),
            clock: Clock::now(),
            memfd: SharedFd::new(memfd),
            path: path.to_path_buf(),
            service,
            reconnecting: AtomicBool::new(false),
            next_look: AtomicU64::new(0),
        })
    }

    /// Whether the agent's end of the socket has closed (it stopped or died). One system
    /// call: callers rate-limit it.
    pub fn agent_gone(&self) -> bool {
        use rustix::net::RecvFlags;
        let mut b = [0u8; 1];
        self.socket
            .with(
                |fd| match rustix::net::recv(fd, &mut b, RecvFlags::PEEK | RecvFlags::DONTWAIT) {
                    Ok((0, _)) => true,
                    Ok(_) => false,
                    Err(e) => e != rustix::io::Errno::AGAIN && e != rustix::io::Errno::INTR,
                },
            )
            .unwrap_or(false)
    }

    /// The agent is gone: hands the ring (and everything still in it) to the agent now
    /// listening, if any. One thread at a time; true when reconnected.
    #[cold]
    pub fn reconnect_if_gone(&self) -> bool {
        if !self.agent_gone()
            || self
                .reconnecting
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
        {
            return false;
        }
        let ok = dial(&self.path)
            .and_then(|s| self.resume_on(s, None))
            .is_ok();
        if ok {
            crate::diag::report(&format!(
                "reconnected to the keytrail agent at {}; it takes over this \
                 process's ring with everything in it",
                self.path.display()
            ));
        }
        self.reconnecting.store(false, Ordering::Release);
        ok
    }

    /// Hands the ring (and everything still in it) to the agent on `s`, a socket
    /// connected by [`dial`]; `note` says where the process recorded meanwhile.
    pub fn resume_on(&self, s: UnixStream, note: Option<&FellBack>) -> std::io::Result<()> {
        let (s, fds) = self
            .memfd
            .with(|memfd| handshake(s, &self.service, Some(memfd), note))
            .unwrap_or_else(|| Err(std::io::Error::other("no ring")))?;
        let Some(eventfd) = fds.into_iter().next() else {
            return Err(std::io::Error::other("the agent sent no eventfd"));
        };
        self.wake.replace(eventfd);
        self.socket.replace(s.into());
        Ok(())
    }

    /// Puts a record in the ring. [`Sent::Dropped`] when it was dropped (counted by the
    /// caller): the ring was full under `on_full = "drop"`, or stayed full past `wait`
    /// (then `failing` is set, and later records are dropped at once until one fits).
    /// With `leave`, a full ring whose agent is gone (and none listening to take it over)
    /// gives [`Sent::Gone`] at once: the caller records elsewhere.
    #[inline]
    pub fn send(&self, e: &Event, full: &WhenFull<'_>) -> Sent {
        // Most records are written straight into a slot of the ring; the others (larger
        // than a slot, or meeting a full ring) go through a buffer.
        let fitted = match self
            .ring
            .push_in_place(|slot| wire::encode_to(e, &self.clock, slot))
        {
            Ok(true) => {
                recovered(full.failing);
                Sent::Ok
            }
            _ => self.send_buffered(e, full),
        };
        if self.ring.take_wakeup() {
            self.wake();
        }
        fitted
    }

    /// An operation's record written in place into a slot of the ring; false when it
    /// did not fit or the ring is full, and the caller sends the record as an [`Event`]
    /// through [`Connection::send`] (which decides what a full ring means).
    #[inline]
    pub fn send_op(&self, r: &OpRecord<'_>, failing: &AtomicBool) -> bool {
        let Ok(true) = self.ring.push_in_place(|slot| {
            KEPT.try_with(|k| match k.try_borrow_mut() {
                Ok(mut kept) => wire::encode_op_kept(r, &self.clock, slot, &mut kept),
                Err(_) => wire::encode_op_to(r, &self.clock, slot),
            })
            // The thread is exiting (its kept record is gone).
            .unwrap_or_else(|_| wire::encode_op_to(r, &self.clock, slot))
        }) else {
            return false;
        };
        recovered(failing);
        if self.ring.take_wakeup() {
            self.wake();
        }
        true
    }

    /// [`Connection::send`] for a record that did not fit in a slot or met a full ring.
    #[cold]
    #[inline(never)]
    fn send_buffered(&self, e: &Event, full: &WhenFull<'_>) -> Sent {
        BUF.try_with(|b| {
            let mut enc = b.borrow_mut();
            let record = enc.encode(e, &self.clock);
            self.push(record, full)
        })
        .unwrap_or_else(|_| {
            // The thread is exiting (its buffer is gone): encode on the heap.
            let mut buf = Vec::new();
            wire::encode(e, &self.clock, &mut buf);
            self.push(&buf, full)
        })
    }

    fn push(&self, record: &[u8], full: &WhenFull<'_>) -> Sent {
        let WhenFull {
            on_full,
            wait,
            failing,
            leave,
        } = *full;
        let mut since: Option<Instant> = None;
        let mut tries = 0u32;
        loop {
            match self.ring.push(record) {
                Ok(()) => {
                    recovered(failing);
                    return Sent::Ok;
                }
                Err(PushError::TooLarge) => return Sent::Dropped,
                Err(PushError::Full) => {
                    if since.is_none() {
                        if self.may_look() && self.reconnect_if_gone() {
                            // A restarted agent drains the ring from where the last one
                            // stopped.
                            since = Some(Instant::now());
                        } else if leave && self.agent_gone() {
                            // Once: the caller falls back.
                            return Sent::Gone;
                        }
                    }
                    if on_full == OnFull::Drop || failing.load(Ordering::Relaxed) {
                        return Sent::Dropped;
                    }
                    if since.get_or_insert_with(Instant::now).elapsed() >= wait {
                        failing.store(true, Ordering::Relaxed);
                        crate::diag::report(&format!(
                            "the keytrail agent has not drained this process's ring within \
                             [trail] wait_ms ({} ms); records are dropped and counted until it does",
                            wait.as_millis()
                        ));
                        return Sent::Dropped;
                    }
                    // The agent is behind or asleep: wake it, then wait for room.
                    self.wake();
                    tries += 1;
                    if tries < 64 {
                        std::thread::yield_now();
                    } else {
                        std::thread::sleep(Duration::from_micros(50));
                    }
                }
            }
        }
    }

    /// Whether a caller that found the ring full may look for a restarted agent now: at
    /// most once a second, so that calls on a full ring whose agent is gone do not each
    /// make system calls.
    fn may_look(&self) -> bool {
        let next = self.next_look.load(Ordering::Relaxed);
        let now = coarse_ms();
        now >= next
            && self
                .next_look
                .compare_exchange(next, now + 1000, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// Whether the agent has taken everything put in the ring so far.
    pub fn drained(&self) -> bool {
        self.ring.drained()
    }

    /// The agent is gone (its socket closed, so nothing drains the ring): takes the
    /// records still in the ring out of it, in order, and hands each to `each`, with a
    /// `records_dropped` record for what was dropped on the full ring. Waits (at most
    /// `settle`) for records other threads are still writing. The ring's consumer
    /// position moves on, so an agent that takes the ring over later starts after them.
    /// Returns how many records were taken and how many slots could not be read.
    pub fn take_over(&self, settle: Duration, mut each: impl FnMut(Event)) -> (u64, u64) {
        use super::shm::Pop;
        let adopted = self
            .memfd
            .with(|fd| {
                let fd = fd.try_clone_to_owned()?;
                Ring::adopt(&fd, usize::MAX)
            })
            .unwrap_or_else(|| Err(std::io::Error::other("no ring")));
        let Ok((ring, mut tail)) = adopted else {
            return (0, 0);
        };
        let start = Instant::now();
        let (mut taken, mut unreadable) = (0u64, 0u64);
        let mut buf = Vec::new();
        loop {
            match ring.pop(&mut tail, &mut buf) {
                Pop::Record => match wire::decode(&buf, &self.clock) {
                    Ok(e) => {
                        taken += 1;
                        each(e);
                        ring.release(tail);
                    }
                    Err(_) => {
                        unreadable += 1;
                        ring.release(tail);
                    }
                },
                Pop::Malformed(_) => {
                    unreadable += 1;
                    ring.release(tail);
                }
                Pop::Empty if ring.drained() || start.elapsed() >= settle => break,
                Pop::Empty => std::thread::yield_now(),
            }
        }
        if let Some(e) = super::daemon::drops(&ring) {
            each(e);
        }
        (taken, unreadable)
    }

    /// Puts raw bytes in the ring as one record, as a hostile or broken process could
    /// (tests and fuzzing of the agent); false when the ring has no room.
    #[doc(hidden)]
    pub fn push_raw(&self, record: &[u8]) -> bool {
        let ok = self.ring.push(record).is_ok();
        self.wake();
        ok
    }

    /// Counts a dropped record in the ring, where the agent reads it.
    pub fn count_drop(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        self.ring.count_drop(now);
    }

    fn wake(&self) {
        self.wake.with(|fd| {
            let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
        });
    }

    /// Waits until the agent has taken everything in the ring (at most `timeout`).
    pub fn flush(&self, timeout: Duration) -> bool {
        let start = Instant::now();
        if !self.ring.drained() {
            self.reconnect_if_gone();
        }
        while !self.ring.drained() {
            if start.elapsed() >= timeout || self.socket.with(|_| ()).is_none() {
                return false;
            }
            self.wake();
            std::thread::sleep(Duration::from_micros(200));
        }
        true
    }

    /// In a child after fork: closes the parent's socket and eventfd (the ring stays
    /// mapped and unused; the child connects for a ring of its own).
    pub fn close_in_child(&self) {
        self.socket.close();
        self.wake.close();
        self.memfd.close();
    }
}

/// Milliseconds of a coarse monotonic clock: read from the vDSO, no system call.
#[inline]
pub fn coarse_ms() -> u64 {
    // Through libc, as `wire::Clock::now` reads its clock: rustix's own vDSO lookup faults
    // under valgrind, which the instruction counts run under.
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec to write; CLOCK_MONOTONIC_COARSE exists on Linux
    // since 2.6.32.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut t) };
    (t.tv_sec as u64)
        .saturating_mul(1000)
        .saturating_add(t.tv_nsec as u64 / 1_000_000)
}

/// A record is in the ring: a trail that was failing (a wait ran out) is no longer. The
/// flag is written only when it changes, so that callers do not share its cache line.
#[inline(always)]
fn recovered(failing: &AtomicBool) {
    if failing.load(Ordering::Relaxed) {
        failing.store(false, Ordering::Relaxed);
    }
}

/// What a record that meets a full ring does: see [`Connection::send`].
#[derive(Clone, Copy)]
pub struct WhenFull<'a> {
    /// Drop it, or wait for room.
    pub on_full: OnFull,
    /// How long to wait.
    pub wait: Duration,
    /// Set once a wait ran out: later records are dropped at once until one fits.
    pub failing: &'a AtomicBool,
    /// Give [`Sent::Gone`] when the agent is gone.
    pub leave: bool,
}

/// What happened to a record put in the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// It is in the ring.
    Ok,
    /// It was dropped (the caller counts it).
    Dropped,
    /// The ring is full and its agent gone: it is not in the ring.
    Gone,
}

/// Where a process recorded while the agent was unavailable, said in the hello when it
/// returns to the agent (the agent records it in `client_connected` as the process's
/// claim).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct FellBack {
    /// When the process began recording without the agent (RFC 3339).
    pub since: String,
    /// Why: the agent could not be reached, or went away.
    pub reason: String,
    /// The embedded writer's trail file.
    pub path: String,
    /// Records the process put in that trail (besides the stream's own start and stop).
    pub records: u64,
    /// How long it recorded there, in seconds.
    #[serde(default)]
    pub seconds: u64,
}

impl FellBack {
    /// The note with its texts cut short enough for the hello ([`super::MAX_NOTE`]).
    pub fn bounded(&self) -> FellBack {
        fn cut(s: &str, max: usize) -> String {
            let mut end = s.len().min(max);
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s[..end].to_owned()
        }
        FellBack {
            since: cut(&self.since, 64),
            reason: cut(&self.reason, 1024),
            path: cut(&self.path, 1024),
            records: self.records,
            seconds: self.seconds,
        }
    }
}

/// Connects to the agent's socket, without saying anything yet: a failure here costs the
/// caller nothing, and the hello follows with [`Connection::connect_on`] or
/// [`Connection::resume_on`].
pub fn dial(path: &Path) -> std::io::Result<UnixStream> {
    let s = UnixStream::connect(path)?;
    s.set_read_timeout(Some(HANDSHAKE))?;
    s.set_write_timeout(Some(HANDSHAKE))?;
    Ok(s)
}

/// Says hello on `s` (or, with `resume`, hands over the ring; with `note`, says where the
/// process recorded meanwhile), and reads the answer.
fn handshake(
    s: UnixStream,
    service: &str,
    resume: Option<std::os::fd::BorrowedFd<'_>>,
    note: Option<&FellBack>,
) -> std::io::Result<(UnixStream, Vec<OwnedFd>)> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    use std::mem::MaybeUninit;
    let n = service.len().min(255);
    let mut hello = match (note, resume) {
        (Some(_), _) => {
            let mut h = super::HELLO_NOTED.to_vec();
            h.push(u8::from(resume.is_some()));
            h
        }
        (None, Some(_)) => super::RESUME.to_vec(),
        (None, None) => super::HELLO.to_vec(),
    };
    hello.push(n as u8);
    hello.extend_from_slice(&service.as_bytes()[..n]);
    if let Some(note) = note {
        let json = serde_json::to_vec(&note.bounded()).map_err(std::io::Error::other)?;
        hello.extend_from_slice(&(json.len() as u16).to_le_bytes());
        hello.extend_from_slice(&json);
    }
    hello.extend_from_slice(&wire::LAYOUT.to_le_bytes());
    let fds: Vec<std::os::fd::BorrowedFd<'_>> = resume.into_iter().collect();
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        control.push(SendAncillaryMessage::ScmRights(&fds));
    }
    let sent = rustix::net::sendmsg(
        &s,
        &[std::io::IoSlice::new(&hello)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    if sent != hello.len() {
        (&s).write_all(&hello[sent..])?;
    }
    let (status, fds) = receive_welcome(&s)?;
    match status {
        super::ACCEPTED => {}
        super::OTHER_LAYOUT => {
            return Err(std::io::Error::other(
                "the agent refused the connection: it reads another record layout \
                 (a keytrail agent of another version)",
            ));
        }
        _ => {
            return Err(std::io::Error::other(
                "the agent refused the connection: it serves as many processes as it may",
            ));
        }
    }
    Ok((s, fds))
}

/// Reads the agent's answer and the descriptors attached to it.
fn receive_welcome(s: &UnixStream) -> std::io::Result<(u32, Vec<OwnedFd>)> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    use std::mem::MaybeUninit;
    let mut msg = [0u8; 12];
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(2))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut iov = [std::io::IoSliceMut::new(&mut msg)];
    let got = rustix::net::recvmsg(s, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC)?;
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = m {
            fds.extend(rights);
        }
    }
    if got.bytes != msg.len() || &msg[..8] != super::WELCOME {
        return Err(std::io::Error::other(
            "the socket's answer is not a keytrail agent's",
        ));
    }
    let status = u32::from_le_bytes([msg[8], msg[9], msg[10], msg[11]]);
    Ok((status, fds))
}
