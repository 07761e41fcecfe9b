//! Usage summaries (`[audit] usage = "summary"`): the successful uses of one key, in one
//! operation with one mechanism, over one interval, become one record with counts. A busy
//! key then writes a record an interval instead of one per signature; failures, and every
//! other category, keep one record each.

use super::event::{Event, Outcome, Started, UseSummary};
use cryptoki_sys::*;
use parking_lot::Mutex;
use rustc_hash::FxHashMap as HashMap;
use std::time::{Duration, Instant};

/// What one summary groups: the key (by handle: its identity is on the record), the
/// operation, the mechanism, and the slot.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Group {
    key: Option<CK_OBJECT_HANDLE>,
    kind: &'static str,
    mechanism: Option<CK_MECHANISM_TYPE>,
    slot: Option<CK_SLOT_ID>,
}

/// One group's counts so far: its first successful use (the record to be), and the rest.
struct Counts {
    first: Option<Event>,
    successes: u64,
    failures: u64,
    parts: u64,
    in_len: u64,
    out_len: u64,
    last: Option<Started>,
}

struct Window {
    start: Instant,
    groups: HashMap<Group, Counts>,
}

/// The summaries of the current interval.
pub struct Summaries {
    interval: Duration,
    window: Mutex<Window>,
}

impl Summaries {
    /// Summaries over `interval`.
    pub fn new(interval: Duration) -> Summaries {
        Summaries {
            interval: interval.max(Duration::from_secs(1)),
            window: Mutex::new(Window {
                start: Instant::now(),
                groups: HashMap::default(),
            }),
        }
    }

    /// Counts a use record. A success is kept (`None` comes back: no record now); a
    /// failure is counted and comes back, to be written as it is. When the interval has
    /// run out, the summaries that are due are added to `due`.
    pub fn add(&self, e: Event, due: &mut Vec<Event>) -> Option<Event> {
        let group = Group {
            key: e.keys.first().map(|k| k.handle),
            kind: e.operation.as_ref().map_or("", |o| o.kind),
            mechanism: e.mechanism.as_ref().map(|m| m.type_),
            slot: e.slot_id,
        };
        let mut w = self.window.lock();
        if w.start.elapsed() >= self.interval {
            take(&mut w, due);
        }
        let c = w.groups.entry(group).or_insert_with(|| Counts {
            first: None,
            successes: 0,
            failures: 0,
            parts: 0,
            in_len: 0,
            out_len: 0,
            last: None,
        });
        if e.outcome != Outcome::Success {
            c.failures += 1;
            return Some(e);
        }
        c.successes += 1;
        if let Some(op) = &e.operation {
            c.parts += op.parts;
            c.in_len += op.in_len;
            c.out_len += op.out_len;
        }
        c.last = Some(e.started);
        if c.first.is_none() {
            c.first = Some(e);
        }
        None
    }

    /// Before fork: takes the lock (released by [`Summaries::unlock_after_fork`]).
    pub fn lock_for_fork(&self) {
        std::mem::forget(self.window.lock());
    }

    /// Releases the lock taken by [`Summaries::lock_for_fork`].
    ///
    /// # Safety
    /// Only after `lock_for_fork` on this thread.
    pub unsafe fn unlock_after_fork(&self) {
        // SAFETY: the caller guarantees the lock is held with its guard forgotten.
        unsafe { self.window.force_unlock() };
    }

    /// In a child after fork: the parent's counts are the parent's to write; the child
    /// counts its own uses from here.
    pub fn forget_after_fork(&self) {
        let mut w = self.window.lock();
        w.groups.clear();
        w.start = Instant::now();
    }

    /// Every summary of the interval so far (C_Finalize, exit).
    pub fn drain(&self) -> Vec<Event> {
        let mut due = Vec::new();
        take(&mut self.window.lock(), &mut due);
        due
    }
}

/// Ends the window: its groups with successes become summary records.
fn take(w: &mut Window, due: &mut Vec<Event>) {
    w.start = Instant::now();
    for (_, c) in w.groups.drain() {
        let Some(mut e) = c.first else { continue };
        if let Some(op) = &mut e.operation {
            op.parts = c.parts;
            op.in_len = c.in_len;
            op.out_len = c.out_len;
        }
        // A summary spans the sessions and threads of its uses: it names none of them.
        e.session = None;
        e.session_state = None;
        e.duration_ns = None;
        e.extra_mut().summary = Some(UseSummary {
            successes: c.successes,
            failures: c.failures,
            last: c.last.unwrap_or(e.started),
        });
        due.push(e);
    }
    due.sort_by_key(|e| e.started.instant);
}
