//! An argument fuzzer for keytrail's audit hooks.
//!
//! Each case is one PKCS#11 call with random arguments — templates with NULL, garbage,
//! misaligned or overlong values, huge `ulValueLen` and `ulCount`, bogus mechanisms and
//! parameters — made from a fixed starting state (a logged-in SoftHSM2 session holding a
//! set of keys). The parent process sets that state up once, then for every case forks
//! two children: one makes the call directly on SoftHSM's function list, the other
//! through keytrail's. Both start from the same memory, so everything they report must be
//! identical: exit status or signal, the CK_RV, handles, lengths, and a digest of what
//! the call left in the application's memory. Then each child finalizes (keytrail drains
//! its trail) and exits.
//!
//! Used by tests/args_fuzz.rs (a fixed number of seeded cases in every test run) and by
//! the cargo-fuzz target in fuzz/ (longer runs driven by libFuzzer's input bytes).

#![allow(dead_code)]

pub mod arena;
pub mod call;
pub mod harness;
pub mod trail;

/// Where a case's random choices come from.
pub trait Source {
    /// The next 64 random bits.
    fn next_u64(&mut self) -> u64;
}

impl Source for fastrand::Rng {
    fn next_u64(&mut self) -> u64 {
        self.u64(..)
    }
}

/// The seed of case `index` of a run seeded with `seed`.
pub fn case_seed(seed: u64, index: u64) -> u64 {
    seed ^ index.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}
