//! The agent's reading of a ring a hostile process wrote: the input is laid over a fresh
//! ring's slots (sequence numbers, kinds, lengths and data alike) and its head, then
//! drained as the agent drains a process that died. Nothing may panic or loop forever;
//! every record read is decoded as the agent decodes it.
#![no_main]

use keytrail::agent::shm::{Pop, Ring};
use keytrail::agent::wire::{Clock, Decoder, decode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok((ring, _fd)) = Ring::create(64) else {
        return;
    };
    let (head, body) = data.split_at(data.len().min(8));
    let mut h = [0u8; 8];
    h[..head.len()].copy_from_slice(head);
    ring.scribble(0, body);
    ring.set_head(u64::from_le_bytes(h));
    let clock = Clock::now();
    // One decoder for the whole ring, as the agent keeps one per process.
    let mut decoder = Decoder::new(clock);
    let (mut tail, mut out) = (0u64, Vec::new());
    // At most one pass over the ring per slot: the agent's own loops are bounded so.
    for _ in 0..2 * ring.slots() {
        match ring.pop(&mut tail, &mut out) {
            Pop::Record => {
                let _ = decoder.decode(&out);
                ring.release(tail);
            }
            Pop::Malformed(_) => {}
            Pop::Empty => {
                if ring.skip_unpublished(&mut tail) == 0 {
                    break;
                }
            }
        }
    }
    // The record decoder alone, on the raw input.
    let _ = decode(data, &clock);
});
