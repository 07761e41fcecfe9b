//! Measures the writer thread's cost of formatting one typical `use` record.
use keytrail::audit::event::{Event, OperationInfo, Started};
use keytrail::audit::mechanism::Mechanism;
use keytrail::config::Lifecycle;
use keytrail::sink::json::{Origin, encode};
use std::time::Instant;

fn main() {
    let origin = Origin::current(Some("bench".into()));
    let mut e = Event::call(Started::now(), "C_Sign", "sign", Lifecycle::Use, 0);
    e.session = Some(1);
    e.slot_id = Some(123456);
    e.session_state = Some("rw_user");
    e.mechanism = Some(Mechanism::bare(0x251));
    e.key("key", 2, None);
    e.operation = Some(OperationInfo {
        kind: "sign",
        init: "C_SignInit",
        parts: 1,
        in_len: 64,
        out_len: 32,
        end: "completed",
    });
    let mut buf = Vec::with_capacity(1 << 20);
    let n = 1_000_000;
    let t = Instant::now();
    for i in 0..n {
        encode(&e, &origin, i, &mut buf);
        if buf.len() > 900_000 {
            buf.clear();
        }
    }
    let el = t.elapsed();
    println!("{:.0} ns per record", el.as_nanos() as f64 / n as f64);
}
