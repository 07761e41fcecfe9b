//! Measures what agent mode costs the calling thread per record: encoding one typical
//! `use` record into the ring's binary layout and putting it in a ring, while a consumer
//! thread (standing in for the agent) drains and decodes it; and the consumer's decode
//! cost per record.
use keytrail::agent::shm::{Pop, Ring};
use keytrail::agent::wire::{Clock, decode, encode};
mod common;

use keytrail::audit::keys::KeyIdentity;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

fn main() {
    // With the key's identity, as a record of a key keytrail knows.
    let mut e = common::sign_record();
    let mut id = KeyIdentity::default();
    id.class = Some("CKO_SECRET_KEY");
    id.key_type = Some("CKK_GENERIC_SECRET");
    id.label = Some("hmac-key".into());
    id.id_hex = Some("0102".into());
    e.keys.clear();
    e.key("key", 2, Some(Arc::new(id)));
    let (ring, fd) = Ring::create(4096).expect("ring");
    let producer = Ring::open(&fd).expect("map");
    let clock = Clock::now();
    let done = Arc::new(AtomicBool::new(false));
    let d = done.clone();
    let consumer = std::thread::spawn(move || {
        let (mut tail, mut buf, mut n, mut spent) = (0u64, Vec::new(), 0u64, 0u128);
        loop {
            match ring.pop(&mut tail, &mut buf) {
                Pop::Record => {
                    let t = Instant::now();
                    let _ = std::hint::black_box(decode(&buf, &clock));
                    spent += t.elapsed().as_nanos();
                    n += 1;
                }
                _ if d.load(Ordering::Acquire) => break,
                _ => std::hint::spin_loop(),
            }
        }
        (n, spent)
    });
    let n = 1_000_000u64;
    let mut buf = Vec::with_capacity(4096);
    encode(&e, &clock, &mut buf);
    println!("record: {} bytes in the ring", buf.len());
    let (mut full, t) = (0u64, Instant::now());
    for _ in 0..n {
        encode(&e, &clock, &mut buf);
        while producer.push(&buf).is_err() {
            full += 1;
            std::hint::spin_loop();
        }
        std::hint::black_box(producer.take_wakeup());
    }
    let caller = t.elapsed().as_nanos() as f64 / n as f64;
    done.store(true, Ordering::Release);
    let (drained, spent) = consumer.join().expect("consumer");
    println!(
        "caller: {caller:.0} ns per record (encode + push; {full} pushes found the ring full)"
    );
    println!(
        "agent: {:.0} ns per record to decode ({drained} records)",
        spent as f64 / drained.max(1) as f64
    );
}
