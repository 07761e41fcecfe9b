//! The unit tests' allocator: it remembers which thread allocated each block, so a test
//! can count the blocks the writer thread frees that another thread allocated, and the
//! records that reach the writer with rarer parts built on the caller's heap. (nextest
//! runs each test in a process of its own, so the counts are the test's.)

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

struct Counting;

#[global_allocator]
static ALLOC: Counting = Counting;

static NEXT_THREAD: AtomicU64 = AtomicU64::new(1);
/// Blocks another thread allocated that a writer thread freed.
pub static WRITER_FOREIGN_FREES: AtomicU64 = AtomicU64::new(0);
/// Records that reached a writer thread with their rarer parts on the caller's heap.
pub static RECORDS_WITH_HEAP: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static THREAD: Cell<u64> = const { Cell::new(0) };
    static WRITER: Cell<bool> = const { Cell::new(false) };
}

/// The calling thread is a writer.
pub fn mark_writer() {
    let _ = WRITER.try_with(|w| w.set(true));
}

/// A record reached the writer; `heap`: with rarer parts on the caller's heap.
pub fn record_reached_writer(heap: bool) {
    if heap {
        RECORDS_WITH_HEAP.fetch_add(1, Ordering::Relaxed);
    }
}

fn thread() -> u64 {
    THREAD
        .try_with(|t| {
            if t.get() == 0 {
                t.set(NEXT_THREAD.fetch_add(1, Ordering::Relaxed));
            }
            t.get()
        })
        .unwrap_or(0)
}

/// The block's layout with room for the allocating thread's id before the caller's part,
/// and the offset of that part.
fn outer(layout: Layout) -> Option<(Layout, usize)> {
    let offset = layout.align().max(16);
    let size = layout.size().checked_add(offset)?;
    Some((Layout::from_size_align(size, offset).ok()?, offset))
}

// SAFETY: every block is the system allocator's, `offset` bytes larger and as aligned;
// the caller's part starts `offset` bytes in, and the 8 bytes before it hold the thread id.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some((outer, offset)) = outer(layout) else {
            return std::ptr::null_mut();
        };
        // SAFETY: `outer` has a non-zero size (offset ≥ 16).
        let base = unsafe { System.alloc(outer) };
        if base.is_null() {
            return base;
        }
        // SAFETY: the block is `offset` + size bytes; offset ≥ 16 and a multiple of 8.
        unsafe {
            let p = base.add(offset);
            (p.sub(8) as *mut u64).write(thread());
            p
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some((outer, offset)) = outer(layout) else {
            return;
        };
        // SAFETY: `ptr` came from `alloc` above with this layout.
        let owner = unsafe { (ptr.sub(8) as *const u64).read() };
        if WRITER.try_with(Cell::get).unwrap_or(false) && owner != thread() {
            WRITER_FOREIGN_FREES.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the block `alloc` took from the system allocator, with its layout.
        unsafe { System.dealloc(ptr.sub(offset), outer) }
    }
}
