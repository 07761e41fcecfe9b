//! The library's side of the agent: one connection per process, made at `C_Initialize`
//! (and again in a child after fork), and the ring the calling threads write into.

use super::shm::{PushError, Ring, SharedFd};
use super::wire::{self, Clock};
use crate::audit::event::Event;
use crate::config::OnFull;
use std::cell::RefCell;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long connecting may take before the agent counts as unavailable.
const HANDSHAKE: Duration = Duration::from_secs(2);

thread_local! {
    /// Each thread's encoding buffer, reused: encoding allocates nothing once warm.
    static BUF: RefCell<wire::Encoder> = const { RefCell::new(wire::Encoder::new()) };
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
}

impl Connection {
    /// Connects to the agent at `path`, says hello, and maps the ring it sends.
    pub fn connect(path: &Path, service: Option<&str>) -> std::io::Result<Connection> {
        let service = service.unwrap_or("").to_owned();
        let (s, fds) = handshake(path, &service, None)?;
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
        })
    }

    /// Whether the agent's end of the socket has closed (it stopped or died).
    fn agent_gone(&self) -> bool {
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
    fn reconnect_if_gone(&self) -> bool {
        if !self.agent_gone()
            || self
                .reconnecting
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
        {
            return false;
        }
        let resumed = self
            .memfd
            .with(|memfd| handshake(&self.path, &self.service, Some(memfd)))
            .unwrap_or_else(|| Err(std::io::Error::other("no ring")));
        let ok = match resumed {
            Ok((s, fds)) => match fds.into_iter().next() {
                Some(eventfd) => {
                    self.wake.replace(eventfd);
                    self.socket.replace(s.into());
                    crate::diag::report(&format!(
                        "reconnected to the keytrail agent at {}; it takes over this \
                         process's ring with everything in it",
                        self.path.display()
                    ));
                    true
                }
                None => false,
            },
            Err(_) => false,
        };
        self.reconnecting.store(false, Ordering::Release);
        ok
    }

    /// Puts a record in the ring. Returns false when it was dropped (counted by the
    /// caller): the ring was full under `on_full = "drop"`, or stayed full past `wait`
    /// (then `failing` is set, and later records are dropped at once until one fits).
    #[inline]
    pub fn send(&self, e: &Event, on_full: OnFull, wait: Duration, failing: &AtomicBool) -> bool {
        let fitted = BUF
            .try_with(|b| {
                let mut enc = b.borrow_mut();
                let record = enc.encode(e, &self.clock);
                self.push(record, on_full, wait, failing)
            })
            .unwrap_or_else(|_| {
                // The thread is exiting (its buffer is gone): encode on the heap.
                let mut buf = Vec::new();
                wire::encode(e, &self.clock, &mut buf);
                self.push(&buf, on_full, wait, failing)
            });
        if self.ring.take_wakeup() {
            self.wake();
        }
        fitted
    }

    fn push(&self, record: &[u8], on_full: OnFull, wait: Duration, failing: &AtomicBool) -> bool {
        let mut since: Option<Instant> = None;
        let mut tries = 0u32;
        loop {
            match self.ring.push(record) {
                Ok(()) => {
                    if failing.load(Ordering::Relaxed) {
                        failing.store(false, Ordering::Relaxed);
                    }
                    return true;
                }
                Err(PushError::TooLarge) => return false,
                Err(PushError::Full) => {
                    if since.is_none() && self.reconnect_if_gone() {
                        // A restarted agent drains the ring from where the last one stopped.
                        since = Some(Instant::now());
                    }
                    if on_full == OnFull::Drop || failing.load(Ordering::Relaxed) {
                        return false;
                    }
                    if since.get_or_insert_with(Instant::now).elapsed() >= wait {
                        failing.store(true, Ordering::Relaxed);
                        crate::diag::report(&format!(
                            "the keytrail agent has not drained this process's ring within \
                             [trail] wait_ms ({} ms); records are dropped and counted until it does",
                            wait.as_millis()
                        ));
                        return false;
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

/// Connects, says hello (or, with `resume`, hands over the ring), and reads the answer.
fn handshake(
    path: &Path,
    service: &str,
    resume: Option<std::os::fd::BorrowedFd<'_>>,
) -> std::io::Result<(UnixStream, Vec<OwnedFd>)> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    use std::mem::MaybeUninit;
    let s = UnixStream::connect(path)?;
    s.set_read_timeout(Some(HANDSHAKE))?;
    s.set_write_timeout(Some(HANDSHAKE))?;
    let mut hello = match resume {
        Some(_) => super::RESUME.to_vec(),
        None => super::HELLO.to_vec(),
    };
    let n = service.len().min(255);
    hello.push(n as u8);
    hello.extend_from_slice(&service.as_bytes()[..n]);
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
    if status != super::ACCEPTED {
        return Err(std::io::Error::other(
            "the agent refused the connection: it serves as many processes as it may",
        ));
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
