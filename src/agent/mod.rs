//! `keytrail agent`: the trail written outside the process it audits.
//!
//! A daemon ([`daemon`]) owns the trail directory and listens on a Unix socket. A process
//! whose `[trail] mode` is `agent` connects at `C_Initialize` ([`client`]); the agent
//! takes the process's identity from the kernel (SO_PEERCRED, /proc), gives it a
//! shared-memory ring ([`shm`]) and an eventfd, and drains the ring into one hash chain
//! for all the processes it serves. Calling threads write fixed-size slots of the binary
//! record layout ([`wire`]) into the ring without locks or system calls; the agent is
//! woken through the eventfd only when it said it was going to sleep.

pub mod client;
pub mod daemon;
pub mod shm;
pub mod wire;

/// What a process sends first: this magic, then the length of its service name (one
/// byte) and the name, then (as every hello ends) its record layout ([`wire::LAYOUT`],
/// u64 little-endian). Nothing in it is trusted: the agent asks the kernel who called.
/// (The magics changed with the layout in the hello: an agent from before refuses the
/// hello at once, rather than taking records it cannot read.)
pub const HELLO: &[u8; 8] = b"KTAGENT4";
/// What a process sends instead of [`HELLO`] to a restarted agent: the same fields, with
/// the memfd of the ring it kept from the previous agent attached (SCM_RIGHTS). The agent
/// takes the ring over where the previous one stopped, and answers with an eventfd only.
pub const RESUME: &[u8; 8] = b"KTAGENT5";
/// What a process sends instead of [`HELLO`] or [`RESUME`] when it returns from the
/// embedded writer: this magic, a flags byte (1: the ring's memfd is attached, as with
/// [`RESUME`]), the service name as in [`HELLO`], then a u16 length (little-endian) and a
/// JSON [`client::FellBack`] of at most [`MAX_NOTE`] bytes. The agent checks its shape and
/// records it in `client_connected` as `fell_back`.
pub const HELLO_NOTED: &[u8; 8] = b"KTAGENT6";
/// The longest note in a [`HELLO_NOTED`].
pub const MAX_NOTE: usize = 16384;
/// What the agent answers: this magic and a status (u32, 0 = accepted), with the ring's
/// memfd and the eventfd attached (SCM_RIGHTS) when accepted.
pub const WELCOME: &[u8; 8] = b"KTRING01";
/// Status: accepted.
pub const ACCEPTED: u32 = 0;
/// Status: the agent serves as many processes as it may.
pub const TOO_MANY: u32 = 1;
/// Status: the process writes records of another layout than the agent reads (keytrail
/// library and agent of different versions).
pub const OTHER_LAYOUT: u32 = 2;
