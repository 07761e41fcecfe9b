//! Direct-vs-keytrail comparisons: a scenario runs once against SoftHSM directly and once
//! through keytrail, each on a fresh token store, and records a comparable transcript.

use super::{Fixture, keytrail_module, open, softhsm_module};
use cryptoki::context::Pkcs11;
use cryptoki::error::Error;
use std::fmt::Debug;
use std::path::Path;

/// What a scenario observed, in order: return codes, handles, deterministic outputs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Transcript(pub Vec<String>);

impl Transcript {
    pub fn new() -> Transcript {
        Transcript::default()
    }

    /// Records any debuggable value under a label.
    pub fn rec(&mut self, label: &str, value: impl Debug) {
        self.0.push(format!("{label}: {value:?}"));
    }

    /// Records the outcome of a call: `OK` or the PKCS#11 error, without the value.
    pub fn rv<T>(&mut self, label: &str, r: &cryptoki::error::Result<T>) {
        self.0.push(format!("{label}: {}", outcome(r)));
    }

    /// Records the outcome of a call and, on success, its bytes in hex.
    pub fn bytes(&mut self, label: &str, r: &cryptoki::error::Result<Vec<u8>>) {
        match r {
            Ok(b) => self.0.push(format!("{label}: OK {}", hex(b))),
            Err(e) => self.0.push(format!("{label}: {}", err_name(e))),
        }
    }

    /// Records the outcome of a call and, on success, only the length of its output
    /// (for nondeterministic outputs).
    pub fn len(&mut self, label: &str, r: &cryptoki::error::Result<Vec<u8>>) {
        match r {
            Ok(b) => self.0.push(format!("{label}: OK len {}", b.len())),
            Err(e) => self.0.push(format!("{label}: {}", err_name(e))),
        }
    }

    pub fn contains(&self, needle: &str) -> bool {
        self.0.iter().any(|l| l.contains(needle))
    }
}

/// `OK` or the name of the PKCS#11 error.
pub fn outcome<T>(r: &cryptoki::error::Result<T>) -> String {
    match r {
        Ok(_) => "OK".to_string(),
        Err(e) => err_name(e),
    }
}

/// The PKCS#11 return value of an error, by name (`PinIncorrect`), or the error's text.
pub fn err_name(e: &Error) -> String {
    match e {
        Error::Pkcs11(rv, _) => format!("{rv:?}"),
        other => format!("{other}"),
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// Runs `scenario` on the module at `path` (load, C_Initialize, scenario, C_Finalize).
pub fn run_on(path: &Path, scenario: &dyn Fn(&Pkcs11) -> Transcript) -> Transcript {
    let p = open(path);
    let t = scenario(&p);
    p.finalize().expect("C_Finalize");
    t
}

/// Runs a scenario directly against SoftHSM, then through keytrail on a fresh token
/// store, asserts that both transcripts are identical and that keytrail reported nothing,
/// and returns the fixture and the transcript.
pub fn compare(scenario: impl Fn(&Pkcs11) -> Transcript) -> (Fixture, Transcript) {
    compare_paths(|path| run_on(path, &scenario))
}

/// Like [`compare`], for scenarios that need the module path (raw calls).
pub fn compare_paths(scenario: impl Fn(&Path) -> Transcript) -> (Fixture, Transcript) {
    let fx = Fixture::new();
    let direct = scenario(&softhsm_module());
    fx.fresh_store("b");
    let through = scenario(&keytrail_module());
    assert!(!direct.0.is_empty(), "the scenario recorded nothing");
    assert_eq!(
        direct.0, through.0,
        "keytrail's transcript (right) differs from SoftHSM's (left)"
    );
    assert_eq!(fx.diagnostics(), "", "keytrail reported a problem");
    (fx, through)
}
