//! The agent daemon: listens on a Unix socket, gives each process a ring, drains every
//! ring into one chain, and records how each process ended.
//!
//! One thread per connected process drains its ring; the chain and the trail file are
//! behind one lock ([`Recorder`]), taken once per batch. The main thread accepts
//! connections, writes checkpoints, and handles SIGTERM (drain every ring, then
//! `trail_stop`) and SIGHUP (reopen the trail file, for logrotate).

use super::client::FellBack;
use super::shm::{Pop, Ring};
use super::wire::{Clock, Decoder, Malformed};
use crate::audit::event::{Event, Outcome};
use crate::config::{IntegrityConfig, TrailConfig, TrailMode};
use crate::sink::Recorder;
use crate::sink::chain::Chain;
use crate::sink::json::Origin;
use parking_lot::Mutex;
use rustix::event::{PollFd, PollFlags};
use serde::Deserialize;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Records taken from a ring before they are written.
const BATCH: usize = 512;
/// How long a busy drain thread naps between batches.
const NAP: Duration = Duration::from_millis(1);
/// Idle naps before a drain thread goes to sleep (and asks to be woken).
const NAPS_BEFORE_SLEEP: u32 = 20;
/// How long a sleeping drain thread waits for a wake-up before looking anyway.
const SLEEP: Duration = Duration::from_millis(500);
/// Malformed records recorded one by one per process; more are only counted.
const MALFORMED_RECORDS: u64 = 100;
/// Actions only the agent writes: a process that puts one in its ring is lying.
const RESERVED: [&str; 11] = [
    "checkpoint",
    "trail_reopened",
    "records_lost",
    "records_dropped",
    "records_incomplete",
    "malformed_record",
    "client_connected",
    "client_end",
    "client_stop",
    "client_resume",
    "client_refused",
];

/// `[agent]`: where the agent listens and what it gives each process.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentSection {
    /// The socket processes connect to.
    pub socket: PathBuf,
    /// The socket file's permissions (any user whose processes are audited must be able to
    /// connect): 0o666 by default.
    pub socket_mode: u32,
    /// Slots in each process's ring (a power of two; 256 bytes each).
    pub ring_slots: usize,
    /// Processes served at once at most.
    pub max_clients: usize,
}

impl Default for AgentSection {
    fn default() -> Self {
        AgentSection {
            socket: PathBuf::from(crate::config::DEFAULT_AGENT_SOCKET),
            socket_mode: 0o666,
            ring_slots: 4096,
            max_clients: 1024,
        }
    }
}

/// The agent's configuration file (`keytrail agent --config`): `[agent]`, and the library's
/// own `[trail]` and `[integrity]` sections, which here describe the agent's trail.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// `service.name` of the agent's own records.
    pub service: Option<String>,
    /// `[agent]`
    #[serde(default)]
    pub agent: AgentSection,
    /// `[trail]`
    #[serde(default)]
    pub trail: TrailConfig,
    /// `[integrity]`
    #[serde(default)]
    pub integrity: IntegrityConfig,
    /// `[seal]`: the token key that signs every checkpoint head (its `module` is required
    /// here).
    pub seal: Option<crate::config::SealSection>,
    /// `[[syslog]]`: collectors that receive every record of the agent's chain.
    #[serde(default)]
    pub syslog: Vec<crate::config::SyslogConfig>,
    /// The file read, if any.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

impl AgentConfig {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<AgentConfig, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("configuration {}: cannot be read: {e}", path.display()))?;
        let mut c: AgentConfig =
            toml::from_str(&text).map_err(|e| format!("configuration {}: {e}", path.display()))?;
        c.source = Some(path.to_path_buf());
        c.check()
            .map_err(|e| format!("configuration {}: {e}", path.display()))?;
        Ok(c)
    }

    fn check(&self) -> Result<(), String> {
        if self.trail.mode == TrailMode::Agent {
            return Err("`trail.mode`: the agent writes its trail itself (embedded)".into());
        }
        let slots = self.agent.ring_slots;
        if !slots.is_power_of_two() || !(64..=1 << 20).contains(&slots) {
            return Err("`agent.ring_slots` must be a power of two from 64 to 1048576".into());
        }
        if self.agent.max_clients == 0 {
            return Err("`agent.max_clients` must be at least 1".into());
        }
        for (i, sink) in self.syslog.iter().enumerate() {
            sink.check()
                .map_err(|(key, problem)| format!("`syslog[{i}].{key}`: {problem}"))?;
        }
        Ok(())
    }
}

/// The chain the agent writes: made here only, so that whatever seals or keys it later
/// (`Chain::set_sealer`) has one place to hook in.
fn make_chain(config: &AgentConfig) -> Result<Chain, String> {
    let mut chain = Chain::new(&config.integrity)?;
    chain.set_format(config.trail.format);
    if let Some(s) = &config.seal {
        let sealer = crate::seal::from_section(s, None)?;
        chain.set_sealer(std::sync::Arc::new(std::sync::Mutex::new(sealer)));
    }
    Ok(chain)
}

/// State shared by the agent's threads.
struct Agent {
    recorder: Mutex<Recorder>,
    config: AgentConfig,
    clients: AtomicUsize,
    stopping: AtomicBool,
}

/// Runs the agent until SIGTERM or SIGINT.
pub fn run(config: AgentConfig) -> Result<(), String> {
    crate::os::catch_agent_signals().map_err(|e| format!("cannot catch signals: {e}"))?;
    let socket = config.agent.socket.clone();
    let listener = bind(&socket, config.agent.socket_mode)?;
    let chain = make_chain(&config)?;
    let start = Event::audit(
        "trail_start",
        format!(
            "keytrail agent {} listening on {}",
            env!("CARGO_PKG_VERSION"),
            socket.display()
        ),
        serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "writer": "agent",
            "socket": socket.display().to_string(),
            "trail": config.trail.path.display().to_string(),
            "config": config.source.as_ref().map(|p| p.display().to_string()),
        }),
    );
    let recorder = Recorder::start(
        &config.trail,
        &config.syslog,
        chain,
        Origin::current(config.service.clone()),
        &start,
    )
    .map_err(|e| e.to_string())?;
    println!(
        "keytrail agent: listening on {}, writing {}",
        socket.display(),
        config.trail.path.display()
    );
    let _ = std::io::stdout().flush();
    let agent = Arc::new(Agent {
        recorder: Mutex::new(recorder),
        config,
        clients: AtomicUsize::new(0),
        stopping: AtomicBool::new(false),
    });
    let mut threads: Vec<std::thread::JoinHandle<()>> = Vec::new();
    let mut last_tick = Instant::now();
    while !crate::os::STOP_REQUESTED.load(Ordering::SeqCst) {
        if crate::os::REOPEN_REQUESTED.swap(false, Ordering::SeqCst) {
            agent.recorder.lock().reopen();
        }
        let mut fds = [PollFd::new(&listener, PollFlags::IN)];
        let _ = rustix::event::poll(&mut fds, Some(&timespec(Duration::from_millis(200))));
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    let a = agent.clone();
                    let spawned = std::thread::Builder::new()
                        .name("keytrail-drain".into())
                        .spawn(move || serve(&a, stream));
                    match spawned {
                        Ok(t) => threads.push(t),
                        Err(e) => crate::diag::report(&format!("cannot serve a process: {e}")),
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => break,
                Err(e) => {
                    crate::diag::report(&format!("accept on {}: {e}", socket.display()));
                    break;
                }
            }
        }
        threads.retain(|t| !t.is_finished());
        if last_tick.elapsed() >= Duration::from_millis(500) {
            agent.recorder.lock().tick();
            last_tick = Instant::now();
        }
    }
    // Stop: every drain thread empties its ring and records the end of its process, then
    // the chain ends with trail_stop.
    agent.stopping.store(true, Ordering::SeqCst);
    for t in threads {
        let _ = t.join();
    }
    let _ = std::fs::remove_file(&socket);
    let stop = Event::audit(
        "trail_stop",
        "trail stopped at SIGTERM".into(),
        serde_json::json!({ "reason": "SIGTERM" }),
    );
    let mut r = agent.recorder.lock();
    r.own(&stop);
    r.sync();
    for (sink, left) in r.drain_forwarders(Duration::from_secs(5)) {
        eprintln!("keytrail agent: syslog sink {sink}: {left} records not delivered at stop");
    }
    Ok(())
}

fn timespec(d: Duration) -> rustix::time::Timespec {
    rustix::time::Timespec {
        tv_sec: d.as_secs() as _,
        tv_nsec: d.subsec_nanos() as _,
    }
}

/// Binds the socket: a stale socket file (no agent behind it) is replaced; a live one is
/// an error (another agent is running).
fn bind(path: &Path, mode: u32) -> Result<UnixListener, String> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if !m.file_type().is_socket() {
            return Err(format!("{} exists and is not a socket", path.display()));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(format!("another agent is listening on {}", path.display()));
        }
        let _ = std::fs::remove_file(path);
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("cannot set the mode of {}: {e}", path.display()))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(listener)
}

/// What the agent knows of one connected process.
struct Client {
    pid: u32,
    origin: Origin,
    /// How its stream ended, as its last `trail_stop` said (`C_Finalize`, `exit`).
    how: Option<&'static str>,
    records: u64,
    malformed: u64,
    incomplete: u64,
}

/// Serves one process from its hello to its end.
fn serve(agent: &Agent, mut stream: UnixStream) {
    // Who called, from the kernel: taken at connect, while the process waits for the
    // answer (so its pid cannot have been reused yet).
    let cred = match rustix::net::sockopt::socket_peercred(&stream) {
        Ok(c) => c,
        Err(e) => {
            crate::diag::report(&format!("SO_PEERCRED failed on a connection: {e}"));
            return;
        }
    };
    let pid = cred.pid.as_raw_nonzero().get() as u32;
    let executable = std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .map(|p| p.display().to_string());
    let name = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_string());
    let (service, kept, fell_back) = match read_hello(&mut stream) {
        Ok(s) => s,
        Err(e) => {
            crate::diag::report(&format!(
                "process {pid} connected but did not say hello: {e}"
            ));
            return;
        }
    };
    let origin = Origin::observed(
        pid,
        cred.uid.as_raw(),
        cred.gid.as_raw(),
        name,
        executable,
        service.clone(),
    );
    // Names this process adds to the agent's table count against its user's quota.
    super::wire::names_from(cred.uid.as_raw());
    let mut client = Client {
        pid,
        origin,
        how: None,
        records: 0,
        malformed: 0,
        incomplete: 0,
    };
    if agent.clients.fetch_add(1, Ordering::SeqCst) >= agent.config.agent.max_clients {
        agent.clients.fetch_sub(1, Ordering::SeqCst);
        let _ = welcome(&stream, super::TOO_MANY, &[]);
        let mut e = Event::audit(
            "client_refused",
            format!(
                "process {pid} was refused: the agent serves {} processes already",
                agent.config.agent.max_clients
            ),
            serde_json::json!({ "max_clients": agent.config.agent.max_clients }),
        );
        e.outcome = Outcome::Failure;
        record(agent, &client, &[e]);
        return;
    }
    // A new ring, or (after an agent restart) the one the process kept, from where the
    // previous agent stopped.
    let resumed = kept.is_some();
    let ready =
        match &kept {
            Some(memfd) => Ring::adopt(memfd, agent.config.agent.ring_slots)
                .map(|(ring, tail)| (ring, None, tail)),
            None => Ring::create(agent.config.agent.ring_slots)
                .map(|(ring, memfd)| (ring, Some(memfd), 0)),
        }
        .and_then(|(ring, memfd, tail)| {
            let wake = rustix::event::eventfd(
                0,
                rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
            )?;
            Ok((ring, memfd, tail, wake))
        });
    let (ring, memfd, tail, wake) = match ready {
        Ok(r) => r,
        Err(e) => {
            crate::diag::report(&format!("cannot make a ring for process {pid}: {e}"));
            agent.clients.fetch_sub(1, Ordering::SeqCst);
            return;
        }
    };
    let mut detail = serde_json::json!({
        "claimed": { "service": service },
        "ring_slots": ring.slots(),
        "resumed": resumed,
    });
    let mut message = format!(
        "process {pid} connected{}",
        if resumed {
            " again: its ring is drained from where the previous agent stopped"
        } else {
            ""
        }
    );
    if let Some(f) = &fell_back {
        message.push_str(&format!(
            "; it says it recorded {} records with its embedded writer to {} since {} ({})",
            f.records, f.path, f.since, f.reason
        ));
        detail["fell_back"] = serde_json::json!(f);
    }
    let connected = Event::audit("client_connected", message, detail);
    record(agent, &client, &[connected]);
    let sent = wake.try_clone().and_then(|w| {
        let fds: Vec<OwnedFd> = memfd.into_iter().chain([w]).collect();
        welcome(&stream, super::ACCEPTED, &fds)
    });
    if let Err(e) = sent {
        crate::diag::report(&format!("cannot hand process {pid} its ring: {e}"));
    }
    drain_until_end(agent, &mut client, &ring, tail, &stream, &wake);
    agent.clients.fetch_sub(1, Ordering::SeqCst);
}

/// What a process says in its hello: its service name, the ring it kept (after an agent
/// restart), and where it recorded while the agent was unavailable.
type Hello = (Option<String>, Option<OwnedFd>, Option<FellBack>);

/// Reads the hello: magic, then a length byte and the service name; with the resume
/// magic, the ring's memfd attached; with the noted hello, a flags byte after the magic
/// and a length-prefixed note after the name; last, the record layout, which must be the
/// agent's.
fn read_hello(stream: &mut UnixStream) -> std::io::Result<Hello> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    use std::mem::MaybeUninit;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut head = [0u8; 9];
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        &*stream,
        &mut [std::io::IoSliceMut::new(&mut head)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds: Vec<OwnedFd> = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = m {
            fds.extend(rights);
        }
    }
    stream.read_exact(&mut head[got.bytes..])?;
    let (resume, noted) = match &head[..8] {
        m if m == super::HELLO => (false, false),
        m if m == super::RESUME => (true, false),
        m if m == super::HELLO_NOTED => match head[8] {
            0 => (false, true),
            1 => (true, true),
            _ => return Err(std::io::Error::other("unknown hello flags")),
        },
        _ => return Err(std::io::Error::other("not a keytrail hello")),
    };
    let name_len = if noted {
        let mut b = [0u8; 1];
        stream.read_exact(&mut b)?;
        b[0]
    } else {
        head[8]
    };
    let mut name = vec![0u8; name_len as usize];
    stream.read_exact(&mut name)?;
    let note = if noted {
        let mut len = [0u8; 2];
        stream.read_exact(&mut len)?;
        let len = u16::from_le_bytes(len) as usize;
        if len > super::MAX_NOTE {
            return Err(std::io::Error::other("the hello's note is too long"));
        }
        let mut json = vec![0u8; len];
        stream.read_exact(&mut json)?;
        // Nothing in it is trusted: only its shape is checked, and its texts bounded.
        let note: FellBack = serde_json::from_slice(&json)
            .map_err(|e| std::io::Error::other(format!("the hello's note: {e}")))?;
        Some(note.bounded())
    } else {
        None
    };
    let mut layout = [0u8; 8];
    stream.read_exact(&mut layout)?;
    if u64::from_le_bytes(layout) != super::wire::LAYOUT {
        // Answered, so that the process says why it cannot use this agent.
        let _ = welcome(stream, super::OTHER_LAYOUT, &[]);
        return Err(std::io::Error::other(
            "it writes records of another layout (a keytrail library of another version)",
        ));
    }
    stream.set_read_timeout(None)?;
    let name = String::from_utf8_lossy(&name).into_owned();
    let memfd = match (resume, fds.len()) {
        (false, 0) => None,
        (true, 1) => fds.pop(),
        _ => {
            return Err(std::io::Error::other(
                "unexpected descriptors with the hello",
            ));
        }
    };
    Ok(((!name.is_empty()).then_some(name), memfd, note))
}

/// Sends the answer, with `fds` attached.
fn welcome(stream: &UnixStream, status: u32, fds: &[OwnedFd]) -> std::io::Result<()> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    use std::mem::MaybeUninit;
    let mut msg = super::WELCOME.to_vec();
    msg.extend_from_slice(&status.to_le_bytes());
    let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(2))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !borrowed.is_empty() && !control.push(SendAncillaryMessage::ScmRights(&borrowed)) {
        return Err(std::io::Error::other("ancillary buffer too small"));
    }
    let iov = [std::io::IoSlice::new(&msg)];
    rustix::net::sendmsg(stream, &iov, &mut control, SendFlags::NOSIGNAL)?;
    Ok(())
}

/// Writes records of one process.
fn record(agent: &Agent, client: &Client, events: &[Event]) {
    agent.recorder.lock().record(events, &client.origin);
}

/// Drains the ring until the process ends (its socket closes) or the agent stops, then
/// records how it ended.
fn drain_until_end(
    agent: &Agent,
    client: &mut Client,
    ring: &Ring,
    mut tail: u64,
    stream: &UnixStream,
    wake: &OwnedFd,
) {
    let mut decoder = Decoder::new(Clock::now());
    let mut buf = Vec::new();
    let mut batch = Vec::with_capacity(BATCH);
    let mut idle = 0u32;
    let ended_by = loop {
        let n = drain(ring, &mut tail, &mut buf, &mut decoder, client, &mut batch);
        if !batch.is_empty() {
            record(agent, client, &batch);
            batch.clear();
        }
        // Only now, with the records on the trail: an agent killed before this line
        // leaves them in the ring for the next one.
        ring.release(tail);
        if agent.stopping.load(Ordering::SeqCst) {
            // A process that is already gone ended by itself, not by the agent's stop.
            break if closed(stream) {
                End::Closed
            } else {
                End::AgentStopped
            };
        }
        let timeout = if n > 0 {
            idle = 0;
            NAP
        } else {
            idle += 1;
            if idle < NAPS_BEFORE_SLEEP {
                NAP
            } else if ring.sleep_if_empty(tail) {
                SLEEP
            } else {
                Duration::ZERO
            }
        };
        let mut fds = [
            PollFd::new(stream, PollFlags::IN),
            PollFd::new(wake, PollFlags::IN),
        ];
        let _ = rustix::event::poll(&mut fds, Some(&timespec(timeout)));
        let (sock, woken) = (fds[0].revents(), fds[1].revents());
        if !woken.is_empty() {
            let mut counter = [0u8; 8];
            let _ = rustix::io::read(wake, &mut counter);
            idle = 0;
        }
        if !sock.is_empty() && closed(stream) {
            break End::Closed;
        }
    };
    // What is left in the ring: all of it when the process is gone (including records
    // after a slot a killed thread never finished); only what is published when the
    // agent stops while the process runs on.
    loop {
        while drain(ring, &mut tail, &mut buf, &mut decoder, client, &mut batch) > 0 {
            record(agent, client, &batch);
            batch.clear();
            ring.release(tail);
        }
        if ended_by == End::AgentStopped {
            break;
        }
        let skipped = ring.skip_unpublished(&mut tail);
        if skipped == 0 {
            break;
        }
        client.incomplete += skipped;
    }
    let mut last = Vec::new();
    if let Some(e) = drops(ring) {
        last.push(e);
    }
    if client.incomplete > 0 {
        let mut e = Event::audit(
            "records_incomplete",
            format!(
                "process {} ended while writing: {} ring slots were reserved and never finished",
                client.pid, client.incomplete
            ),
            serde_json::json!({ "slots": client.incomplete }),
        );
        e.outcome = Outcome::Failure;
        last.push(e);
    }
    let (how, clean) = match (client.how, ended_by) {
        (Some(how), _) => (how, true),
        (None, End::AgentStopped) => ("agent_stopped", true),
        (None, End::Closed) => ("connection_lost", false),
    };
    let message = if clean {
        format!("process {} ended its stream ({how})", client.pid)
    } else {
        format!(
            "process {} ended abnormally: its connection closed without C_Finalize or exit \
             (killed or crashed); everything it had put in its ring is recorded",
            client.pid
        )
    };
    let mut end = Event::audit(
        "client_end",
        message,
        serde_json::json!({
            "how": how,
            "records": client.records,
            "malformed": client.malformed,
            "incomplete_slots": client.incomplete,
        }),
    );
    end.outcome = if clean {
        Outcome::Success
    } else {
        Outcome::Failure
    };
    last.push(end);
    record(agent, client, &last);
}

/// Whether the process closed its end (it exited or was killed). Bytes it sends after the
/// hello mean nothing and are discarded.
fn closed(stream: &UnixStream) -> bool {
    let mut junk = [0u8; 256];
    // Bounded: a process that keeps sending cannot hold its drain thread here.
    for _ in 0..16 {
        match rustix::net::recv(stream, &mut junk, rustix::net::RecvFlags::DONTWAIT) {
            Ok((0, _)) => return true,
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(rustix::io::Errno::AGAIN) => return false,
            Err(_) => return true,
        }
    }
    false
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Closed,
    AgentStopped,
}

/// Takes up to [`BATCH`] records from the ring into `batch`; returns how many slots'
/// worth of records (good or bad) were taken.
fn drain(
    ring: &Ring,
    tail: &mut u64,
    buf: &mut Vec<u8>,
    decoder: &mut Decoder,
    client: &mut Client,
    batch: &mut Vec<Event>,
) -> usize {
    let mut n = 0;
    while batch.len() < BATCH {
        let read = match ring.pop(tail, buf) {
            Pop::Empty => break,
            Pop::Record => decoder.decode(buf),
            Pop::Malformed(why) => Err(Malformed(why)),
        };
        n += 1;
        // Admitted in its place in the batch: a record is a few hundred bytes, and each
        // move copies them all.
        let admitted = read.and_then(|e| {
            batch.push(e);
            match batch.last_mut().map(|e| admit(e, client)) {
                Some(Err(refused)) => {
                    batch.pop();
                    Err(refused)
                }
                _ => Ok(()),
            }
        });
        match admitted {
            Ok(()) => client.records += 1,
            Err(Malformed(why)) => {
                client.malformed += 1;
                if client.malformed <= MALFORMED_RECORDS {
                    let mut e = Event::audit(
                        "malformed_record",
                        format!(
                            "process {} wrote a record the agent cannot read: {why}",
                            client.pid
                        ),
                        serde_json::json!({ "reason": why, "position": *tail }),
                    );
                    e.outcome = Outcome::Failure;
                    batch.push(e);
                }
            }
        }
    }
    if let Some(e) = drops(ring) {
        batch.push(e);
    }
    n
}

/// The record of what the process dropped on a full ring, if it dropped anything.
pub(crate) fn drops(ring: &Ring) -> Option<Event> {
    let (n, since) = ring.take_drops()?;
    let since = std::time::UNIX_EPOCH + Duration::from_micros(since);
    let since = humantime::format_rfc3339_micros(since).to_string();
    let mut e = Event::audit(
        "records_dropped",
        format!("{n} records were dropped because the process's ring was full"),
        serde_json::json!({ "lost": n, "since": since, "reason": "ring full" }),
    );
    e.outcome = Outcome::Failure;
    Some(e)
}

/// A record from a ring as the agent writes it: the process's own start, stop and resume
/// become `client_*` records (the chain's `trail_*` records are the agent's), and actions
/// only the agent writes are refused.
fn admit(e: &mut Event, client: &mut Client) -> Result<(), Malformed> {
    match e.action {
        "trail_start" => e.action = "client_start",
        "trail_stop" => {
            e.action = "client_stop";
            let reason = e
                .extra()
                .and_then(|x| x.detail.as_ref())
                .and_then(|d| d.get("reason"))
                .and_then(|r| r.as_str());
            client.how = Some(match reason {
                Some("C_Finalize") => "C_Finalize",
                Some("exit") => "exit",
                _ => "stopped",
            });
        }
        "trail_resume" => {
            e.action = "client_resume";
            client.how = None;
        }
        a if RESERVED.contains(&a) => return Err(Malformed("an action only the agent writes")),
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_packaged_configuration_parses_and_bad_values_are_refused() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/agent.toml");
        let c = AgentConfig::load(&path).expect("packaging/agent.toml");
        assert_eq!(c.agent.socket, Path::new("/run/keytrail/agent.sock"));
        assert_eq!(c.agent.socket_mode, 0o666);
        for bad in [
            "[agent]\nring_slots = 1000\n",
            "[agent]\nmax_clients = 0\n",
            "[trail]\nmode = \"agent\"\n",
            "[agent]\nsockets = \"/x\"\n",
        ] {
            let c: Result<AgentConfig, _> = toml::from_str(bad);
            assert!(c.map_or(true, |c| c.check().is_err()), "{bad}");
        }
    }

    #[test]
    fn a_process_cannot_write_the_chains_own_records() {
        let mut client = Client {
            pid: 1,
            origin: Origin::current(None),
            how: None,
            records: 0,
            malformed: 0,
            incomplete: 0,
        };
        for action in RESERVED {
            let mut e = Event::audit(action, String::new(), serde_json::json!({}));
            assert!(admit(&mut e, &mut client).is_err(), "{action}");
        }
        let mut stop = Event::audit(
            "trail_stop",
            String::new(),
            serde_json::json!({"reason": "exit"}),
        );
        assert_eq!(admit(&mut stop, &mut client), Ok(()));
        assert_eq!(stop.action, "client_stop");
        assert_eq!(client.how, Some("exit"));
    }
}
