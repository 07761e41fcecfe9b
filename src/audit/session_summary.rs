//! Session summaries (`[audit] sessions = "summary"`): the sessions one process opens and
//! closes on one slot over one interval become one record with counts, instead of a
//! record per C_OpenSession and C_CloseSession. An application that opens and closes a
//! session per request then writes a record a slot and interval; failed calls, logins,
//! logouts and key events keep one record each.
//!
//! Counting runs on the calling thread: a short critical section over a small vector
//! (one entry per slot the process has used, never freed), so the hot path allocates
//! nothing once a slot has been seen.

use super::event::{Event, SessionSummary, Started, TokenRef};
use crate::config::Lifecycle;
use cryptoki_sys::*;
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a successful session call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// C_OpenSession; true when read/write.
    Opened(bool),
    /// C_CloseSession closed one session.
    Closed,
    /// C_CloseAllSessions closed this many.
    ClosedAll(u64),
}

/// One slot's counts in the current interval.
struct Slot {
    slot: CK_SLOT_ID,
    token: Option<Arc<TokenRef>>,
    /// Sessions open now (carried from one interval to the next).
    open: u64,
    /// The first call counted in this interval; `None` when none was.
    first: Option<Started>,
    last: Started,
    counts: Counts,
}

#[derive(Default, Clone, Copy)]
struct Counts {
    opened_rw: u64,
    opened_ro: u64,
    closed: u64,
    closed_all: u64,
    max_open: u64,
}

struct Window {
    /// When the interval ends.
    end: Instant,
    slots: Vec<Slot>,
}

/// The session summaries of the current interval.
pub struct SessionSummaries {
    interval: Duration,
    window: Mutex<Window>,
}

impl SessionSummaries {
    /// Summaries over `interval`.
    pub fn new(interval: Duration) -> SessionSummaries {
        SessionSummaries {
            interval: interval.max(Duration::from_secs(1)),
            window: Mutex::new(Window {
                end: Instant::now() + interval.max(Duration::from_secs(1)),
                slots: Vec::new(),
            }),
        }
    }

    /// Counts a successful session call on `slot` that started at `started`. `token`
    /// names the slot's token the first time the slot is seen (called without the lock
    /// held: it may ask the module). When the interval has run out, its summaries come
    /// back, to be written (the only time this allocates).
    pub fn count(
        &self,
        slot: CK_SLOT_ID,
        started: Started,
        change: Change,
        token: impl FnOnce() -> Option<Arc<TokenRef>>,
    ) -> Option<Vec<Event>> {
        let mut w = self.window.lock();
        let due = (started.instant >= w.end).then(|| {
            let mut due = Vec::new();
            self.take(&mut w, &mut due);
            due
        });
        let i = match w.slots.iter().position(|s| s.slot == slot) {
            Some(i) => i,
            None => {
                // Once per slot and process: the token's identity, outside the lock.
                drop(w);
                let token = token();
                w = self.window.lock();
                match w.slots.iter().position(|s| s.slot == slot) {
                    Some(i) => i,
                    None => {
                        w.slots.push(Slot {
                            slot,
                            token,
                            open: 0,
                            first: None,
                            last: started,
                            counts: Counts::default(),
                        });
                        w.slots.len() - 1
                    }
                }
            }
        };
        let s = &mut w.slots[i];
        match change {
            Change::Opened(rw) => {
                if rw {
                    s.counts.opened_rw += 1;
                } else {
                    s.counts.opened_ro += 1;
                }
                s.open += 1;
            }
            Change::Closed => {
                s.counts.closed += 1;
                s.open = s.open.saturating_sub(1);
            }
            Change::ClosedAll(n) => {
                s.counts.closed_all += n;
                s.open = s.open.saturating_sub(n);
            }
        }
        s.counts.max_open = s.counts.max_open.max(s.open);
        if s.first.is_none() {
            s.first = Some(started);
        }
        // Calls of several threads may be counted out of their start order.
        if started.instant > s.last.instant {
            s.last = started;
        }
        due
    }

    /// Before fork: takes the lock (released by [`SessionSummaries::unlock_after_fork`]).
    pub fn lock_for_fork(&self) {
        std::mem::forget(self.window.lock());
    }

    /// Releases the lock taken by [`SessionSummaries::lock_for_fork`].
    ///
    /// # Safety
    /// Only after `lock_for_fork` on this thread.
    pub unsafe fn unlock_after_fork(&self) {
        // SAFETY: the caller guarantees the lock is held with its guard forgotten.
        unsafe { self.window.force_unlock() };
    }

    /// In a child after fork: the parent's counts are the parent's to write; the child
    /// counts its own calls from here. The sessions open stay open in the child (it has
    /// the same handles), so the open counts carry over.
    pub fn forget_after_fork(&self) {
        let mut w = self.window.lock();
        w.end = Instant::now() + self.interval;
        for s in &mut w.slots {
            s.first = None;
            s.counts = Counts {
                max_open: s.open,
                ..Counts::default()
            };
        }
    }

    /// Every summary of the interval so far, as the stream stops (C_Finalize, which
    /// closes every session, or the process's exit): a later C_Initialize starts with no
    /// session open.
    pub fn drain(&self) -> Vec<Event> {
        let mut due = Vec::new();
        let mut w = self.window.lock();
        self.take(&mut w, &mut due);
        for s in &mut w.slots {
            s.open = 0;
            s.counts.max_open = 0;
        }
        due
    }
}

impl SessionSummaries {
    /// Ends the window: each slot with calls counted becomes a summary record.
    fn take(&self, w: &mut Window, due: &mut Vec<Event>) {
        w.end = Instant::now() + self.interval;
        for s in &mut w.slots {
            let Some(first) = s.first.take() else {
                continue;
            };
            let c = std::mem::replace(
                &mut s.counts,
                Counts {
                    max_open: s.open,
                    ..Counts::default()
                },
            );
            let mut e = Event::call(first, "", "session_summary", Lifecycle::Session, CKR_OK);
            e.rv = None;
            e.duration_ns = None;
            e.slot_id = Some(s.slot);
            e.token = s.token.clone();
            e.extra_mut().sessions = Some(SessionSummary {
                opened_rw: c.opened_rw,
                opened_ro: c.opened_ro,
                closed: c.closed,
                closed_all: c.closed_all,
                open: s.open,
                max_open: c.max_open,
                last: s.last,
            });
            due.push(e);
        }
        due.sort_by_key(|e| e.started.instant);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sums(due: &[Event]) -> Vec<(CK_SLOT_ID, u64, u64, u64, u64, u64, u64)> {
        due.iter()
            .map(|e| {
                let s = e
                    .extra()
                    .and_then(|x| x.sessions)
                    .expect("a session summary");
                (
                    e.slot_id.unwrap_or(u64::MAX),
                    s.opened_rw,
                    s.opened_ro,
                    s.closed,
                    s.closed_all,
                    s.open,
                    s.max_open,
                )
            })
            .collect()
    }

    /// Counts per slot; a slot with no call in an interval has no summary.
    #[test]
    fn counts_per_slot_and_interval() {
        let t = SessionSummaries::new(Duration::from_secs(3600));
        let now = Started::now;
        for _ in 0..3 {
            t.count(7, now(), Change::Opened(true), || None);
        }
        t.count(7, now(), Change::Opened(false), || None);
        t.count(7, now(), Change::Closed, || None);
        t.count(9, now(), Change::Opened(false), || None);
        assert!(t.count(9, now(), Change::ClosedAll(1), || None).is_none());
        let first = t.drain();
        assert_eq!(sums(&first), [(7, 3, 1, 1, 0, 3, 4), (9, 0, 1, 0, 1, 0, 1)]);
        assert!(t.drain().is_empty());
        // The stream stopped (C_Finalize closed the two left open): a resumed stream
        // counts from none open.
        t.count(7, now(), Change::Opened(true), || None);
        assert_eq!(sums(&t.drain()), [(7, 1, 0, 0, 0, 1, 1)]);
    }

    /// A call after the interval ran out writes the summaries of the one before; the
    /// sessions open carry over.
    #[test]
    fn a_call_after_the_interval_writes_the_last_one() {
        let t = SessionSummaries::new(Duration::from_secs(1));
        assert!(
            t.count(1, Started::now(), Change::Opened(true), || None)
                .is_none()
        );
        std::thread::sleep(Duration::from_millis(1100));
        let due = t.count(1, Started::now(), Change::Closed, || None);
        assert_eq!(sums(&due.unwrap_or_default()), [(1, 1, 0, 0, 0, 1, 1)]);
        assert_eq!(sums(&t.drain()), [(1, 0, 0, 1, 0, 0, 1)]);
    }
}
