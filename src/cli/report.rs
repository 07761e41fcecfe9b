//! `keytrail report`: what happened to each key, failed logins, token administration and
//! failures — streaming, with memory in proportion to keys and distinct groups.

use super::input::{self, Progress};
use super::record::{FilterArgs, Filters, KeyRec, Rec};
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
    token: Option<String>,
    created: Option<Row>,
    /// Uses by `operation/mechanism`.
    uses: BTreeMap<String, Counts>,
    exports: Counts,
    export_rows: Vec<Row>,
    changes: Counts,
    destroyed: Option<Row>,
    destroy_failures: u64,
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

#[derive(Debug, Default, Serialize)]
struct Report {
    summary: Summary,
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

fn key_identity(k: &KeyRec<'_>, token: Option<&str>) -> String {
    if let Some(u) = &k.unique_id {
        return format!("unique_id:{u}");
    }
    format!(
        "{}/{}/id:{}/label:{}@{}",
        k.class.as_deref().unwrap_or("?"),
        k.key_type.as_deref().unwrap_or("?"),
        k.id_hex.as_deref().unwrap_or(""),
        k.label.as_deref().unwrap_or(""),
        token.unwrap_or("?")
    )
}

struct Aggregator {
    max_rows: usize,
    report: Report,
    keys: HashMap<String, KeyReport>,
    key_order: Vec<String>,
    logins: HashMap<(String, Option<String>, Actor), FailedLogins>,
    pids: std::collections::HashSet<u64>,
}

impl Aggregator {
    fn key_entry(
        &mut self,
        k: &KeyRec<'_>,
        token: Option<&str>,
        time: Option<&str>,
    ) -> &mut KeyReport {
        let id = key_identity(k, token);
        if !self.keys.contains_key(&id) {
            self.key_order.push(id.clone());
        }
        let e = self.keys.entry(id.clone()).or_insert_with(|| KeyReport {
            identity: id,
            class: k.class.as_deref().map(str::to_string),
            key_type: k.key_type.as_deref().map(str::to_string),
            id_hex: k.id_hex.as_deref().map(str::to_string),
            label: k.label.as_deref().map(str::to_string),
            unique_id: k.unique_id.as_deref().map(str::to_string),
            token: token.map(str::to_string),
            ..KeyReport::default()
        });
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
        // Keys, by role.
        let mut keys: Vec<(&str, &KeyRec<'_>)> = Vec::new();
        if let Some(k) = &p.key {
            keys.push(("key", k));
        }
        for (role, k) in &p.keys {
            keys.push((role.as_ref(), k));
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
        for (role, k) in keys {
            let id = key_identity(k, serial);
            let creating = matches!(lifecycle, "generate" | "import")
                && matches!(role, "key" | "public" | "private" | "new");
            let exporting = lifecycle == "export" && role == "key";
            let r_row = row(Some(id));
            let e = self.key_entry(k, serial, time);
            if creating {
                if outcome == "success" && e.created.is_none() {
                    e.created = Some(r_row);
                }
            } else if exporting {
                e.exports.add(outcome);
                if e.export_rows.len() < max_rows {
                    e.export_rows.push(r_row);
                }
            } else {
                match lifecycle {
                    "modify" => e.changes.add(outcome),
                    "destroy" => {
                        if outcome == "success" {
                            e.destroyed = Some(r_row);
                        } else {
                            e.destroy_failures += 1;
                        }
                    }
                    _ => {
                        let what = if role == "key" {
                            format!("{op} / {mech}")
                        } else {
                            format!("{op} ({role}) / {mech}")
                        };
                        e.uses.entry(what).or_default().add_n(outcome, count);
                    }
                }
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
                let key = p.key.as_ref().map(|k| key_identity(k, serial));
                self.report.failures.push(row(key));
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
    let mut agg = Aggregator {
        max_rows: args.max_rows,
        report: Report::default(),
        keys: HashMap::new(),
        key_order: Vec::new(),
        logins: HashMap::new(),
        pids: Default::default(),
    };
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
    let mut report = agg.report;
    report.summary.processes = agg.pids.len() as u64;
    let mut keys = agg.keys;
    report.keys = agg
        .key_order
        .iter()
        .filter_map(|id| keys.remove(id))
        .collect();
    let mut logins: Vec<FailedLogins> = agg.logins.into_values().collect();
    logins.sort_by(|a, b| b.count.cmp(&a.count).then(a.actor.cmp(&b.actor)));
    report.failed_logins = logins;
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
