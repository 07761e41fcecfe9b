//! Measures the writer thread's cost per record: formatting one typical `use` record,
//! and formatting plus sealing it into the hash chain.
mod common;

use keytrail::audit::event::{Event, OperationInfo, WallClock};
use keytrail::audit::mechanism::Mechanism;
use keytrail::config::IntegrityConfig;
use keytrail::sink::chain::Chain;
use keytrail::sink::json::{Origin, encode};
use std::time::Instant;

fn main() {
    let origin = Origin::current(Some("bench".into()));
    let e = common::sign_record();
    println!(
        "Event: {} bytes (Mechanism {}, OperationInfo {}, KeyRef {})",
        std::mem::size_of::<Event>(),
        std::mem::size_of::<Mechanism>(),
        std::mem::size_of::<OperationInfo>(),
        std::mem::size_of::<keytrail::audit::event::KeyRef>()
    );
    let n = 500_000u64;
    let mut buf = Vec::with_capacity(1 << 20);
    let t = Instant::now();
    for i in 0..n {
        // The embedded writer reads the clocks for each record.
        encode(&e, &origin, i, &WallClock::now(), &mut buf);
        if buf.len() > 900_000 {
            buf.clear();
        }
    }
    println!(
        "encode: {:.0} ns per record",
        t.elapsed().as_nanos() as f64 / n as f64
    );
    let mut chain = Chain::new(&IntegrityConfig::default()).expect("chain");
    buf.clear();
    let t = Instant::now();
    for _ in 0..n {
        chain.append(&e, &origin, &mut buf);
        if buf.len() > 900_000 {
            buf.clear();
        }
    }
    println!(
        "encode + chain: {:.0} ns per record ({} bytes)",
        t.elapsed().as_nanos() as f64 / n as f64,
        {
            let mut one = Vec::new();
            chain.append(&e, &origin, &mut one);
            one.len()
        }
    );
}
