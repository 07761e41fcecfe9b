//! Measures what agent mode costs the calling thread per record (encoding one typical
//! `use` record into the ring's binary layout and putting it in a ring) and what taking it
//! out and decoding it costs the agent.
use keytrail::agent::shm::{Pop, Ring};
use keytrail::agent::wire::{Clock, Decoder, Encoder};
mod common;

use std::time::{Duration, Instant};

fn main() {
    // The clock first, as a connection reads it before any call: records start after it.
    let clock = Clock::now();
    let e = common::sign_record_with_identity();
    let (ring, fd) = Ring::create(4096).expect("ring");
    let producer = Ring::open(&fd).expect("map");
    let mut buf = Encoder::new();
    println!("record: {} bytes in the ring", buf.encode(&e, &clock).len());
    // Rounds of 2,000 records: the calling side fills part of the ring (never full, as
    // with an agent that keeps up), then the agent's side drains and decodes it.
    // RING_COST_ROUNDS: fewer rounds under callgrind (scripts/cg-count.sh).
    let rounds = std::env::var("RING_COST_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500u64);
    let per_round = 2000u64;
    let (mut caller, mut agent) = (Duration::ZERO, Duration::ZERO);
    let (mut tail, mut out) = (0u64, Vec::new());
    let mut decoder = Decoder::new(clock);
    for _ in 0..rounds {
        let t = Instant::now();
        for _ in 0..per_round {
            caller_side(&e, &clock, &producer, &mut buf);
        }
        caller += t.elapsed();
        let t = Instant::now();
        while agent_side(&ring, &mut tail, &mut out, &mut decoder) {}
        agent += t.elapsed();
    }
    let n = (rounds * per_round) as f64;
    println!(
        "caller: {:.0} ns per record (encode + push + wake-up check)",
        caller.as_nanos() as f64 / n
    );
    println!(
        "agent: {:.0} ns per record (pop + check + decode; formatting and sealing as in encode_cost)",
        agent.as_nanos() as f64 / n
    );
}

/// What the calling thread does per record (apart for callgrind).
#[inline(never)]
fn caller_side(
    e: &keytrail::audit::event::Event,
    clock: &Clock,
    producer: &Ring,
    buf: &mut Encoder,
) {
    producer.push(buf.encode(e, clock)).expect("room");
    std::hint::black_box(producer.take_wakeup());
}

/// What the agent's drain thread does per record before formatting (apart for callgrind).
#[inline(never)]
fn agent_side(ring: &Ring, tail: &mut u64, out: &mut Vec<u8>, decoder: &mut Decoder) -> bool {
    if ring.pop(tail, out) != Pop::Record {
        return false;
    }
    std::hint::black_box(decoder.decode(out).expect("decodes"));
    true
}
