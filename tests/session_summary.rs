//! `[audit] sessions = "summary"`: the sessions a process opens and closes on a slot
//! become one record per interval with exact counts; failures, logins and key events keep
//! a record each; summaries are written at the interval's end, at C_Finalize, at exit and
//! in a fork child; `keytrail report` and OCSF read them.

mod common;
mod support;

use common::raw::Raw;
use common::*;
use cryptoki::mechanism::Mechanism;
use cryptoki::slot::Slot;
use serde_json::Value;
use std::ffi::{c_char, c_int};
use support::*;

/// The counts of a session summary: (opened, opened_rw, opened_ro, closed,
/// closed_by_close_all, open, max_open).
fn counts(r: &Value) -> (u64, u64, u64, u64, u64, u64, u64) {
    (
        n(r, "pkcs11.sessions.opened"),
        n(r, "pkcs11.sessions.opened_rw"),
        n(r, "pkcs11.sessions.opened_ro"),
        n(r, "pkcs11.sessions.closed"),
        n(r, "pkcs11.sessions.closed_by_close_all"),
        n(r, "pkcs11.sessions.open"),
        n(r, "pkcs11.sessions.max_open"),
    )
}

fn keytrail_bin() -> std::path::PathBuf {
    keytrail_module().with_file_name("keytrail")
}

/// 37 read/write and 5 read-only sessions opened, 40 closed by C_CloseSession and 2 by
/// C_CloseAllSessions, 2 opens refused (no such slot), a login and an encryption; then
/// C_Finalize. Returns the handle of the session the encryption ran in.
fn known_workload() -> u64 {
    let module = keytrail_module();
    let p = open(&module);
    let slot = token_slot(&p);
    let s0 = user_session(&p);
    let key = aes_key(&s0, "key-s", &[0x5], false);
    s0.encrypt(&Mechanism::AesEcb, key, &[0; 16])
        .expect("encrypt");
    for _ in 0..36 {
        drop(p.open_rw_session(slot).expect("open rw"));
    }
    let ro: Vec<_> = (0..5)
        .map(|_| p.open_ro_session(slot).expect("open ro"))
        .collect();
    let bad = Slot::try_from(0x7777_u64).expect("slot id");
    for _ in 0..2 {
        p.open_ro_session(bad).expect_err("no such slot");
    }
    let mut ro = ro.into_iter();
    let kept = ro.next().expect("a read-only session");
    drop(ro);
    // C_CloseAllSessions closes the last two (cryptoki has no call for it: the same
    // module through its C table).
    let l = Raw::load(&module).list();
    // SAFETY (test): the module is initialized; the slot exists.
    let rv = unsafe { l.C_CloseAllSessions.expect("C_CloseAllSessions")(slot.id()) };
    assert_eq!(rv, cryptoki_sys::CKR_OK);
    let handle = s0.handle();
    // Both are closed already.
    std::mem::forget(s0);
    std::mem::forget(kept);
    // The thread that happens to write the summary (here at C_Finalize) lends it none of
    // its context: the summary stands for calls of any thread.
    type SetContext = unsafe extern "C" fn(*const c_char, *const c_char) -> c_int;
    let set: SetContext = Raw::load(&module)
        .sym("keytrail_set_context")
        .expect("keytrail_set_context");
    // SAFETY (test): NUL-terminated literals; the signature of include/keytrail.h.
    assert_eq!(unsafe { set(c"request_id".as_ptr(), c"r-1".as_ptr()) }, 0);
    p.finalize().expect("finalize");
    handle
}

#[test]
fn a_summary_counts_every_session_and_failures_keep_their_records() {
    let fx = Fixture::new();
    configure(&fx, "", "sessions = \"summary\"\nsummary_interval = 3600");
    let session = known_workload();
    let all = fx.trail();
    let sessions = category(&all, "session");
    let summaries = action(&all, "session_summary");
    assert_eq!(summaries.len(), 1, "{}", dump(&sessions));
    let sum = &summaries[0];
    // 37 rw (the user session and 36 more) and 5 ro; 40 + 2 closed; at most the user
    // session and the 5 read-only ones at once.
    assert_eq!(counts(sum), (42, 37, 5, 42, 2, 0, 6), "{sum:#}");
    assert_eq!(s(sum, "event.outcome"), "success");
    assert_eq!(sum["event"]["type"][0], "info", "{sum:#}");
    assert_eq!(s(sum, "pkcs11.token.label"), TOKEN_LABEL);
    assert!(sum.pointer("/pkcs11/session").is_none(), "{sum:#}");
    assert!(sum.get("labels").is_none(), "{sum:#}");
    assert_eq!(only(&all, "finalize")["labels"]["request_id"], "r-1");
    assert!(
        s(sum, "pkcs11.sessions.last") >= s(sum, "@timestamp"),
        "{sum:#}"
    );
    // The two refused opens, one record each; no other session record.
    let failed: Vec<(&str, &str)> = sessions
        .iter()
        .filter(|r| s(r, "event.action") != "session_summary")
        .map(|r| (s(r, "event.action"), s(r, "pkcs11.rv_name")))
        .collect();
    assert_eq!(
        failed,
        [("session_open", "CKR_SLOT_ID_INVALID"); 2],
        "{}",
        dump(&sessions)
    );
    assert_eq!(n(&failed_record(&sessions), "pkcs11.slot_id"), 0x7777);
    // The login and the key events keep their records, with their session.
    assert_eq!(action(&all, "login").len(), 1, "{}", dump(&all));
    // C_CloseAllSessions closed the slot's last sessions with the user logged in: the
    // summary cannot say when the login ended, so that close is an implicit logout record.
    let out = only(&all, "logout");
    assert_eq!(
        (
            s(&out, "pkcs11.function"),
            s(&out, "pkcs11.auth.user_type"),
            s(&out, "event.outcome"),
            n(&out, "pkcs11.slot_id"),
        ),
        (
            "C_CloseAllSessions",
            "CKU_USER",
            "success",
            n(sum, "pkcs11.slot_id")
        ),
        "{out:#}"
    );
    let enc = only(&all, "encrypt");
    assert_eq!(n(&enc, "pkcs11.session.handle"), session, "{enc:#}");
    // The summary goes before the stream's stop.
    let actions: Vec<&str> = all.iter().map(|r| s(r, "event.action")).collect();
    let at = |a: &str| actions.iter().position(|x| *x == a).expect(a);
    assert!(at("session_summary") < at("trail_stop"), "{actions:?}");
    assert_eq!(actions.last(), Some(&"trail_stop"));

    // `keytrail report` counts the sessions the summary stands for.
    let o = std::process::Command::new(keytrail_bin())
        .args(["report", "--json"])
        .arg(fx.trail_path())
        .output()
        .expect("run keytrail report");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(
        r["sessions"],
        serde_json::json!({"opened": 42, "opened_rw": 37, "closed": 42, "close_all_calls": 0,
            "failures": 2, "summaries": 1, "max_open": 6}),
        "{r:#}"
    );
    let o = std::process::Command::new(keytrail_bin())
        .args(["report"])
        .arg(fx.trail_path())
        .output()
        .expect("run keytrail report");
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains(
            "sessions: 42 opened (37 read/write), 42 closed, 2 failed calls; from 1 summary, \
             at most 6 open at once"
        ),
        "{text}"
    );
}

fn failed_record(sessions: &[Value]) -> Value {
    sessions
        .iter()
        .find(|r| s(r, "event.outcome") == "failure")
        .cloned()
        .expect("a failure")
}

/// The same workload recorded one by one gives the report the same counts.
#[test]
fn the_report_counts_the_same_with_every_session_recorded() {
    let fx = Fixture::new();
    configure(&fx, "", "");
    known_workload();
    let o = std::process::Command::new(keytrail_bin())
        .args(["report", "--json"])
        .arg(fx.trail_path())
        .output()
        .expect("run keytrail report");
    let r: Value = serde_json::from_slice(&o.stdout).expect("json");
    // C_CloseAllSessions's record does not say how many it closed: 40 closed, 1 call.
    assert_eq!(
        r["sessions"],
        serde_json::json!({"opened": 42, "opened_rw": 37, "closed": 40, "close_all_calls": 1,
            "failures": 2, "summaries": 0}),
        "{r:#}"
    );
}

#[test]
fn an_interval_that_ran_out_is_written_at_the_next_call() {
    let fx = Fixture::new();
    configure(&fx, "", "sessions = \"summary\"\nsummary_interval = 1");
    let p = open(&keytrail_module());
    let slot = token_slot(&p);
    let held = p.open_ro_session(slot).expect("held");
    for _ in 0..3 {
        drop(p.open_rw_session(slot).expect("open"));
    }
    std::thread::sleep(std::time::Duration::from_millis(1200));
    // The first call of the next interval writes the last one's summary, before C_Finalize.
    drop(p.open_rw_session(slot).expect("open"));
    let first = (0..100)
        .find_map(|_| {
            let t = action(&fx.trail(), "session_summary");
            if t.is_empty() {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            t.first().cloned()
        })
        .expect("the first interval's summary is written before C_Finalize");
    assert_eq!(counts(&first), (4, 3, 1, 3, 0, 1, 2), "{first:#}");
    drop(p.open_rw_session(slot).expect("open"));
    drop(held);
    p.finalize().expect("finalize");
    let t = fx.trail();
    let sums = action(&t, "session_summary");
    let got: Vec<_> = sums.iter().map(counts).collect();
    assert_eq!(
        got,
        [(4, 3, 1, 3, 0, 1, 2), (2, 2, 0, 3, 0, 0, 2)],
        "{}",
        dump(&t)
    );
    assert!(s(&sums[1], "@timestamp") > s(&sums[0], "pkcs11.sessions.last"));
}

/// A child after fork counts its own sessions and writes them at exit (no C_Finalize);
/// the parent's summary holds its own, before and after the fork.
#[test]
fn a_forked_child_summarizes_its_own_sessions_at_exit() {
    let fx = Fixture::new();
    configure(&fx, "", "sessions = \"summary\"\nsummary_interval = 3600");
    let p = open(&keytrail_module());
    let slot = token_slot(&p);
    let held = p.open_rw_session(slot).expect("held");
    for _ in 0..5 {
        drop(p.open_ro_session(slot).expect("open before fork"));
    }
    let pid = fork();
    let opens = if pid == 0 { 7 } else { 4 };
    for _ in 0..opens {
        drop(p.open_ro_session(slot).expect("open after fork"));
    }
    if pid == 0 {
        std::mem::forget(held);
        // SAFETY (test): exit() runs the atexit handlers, where keytrail writes the child's
        // summary and stop.
        unsafe { libc::exit(0) };
    }
    wait_child(pid);
    drop(held);
    p.finalize().expect("finalize");
    let t = fx.trail();
    let of = |pid: u32| -> Vec<_> {
        action(&t, "session_summary")
            .iter()
            .filter(|r| n(r, "process.pid") == u64::from(pid))
            .map(counts)
            .collect()
    };
    // The parent: the held session and 5 + 4 read-only ones, all closed.
    assert_eq!(
        of(std::process::id()),
        [(10, 1, 9, 10, 0, 0, 2)],
        "{}",
        dump(&t)
    );
    // The child: 7, with the held session still open in it.
    assert_eq!(of(pid as u32), [(7, 0, 7, 7, 0, 1, 2)], "{}", dump(&t));
    let child_stop = t
        .iter()
        .filter(|r| n(r, "process.pid") == pid as u64)
        .map(|r| s(r, "event.action"))
        .collect::<Vec<_>>();
    assert_eq!(child_stop.last(), Some(&"trail_stop"), "{child_stop:?}");
}

#[test]
fn ocsf_maps_a_session_summary() {
    let fx = Fixture::new();
    configure(&fx, "", "sessions = \"summary\"");
    std::fs::write(
        &fx.keytrail_conf,
        std::fs::read_to_string(&fx.keytrail_conf).expect("conf") + "format = \"ocsf\"\n",
    )
    .expect("conf");
    let p = open(&keytrail_module());
    let slot = token_slot(&p);
    for _ in 0..3 {
        drop(p.open_rw_session(slot).expect("open"));
    }
    p.finalize().expect("finalize");
    let t = fx.trail();
    let sums: Vec<&Value> = t
        .iter()
        .filter(|r| r["metadata"]["event_code"] == "session_summary")
        .collect();
    assert_eq!(sums.len(), 1, "{t:#?}");
    let r = sums[0];
    assert_eq!(r["class_uid"], 6003, "{r:#}");
    assert_eq!(r["activity_id"], 99, "{r:#}");
    assert_eq!(r["count"], 6, "{r:#}");
    assert_eq!(r["api"]["operation"], "session_summary", "{r:#}");
    assert_eq!(r["unmapped"]["pkcs11"]["sessions"]["opened"], 3, "{r:#}");
    assert_eq!(r["unmapped"]["pkcs11"]["sessions"]["closed"], 3, "{r:#}");
}

/// C_Finalize closes every session: the summary it writes says how many were still open,
/// and after a new C_Initialize the counts start from none open.
#[test]
fn a_new_c_initialize_counts_from_no_session_open() {
    let fx = Fixture::new();
    configure(&fx, "", "sessions = \"summary\"\nsummary_interval = 3600");
    let p = open(&keytrail_module());
    let slot = token_slot(&p);
    let held = p.open_rw_session(slot).expect("held");
    std::mem::forget(held);
    p.finalize().expect("finalize");
    let p = open(&keytrail_module());
    for _ in 0..2 {
        drop(p.open_ro_session(slot).expect("open"));
    }
    p.finalize().expect("finalize");
    let t = fx.trail();
    let got: Vec<_> = action(&t, "session_summary").iter().map(counts).collect();
    assert_eq!(
        got,
        [(1, 1, 0, 0, 0, 1, 1), (2, 0, 2, 2, 0, 0, 1)],
        "{}",
        dump(&t)
    );
}
