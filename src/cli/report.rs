//! `keytrail report`: what happened to each key, failed logins, token administration and
//! failures — streaming, with memory in proportion to keys and distinct groups.

use super::input::{self, Progress};
use super::keybook::{KeyBook, Place, Rename};
use super::record::{FilterArgs, Filters, KeyRec, P11, Rec};
use super::text::{self, errln, outln};
use anyhow::Result;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

/// Rows of examples kept for lists that could grow with the trail.
const DEFAULT_MAX_ROWS: usize = 50;

/// Options of `keytrail report`.
#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// Trail files, or directories (every *.jsonl* file in them).
    #[arg(required = true, value_name = "FILES|DIR")]
    pub inputs: Vec<PathBuf>,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Example rows kept per list (failures, token administration).
    #[arg(long, default_value_t = DEFAULT_MAX_ROWS)]
    pub max_rows: usize,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// Read files in the order given instead of by their first record's time.
    #[arg(long)]
    pub keep_order: bool,
    /// No progress on stderr.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Who did something: process and user.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Actor {
    pid: Option<u64>,
    process: Option<String>,
    user: Option<String>,
}

/// One notable record.
#[derive(Debug, Clone, Serialize)]
struct Row {
    time: Option<String>,
    action: String,
    function: Option<String>,
    outcome: String,
    rv_name: Option<String>,
    #[serde(flatten)]
    actor: Actor,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    flags: Vec<String>,
}

#[derive(Debug, Default, Clone, Serialize)]
struct Counts {
    success: u64,
    failure: u64,
    other: u64,
}

impl Counts {
    fn add(&mut self, outcome: &str) {
        self.add_n(outcome, 1);
    }

    fn add_n(&mut self, outcome: &str, n: u64) {
        match outcome {
            "success" => self.success += n,
            "failure" => self.failure += n,
            _ => self.other += n,
        }
    }
}

#[derive(Debug, Default, Serialize)]
struct KeyReport {
    identity: String,
    class: Option<String>,
    key_type: Option<String>,
    id_hex: Option<String>,
    label: Option<String>,
    unique_id: Option<String>,
    /// The token's serial number.
    token: Option<String>,
    /// CKA_TOKEN: a token (persistent) object, or a session object.
    token_object: Option<bool>,
    created: Option<Row>,
    /// The key this one is a copy of (C_CopyObject).
    #[serde(skip_serializing_if = "Option::is_none")]
    copy_of: Option<String>,
    /// Copies made of this key (C_CopyObject).
    copies: u64,
    /// This entry stands for this many session copies of `copy_of` (those beyond the first
    /// `--max-rows`, which have an entry each): `created` is the first's, `destroyed` or
    /// `ended` the last's.
    #[serde(skip_serializing_if = "Option::is_none")]
    folded_copies: Option<u64>,
    /// Uses by `operation/mechanism`, the uses of its copies included (the same key
    /// material).
    uses: BTreeMap<String, Counts>,
    exports: Counts,
    export_rows: Vec<Row>,
    changes: Counts,
    /// Its identities before C_SetAttributeValue changed its CKA_ID or CKA_LABEL.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    formerly: Vec<String>,
    destroyed: Option<Row>,
    destroy_failures: u64,
    /// A session object's end with its session or process, when not destroyed before.
    #[serde(skip_serializing_if = "Option::is_none")]
    ended: Option<Row>,
    first_seen: Option<String>,
    last_seen: Option<String>,
}

#[derive(Debug, Default, Serialize)]
struct FailedLogins {
    user_type: String,
    username: Option<String>,
    #[serde(flatten)]
    actor: Actor,
    count: u64,
    rv_names: BTreeMap<String, u64>,
    first: Option<String>,
    last: Option<String>,
}

#[derive(Debug, Default, Serialize)]
struct Summary {
    files: Vec<String>,
    lines: u64,
    records: u64,
    selected: u64,
    damaged_lines: u64,
    first: Option<String>,
    last: Option<String>,
    by_category: BTreeMap<String, u64>,
    processes: u64,
}

/// Sessions opened and closed, from the records of each call and from session summaries.
#[derive(Debug, Default, Serialize)]
struct SessionCounts {
    /// Sessions opened.
    opened: u64,
    /// Of them, read/write.
    opened_rw: u64,
    /// Sessions closed by C_CloseSession, and all that summaries count as closed.
    closed: u64,
    /// C_CloseAllSessions calls recorded one by one (their records do not say how many
    /// sessions they closed).
    close_all_calls: u64,
    /// Failed C_OpenSession, C_CloseSession and C_CloseAllSessions calls.
    failures: u64,
    /// Session summaries among the records.
    summaries: u64,
    /// The most sessions one process had open at once on one slot, as summaries say.
    #[serde(skip_serializing_if = "Option::is_none")]
    max_open: Option<u64>,
}

#[derive(Debug, Default, Serialize)]
struct Report {
    summary: Summary,
    sessions: SessionCounts,
    keys: Vec<KeyReport>,
    failed_logins: Vec<FailedLogins>,
    token_admin: Vec<Row>,
    token_admin_more: u64,
    failures_by_function: BTreeMap<String, u64>,
    failures: Vec<Row>,
    failures_more: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    damaged: Vec<String>,
}

struct Aggregator {
    max_rows: usize,
    report: Report,
    book: KeyBook,
    /// Per key of the book, by its number.
    keys: Vec<KeyReport>,
    logins: HashMap<(String, Option<String>, Actor), FailedLogins>,
    pids: std::collections::HashSet<u64>,
}

impl Aggregator {
    fn new(max_rows: usize) -> Aggregator {
        Aggregator {
            max_rows,
            report: Report::default(),
            book: KeyBook::new(max_rows),
            keys: Vec::new(),
            logins: HashMap::new(),
            pids: Default::default(),
        }
    }

    /// The report, each key under the names it ended with.
    fn finish(self) -> Report {
        let mut report = self.report;
        report.summary.processes = self.pids.len() as u64;
        report.keys = self.keys;
        for (key, e) in report.keys.iter_mut().enumerate() {
            let n = self.book.names(key);
            e.identity = n.identity.clone();
            e.class = n.class.clone();
            e.key_type = n.key_type.clone();
            e.id_hex = n.id_hex.clone();
            e.label = n.label.clone();
            e.unique_id = n.unique_id.clone();
            e.token = n.token.clone();
            e.token_object = n.token_object;
            e.copy_of = self
                .book
                .copy_of(key)
                .map(|s| self.book.names(s).identity.clone());
        }
        let mut logins: Vec<FailedLogins> = self.logins.into_values().collect();
        logins.sort_by(|a, b| b.count.cmp(&a.count).then(a.actor.cmp(&b.actor)));
        report.failed_logins = logins;
        report
    }

    /// Counts a session record: one call, or a summary of many.
    fn count_sessions(&mut self, action: &str, outcome: &str, p: &P11<'_>) {
        let c = &mut self.report.sessions;
        match outcome {
            "success" => {}
            "failure" => {
                c.failures += 1;
                return;
            }
            // A record written before the call (`on_failure = "deny"`): the call's own
            // record follows.
            _ => return,
        }
        match (action, p.function.as_deref()) {
            ("session_summary", _) => {
                let Some(s) = &p.sessions else { return };
                c.summaries += 1;
                c.opened += s.opened.unwrap_or(0);
                c.opened_rw += s.opened_rw.unwrap_or(0);
                c.closed += s.closed.unwrap_or(0);
                if let Some(m) = s.max_open {
                    c.max_open = Some(c.max_open.unwrap_or(0).max(m));
                }
            }
            ("session_open", _) => {
                c.opened += 1;
                if p.flags.iter().any(|f| f == "read_write") {
                    c.opened_rw += 1;
                }
            }
            (_, Some("C_CloseSession")) => c.closed += 1,
            (_, Some("C_CloseAllSessions")) => c.close_all_calls += 1,
            _ => {}
        }
    }

    /// The report entry of the book's key `key`, seen at `time`.
    fn key_entry(&mut self, key: usize, time: Option<&str>) -> &mut KeyReport {
        while self.keys.len() <= key {
            self.keys.push(KeyReport::default());
        }
        let e = &mut self.keys[key];
        if e.first_seen.is_none() {
            e.first_seen = time.map(str::to_string);
        }
        e.last_seen = time.map(str::to_string);
        e
    }

    fn record(&mut self, r: &Rec<'_>) {
        let time = r.timestamp.as_deref();
        let action = r
            .event
            .as_ref()
            .and_then(|e| e.action.as_deref())
            .unwrap_or("");
        let outcome = r
            .event
            .as_ref()
            .and_then(|e| e.outcome.as_deref())
            .unwrap_or("unknown");
        let Some(p) = &r.pkcs11 else {
            return;
        };
        let lifecycle = p.lifecycle.as_deref().unwrap_or("");
        *self
            .report
            .summary
            .by_category
            .entry(lifecycle.to_string())
            .or_default() += 1;
        let actor = Actor {
            pid: r.process.as_ref().and_then(|p| p.pid),
            process: r
                .process
                .as_ref()
                .and_then(|p| p.name.as_deref())
                .map(str::to_string),
            user: r
                .user
                .as_ref()
                .and_then(|u| u.name.as_deref().or(u.id.as_deref()))
                .map(str::to_string),
        };
        if let Some(pid) = actor.pid {
            self.pids.insert(pid);
        }
        let token = p.token.as_ref().map(|t| {
            format!(
                "{} ({})",
                t.label.as_deref().unwrap_or(""),
                t.serial.as_deref().unwrap_or("")
            )
        });
        let serial = p.token.as_ref().and_then(|t| t.serial.as_deref());
        let row = |key: Option<String>| Row {
            time: time.map(str::to_string),
            action: action.to_string(),
            function: p.function.as_deref().map(str::to_string),
            outcome: outcome.to_string(),
            rv_name: p.rv_name.as_deref().map(str::to_string),
            actor: actor.clone(),
            token: token.clone(),
            key,
            flags: p.flags.iter().map(|f| f.to_string()).collect(),
        };
        // A record without a stream (damaged, or hand-made) stands for its process.
        let by_pid;
        let stream = match r.integrity.as_ref().and_then(|i| i.stream.as_deref()) {
            Some(s) => s,
            None => {
                by_pid = format!("pid:{}", actor.pid.unwrap_or(0));
                &by_pid
            }
        };
        let place = Place {
            stream,
            serial,
            session: p.session.as_ref().and_then(|s| s.handle),
            pid: actor.pid,
            time,
        };
        // Keys, by role: the keys a record names before those it creates, so that a copy
        // knows its source.
        let mut keys: Vec<(&str, &KeyRec<'_>)> = Vec::new();
        if let Some(k) = &p.key {
            keys.push(("key", k));
        }
        for (role, k) in &p.keys {
            keys.push((role.as_ref(), k));
        }
        let creating = |role: &str| {
            matches!(lifecycle, "generate" | "import")
                && matches!(role, "key" | "public" | "private" | "new")
        };
        let mut resolved: Vec<(&str, &KeyRec<'_>, usize)> = Vec::new();
        let mut source = None;
        for &(role, k) in keys.iter().filter(|(role, _)| !creating(role)) {
            let key = self.book.named(&place, k);
            if role == "source" {
                source = Some(key);
            }
            resolved.push((role, k, key));
        }
        // A failed creation made no key.
        if outcome == "success" {
            for &(role, k) in keys.iter().filter(|(role, _)| creating(role)) {
                let copy_of = if p.function.as_deref() == Some("C_CopyObject") {
                    source
                } else {
                    None
                };
                let key = self.book.created(&place, k, copy_of);
                resolved.push((role, k, key));
            }
        }
        let mech = p
            .mechanism
            .as_ref()
            .and_then(|m| m.name.as_deref())
            .unwrap_or("-");
        let op = p
            .operation
            .as_ref()
            .and_then(|o| o.kind.as_deref())
            .unwrap_or(action);
        // A usage summary counts as the operations it stands for.
        let count = p.operation.as_ref().and_then(|o| o.count).unwrap_or(1);
        let max_rows = self.max_rows;
        let mut failed_key = None;
        for (role, k, key) in resolved {
            let id = self.book.names(key).identity.clone();
            if role == "key" {
                failed_key = Some(id.clone());
            }
            let r_row = row(Some(id));
            if creating(role) {
                let copy_of = self.book.copy_of(key);
                let folded = self.book.folded(key);
                let e = self.key_entry(key, time);
                if folded {
                    *e.folded_copies.get_or_insert(0) += 1;
                    e.created.get_or_insert(r_row);
                } else {
                    e.created = Some(r_row);
                }
                if let Some(s) = copy_of {
                    self.key_entry(s, time).copies += 1;
                }
            } else if lifecycle == "export" && role == "key" {
                let e = self.key_entry(key, time);
                e.exports.add(outcome);
                if e.export_rows.len() < max_rows {
                    e.export_rows.push(r_row);
                }
            } else {
                match lifecycle {
                    "modify" => {
                        let rename = (outcome == "success").then(|| Rename::of(p)).flatten();
                        let formerly = rename.map(|r| self.book.renamed(key, r));
                        let e = self.key_entry(key, time);
                        e.changes.add(outcome);
                        e.formerly.extend(formerly);
                    }
                    "destroy" => {
                        if outcome == "success" {
                            self.book.destroyed(&place, k.handle, key);
                            self.key_entry(key, time).destroyed = Some(r_row);
                        } else {
                            self.key_entry(key, time).destroy_failures += 1;
                        }
                    }
                    _ => {
                        let what = if role == "key" {
                            format!("{op} / {mech}")
                        } else {
                            format!("{op} ({role}) / {mech}")
                        };
                        // A copy's use is a use of the key it was copied from too.
                        let mut next = Some(key);
                        while let Some(k) = next {
                            let e = self.key_entry(k, time);
                            e.uses
                                .entry(what.clone())
                                .or_default()
                                .add_n(outcome, count);
                            next = self.book.copy_of(k);
                        }
                    }
                }
            }
        }
        if lifecycle == "session" {
            self.count_sessions(action, outcome, p);
        }
        // Session objects end with their session, or their process.
        let ended = match (lifecycle, p.function.as_deref(), outcome) {
            // A summary that ends with no session open on its slot: every session of the
            // process on that token has closed, and its session objects with them.
            ("session", _, "success")
                if action == "session_summary"
                    && p.sessions.as_ref().and_then(|s| s.open) == Some(0) =>
            {
                self.book.sessions_closed(&place, None)
            }
            ("session", Some("C_CloseSession"), "success") => match place.session {
                Some(s) => self.book.sessions_closed(&place, Some(s)),
                None => Vec::new(),
            },
            ("session", Some("C_CloseAllSessions"), "success") => {
                self.book.sessions_closed(&place, None)
            }
            ("audit", _, _) if action == "trail_stop" => self.book.stream_ended(place.stream),
            _ => Vec::new(),
        };
        for key in ended {
            let e = self.key_entry(key, time);
            if e.destroyed.is_none() && e.ended.is_none() {
                e.ended = Some(row(None));
            }
        }
        if lifecycle == "auth" && outcome == "failure" && action.starts_with("login") {
            let ut = p
                .auth
                .as_ref()
                .and_then(|a| a.user_type.as_deref())
                .unwrap_or("?")
                .to_string();
            let un = p
                .auth
                .as_ref()
                .and_then(|a| a.username.as_deref())
                .map(str::to_string);
            let g = self
                .logins
                .entry((ut.clone(), un.clone(), actor.clone()))
                .or_insert_with(|| FailedLogins {
                    user_type: ut,
                    username: un,
                    actor: actor.clone(),
                    ..FailedLogins::default()
                });
            g.count += 1;
            *g.rv_names
                .entry(p.rv_name.as_deref().unwrap_or("?").to_string())
                .or_default() += 1;
            if g.first.is_none() {
                g.first = time.map(str::to_string);
            }
            g.last = time.map(str::to_string);
        }
        if lifecycle == "token_admin" {
            if self.report.token_admin.len() < self.max_rows {
                self.report.token_admin.push(row(None));
            } else {
                self.report.token_admin_more += 1;
            }
        }
        if outcome == "failure" {
            let f = format!(
                "{} {}",
                p.function.as_deref().unwrap_or(action),
                p.rv_name.as_deref().unwrap_or("?")
            );
            *self.report.failures_by_function.entry(f).or_default() += 1;
            if self.report.failures.len() < self.max_rows {
                self.report.failures.push(row(failed_key));
            } else {
                self.report.failures_more += 1;
            }
        }
    }
}

/// Runs `keytrail report`; returns the exit status.
pub fn run(args: &ReportArgs) -> Result<u8> {
    let filters = Filters::new(&args.filter)?;
    let files = input::trail_files(&args.inputs, args.keep_order)?;
    let mut agg = Aggregator::new(args.max_rows);
    agg.report.summary.files = files.iter().map(|p| p.display().to_string()).collect();
    let mut progress = Progress::new(&files, args.quiet);
    let mut errors = Vec::new();
    input::for_each_line(
        &files,
        &mut progress,
        |_, e| errors.push(e),
        |l| {
            agg.report.summary.lines += 1;
            if l.bytes.is_empty() && l.overlong.is_none() {
                return;
            }
            let parsed = match l.overlong_reason() {
                Some(reason) => Err(reason),
                None => Rec::parse(l.bytes).map_err(|e| e.to_string()),
            };
            match parsed {
                Ok(r) => {
                    agg.report.summary.records += 1;
                    if !filters.selects(&r) {
                        return;
                    }
                    agg.report.summary.selected += 1;
                    let t = r.timestamp.as_deref().map(str::to_string);
                    if agg.report.summary.first.is_none() {
                        agg.report.summary.first = t.clone();
                    }
                    agg.report.summary.last = t;
                    agg.record(&r);
                }
                Err(e) => {
                    agg.report.summary.damaged_lines += 1;
                    if agg.report.damaged.len() < agg.max_rows {
                        agg.report.damaged.push(format!(
                            "{}:{}: not a JSON record ({e})",
                            files[l.file].display(),
                            l.number
                        ));
                    }
                }
            }
        },
    );
    for e in &errors {
        errln!("keytrail: {e}");
    }
    let report = agg.finish();
    if args.json {
        text::print_json(&report)?;
    } else {
        print_text(&report);
    }
    if !report.damaged.is_empty() {
        for d in &report.damaged {
            errln!("keytrail: {d}");
        }
    }
    Ok(if errors.is_empty() { 0 } else { 2 })
}

fn actor(a: &Actor) -> String {
    format!(
        "pid {} {} user {}",
        a.pid.map_or("?".into(), |p| p.to_string()),
        a.process.as_deref().unwrap_or("?"),
        a.user.as_deref().unwrap_or("?")
    )
}

fn print_text(r: &Report) {
    let s = &r.summary;
    outln!(
        "{} records ({} selected) from {} file(s), {} processes, {} .. {}",
        s.records,
        s.selected,
        s.files.len(),
        s.processes,
        s.first.as_deref().unwrap_or("-"),
        s.last.as_deref().unwrap_or("-")
    );
    if s.damaged_lines > 0 {
        outln!(
            "{} damaged lines skipped (listed on stderr)",
            s.damaged_lines
        );
    }
    let cats: Vec<String> = s
        .by_category
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    outln!("by category: {}", cats.join(", "));
    let c = &r.sessions;
    if c.opened + c.closed + c.close_all_calls + c.failures > 0 {
        let mut line = format!(
            "sessions: {} opened ({} read/write), {} closed",
            c.opened, c.opened_rw, c.closed
        );
        if c.close_all_calls > 0 {
            line += &format!(", {} C_CloseAllSessions", c.close_all_calls);
        }
        line += &format!(", {} failed calls", c.failures);
        match c.summaries {
            0 => {}
            1 => line += "; from 1 summary",
            n => line += &format!("; from {n} summaries"),
        }
        if let Some(m) = c.max_open {
            line += &format!(", at most {m} open at once");
        }
        outln!("{line}");
    }
    outln!();
    outln!("KEYS ({})", r.keys.len());
    for k in &r.keys {
        outln!("  {}", k.identity);
        match &k.created {
            Some(c) => outln!(
                "    created   {} by {} ({})",
                c.time.as_deref().unwrap_or("?"),
                actor(&c.actor),
                c.function.as_deref().unwrap_or(&c.action)
            ),
            None => outln!("    created   (not in this trail)"),
        }
        if let Some(s) = &k.copy_of {
            outln!("    copy of   {s}");
        }
        if let Some(n) = k.folded_copies {
            outln!("    stands for {n} session copies: created is the first's, the end the last's");
        }
        if k.copies > 0 {
            outln!(
                "    copied    {} time(s); uses below include the copies'",
                k.copies
            );
        }
        for f in &k.formerly {
            outln!("    formerly  {f}");
        }
        if !k.uses.is_empty() {
            outln!(
                "    {:<44} {:>9} {:>9} {:>9}",
                "use / mechanism",
                "success",
                "failure",
                "other"
            );
            for (what, c) in &k.uses {
                outln!(
                    "    {:<44} {:>9} {:>9} {:>9}",
                    what,
                    c.success,
                    c.failure,
                    c.other
                );
            }
        }
        let e = &k.exports;
        if e.success + e.failure + e.other > 0 {
            outln!(
                "    exports   {} succeeded, {} failed",
                e.success,
                e.failure
            );
        }
        let c = &k.changes;
        if c.success + c.failure + c.other > 0 {
            outln!(
                "    changes   {} succeeded, {} failed",
                c.success,
                c.failure
            );
        }
        if let Some(d) = &k.destroyed {
            outln!(
                "    destroyed {} by {}",
                d.time.as_deref().unwrap_or("?"),
                actor(&d.actor)
            );
        }
        if let Some(d) = &k.ended {
            outln!(
                "    ended     {} with its {} ({})",
                d.time.as_deref().unwrap_or("?"),
                if d.action == "trail_stop" {
                    "process"
                } else {
                    "session"
                },
                actor(&d.actor)
            );
        }
        if k.destroy_failures > 0 {
            outln!("    destroy failed {} time(s)", k.destroy_failures);
        }
    }
    outln!();
    outln!(
        "FAILED LOGINS ({})",
        r.failed_logins.iter().map(|l| l.count).sum::<u64>()
    );
    for l in &r.failed_logins {
        let rvs: Vec<String> = l
            .rv_names
            .iter()
            .map(|(k, v)| format!("{k} ×{v}"))
            .collect();
        outln!(
            "  {:>5} × {}{} by {} ({}), {} .. {}",
            l.count,
            l.user_type,
            l.username
                .as_deref()
                .map(|u| format!(" {u}"))
                .unwrap_or_default(),
            actor(&l.actor),
            rvs.join(", "),
            l.first.as_deref().unwrap_or("?"),
            l.last.as_deref().unwrap_or("?")
        );
    }
    outln!();
    outln!(
        "TOKEN ADMINISTRATION ({})",
        r.token_admin.len() as u64 + r.token_admin_more
    );
    for t in &r.token_admin {
        outln!(
            "  {} {} {} {} on {} by {}{}",
            t.time.as_deref().unwrap_or("?"),
            t.action,
            t.outcome,
            t.rv_name.as_deref().unwrap_or(""),
            t.token.as_deref().unwrap_or("?"),
            actor(&t.actor),
            if t.flags.is_empty() {
                String::new()
            } else {
                format!(" [{}]", t.flags.join(", "))
            }
        );
    }
    outln!();
    outln!(
        "FAILURES ({})",
        r.failures_by_function.values().sum::<u64>()
    );
    for (f, n) in &r.failures_by_function {
        outln!("  {n:>7} × {f}");
    }
    for f in &r.failures {
        outln!(
            "  {} {} {} by {}{}",
            f.time.as_deref().unwrap_or("?"),
            f.function.as_deref().unwrap_or(&f.action),
            f.rv_name.as_deref().unwrap_or("?"),
            actor(&f.actor),
            f.key
                .as_deref()
                .map(|k| format!(" key {k}"))
                .unwrap_or_default()
        );
    }
    if r.failures_more > 0 {
        outln!("  … and {} more", r.failures_more);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record of stream `stream` (pid = stream), as keytrail writes it, with `pkcs11` the
    /// given fields (token serial `T`).
    fn line(stream: u64, time: u32, action: &str, outcome: &str, pkcs11: &str) -> String {
        format!(
            r#"{{"@timestamp":"2026-01-01T00:00:{time:02}.000000Z","event":{{"action":"{action}","outcome":"{outcome}"}},"pkcs11":{{"token":{{"serial":"T"}},{pkcs11}}},"process":{{"pid":{stream}}},"integrity":{{"stream":"s{stream}"}}}}"#
        )
    }

    fn report_of(lines: &[String]) -> Report {
        let mut agg = Aggregator::new(10);
        for l in lines {
            let r: Rec<'_> = serde_json::from_str(l).expect("record");
            agg.record(&r);
        }
        agg.finish()
    }

    const AES: &str = r#""class":"CKO_SECRET_KEY","key_type":"CKK_AES""#;

    #[test]
    fn a_usage_summary_written_after_the_destroy_names_the_destroyed_key() {
        let key = format!(r#""key":{{"handle":5,{AES},"id_hex":"","label":"","token":false}}"#);
        let r = report_of(&[
            line(
                1,
                1,
                "key_generate",
                "success",
                &format!(
                    r#""lifecycle":"generate","function":"C_GenerateKey","session":{{"handle":1}},{key}"#
                ),
            ),
            line(
                1,
                3,
                "object_destroy",
                "success",
                &format!(r#""lifecycle":"destroy","function":"C_DestroyObject",{key}"#),
            ),
            // Dated from its first use, before the destroy.
            line(
                1,
                2,
                "encrypt",
                "success",
                &format!(r#""lifecycle":"use","operation":{{"kind":"encrypt","count":7}},{key}"#),
            ),
            // A later record of handle 5 is another object.
            line(
                1,
                4,
                "encrypt",
                "success",
                &format!(r#""lifecycle":"use","operation":{{"kind":"encrypt"}},{key}"#),
            ),
        ]);
        assert_eq!(r.keys.len(), 2, "{:#?}", r.keys);
        assert_eq!(r.keys[0].uses["encrypt / -"].success, 7);
        assert!(r.keys[0].destroyed.is_some());
        assert!(r.keys[1].created.is_none());
    }

    /// Under `sessions = "summary"`, a session key ends with the summary that finds no
    /// session open on its token; one that finds some still open leaves it be.
    #[test]
    fn a_session_summary_with_no_session_open_ends_the_session_keys() {
        let key = format!(r#""key":{{"handle":5,{AES},"id_hex":"","label":"","token":false}}"#);
        let generate = format!(
            r#""lifecycle":"generate","function":"C_GenerateKey","session":{{"handle":1}},{key}"#
        );
        let with_summary = |open: u64| {
            report_of(&[
                line(1, 1, "key_generate", "success", &generate),
                line(
                    1,
                    2,
                    "session_summary",
                    "success",
                    &format!(
                        r#""lifecycle":"session","slot_id":0,"sessions":{{"opened":3,"opened_rw":3,"closed":2,"open":{open},"max_open":2}}"#
                    ),
                ),
            ])
        };
        let r = with_summary(1);
        assert!(r.keys[0].ended.is_none(), "{:#?}", r.keys);
        assert_eq!(
            (r.sessions.opened, r.sessions.closed, r.sessions.summaries),
            (3, 2, 1)
        );
        let r = with_summary(0);
        assert!(r.keys[0].ended.is_some(), "{:#?}", r.keys);
    }

    #[test]
    fn a_handle_reused_by_an_object_of_another_class_is_another_key() {
        let r = report_of(&[
            line(1, 1, "key_generate", "success", &format!(r#""lifecycle":"generate","function":"C_GenerateKey","key":{{"handle":5,{AES},"label":"a","token":true}}"#)),
            line(1, 2, "sign", "success", r#""lifecycle":"use","key":{"handle":5,"class":"CKO_PRIVATE_KEY","key_type":"CKK_EC","label":"b","token":true}"#.to_string().as_str()),
        ]);
        assert_eq!(r.keys.len(), 2, "{:#?}", r.keys);
        assert_eq!(r.keys[1].label.as_deref(), Some("b"));
    }

    #[test]
    fn a_token_key_renamed_in_one_stream_is_found_by_its_new_name_in_another() {
        let r = report_of(&[
            line(
                1,
                1,
                "key_generate",
                "success",
                &format!(
                    r#""lifecycle":"generate","function":"C_GenerateKey","key":{{"handle":5,{AES},"label":"old","token":true}}"#
                ),
            ),
            line(
                2,
                2,
                "attribute_set",
                "success",
                &format!(
                    r#""lifecycle":"modify","function":"C_SetAttributeValue","key":{{"handle":9,{AES},"label":"old","token":true}},"attributes":{{"set":[{{"type":"CKA_LABEL","text":"new"}}]}}"#
                ),
            ),
            line(
                3,
                3,
                "encrypt",
                "success",
                &format!(
                    r#""lifecycle":"use","operation":{{"kind":"encrypt"}},"key":{{"handle":2,{AES},"label":"new","token":true}}"#
                ),
            ),
            // The old name is free again: a new key may take it.
            line(
                3,
                4,
                "encrypt",
                "success",
                &format!(
                    r#""lifecycle":"use","operation":{{"kind":"encrypt"}},"key":{{"handle":3,{AES},"label":"old","token":true}}"#
                ),
            ),
        ]);
        assert_eq!(r.keys.len(), 2, "{:#?}", r.keys);
        let k = &r.keys[0];
        assert_eq!(k.label.as_deref(), Some("new"));
        assert_eq!(k.formerly, ["CKO_SECRET_KEY/CKK_AES/id:/label:old@T"]);
        assert_eq!(k.uses["encrypt / -"].success, 1);
        assert_eq!(r.keys[1].label.as_deref(), Some("old"));
        assert!(r.keys[1].created.is_none());
    }

    #[test]
    fn session_copies_beyond_max_rows_share_one_entry_per_source() {
        let source = format!(r#""handle":1,{AES},"label":"k","token":true"#);
        let mut lines = vec![line(
            1,
            0,
            "key_generate",
            "success",
            &format!(r#""lifecycle":"generate","function":"C_GenerateKey","key":{{{source}}}"#),
        )];
        for i in 0..5u32 {
            let copy = format!(
                r#""key":{{"handle":{},{AES},"label":"k","token":false}}"#,
                10 + i
            );
            lines.push(line(1, 1 + 3 * i, "object_copy", "success", &format!(r#""lifecycle":"import","function":"C_CopyObject",{copy},"keys":{{"source":{{{source}}}}}"#)));
            lines.push(line(
                1,
                2 + 3 * i,
                "encrypt",
                "success",
                &format!(r#""lifecycle":"use","operation":{{"kind":"encrypt"}},{copy}"#),
            ));
            lines.push(line(
                1,
                3 + 3 * i,
                "object_destroy",
                "success",
                &format!(r#""lifecycle":"destroy","function":"C_DestroyObject",{copy}"#),
            ));
        }
        let mut agg = Aggregator::new(2);
        for l in &lines {
            let r: Rec<'_> = serde_json::from_str(l).expect("record");
            agg.record(&r);
        }
        let r = agg.finish();
        assert_eq!(
            r.keys.len(),
            4,
            "the source, two copies, the rest: {:#?}",
            r.keys
        );
        assert_eq!(r.keys[0].copies, 5);
        assert_eq!(r.keys[0].uses["encrypt / -"].success, 5);
        assert!(r.keys[0].destroyed.is_none());
        for c in &r.keys[1..3] {
            assert_eq!(c.folded_copies, None);
            assert_eq!(c.uses["encrypt / -"].success, 1);
        }
        let rest = &r.keys[3];
        assert_eq!(rest.folded_copies, Some(3));
        assert_eq!(rest.uses["encrypt / -"].success, 3);
        assert_eq!(rest.copy_of.as_deref(), Some(r.keys[0].identity.as_str()));
        assert!(
            rest.identity
                .ends_with("(session copies beyond the first 2)"),
            "{}",
            rest.identity
        );
        assert!(rest.destroyed.is_some());
    }
}
