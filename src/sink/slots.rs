//! The queue between callers and the writer thread: a fixed ring of record slots that a
//! caller claims and fills in place, so that a record is built where the writer reads it
//! instead of being moved (416 bytes a time) through every call on its way into a queue.
//!
//! The ordering is that of a bounded array queue (Vyukov's, as in crossbeam's
//! `ArrayQueue`): each slot has a stamp saying which position it is ready for, and for
//! whom. A position is a lap and a slot index, `lap * L + index`, with `L` the power of two
//! above the number of slots `n` (the index is then a mask away, no division). A caller
//! claims position `p` by moving the tail from `p` to the next position while its slot is
//! stamped `p` (empty for `p`); once filled, the slot is stamped `p + 1`. The one reader
//! takes position `h` when its slot is stamped `h + 1`, and stamps it `h + L`, empty for
//! the next lap (`L` ≥ 2 tells it from "filled", even when `n` is 1). Positions only grow,
//! 64-bit: they never wrap in practice (over a century at 10⁹ records a second).
//!
//! Each slot's record sits behind its own mutex, which the stamps keep uncontended (a
//! caller holds it while filling the slot it claimed, the reader while taking a slot
//! filled before): it is what gives each side its `&mut Event` without unsafe code, for
//! the price of one uncontended lock and unlock on each side.

use crate::audit::event::{Event, Started};
use parking_lot::{Mutex, MutexGuard};
use std::sync::atomic::{AtomicU64, Ordering};

/// A counter on a cache line of its own: the callers' tail and the reader's head do not
/// slow each other down.
#[repr(align(64))]
struct Padded(AtomicU64);

struct Slot {
    /// The position the slot is ready for: `p` empty for a caller at `p`, `p + 1` filled
    /// for the reader at `p`.
    stamp: AtomicU64,
    event: Mutex<Event>,
}

/// A bounded multi-producer, single-consumer ring of records.
pub(crate) struct Slots {
    slots: Box<[Slot]>,
    /// The next position callers claim.
    tail: Padded,
    /// The next position the reader takes.
    head: Padded,
    /// `L`: one lap, in positions (the power of two above the number of slots).
    lap: u64,
    /// The time vacant records carry (any: they are never written).
    vacant: Started,
}

/// A claimed slot: the caller fills the record in place; dropping the claim hands the
/// slot to the reader (whatever the record then holds: a fill that panicked leaves a
/// vacant record, which the reader skips, or a complete one).
pub(crate) struct Claim<'a> {
    stamp: &'a AtomicU64,
    pos: u64,
    event: MutexGuard<'a, Event>,
}

impl Claim<'_> {
    /// The record to fill: a vacant one ([`Event::vacant`]), to be overwritten.
    #[inline]
    pub(crate) fn event(&mut self) -> &mut Event {
        &mut self.event
    }
}

impl Drop for Claim<'_> {
    #[inline]
    fn drop(&mut self) {
        // SeqCst: with the writer's `asleep` flag, a Dekker pair (see Sink::wake_if_asleep):
        // either the writer, about to sleep, sees this record, or this caller sees it
        // asleep and wakes it.
        self.stamp.store(self.pos + 1, Ordering::SeqCst);
    }
}

impl Slots {
    /// A ring of `n` slots (at least one), each holding a vacant record, allocated
    /// fallibly: a process at its memory limit gets an error, not an abort.
    pub(crate) fn new(n: usize) -> std::io::Result<Slots> {
        let n = n.max(1);
        let vacant = Started::now();
        let mut slots = Vec::new();
        slots.try_reserve_exact(n).map_err(|e| {
            std::io::Error::other(format!(
                "the trail queue of {n} records ({} MB) cannot be allocated: {e}; \
                 lower [trail] queue",
                n.saturating_mul(std::mem::size_of::<Slot>()) >> 20
            ))
        })?;
        for i in 0..n {
            slots.push(Slot {
                stamp: AtomicU64::new(i as u64),
                event: Mutex::new(Event::vacant(vacant)),
            });
        }
        Ok(Slots {
            slots: slots.into_boxed_slice(),
            tail: Padded(AtomicU64::new(0)),
            head: Padded(AtomicU64::new(0)),
            lap: (n as u64 + 1).next_power_of_two(),
            vacant,
        })
    }

    #[inline]
    fn slot(&self, pos: u64) -> &Slot {
        &self.slots[(pos & (self.lap - 1)) as usize]
    }

    /// The position after `pos`: the next index, or the next lap's first.
    #[inline]
    fn next(&self, pos: u64) -> u64 {
        if (pos & (self.lap - 1)) + 1 < self.slots.len() as u64 {
            pos + 1
        } else {
            (pos & !(self.lap - 1)) + self.lap
        }
    }

    /// Claims the next slot; `None` when the ring is full.
    #[inline]
    pub(crate) fn claim(&self) -> Option<Claim<'_>> {
        let mut pos = self.tail.0.load(Ordering::Relaxed);
        loop {
            let slot = self.slot(pos);
            let stamp = slot.stamp.load(Ordering::Acquire);
            if stamp == pos {
                match self.tail.0.compare_exchange_weak(
                    pos,
                    self.next(pos),
                    Ordering::SeqCst,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        return Some(Claim {
                            stamp: &slot.stamp,
                            pos,
                            event: slot.event.lock(),
                        });
                    }
                    Err(now) => pos = now,
                }
            } else if stamp < pos {
                // The slot still holds (or is being given) the record of the lap before:
                // full, unless other callers moved the tail meanwhile.
                let now = self.tail.0.load(Ordering::Relaxed);
                if now == pos {
                    return None;
                }
                pos = now;
            } else {
                // Another caller took this position.
                pos = self.tail.0.load(Ordering::Relaxed);
            }
        }
    }

    /// Takes the record at the head, leaving a vacant one in its slot. Only one thread
    /// (the writer) reads.
    pub(crate) fn pop(&self) -> Option<Event> {
        let head = self.head.0.load(Ordering::Relaxed);
        let slot = self.slot(head);
        if slot.stamp.load(Ordering::Acquire) != head + 1 {
            return None;
        }
        let e = std::mem::replace(&mut *slot.event.lock(), Event::vacant(self.vacant));
        slot.stamp.store(head + self.lap, Ordering::Release);
        self.head.0.store(self.next(head), Ordering::Release);
        Some(e)
    }

    /// Whether the reader has taken every slot claimed so far (a claimed slot still being
    /// filled counts as not taken).
    pub(crate) fn is_empty(&self) -> bool {
        self.tail.0.load(Ordering::SeqCst) == self.head.0.load(Ordering::SeqCst)
    }

    /// Whether a filled record waits at the head (SeqCst: the writer's side of the pair
    /// described at [`Claim`]'s drop).
    pub(crate) fn ready(&self) -> bool {
        let head = self.head.0.load(Ordering::SeqCst);
        self.slot(head).stamp.load(Ordering::SeqCst) == head + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Lifecycle;

    fn record(thread: u64, n: u64) -> Event {
        let mut e = Event::call(Started::now(), "C_Sign", "sign", Lifecycle::Use, 0);
        e.thread_id = thread;
        e.session = Some(n);
        e
    }

    /// A full ring refuses a claim until the reader takes a record; slots are reused lap
    /// after lap, records come out in the order their slots were claimed, and a taken slot
    /// is left vacant — for rings of one slot, and of more.
    #[test]
    fn slots_are_reused_in_order_and_a_full_ring_refuses() {
        for n in [1u64, 2, 3, 4] {
            let q = Slots::new(n as usize).expect("slots");
            assert!(q.pop().is_none());
            for lap in 0..5u64 {
                for i in 0..n {
                    let mut c = q.claim().expect("room");
                    *c.event() = record(0, lap * n + i);
                }
                assert!(q.claim().is_none(), "full on lap {lap} of {n}");
                assert!(q.ready());
                for i in 0..n {
                    let e = q.pop().expect("filled");
                    assert_eq!(e.session, Some(lap * n + i), "{n} slots");
                }
                assert!(q.pop().is_none(), "{n} slots");
                assert!(!q.ready());
            }
            assert!(q.slots.iter().all(|s| s.event.lock().is_vacant()));
        }
    }

    /// A slot claimed but not yet filled holds back the records behind it (the reader
    /// never skips a position), and they come out once it is handed over.
    #[test]
    fn a_slot_being_filled_holds_back_the_ones_after_it() {
        let q = Slots::new(4).expect("slots");
        let mut first = q.claim().expect("room");
        *q.claim().expect("room").event() = record(0, 2);
        assert!(q.pop().is_none());
        assert!(!q.ready());
        *first.event() = record(0, 1);
        drop(first);
        assert_eq!(q.pop().map(|e| e.session), Some(Some(1)));
        assert_eq!(q.pop().map(|e| e.session), Some(Some(2)));
    }

    /// Several threads filling slots while the reader drains: every record arrives once,
    /// and each thread's records in the order it sent them.
    #[test]
    fn records_of_many_threads_arrive_once_each_in_order_per_thread() {
        const THREADS: u64 = 4;
        const EACH: u64 = 20_000;
        let q = std::sync::Arc::new(Slots::new(7).expect("slots"));
        let senders: Vec<_> = (0..THREADS)
            .map(|t| {
                let q = q.clone();
                std::thread::spawn(move || {
                    for n in 0..EACH {
                        loop {
                            if let Some(mut c) = q.claim() {
                                *c.event() = record(t, n);
                                break;
                            }
                            std::thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        let mut next = [0u64; THREADS as usize];
        let mut got = 0;
        while got < THREADS * EACH {
            match q.pop() {
                Some(e) => {
                    let t = e.thread_id as usize;
                    assert_eq!(e.session, Some(next[t]), "thread {t}");
                    next[t] += 1;
                    got += 1;
                }
                None => std::thread::yield_now(),
            }
        }
        for s in senders {
            s.join().expect("sender");
        }
        assert!(q.pop().is_none());
        assert_eq!(next, [EACH; THREADS as usize]);
    }
}
