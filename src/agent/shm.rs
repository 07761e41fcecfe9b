//! The shared-memory ring between one process and the agent: every access to shared
//! memory is in this module.
//!
//! A bounded multi-producer, single-consumer ring of fixed-size slots with a sequence
//! number each (D. Vyukov's bounded queue, extended to records spanning several slots):
//!
//! - A producer reserves `k` consecutive positions with one compare-and-swap on `head`,
//!   after checking that the last of them is free (the consumer frees slots in order, so
//!   the others are then free too). It writes the record's bytes, publishes the
//!   continuation slots, then the first slot. No lock, no system call.
//! - The consumer (the agent) reads the slot at its position once its sequence says it is
//!   published, checks everything it reads (the producer is not trusted), copies the
//!   record out and frees its slots.
//! - The agent sleeps only after setting `asleep` and finding the ring empty; a producer
//!   that finds `asleep` set clears it and writes the eventfd once. Calls made while the
//!   agent is awake cost no system call.
//!
//! The memory is a sealed memfd made by the agent: the process cannot shrink it under the
//! agent (which would make the agent's reads fault).

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Bytes of the header page.
const HEADER: usize = 4096;
/// Bytes per slot.
pub const SLOT: usize = 256;
/// Bytes of record data per slot (after the sequence, kind and length).
const DATA: usize = SLOT - 16;
/// Identifies a ring and its layout version.
const MAGIC: u64 = u64::from_le_bytes(*b"ktring01");

// Header offsets; each hot word has its own cache line.
const OFF_MAGIC: usize = 0;
const OFF_SLOTS: usize = 8;
const OFF_HEAD: usize = 64;
const OFF_ASLEEP: usize = 128;
const OFF_TAIL: usize = 192;
const OFF_DROPPED: usize = 256;
const OFF_DROPPED_SINCE: usize = 264;

// Slot kinds.
const FIRST: u32 = 1;
const CONT: u32 = 2;
/// A slot reserved for a record written in place that did not fit in it: nothing to read
/// (the record follows in slots of its own).
const PAD: u32 = 3;

/// A shared mapping, unmapped when dropped.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain memory shared by design; all access to it goes through
// atomics or through copies whose contents are validated after reading.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly what mmap returned; nothing borrows them past self.
        let _ = unsafe { rustix::mm::munmap(self.ptr.cast(), self.len) };
    }
}

impl Mapping {
    fn map(fd: impl AsFd, len: usize) -> std::io::Result<Mapping> {
        use rustix::mm::{MapFlags, ProtFlags};
        // SAFETY: a fresh shared mapping of a memfd at an address the kernel chooses; it
        // aliases no Rust object.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                fd,
                0,
            )
        }?;
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
        })
    }

    #[inline]
    fn u64_at(&self, off: usize) -> &AtomicU64 {
        debug_assert!(off % 8 == 0 && off + 8 <= self.len);
        // SAFETY: every caller passes an 8-aligned offset inside the mapping (header
        // constants, or slot offsets below `len`); the mapping is page-aligned and lives
        // as long as &self.
        unsafe { &*(self.ptr.add(off) as *const AtomicU64) }
    }

    #[inline]
    fn u32_at(&self, off: usize) -> &AtomicU32 {
        debug_assert!(off % 4 == 0 && off + 4 <= self.len);
        // SAFETY: as in u64_at, 4-aligned.
        unsafe { &*(self.ptr.add(off) as *const AtomicU32) }
    }

    /// Copies `src` into the mapping at `off`.
    #[inline]
    fn write(&self, off: usize, src: &[u8]) {
        assert!(off + src.len() <= self.len);
        // SAFETY: in bounds (checked); the slot is reserved by this producer, so no other
        // producer writes it; the consumer reads it only after it is published.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.add(off), src.len()) };
    }

    /// Runs `f` on the `len` bytes at `off`, to write them.
    #[inline]
    fn write_with<R>(&self, off: usize, len: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
        assert!(off + len <= self.len);
        // SAFETY: in bounds (checked); the caller has reserved the slot these bytes are in,
        // so no other producer writes them, and the consumer reads them only after they
        // are published; the slice lives only for the call.
        f(unsafe { std::slice::from_raw_parts_mut(self.ptr.add(off), len) })
    }

    /// Copies `len` bytes at `off` out of the mapping.
    #[inline]
    fn read(&self, off: usize, out: &mut Vec<u8>, len: usize) {
        assert!(off + len <= self.len);
        out.reserve(len);
        // SAFETY: in bounds (checked); `out` has room for `len` more bytes. A hostile
        // process may change the bytes meanwhile: they are only plain bytes, validated
        // by the decoder after this copy.
        unsafe {
            std::ptr::copy_nonoverlapping(self.ptr.add(off), out.as_mut_ptr().add(out.len()), len);
            out.set_len(out.len() + len);
        }
    }
}

/// Why a record could not be put in the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// No room now.
    Full,
    /// The record is larger than half the ring.
    TooLarge,
}

/// What the consumer found at its position.
#[derive(Debug, PartialEq, Eq)]
pub enum Pop {
    /// A record (its bytes are in the output buffer).
    Record,
    /// Nothing published at the position.
    Empty,
    /// A bad record, skipped.
    Malformed(&'static str),
}

/// One ring, seen from either side.
pub struct Ring {
    map: Mapping,
    slots: u64,
}

impl Ring {
    /// The agent's side: a new sealed memfd holding an empty ring of `slots` slots (a
    /// power of two).
    pub fn create(slots: usize) -> std::io::Result<(Ring, OwnedFd)> {
        use rustix::fs::{MemfdFlags, SealFlags};
        if !slots.is_power_of_two() || slots < 2 {
            return Err(std::io::Error::other("ring slots must be a power of two"));
        }
        let len = HEADER + slots * SLOT;
        let fd = rustix::fs::memfd_create(
            "keytrail-ring",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )?;
        rustix::fs::ftruncate(&fd, len as u64)?;
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)?;
        let map = Mapping::map(&fd, len)?;
        map.u64_at(OFF_MAGIC).store(MAGIC, Ordering::Relaxed);
        map.u64_at(OFF_SLOTS).store(slots as u64, Ordering::Relaxed);
        for i in 0..slots {
            map.u64_at(HEADER + i * SLOT)
                .store(i as u64, Ordering::Relaxed);
        }
        std::sync::atomic::fence(Ordering::SeqCst);
        Ok((
            Ring {
                map,
                slots: slots as u64,
            },
            fd,
        ))
    }

    /// The process's side: maps a ring received from the agent and checks its header.
    pub fn open(fd: &OwnedFd) -> std::io::Result<Ring> {
        let size = rustix::fs::fstat(fd)?.st_size as usize;
        if size < HEADER + 2 * SLOT {
            return Err(std::io::Error::other("the agent's ring is too small"));
        }
        let map = Mapping::map(fd, size)?;
        let slots = map.u64_at(OFF_SLOTS).load(Ordering::Relaxed);
        if map.u64_at(OFF_MAGIC).load(Ordering::Relaxed) != MAGIC
            || !slots.is_power_of_two()
            || HEADER as u64 + slots * SLOT as u64 != size as u64
        {
            return Err(std::io::Error::other(
                "the agent's ring has an unknown layout",
            ));
        }
        Ok(Ring { map, slots })
    }

    /// The agent's side, after a restart: takes over a ring a process kept from the
    /// previous agent, and the position that agent had reached. Only a sealed memfd of
    /// the ring's layout (at most `max_slots` slots) is accepted: one the process could
    /// shrink would make the agent's reads fault.
    pub fn adopt(fd: &OwnedFd, max_slots: usize) -> std::io::Result<(Ring, u64)> {
        use rustix::fs::SealFlags;
        let seals = rustix::fs::fcntl_get_seals(fd)?;
        if !seals.contains(SealFlags::SHRINK | SealFlags::SEAL) {
            return Err(std::io::Error::other("the ring is not sealed"));
        }
        let ring = Ring::open(fd)?;
        if ring.slots > max_slots as u64 {
            return Err(std::io::Error::other(
                "the ring is larger than the agent allows",
            ));
        }
        ring.map.u32_at(OFF_ASLEEP).store(0, Ordering::SeqCst);
        let tail = ring.map.u64_at(OFF_TAIL).load(Ordering::Acquire);
        Ok((ring, tail))
    }

    /// Slots in the ring.
    pub fn slots(&self) -> u64 {
        self.slots
    }

    #[inline]
    fn slot(&self, pos: u64) -> usize {
        HEADER + (pos & (self.slots - 1)) as usize * SLOT
    }

    #[inline]
    fn seq(&self, pos: u64) -> &AtomicU64 {
        self.map.u64_at(self.slot(pos))
    }

    #[inline]
    fn slots_for(len: usize) -> u64 {
        if len <= DATA {
            1
        } else {
            len.div_ceil(DATA) as u64
        }
    }

    /// Producer: reserves `k` consecutive positions (the first is returned), or says the
    /// ring is full.
    #[inline]
    fn reserve(&self, k: u64) -> Result<u64, PushError> {
        let head = self.map.u64_at(OFF_HEAD);
        let mut p = head.load(Ordering::Relaxed);
        loop {
            let last = p + k - 1;
            let seq = self.seq(last).load(Ordering::Acquire);
            let diff = seq.wrapping_sub(last) as i64;
            if diff == 0 {
                match head.compare_exchange_weak(p, p + k, Ordering::Relaxed, Ordering::Relaxed) {
                    Ok(_) => return Ok(p),
                    Err(now) => p = now,
                }
            } else if diff < 0 {
                return Err(PushError::Full);
            } else {
                p = head.load(Ordering::Relaxed);
            }
        }
    }

    /// Producer: reserves one slot and has `fill` write a record straight into it (no
    /// copy through a buffer). `fill` gets the slot's data bytes and returns the record's
    /// length, larger than what it got when the record did not fit: then the slot is
    /// published as padding, which the consumer skips, and the answer is `Ok(false)` (the
    /// caller puts the record in with [`Ring::push`]). Never blocks.
    #[inline]
    pub fn push_in_place(&self, fill: impl FnOnce(&mut [u8]) -> usize) -> Result<bool, PushError> {
        let p = self.reserve(1)?;
        let off = self.slot(p);
        let n = self.map.write_with(off + 16, DATA, fill);
        let fits = n <= DATA;
        let (kind, len) = if fits { (FIRST, n as u32) } else { (PAD, 0) };
        self.map.u32_at(off + 8).store(kind, Ordering::Relaxed);
        self.map.u32_at(off + 12).store(len, Ordering::Relaxed);
        // As in `push`: published last, with a full barrier.
        self.seq(p).swap(p + 1, Ordering::SeqCst);
        Ok(fits)
    }

    /// Producer: puts one record in the ring, or says why not. Never blocks.
    #[inline]
    pub fn push(&self, record: &[u8]) -> Result<(), PushError> {
        let k = Self::slots_for(record.len());
        if k > self.slots / 2 {
            return Err(PushError::TooLarge);
        }
        let p = self.reserve(k)?;
        if k == 1 {
            // Most records: one slot, no chunking.
            let off = self.slot(p);
            self.map.u32_at(off + 8).store(FIRST, Ordering::Relaxed);
            self.map
                .u32_at(off + 12)
                .store(record.len() as u32, Ordering::Relaxed);
            self.map.write(off + 16, record);
        } else {
            for (j, chunk) in record.chunks(DATA).enumerate() {
                let off = self.slot(p + j as u64);
                let kind = if j == 0 { FIRST } else { CONT };
                self.map.u32_at(off + 8).store(kind, Ordering::Relaxed);
                self.map
                    .u32_at(off + 12)
                    .store(record.len() as u32, Ordering::Relaxed);
                self.map.write(off + 16, chunk);
            }
            for j in 1..k {
                self.seq(p + j).store(p + j + 1, Ordering::Release);
            }
        }
        // The first slot last, and with a full barrier: the consumer sees a whole record,
        // and the `asleep` check below cannot be ordered before this store.
        self.seq(p).swap(p + 1, Ordering::SeqCst);
        Ok(())
    }

    /// Producer: whether the consumer must be woken (it said it was going to sleep); true
    /// only for the one caller that clears the flag.
    #[inline]
    pub fn take_wakeup(&self) -> bool {
        let asleep = self.map.u32_at(OFF_ASLEEP);
        asleep.load(Ordering::SeqCst) != 0 && asleep.swap(0, Ordering::SeqCst) != 0
    }

    /// Producer: counts a record dropped under `on_full = "drop"` (µs since the epoch of
    /// the first drop of a run).
    pub fn count_drop(&self, now_us: u64) {
        if self.map.u64_at(OFF_DROPPED).fetch_add(1, Ordering::Relaxed) == 0 {
            self.map
                .u64_at(OFF_DROPPED_SINCE)
                .store(now_us, Ordering::Relaxed);
        }
    }

    /// Producer: whether the consumer has taken everything reserved so far.
    pub fn drained(&self) -> bool {
        self.map.u64_at(OFF_TAIL).load(Ordering::Acquire)
            >= self.map.u64_at(OFF_HEAD).load(Ordering::Acquire)
    }

    /// Consumer: records dropped by the producer since the last call, and when the first
    /// of them was (µs since the epoch).
    pub fn take_drops(&self) -> Option<(u64, u64)> {
        let n = self.map.u64_at(OFF_DROPPED).swap(0, Ordering::Relaxed);
        (n > 0).then(|| {
            let since = self.map.u64_at(OFF_DROPPED_SINCE).load(Ordering::Relaxed);
            (n, since)
        })
    }

    /// Consumer: says it is about to sleep. Returns false (and takes it back) when a
    /// record is already waiting at `tail`.
    pub fn sleep_if_empty(&self, tail: u64) -> bool {
        self.map.u32_at(OFF_ASLEEP).store(1, Ordering::SeqCst);
        if self.seq(tail).load(Ordering::SeqCst) == tail + 1 {
            self.map.u32_at(OFF_ASLEEP).store(0, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// Consumer: the record at `*tail`, into `out` (cleared first).
    pub fn pop(&self, tail: &mut u64, out: &mut Vec<u8>) -> Pop {
        out.clear();
        loop {
            let t = *tail;
            if self.seq(t).load(Ordering::Acquire) != t + 1 {
                return Pop::Empty;
            }
            let off = self.slot(t);
            let kind = self.map.u32_at(off + 8).load(Ordering::Relaxed);
            let len = self.map.u32_at(off + 12).load(Ordering::Relaxed) as usize;
            if kind == CONT || kind == PAD {
                // The rest of a record already skipped as malformed (nothing to say
                // again), or a slot a record written in place did not fit in.
                Self::advance(tail, 1);
                continue;
            }
            if kind != FIRST {
                Self::advance(tail, 1);
                return Pop::Malformed("unknown slot kind");
            }
            let k = Self::slots_for(len);
            if len > super::wire::MAX_RECORD || k > self.slots / 2 {
                Self::advance(tail, 1);
                return Pop::Malformed("record length out of bounds");
            }
            for j in 1..k {
                let o = self.slot(t + j);
                if self.seq(t + j).load(Ordering::Acquire) != t + j + 1
                    || self.map.u32_at(o + 8).load(Ordering::Relaxed) != CONT
                {
                    Self::advance(tail, 1);
                    return Pop::Malformed("record incomplete");
                }
            }
            let mut left = len;
            for j in 0..k {
                let n = left.min(DATA);
                self.map.read(self.slot(t + j) + 16, out, n);
                left -= n;
            }
            Self::advance(tail, k);
            return Pop::Record;
        }
    }

    /// Consumer, once the process is gone: positions reserved but never published (a
    /// thread killed while writing) are skipped up to the next published record; returns
    /// how many slots were skipped (0 when nothing else is there).
    pub fn skip_unpublished(&self, tail: &mut u64) -> u64 {
        let head = self.map.u64_at(OFF_HEAD).load(Ordering::Acquire);
        let end = head.min(*tail + self.slots);
        let start = *tail;
        for pos in start..end {
            if self.seq(pos).load(Ordering::Acquire) == pos + 1 {
                // [`Ring::release`] frees them with the records around them.
                let skipped = pos - start;
                *tail = pos;
                return skipped;
            }
        }
        0
    }

    /// Moves the consumer's read position past `k` slots. They stay taken until
    /// [`Ring::release`]: a record read but not yet written to the trail is still in the
    /// ring for an agent that takes the ring over after this one died.
    fn advance(tail: &mut u64, k: u64) {
        *tail += k;
    }

    /// Consumer: frees every slot before `upto` (a read position from [`Ring::pop`]),
    /// once what was read from them is on the trail. Slots are freed in order, as the
    /// producers' check of a reservation's last slot needs.
    pub fn release(&self, upto: u64) {
        let tail = self.map.u64_at(OFF_TAIL);
        let from = tail.load(Ordering::Acquire);
        if upto <= from {
            return;
        }
        for pos in from..upto {
            self.seq(pos).store(pos + self.slots, Ordering::Release);
        }
        tail.store(upto, Ordering::Release);
    }

    /// Test and fuzz support: writes raw bytes over the ring's slots (as a hostile
    /// process could), starting at slot `from`.
    pub fn scribble(&self, from: usize, bytes: &[u8]) {
        let start = HEADER + (from % self.slots as usize) * SLOT;
        let n = bytes.len().min(self.map.len - start);
        self.map.write(start, &bytes[..n]);
    }

    /// Test support: sets `head` as a hostile process could.
    pub fn set_head(&self, head: u64) {
        self.map.u64_at(OFF_HEAD).store(head, Ordering::Release);
    }
}

/// A descriptor that a child after fork can close although other threads' references to
/// it were inherited: the process's connection to the agent, which the child must not
/// keep open (the agent would not see the parent end).
pub struct SharedFd(std::sync::atomic::AtomicI32);

impl SharedFd {
    /// Takes ownership of `fd`.
    pub fn new(fd: OwnedFd) -> SharedFd {
        use std::os::fd::IntoRawFd;
        SharedFd(std::sync::atomic::AtomicI32::new(fd.into_raw_fd()))
    }

    /// Runs `f` with the descriptor, if it is still open.
    #[inline]
    pub fn with<R>(&self, f: impl FnOnce(std::os::fd::BorrowedFd<'_>) -> R) -> Option<R> {
        let raw = self.0.load(Ordering::Acquire);
        if raw < 0 {
            return None;
        }
        // SAFETY: the descriptor is owned by self and closed only by `close`, which runs
        // in a child after fork, where no other thread exists to be using it.
        Some(f(unsafe { std::os::fd::BorrowedFd::borrow_raw(raw) }))
    }

    /// Puts `fd` in place of the current descriptor. The old one is left open (leaked):
    /// another thread may be using it at this moment, and closing it could let its number
    /// be reused under that thread. This happens once per agent restart.
    pub fn replace(&self, fd: OwnedFd) {
        use std::os::fd::IntoRawFd;
        self.0.swap(fd.into_raw_fd(), Ordering::AcqRel);
    }

    /// Closes the descriptor (once).
    pub fn close(&self) {
        use std::os::fd::FromRawFd;
        let raw = self.0.swap(-1, Ordering::AcqRel);
        if raw >= 0 {
            // SAFETY: self owned `raw`, and the swap makes this the only place that
            // closes it; `with` no longer hands it out.
            drop(unsafe { OwnedFd::from_raw_fd(raw) });
        }
    }
}

impl Drop for SharedFd {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_of_any_size_come_out_in_order() {
        let (ring, fd) = Ring::create(64).expect("ring");
        let client = Ring::open(&fd).expect("open");
        let mut tail = 0;
        let mut out = Vec::new();
        for round in 0..50u32 {
            let recs: Vec<Vec<u8>> = (0..5u32)
                .map(|i| vec![(round * 5 + i) as u8; ((round * 97 + i * 31) % 1500) as usize])
                .collect();
            for r in &recs {
                client.push(r).expect("room");
            }
            for r in &recs {
                assert_eq!(ring.pop(&mut tail, &mut out), Pop::Record);
                assert_eq!(&out, r);
            }
            assert_eq!(ring.pop(&mut tail, &mut out), Pop::Empty);
            assert!(!client.drained(), "read is not yet released");
            ring.release(tail);
            assert!(client.drained());
        }
    }

    #[test]
    fn records_written_in_place_come_out_and_padding_is_skipped() {
        let (ring, fd) = Ring::create(8).expect("ring");
        let client = Ring::open(&fd).expect("open");
        let (mut tail, mut out) = (0, Vec::new());
        for round in 0..20u8 {
            // One that fits, one that does not (its slot is padding), one pushed whole.
            let fill = |n: usize| {
                move |d: &mut [u8]| {
                    for (i, b) in d.iter_mut().take(n).enumerate() {
                        *b = round ^ i as u8;
                    }
                    n
                }
            };
            assert_eq!(client.push_in_place(fill(DATA)), Ok(true));
            assert_eq!(client.push_in_place(fill(DATA + 1)), Ok(false));
            client.push(&[round; 300]).expect("room");
            assert_eq!(ring.pop(&mut tail, &mut out), Pop::Record);
            assert_eq!(out.len(), DATA);
            assert!(out.iter().enumerate().all(|(i, b)| *b == round ^ i as u8));
            assert_eq!(ring.pop(&mut tail, &mut out), Pop::Record);
            assert_eq!(out, [round; 300]);
            assert_eq!(ring.pop(&mut tail, &mut out), Pop::Empty);
            ring.release(tail);
            assert!(client.drained());
        }
        // A full ring: nothing is reserved, `fill` is not called.
        for _ in 0..8 {
            client.push(b"x").expect("room");
        }
        assert_eq!(
            client.push_in_place(|_| panic!("no slot to fill")),
            Err(PushError::Full)
        );
    }

    #[test]
    fn a_full_ring_says_so_and_frees_up() {
        let (ring, fd) = Ring::create(8).expect("ring");
        let client = Ring::open(&fd).expect("open");
        for _ in 0..8 {
            client.push(b"x").expect("room");
        }
        assert_eq!(client.push(b"x"), Err(PushError::Full));
        assert_eq!(client.push(&[0; 2000]), Err(PushError::TooLarge));
        let (mut tail, mut out) = (0, Vec::new());
        assert_eq!(ring.pop(&mut tail, &mut out), Pop::Record);
        assert_eq!(
            client.push(b"y"),
            Err(PushError::Full),
            "read, not yet released"
        );
        ring.release(tail);
        client.push(b"y").expect("room again");
    }

    #[test]
    fn threads_share_a_ring_without_loss() {
        let (ring, fd) = Ring::create(256).expect("ring");
        let client = std::sync::Arc::new(Ring::open(&fd).expect("open"));
        let producers: Vec<_> = (0..4u8)
            .map(|t| {
                let c = client.clone();
                std::thread::spawn(move || {
                    for i in 0..5000u32 {
                        let mut r = vec![t; 5 + (i as usize % 600)];
                        r[1..5].copy_from_slice(&i.to_le_bytes());
                        while c.push(&r) == Err(PushError::Full) {
                            std::thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        let (mut tail, mut out) = (0, Vec::new());
        let mut next = [0u32; 4];
        while next.iter().any(|n| *n < 5000) {
            match ring.pop(&mut tail, &mut out) {
                Pop::Record => {
                    let t = out[0] as usize;
                    let i = u32::from_le_bytes([out[1], out[2], out[3], out[4]]);
                    assert_eq!(i, next[t], "thread {t} in order");
                    next[t] += 1;
                    ring.release(tail);
                }
                Pop::Empty => std::thread::yield_now(),
                Pop::Malformed(m) => panic!("{m}"),
            }
        }
        for p in producers {
            p.join().expect("producer");
        }
    }

    #[test]
    fn scribbled_slots_never_hang_or_panic_the_consumer() {
        let mut rng = fastrand::Rng::with_seed(13);
        for _ in 0..300 {
            let (ring, fd) = Ring::create(16).expect("ring");
            let client = Ring::open(&fd).expect("open");
            for _ in 0..rng.usize(0..6) {
                let _ = client.push(&vec![1; rng.usize(0..900)]);
            }
            let junk: Vec<u8> = (0..rng.usize(0..4096)).map(|_| rng.u8(..)).collect();
            ring.scribble(rng.usize(0..16), &junk);
            ring.set_head(rng.u64(..));
            let (mut tail, mut out) = (0u64, Vec::new());
            for _ in 0..100 {
                if ring.pop(&mut tail, &mut out) == Pop::Empty
                    && ring.skip_unpublished(&mut tail) == 0
                {
                    break;
                }
                ring.release(tail);
            }
        }
    }

    #[test]
    fn a_ring_taken_over_before_release_gives_its_records_again() {
        let (ring, fd) = Ring::create(16).expect("ring");
        let client = Ring::open(&fd).expect("open");
        client.push(b"one").expect("room");
        client.push(b"two").expect("room");
        let (mut tail, mut out) = (0, Vec::new());
        assert_eq!(ring.pop(&mut tail, &mut out), Pop::Record);
        ring.release(tail);
        assert_eq!(ring.pop(&mut tail, &mut out), Pop::Record);
        // This consumer dies before "two" is on its trail: the next one reads it.
        drop(ring);
        let (again, mut tail) = Ring::adopt(&fd, usize::MAX).expect("adopt");
        assert_eq!(again.pop(&mut tail, &mut out), Pop::Record);
        assert_eq!(out, b"two");
        assert_eq!(again.pop(&mut tail, &mut out), Pop::Empty);
    }
}
