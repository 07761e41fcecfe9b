//! Measures what agent mode costs the calling thread per record (encoding one typical
//! `use` record into the ring's binary layout and putting it in a ring) and what taking it
//! out and decoding it costs the agent.
use keytrail::agent::shm::{Pop, Ring};
use keytrail::agent::wire::{self, Clock, Decoder, Encoder};
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
    if rounds >= 100 {
        two_threads(&e, clock);
    }
}

/// Two calling threads at once, into one ring (they share its `head` and take turns
/// with its slots' cache lines) and into a ring each: what sharing costs per record.
fn two_threads(e: &keytrail::audit::event::Event, clock: Clock) {
    let (ring, fd) = Ring::create(1 << 15).expect("ring");
    let (ring2, fd2) = Ring::create(1 << 15).expect("ring");
    let shared = Ring::open(&fd).expect("map");
    let own = [
        Ring::open(&fd).expect("map"),
        Ring::open(&fd2).expect("map"),
    ];
    let mut tails = (0u64, 0u64);
    for gap in [Duration::ZERO, Duration::from_micros(2)] {
        let (one, two) =
            two_threads_with(e, clock, &shared, &own, gap, (&ring, &ring2), &mut tails);
        println!(
            "two calling threads, {} µs apart: {one:.0} ns per record into one ring, {two:.0} ns into a ring each",
            gap.as_micros()
        );
    }
}

/// [`two_threads`] with `gap` of other work between one thread's records (as between its
/// PKCS#11 calls); returns ns per record into the shared ring and into a ring each.
fn two_threads_with(
    e: &keytrail::audit::event::Event,
    clock: Clock,
    shared: &Ring,
    own: &[Ring; 2],
    gap: Duration,
    rings: (&Ring, &Ring),
    tails: &mut (u64, u64),
) -> (f64, f64) {
    const PER_THREAD: u64 = 15_000;
    let (mut one, mut two) = (Duration::ZERO, Duration::ZERO);
    for round in 0..if gap.is_zero() { 40 } else { 10 } {
        for sharing in [true, false] {
            let barrier = std::sync::Barrier::new(2);
            let took: Vec<Duration> = std::thread::scope(|s| {
                let hs: Vec<_> = (0..2)
                    .map(|i| {
                        let r = if sharing { shared } else { &own[i] };
                        let barrier = &barrier;
                        s.spawn(move || {
                            let mut buf = Encoder::new();
                            barrier.wait();
                            if gap.is_zero() {
                                let t = Instant::now();
                                for _ in 0..PER_THREAD {
                                    caller_side(e, &clock, r, &mut buf);
                                }
                                return t.elapsed();
                            }
                            let mut took = Duration::ZERO;
                            for _ in 0..PER_THREAD {
                                let t = Instant::now();
                                while t.elapsed() < gap {}
                                let t = Instant::now();
                                caller_side(e, &clock, r, &mut buf);
                                took += t.elapsed();
                            }
                            took
                        })
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().expect("thread")).collect()
            });
            drain(rings.0, &mut tails.0);
            drain(rings.1, &mut tails.1);
            if round > 0 {
                let sum = took.iter().sum::<Duration>();
                *(if sharing { &mut one } else { &mut two }) += sum;
            }
        }
    }
    let n = ((if gap.is_zero() { 39 } else { 9 }) * 2 * PER_THREAD) as f64;
    (one.as_nanos() as f64 / n, two.as_nanos() as f64 / n)
}

/// What the calling thread does per record (apart for callgrind): as the library does,
/// the record written straight into a slot, through the buffer when it does not fit.
#[inline(never)]
fn caller_side(
    e: &keytrail::audit::event::Event,
    clock: &Clock,
    producer: &Ring,
    buf: &mut Encoder,
) {
    if !producer
        .push_in_place(|slot| wire::encode_to(e, clock, slot))
        .expect("room")
    {
        producer.push(buf.encode(e, clock)).expect("room");
    }
    std::hint::black_box(producer.take_wakeup());
}

/// What the agent's drain thread does per record before formatting (apart for callgrind).
#[inline(never)]
fn agent_side(ring: &Ring, tail: &mut u64, out: &mut Vec<u8>, decoder: &mut Decoder) -> bool {
    if ring.pop(tail, out) != Pop::Record {
        return false;
    }
    std::hint::black_box(decoder.decode(out).expect("decodes"));
    // As the agent does once the record is on the trail: the slots are free again.
    ring.release(*tail);
    true
}

/// Empties a ring (untimed, between rounds).
fn drain(r: &Ring, tail: &mut u64) {
    let mut out = Vec::new();
    while r.pop(tail, &mut out) == Pop::Record {}
    r.release(*tail);
}
