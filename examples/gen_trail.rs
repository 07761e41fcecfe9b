//! Writes a synthetic trail through keytrail's own record encoder and hash chain, for
//! measuring `keytrail verify` and `keytrail report` on large trails.
//!
//! `cargo run --release --example gen_trail -- OUT.jsonl RECORDS [STREAMS]`

use keytrail::audit::event::{Event, KeyRef, OperationInfo, Started, TokenRef};
use keytrail::audit::keys::KeyIdentity;
use keytrail::audit::mechanism::Mechanism;
use keytrail::config::{IntegrityConfig, Lifecycle};
use keytrail::sink::chain::Chain;
use keytrail::sink::json::Origin;
use std::io::Write;
use std::sync::Arc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let out = args
        .get(1)
        .ok_or("usage: gen_trail OUT RECORDS [STREAMS]")?;
    let records: u64 = args.get(2).ok_or("RECORDS")?.parse()?;
    let streams: usize = args.get(3).map_or(Ok(4), |s| s.parse())?;
    let mut chains: Vec<Chain> = (0..streams)
        .map(|_| Chain::new(&IntegrityConfig::default()))
        .collect::<Result<_, _>>()?;
    let origins: Vec<Origin> = (0..streams)
        .map(|i| {
            let mut o = Origin::current(Some("bench".into()));
            o.process.pid = 10_000 + i as u32;
            o
        })
        .collect();
    let token = Arc::new(TokenRef::new("bench".into(), "0123456789abcdef".into()));
    let keys: Vec<Arc<KeyIdentity>> = (0..16)
        .map(|i| {
            let mut k = KeyIdentity::default();
            k.class = Some("CKO_PRIVATE_KEY");
            k.key_type = Some("CKK_EC");
            k.id_hex = Some(format!("{i:02x}"));
            k.label = Some(format!("bench-key-{i}"));
            k.token = Some(true);
            Arc::new(k)
        })
        .collect();
    let mut file = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(out)?);
    let mut buf = Vec::with_capacity(1 << 16);
    let per_stream = records / streams as u64;
    for (c, o) in chains.iter_mut().zip(&origins) {
        let e = Event::audit(
            "trail_start",
            "bench".into(),
            serde_json::json!({"module": "/nonexistent", "version": env!("CARGO_PKG_VERSION")}),
        );
        c.append(&e, o, &mut buf);
    }
    let mut written = streams as u64;
    let mut i = 0u64;
    while written + streams as u64 <= per_stream * streams as u64 {
        for (s, (c, o)) in chains.iter_mut().zip(&origins).enumerate() {
            let rv = if i % 97 == 0 { 0x30 } else { 0 };
            let mut e = Event::call(Started::now(), "C_Sign", "sign", Lifecycle::Use, rv);
            e.thread_id = 4242 + s as u64;
            e.slot_id = Some(1);
            e.token = Some(token.clone());
            e.session = Some(1 + s as u64);
            e.session_state = Some("rw_user");
            e.mechanism = Some(Mechanism::bare(0x1041));
            e.keys.push(KeyRef {
                role: "key",
                handle: 2 + (i % 16),
                identity: Some(keys[(i % 16) as usize].clone()),
            });
            e.operation = Some(OperationInfo {
                kind: "sign",
                init: "C_SignInit",
                parts: 1,
                in_len: 32,
                out_len: 64,
                end: "completed",
            });
            c.append(&e, o, &mut buf);
            written += 1;
        }
        i += 1;
        if buf.len() > 1 << 20 {
            file.write_all(&buf)?;
            buf.clear();
        }
    }
    for (c, o) in chains.iter_mut().zip(&origins) {
        let e = Event::audit(
            "trail_stop",
            "bench".into(),
            serde_json::json!({"reason": "bench"}),
        );
        c.append(&e, o, &mut buf);
        written += 1;
    }
    file.write_all(&buf)?;
    file.flush()?;
    eprintln!("gen_trail: wrote {written} records to {out}");
    Ok(())
}
