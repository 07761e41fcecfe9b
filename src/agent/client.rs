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
    static BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
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
}

impl Connection {
    /// Connects to the agent at `path`, says hello, and maps the ring it sends.
    pub fn connect(path: &Path, service: Option<&str>) -> std::io::Result<Connection> {
        let mut s = UnixStream::connect(path)?;
        s.set_read_timeout(Some(HANDSHAKE))?;
        s.set_write_timeout(Some(HANDSHAKE))?;
        let mut hello = super::HELLO.to_vec();
        let service = service.unwrap_or("");
        let n = service.len().min(255);
        hello.push(n as u8);
        hello.extend_from_slice(&service.as_bytes()[..n]);
        s.write_all(&hello)?;
        let (status, fds) = receive_welcome(&s)?;
        if status != super::ACCEPTED {
            return Err(std::io::Error::other(
                "the agent refused the connection: it serves as many processes as it may",
            ));
        }
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
        })
    }

    /// Puts a record in the ring. Returns false when it was dropped (counted by the
    /// caller): the ring was full under `on_full = "drop"`, or stayed full past `wait`
    /// (then `failing` is set, and later records are dropped at once until one fits).
    #[inline]
    pub fn send(&self, e: &Event, on_full: OnFull, wait: Duration, failing: &AtomicBool) -> bool {
        let fitted = BUF
            .try_with(|b| {
                let mut buf = b.borrow_mut();
                wire::encode(e, &self.clock, &mut buf);
                self.push(&buf, on_full, wait, failing)
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
    }
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
