//! Per-thread facts: the kernel thread id (cached, since gettid is a real system call) and
//! the context an application attached to the thread through `keytrail_set_context`.
//!
//! Thread-locals are reached only with `try_with`: during thread or process teardown
//! they may already be gone, and a shim that touched one then has aborted its host.

use std::cell::{Cell, RefCell};
use std::sync::Arc;

/// Context labels attached to a thread.
pub type Labels = Arc<Vec<(String, String)>>;

thread_local! {
    static THREAD_ID: Cell<u64> = const { Cell::new(0) };
    /// Whether LABELS holds labels: a record of a thread without labels (the common case)
    /// reads only this and THREAD_ID, constant thread-locals without a destructor, which
    /// cost a plain load each; LABELS, which has one, is reached only when it holds some.
    static HAS_LABELS: Cell<bool> = const { Cell::new(false) };
    static LABELS: RefCell<Option<Labels>> = const { RefCell::new(None) };
}

/// Sets a record's thread facts: the calling thread's id and labels.
#[inline(always)]
pub fn complete(e: &mut crate::audit::event::Event) {
    e.thread_id = thread_id();
    e.labels = if has_labels() { labels() } else { None };
}

/// Whether the calling thread has labels (false when it is exiting).
#[inline]
pub fn has_labels() -> bool {
    HAS_LABELS.try_with(Cell::get).unwrap_or(false)
}

/// The calling thread's kernel id.
#[inline]
pub fn thread_id() -> u64 {
    THREAD_ID
        .try_with(|c| {
            let v = c.get();
            if v != 0 {
                return v;
            }
            let v = crate::os::thread_id();
            c.set(v);
            v
        })
        .unwrap_or_else(|_| crate::os::thread_id())
}

/// Forgets the cached thread id (in a child after fork, the one thread has a new id).
pub fn reset_thread_id() {
    let _ = THREAD_ID.try_with(|c| c.set(0));
}

/// The labels attached to the calling thread.
#[inline]
pub fn labels() -> Option<Labels> {
    LABELS.try_with(|l| l.borrow().clone()).ok().flatten()
}

/// Sets (or, with `None` as value, removes) one label on the calling thread. At most
/// [`MAX_LABELS`] labels of at most [`MAX_LABEL_LEN`] bytes each are kept.
pub fn set_label(key: &str, value: Option<&str>) -> bool {
    if key.is_empty() || key.len() > MAX_LABEL_LEN || value.is_some_and(|v| v.len() > MAX_LABEL_LEN)
    {
        return false;
    }
    LABELS
        .try_with(|l| {
            let mut slot = l.borrow_mut();
            let mut list: Vec<(String, String)> = slot.as_deref().cloned().unwrap_or_default();
            list.retain(|(k, _)| k != key);
            if let Some(v) = value {
                if list.len() >= MAX_LABELS {
                    return false;
                }
                list.push((key.to_string(), v.to_string()));
            }
            *slot = (!list.is_empty()).then(|| Arc::new(list));
            let _ = HAS_LABELS.try_with(|h| h.set(slot.is_some()));
            true
        })
        .unwrap_or(false)
}

/// Removes every label from the calling thread.
pub fn clear_labels() {
    let _ = LABELS.try_with(|l| *l.borrow_mut() = None);
    let _ = HAS_LABELS.try_with(|h| h.set(false));
}

/// Most labels one thread may carry.
pub const MAX_LABELS: usize = 16;
/// Longest label key or value, in bytes.
pub const MAX_LABEL_LEN: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_per_thread_and_replaceable() {
        assert!(set_label("request_id", Some("r-1")));
        assert!(set_label("end_user", Some("alice")));
        assert!(set_label("request_id", Some("r-2")));
        let l = labels().expect("labels");
        assert_eq!(l.len(), 2);
        assert!(l.contains(&("request_id".into(), "r-2".into())));
        std::thread::spawn(|| assert!(labels().is_none()))
            .join()
            .expect("thread");
        assert!(set_label("request_id", None));
        assert_eq!(labels().expect("one left").len(), 1);
        clear_labels();
        assert!(labels().is_none());
        assert!(!set_label("", Some("x")));
    }
}
