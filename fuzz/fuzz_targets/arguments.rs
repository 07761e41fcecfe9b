//! libFuzzer drives the argument fuzzer of tests/argfuzz: each input's bytes are the
//! case's random choices, the case runs directly on SoftHSM2 and through keytrail in
//! children forked from one starting state, and any difference in what they did — or a
//! record of keytrail's that breaks the trail's rules — is reported as a crash.
//!
//! The calls run in child processes and through the built libkeytrail.so, so libFuzzer's
//! coverage feedback does not reach keytrail's code: this is a long, input-driven random
//! run with libFuzzer's corpus, crash files and minimisation (`-minimize_crash=1`).

#![no_main]

#[path = "../../tests/argfuzz/mod.rs"]
#[allow(unused_imports)]
mod argfuzz;

use argfuzz::Source;
use argfuzz::harness::Harness;
use libfuzzer_sys::fuzz_target;
use std::cell::RefCell;
use std::path::PathBuf;

/// A case's choices, eight input bytes at a time (zeros once the input runs out).
struct Bytes {
    data: Vec<u8>,
    at: usize,
}

impl Source for Bytes {
    fn next_u64(&mut self) -> u64 {
        let mut word = [0u8; 8];
        let end = (self.at + 8).min(self.data.len());
        if self.at < end {
            word[..end - self.at].copy_from_slice(&self.data[self.at..end]);
        }
        self.at += 8;
        u64::from_le_bytes(word)
    }
}

fn path_from_env(name: &str, default: &str) -> PathBuf {
    std::env::var_os(name).map_or_else(|| PathBuf::from(default), PathBuf::from)
}

/// The starting state, made once per fuzzing process (libFuzzer runs the target on one
/// thread).
fn harness() -> Harness {
    let keytrail = path_from_env(
        "KEYTRAIL_SO",
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../target/debug/libkeytrail.so"
        ),
    );
    let softhsm = path_from_env("SOFTHSM2_MODULE", "/usr/lib/softhsm/libsofthsm2.so");
    let dir = std::env::temp_dir().join(format!("keytrail-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch directory");
    eprintln!("keytrail-fuzz: token store and trails in {}", dir.display());
    Harness::new(&dir, &softhsm, &keytrail, "level = \"trace\"")
}

thread_local! {
    static HARNESS: RefCell<Option<Harness>> = const { RefCell::new(None) };
}

fuzz_target!(|data: &[u8]| {
    HARNESS.with_borrow_mut(|h| run(h.get_or_insert_with(harness), data));
});

fn run(h: &mut Harness, data: &[u8]) {
    let make = || -> Box<dyn Source> {
        Box::new(Bytes {
            data: data.to_vec(),
            at: 0,
        })
    };
    let outcome = match h.compare(&make) {
        Ok(o) => o,
        Err(d) => panic!(
            "keytrail differs from SoftHSM:\n  direct   [{}] {}\n  keytrail [{}] {}",
            d.direct.status, d.direct.report, d.keytrail.status, d.keytrail.report
        ),
    };
    let file = h.trail_of(outcome.pid);
    if file.exists() {
        let died = outcome.status != "exit 0";
        let records = argfuzz::trail::records(&file, died).unwrap_or_else(|e| panic!("{e}"));
        for (line, r) in &records {
            if let Err(e) = argfuzz::trail::check(line, r) {
                panic!("{e}");
            }
        }
        // The next input's child will have another pid; keep the directory small.
        let _ = std::fs::remove_file(&file);
    }
}
