//! Memory for one case's arguments, laid out so that reading too far is observable.
//!
//! - The *general* area holds most buffers. Each allocation is followed by [`PIN_CANARY`]:
//!   an attribute whose `ulValueLen` runs past its value reads the application's
//!   "neighbouring memory", which here is a PIN — a reader that logs it leaks it.
//! - *Edge* buffers end exactly where a PROT_NONE guard page begins: reading one byte
//!   past them faults, in whoever reads (the module or keytrail).
//! - The *scratch* area receives outputs whose contents differ from run to run (random
//!   signatures, RSA wrappings); it is left out of [`Arena::digest`].
//!
//! The arena is mapped once, before the parent forks its children; each child then bumps
//! its own copy-on-write copy.

use std::ffi::c_void;

/// The application's "neighbouring memory": a PIN right after each buffer.
pub const PIN_CANARY: &[u8] = b"\0PIN=Kt-Canary-Pin-8c41f07d\0";

const PAGE: usize = 4096;
const GENERAL_PAGES: usize = 16;
const EDGES: usize = 4;
const SCRATCH: usize = 16 * 1024;

/// The mapped region and the bump pointers of one case.
pub struct Arena {
    base: *mut u8,
    general_used: usize,
    edges_used: usize,
    scratch_used: usize,
}

impl Arena {
    /// Maps the general area, `EDGES` edge pages each followed by a guard page, and the
    /// scratch area.
    pub fn map() -> Arena {
        let len = Self::len();
        // SAFETY (test): an anonymous private mapping; checked below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED, "mmap");
        let base = base as *mut u8;
        for i in 0..EDGES {
            // SAFETY (test): the guard page lies inside the mapping.
            let rc = unsafe {
                libc::mprotect(
                    base.add(Self::edge_start(i) + PAGE) as *mut c_void,
                    PAGE,
                    libc::PROT_NONE,
                )
            };
            assert_eq!(rc, 0, "mprotect");
        }
        Arena {
            base,
            general_used: 0,
            edges_used: 0,
            scratch_used: 0,
        }
    }

    fn len() -> usize {
        GENERAL_PAGES * PAGE + EDGES * 2 * PAGE + SCRATCH
    }

    fn edge_start(i: usize) -> usize {
        GENERAL_PAGES * PAGE + i * 2 * PAGE
    }

    fn scratch_start() -> usize {
        GENERAL_PAGES * PAGE + EDGES * 2 * PAGE
    }

    /// Forgets every allocation (each case starts from an empty arena).
    pub fn reset(&mut self) {
        self.general_used = 0;
        self.edges_used = 0;
        self.scratch_used = 0;
        // SAFETY (test): the general and edge pages are mapped read-write (guards aside).
        unsafe {
            std::ptr::write_bytes(self.base, 0, GENERAL_PAGES * PAGE);
            for i in 0..EDGES {
                std::ptr::write_bytes(self.base.add(Self::edge_start(i)), 0, PAGE);
            }
        }
    }

    /// The first byte of the first guard page: an address that faults.
    pub fn guard(&self) -> *mut u8 {
        // SAFETY (test): inside the mapping.
        unsafe { self.base.add(Self::edge_start(0) + PAGE) }
    }

    /// Copies `bytes` into the general area at an offset `misalign` bytes past 8-byte
    /// alignment, followed by the PIN canary. Falls back to the scratch area when full.
    pub fn put(&mut self, bytes: &[u8], misalign: usize) -> *mut u8 {
        let start = self.general_used.next_multiple_of(8) + misalign;
        let end = start + bytes.len() + PIN_CANARY.len();
        if end > GENERAL_PAGES * PAGE {
            return self.scratch(bytes.len().max(1), misalign, bytes);
        }
        // SAFETY (test): start..end lies inside the general area.
        unsafe {
            let p = self.base.add(start);
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len());
            std::ptr::copy_nonoverlapping(
                PIN_CANARY.as_ptr(),
                p.add(bytes.len()),
                PIN_CANARY.len(),
            );
            self.general_used = end;
            p
        }
    }

    /// Copies `bytes` so that they end exactly at a guard page (in the general area once
    /// every edge page is used).
    pub fn put_at_edge(&mut self, bytes: &[u8]) -> *mut u8 {
        if self.edges_used == EDGES || bytes.len() > PAGE {
            return self.put(bytes, 0);
        }
        let i = self.edges_used;
        self.edges_used += 1;
        // SAFETY (test): the last bytes.len() bytes of edge page i.
        unsafe {
            let p = self.base.add(Self::edge_start(i) + PAGE - bytes.len());
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len());
            p
        }
    }

    /// `len` bytes in the scratch area (left out of the digest), starting as `init`.
    pub fn scratch(&mut self, len: usize, misalign: usize, init: &[u8]) -> *mut u8 {
        let start = self.scratch_used.next_multiple_of(8) + misalign;
        assert!(start + len <= SCRATCH, "scratch area exhausted");
        self.scratch_used = start + len;
        // SAFETY (test): inside the scratch area.
        unsafe {
            let p = self.base.add(Self::scratch_start() + start);
            std::ptr::write_bytes(p, 0, len);
            std::ptr::copy_nonoverlapping(init.as_ptr(), p, init.len().min(len));
            p
        }
    }

    /// A digest of the general and edge pages: what the call left in the application's
    /// memory.
    pub fn digest(&self) -> u64 {
        use std::hash::Hasher;
        let mut h = std::hash::DefaultHasher::new();
        // SAFETY (test): mapped read-write pages.
        unsafe {
            h.write(std::slice::from_raw_parts(self.base, GENERAL_PAGES * PAGE));
            for i in 0..EDGES {
                h.write(std::slice::from_raw_parts(
                    self.base.add(Self::edge_start(i)),
                    PAGE,
                ));
            }
        }
        h.finish()
    }
}
