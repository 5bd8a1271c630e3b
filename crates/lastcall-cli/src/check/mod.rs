//! `lastcall check`: grades a service's graceful shutdown from the outside.
//!
//! Each scenario starts the service afresh ([`service::Service`]), talks to it with a client
//! that tells a clean close from a reset from a truncation ([`client`]), sends real signals, and
//! reports what a client would have seen ([`scenario`]).

use std::io::{IsTerminal, Write};
use std::net::IpAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitCode, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use nix::sys::signal::Signal;
use serde::Serialize;
use tokio::signal::unix::SignalKind;

use crate::flags::CheckArgs;

mod client;
mod h2;
mod preflight;
mod scenario;
mod service;
mod sockets;
mod timeline;
mod ws;

use timeline::escape;

/// Everything a scenario needs to know about the service under test.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    pub(crate) command: Vec<String>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) budget: Duration,
    pub(crate) drain_delay: Duration,
    pub(crate) budget_var: String,
    pub(crate) drain_delay_var: String,
    pub(crate) tolerance: Duration,
    pub(crate) start_timeout: Duration,
    pub(crate) signal: Signal,
    /// The signals `second_signal` repeats; empty for `--repeat-signal none`.
    pub(crate) repeat_signals: Vec<Signal>,
    pub(crate) clean_exit: CleanExit,
    pub(crate) pre_stop: Duration,
    pub(crate) host: IpAddr,
    pub(crate) ready_url: Option<String>,
    pub(crate) ready_path: String,
    pub(crate) path: String,
    pub(crate) slow_path: String,
    pub(crate) events_path: String,
    pub(crate) ws_path: String,
    pub(crate) connections: usize,
    /// The signal the `restart` scenario sends (`--restart-signal`, SIGHUP by default).
    pub(crate) restart_signal: Signal,
    pub(crate) restart_timeout: Duration,
    pub(crate) pid_file: Option<PathBuf>,
    /// How the same service exits after a clean, idle shutdown (measured by the preflight).
    pub(crate) baseline: Option<ExitStatus>,
}

impl Spec {
    /// The slow path for `ms` milliseconds.
    pub(crate) fn slow(&self, ms: impl std::fmt::Display) -> String {
        self.slow_path.replace("{ms}", &ms.to_string())
    }

    /// The earliest moment after the signal a service may cut work:
    /// `budget - max(tolerance, 30 % of the budget)`. Earlier, requests a client still waits
    /// for are cut while most of the budget is unused.
    pub(crate) fn cut_floor(&self) -> Duration {
        self.budget
            .saturating_sub(self.tolerance.max(self.budget.mul_f64(0.3)))
    }
}

/// The exit statuses that mean a clean shutdown (`--expect-exit`).
#[derive(Debug, Clone)]
pub(crate) struct CleanExit {
    codes: Vec<i32>,
    /// Death by the stop signal counts as clean.
    by_signal: bool,
}

impl CleanExit {
    /// Whether `status` is one of the accepted exit codes (death by a signal never is).
    pub(crate) fn accepts_code(&self, status: ExitStatus) -> bool {
        status.code().is_some_and(|code| self.codes.contains(&code))
    }

    pub(crate) fn accepts(&self, status: ExitStatus, stop: Signal) -> bool {
        match (status.code(), status.signal()) {
            (Some(code), _) => self.codes.contains(&code),
            (None, Some(signal)) => self.by_signal && signal == stop as i32,
            (None, None) => false,
        }
    }

    /// For people: `exit 0`, `exit 0 or death by SIGTERM`.
    pub(crate) fn describe(&self, stop: Signal) -> String {
        let mut parts: Vec<String> = self.codes.iter().map(|c| format!("exit {c}")).collect();
        if self.by_signal {
            parts.push(format!("death by {stop}"));
        }
        parts.join(" or ")
    }
}

/// An exit status for people: `exit 3`, `killed by SIGTERM`.
pub(crate) fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit {code}"),
        (None, Some(signal)) => match Signal::try_from(signal) {
            Ok(signal) => format!("killed by {signal}"),
            Err(_) => format!("killed by signal {signal}"),
        },
        (None, None) => status.to_string(),
    }
}

/// One scenario's result, as printed and as JSON.
#[derive(Debug, Serialize)]
struct Outcome {
    scenario: &'static str,
    /// `pass`, `fail` or `skip`.
    status: &'static str,
    measurement: String,
    reason: Option<String>,
    /// Over every run.
    duration_ms: u64,
    runs: u32,
    failed_runs: u32,
    /// The `restart` scenario's own fields (its worst run's).
    #[serde(skip_serializing_if = "Option::is_none")]
    restart: Option<scenario::RestartReport>,
    /// The timeline picture, for `--html` only.
    #[serde(skip)]
    svg: String,
}

/// The JSON document `--json` prints.
#[derive(Debug, Serialize)]
struct Summary<'a> {
    schema: &'static str,
    command: &'a [String],
    host: String,
    signal: &'static str,
    repeat_signals: Vec<&'static str>,
    /// The signal the `restart` scenario sends, when it was selected.
    #[serde(skip_serializing_if = "Option::is_none")]
    restart_signal: Option<&'static str>,
    clean_exit: String,
    /// How the service exited after the preflight's idle shutdown.
    baseline_exit: Option<String>,
    budget_ms: u64,
    drain_delay_ms: u64,
    pre_stop_ms: u64,
    repeat: u32,
    passed: bool,
    hints: &'a [String],
    scenarios: &'a [Outcome],
}

pub(crate) fn main(args: CheckArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("lastcall check: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        // Installed before any service starts, so an early Ctrl+C still cleans up.
        let mut interrupt = match tokio::signal::unix::signal(SignalKind::interrupt()) {
            Ok(interrupt) => interrupt,
            Err(err) => {
                eprintln!("lastcall check: cannot listen for SIGINT: {err}");
                return ExitCode::FAILURE;
            }
        };
        tokio::select! {
            result = run(args) => match result {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(err) => {
                    eprintln!("lastcall check: {err:#}");
                    ExitCode::from(2)
                }
            },
            // Dropping `run` drops the running service, which kills its process group.
            _ = interrupt.recv() => {
                eprintln!("lastcall check: interrupted; the service under test was stopped");
                ExitCode::from(130)
            }
        }
    })
}

async fn run(args: CheckArgs) -> anyhow::Result<bool> {
    let (mut spec, _db) = spec(&args)?;
    for name in args.only.iter().chain(&args.skip) {
        if !scenario::ALL.contains(&name.as_str()) {
            bail!(
                "unknown scenario {name:?}; the scenarios are {}",
                scenario::ALL.join(", ")
            );
        }
    }
    let selected: Vec<&'static str> = scenario::ALL
        .into_iter()
        .filter(|name| {
            // --restart-signal asks for the restart scenario on top of the others.
            if *name == "restart" && args.restart_signal.is_some() {
                return true;
            }
            if args.only.is_empty() {
                !scenario::OPT_IN.contains(name)
            } else {
                args.only.iter().any(|o| o == name)
            }
        })
        .collect();
    let graded: Vec<&'static str> = selected
        .iter()
        .copied()
        .filter(|name| !args.skip.iter().any(|s| s == name))
        .collect();
    let live = std::io::stderr().is_terminal();
    if !graded.is_empty() {
        eprint!("preflight: the paths, then an idle shutdown ...");
        let _ = std::io::stderr().flush();
        spec.baseline = preflight::run(&spec, &graded).await?;
        eprintln!(
            " {}",
            spec.baseline.map_or("no exit".to_owned(), describe_status)
        );
    }
    let mut outcomes = Vec::new();
    for (i, name) in selected.iter().enumerate() {
        if !graded.contains(name) {
            outcomes.push(Outcome {
                scenario: name,
                status: "skip",
                measurement: String::new(),
                reason: Some("skipped with --skip".into()),
                duration_ms: 0,
                runs: 0,
                failed_runs: 0,
                restart: None,
                svg: String::new(),
            });
            continue;
        }
        let progress = format!("[{}/{}] {name}", i + 1, selected.len());
        let started = Instant::now();
        let outcome =
            with_progress(&progress, live, run_scenario(name, &spec, args.repeat)).await?;
        let outcome = Outcome {
            duration_ms: started.elapsed().as_millis() as u64,
            ..outcome
        };
        let line = format!("{progress} {}", outcome.status);
        if live {
            eprintln!("\r{line}\x1b[K");
        } else {
            eprintln!("{line}");
        }
        outcomes.push(outcome);
    }
    let passed = outcomes.iter().all(|o| o.status != "fail");
    let hints = hints(&spec, &outcomes);
    if let Some(path) = &args.html {
        std::fs::write(path, html(&spec, &outcomes, &hints, passed))
            .with_context(|| format!("writing the HTML report to {}", path.display()))?;
        eprintln!("lastcall check: wrote {}", path.display());
    }
    let summary = Summary {
        schema: SCHEMA,
        command: &spec.command,
        host: spec.host.to_string(),
        signal: spec.signal.as_str(),
        repeat_signals: spec.repeat_signals.iter().map(|s| s.as_str()).collect(),
        restart_signal: selected
            .contains(&"restart")
            .then(|| spec.restart_signal.as_str()),
        clean_exit: spec.clean_exit.describe(spec.signal),
        baseline_exit: spec.baseline.map(describe_status),
        budget_ms: spec.budget.as_millis() as u64,
        drain_delay_ms: spec.drain_delay.as_millis() as u64,
        pre_stop_ms: spec.pre_stop.as_millis() as u64,
        repeat: args.repeat,
        passed,
        hints: &hints,
        scenarios: &outcomes,
    };
    let json = serde_json::to_string_pretty(&summary).context("writing JSON")?;
    match args.json.as_deref() {
        Some(path) if path == std::path::Path::new("-") => println!("{json}"),
        Some(path) => {
            std::fs::write(path, format!("{json}\n"))
                .with_context(|| format!("writing the JSON report to {}", path.display()))?;
            print_table(&outcomes, &hints);
        }
        None => print_table(&outcomes, &hints),
    }
    Ok(passed)
}

/// The JSON schema's name; a new version whenever a field changes meaning.
const SCHEMA: &str = "lastcall-check/2";

/// Runs `future`, showing on stderr how long it has been running: every second on a terminal,
/// every ten seconds otherwise.
async fn with_progress<T>(
    progress: &str,
    live: bool,
    future: impl std::future::Future<Output = T>,
) -> T {
    let started = Instant::now();
    let every = Duration::from_secs(if live { 1 } else { 10 });
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    if live {
        eprint!("{progress} ...");
        let _ = std::io::stderr().flush();
    }
    tokio::pin!(future);
    loop {
        tokio::select! {
            value = &mut future => return value,
            _ = ticks.tick() => {
                let secs = started.elapsed().as_secs();
                if live {
                    eprint!("\r{progress} ... {secs} s");
                    let _ = std::io::stderr().flush();
                } else {
                    eprintln!("{progress} still running ({secs} s)");
                }
            }
        }
    }
}

/// Runs one scenario `repeat` times; the verdict is the worst run's.
async fn run_scenario(name: &'static str, spec: &Spec, repeat: u32) -> anyhow::Result<Outcome> {
    let mut worst: Option<(scenario::Finding, String)> = None;
    let mut failed_runs = 0;
    for _ in 0..repeat {
        let (finding, timeline) = scenario::run(name, spec).await?;
        if finding.verdict == scenario::Verdict::Fail {
            failed_runs += 1;
        }
        let worse = worst
            .as_ref()
            .is_none_or(|(w, _)| finding.verdict.rank() > w.verdict.rank());
        if worse {
            worst = Some((finding, timeline.svg()));
        }
    }
    let (finding, svg) = worst.context("--repeat is at least 1")?;
    let reason = match finding.reason {
        Some(reason) if repeat > 1 && failed_runs > 0 => Some(format!(
            "failed {failed_runs} of {repeat} runs; the worst: {reason}"
        )),
        other => other,
    };
    Ok(Outcome {
        scenario: name,
        status: finding.verdict.as_str(),
        measurement: finding.measurement,
        reason,
        duration_ms: 0,
        runs: repeat,
        failed_runs,
        restart: finding.restart,
        svg,
    })
}

/// Servers whose documented graceful stop is another signal than the one sent, and that
/// signal: on them a fast stop looks like a broken drain.
const GRACEFUL_SIGNALS: [(&str, Signal, &str); 6] = [
    ("nginx", Signal::SIGQUIT, "SIGTERM is its fast shutdown"),
    ("php-fpm", Signal::SIGQUIT, "SIGTERM is its fast shutdown"),
    ("unicorn", Signal::SIGQUIT, "SIGTERM is its quick shutdown"),
    ("httpd", Signal::SIGWINCH, "SIGTERM stops it at once"),
    ("apache2", Signal::SIGWINCH, "SIGTERM stops it at once"),
    ("haproxy", Signal::SIGUSR1, "SIGTERM is its hard stop"),
];

/// Hints for the whole run: a server that stopped fast but documents another graceful signal.
fn hints(spec: &Spec, outcomes: &[Outcome]) -> Vec<String> {
    let cut = outcomes.iter().any(|o| {
        o.status == "fail"
            && matches!(
                o.scenario,
                "in_flight" | "drain_completion" | "second_signal" | "sse"
            )
    });
    let mut hints = Vec::new();
    if !cut {
        return hints;
    }
    let words = spec
        .command
        .iter()
        .flat_map(|arg| arg.split_whitespace())
        .map(|word| word.rsplit('/').next().unwrap_or(word));
    for word in words {
        if let Some((server, graceful, why)) = GRACEFUL_SIGNALS
            .iter()
            .find(|(server, graceful, _)| word == *server && spec.signal != *graceful)
        {
            hints.push(format!(
                "{server} documents {graceful} as its graceful stop ({why}): \
                 try --signal {graceful}, and make the platform send it (Kubernetes: a preStop \
                 hook; systemd: KillSignal={graceful})"
            ));
            break;
        }
    }
    hints
}

/// The spec from the arguments; for `--demo`, also the temporary database to remove afterwards.
fn spec(args: &CheckArgs) -> anyhow::Result<(Spec, Option<TempFile>)> {
    let signal = parse_signal("--signal", &args.signal)?;
    let restart_signal = match &args.restart_signal {
        Some(name) => parse_signal("--restart-signal", name)?,
        None => Signal::SIGHUP,
    };
    if args.restart_signal.is_some() && restart_signal == signal {
        bail!("--restart-signal {restart_signal} is also the stop signal (--signal): a restart signal must be another one (SIGHUP, SIGUSR2)");
    }
    let mut repeat_signals = Vec::new();
    for name in &args.repeat_signal {
        if name.eq_ignore_ascii_case("none") {
            continue;
        }
        if name.eq_ignore_ascii_case("stop") {
            repeat_signals.push(signal);
            continue;
        }
        repeat_signals.push(parse_signal("--repeat-signal", name)?);
    }
    let mut clean_exit = CleanExit {
        codes: Vec::new(),
        by_signal: false,
    };
    for value in &args.expect_exit {
        if value.eq_ignore_ascii_case("signal") {
            clean_exit.by_signal = true;
        } else {
            let code = value.parse::<i32>().ok().filter(|c| (0..=255).contains(c));
            let Some(code) = code else {
                bail!("--expect-exit {value:?} is neither an exit status (0-255) nor `signal`; e.g. --expect-exit 0,signal");
            };
            clean_exit.codes.push(code);
        }
    }
    let host: IpAddr = match args.host.parse() {
        Ok(ip) => ip,
        // A name: its IPv4 address where it has one, as most services bind 127.0.0.1.
        Err(_) => std::net::ToSocketAddrs::to_socket_addrs(&(args.host.as_str(), 0))
            .ok()
            .and_then(|addrs| {
                let addrs: Vec<_> = addrs.map(|a| a.ip()).collect();
                addrs.iter().find(|ip| ip.is_ipv4()).or(addrs.first()).copied()
            })
            .with_context(|| {
                format!("--host {:?} is neither an IP address nor a name that resolves; e.g. --host 127.0.0.1", args.host)
            })?,
    };
    let mut env = Vec::new();
    for pair in &args.env {
        let Some((k, v)) = pair.split_once('=') else {
            bail!("--env {pair:?} is not K=V");
        };
        env.push((k.to_owned(), v.to_owned()));
    }
    let (command, db) = if args.demo {
        let exe = std::env::current_exe().context("finding the lastcall binary for --demo")?;
        let db = TempFile(
            std::env::temp_dir().join(format!("lastcall-check-{}.sqlite3", std::process::id())),
        );
        env.push(("LASTCALL_DEMO_DB".into(), db.0.display().to_string()));
        (vec![exe.display().to_string(), "demo".into()], Some(db))
    } else {
        if args.command.is_empty() {
            bail!("nothing to check: pass the service's command after `--` (lastcall check -- ./my-service), or use --demo");
        }
        (args.command.clone(), None)
    };
    if args.demo && !host.is_loopback() {
        bail!("--host {host}: the demo listens on 127.0.0.1 only; drop --host with --demo");
    }
    let spec = Spec {
        command,
        env,
        budget: args.budget,
        drain_delay: args.drain_delay,
        budget_var: args.budget_var.clone(),
        drain_delay_var: args.drain_delay_var.clone(),
        tolerance: args.tolerance,
        start_timeout: args.start_timeout,
        signal,
        repeat_signals,
        clean_exit,
        pre_stop: args.pre_stop,
        host,
        ready_url: args.ready_url.clone(),
        ready_path: args.ready_path.clone(),
        path: args.path.clone(),
        slow_path: args.slow_path.clone(),
        events_path: args.events_path.clone(),
        ws_path: args.ws_path.clone(),
        connections: args.connections,
        restart_signal,
        restart_timeout: args.restart_timeout,
        pid_file: args.pid_file.clone(),
        baseline: None,
    };
    Ok((spec, db))
}

fn parse_signal(option: &str, name: &str) -> anyhow::Result<Signal> {
    let upper = name.trim().to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    full.parse().with_context(|| {
        format!("{option} {name:?} is not a signal name (SIGTERM, SIGINT, SIGQUIT, ...)")
    })
}

fn print_table(outcomes: &[Outcome], hints: &[String]) {
    let width = outcomes
        .iter()
        .map(|o| o.measurement.len())
        .max()
        .unwrap_or(0);
    println!(
        "{:<18} {:<6} {:<width$}  reason",
        "scenario", "result", "measurement"
    );
    for o in outcomes {
        let line = format!(
            "{:<18} {:<6} {:<width$}  {}",
            o.scenario,
            o.status.to_uppercase(),
            o.measurement,
            o.reason.as_deref().unwrap_or("")
        );
        println!("{}", line.trim_end());
    }
    let failed = outcomes.iter().filter(|o| o.status == "fail").count();
    let passed = outcomes.iter().filter(|o| o.status == "pass").count();
    let skipped = outcomes.iter().filter(|o| o.status == "skip").count();
    println!("\n{passed} passed, {failed} failed, {skipped} skipped");
    for hint in hints {
        println!("hint: {hint}");
    }
}

/// A file removed when dropped, with the SQLite side files.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.0.display()));
        }
    }
}

/// The self-contained HTML report: a summary table, the run's hints, then a section per
/// scenario with its verdict, the fix beside a failure, and its timeline.
fn html(spec: &Spec, outcomes: &[Outcome], hints: &[String], passed: bool) -> String {
    let mut page = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>lastcall check</title><style>\
         body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:960px}\
         h1{font-size:1.4em}h2{font-size:1.1em;margin:.2em 0}\
         section{border-top:1px solid #ddd;padding:.6em 0}\
         table{border-collapse:collapse}td,th{text-align:left;padding:.15em .8em .15em 0;vertical-align:top}\
         .pass{color:#2a7}.fail{color:#d33}.skip{color:#888}code{background:#f4f4f4;padding:0 .3em}\
         .fix{background:#fff4e0;border-left:3px solid #e90;padding:.3em .6em}\
         .hint{background:#eef4ff;border-left:3px solid #48c;padding:.3em .6em}\
         svg{max-width:100%;height:auto}\
         </style></head><body>",
    );
    let count = |status: &str| outcomes.iter().filter(|o| o.status == status).count();
    page.push_str(&format!(
        "<h1>lastcall check: <span class=\"{cls}\">{verdict}</span></h1>\
         <p><code>{cmd}</code></p><p>{signal} · budget {b} ms · drain delay {d} ms{pre} · clean exit: {clean}{baseline}</p>\
         <p>{p} passed, {f} failed, {s} skipped</p><table><tr><th>scenario</th><th>result</th><th>measurement</th></tr>",
        cls = if passed { "pass" } else { "fail" },
        verdict = if passed { "no scenario failed" } else { "some scenarios failed" },
        cmd = escape(&spec.command.join(" ")),
        signal = spec.signal,
        b = spec.budget.as_millis(),
        d = spec.drain_delay.as_millis(),
        pre = if spec.pre_stop.is_zero() {
            String::new()
        } else {
            format!(" · preStop {} ms", spec.pre_stop.as_millis())
        },
        clean = escape(&spec.clean_exit.describe(spec.signal)),
        baseline = spec
            .baseline
            .map(|b| format!(" (after an idle shutdown: {})", describe_status(b)))
            .unwrap_or_default(),
        p = count("pass"),
        f = count("fail"),
        s = count("skip"),
    ));
    for o in outcomes {
        page.push_str(&format!(
            "<tr><td><a href=\"#{name}\">{name}</a></td><td class=\"{status}\">{upper}</td><td>{measurement}</td></tr>",
            name = escape(o.scenario),
            status = o.status,
            upper = o.status.to_uppercase(),
            measurement = escape(&o.measurement),
        ));
    }
    page.push_str("</table>");
    for hint in hints {
        page.push_str(&format!("<p class=\"hint\">hint: {}</p>", escape(hint)));
    }
    for o in outcomes {
        let reason = o.reason.as_deref().map_or_else(String::new, |reason| {
            // The fix, where the reason names one, goes beside the failure.
            match (o.status, reason.split_once("; fix: ")) {
                ("fail", Some((what, fix))) => format!(
                    "<p class=\"fail\">{}</p><p class=\"fix\">fix: {}</p>",
                    escape(what),
                    escape(fix)
                ),
                (status, _) => format!("<p class=\"{status}\">{}</p>", escape(reason)),
            }
        });
        page.push_str(&format!(
            "<section id=\"{name}\"><h2><span class=\"{status}\">{upper}</span> {name}</h2><p>{measurement}{runs}</p>{reason}{svg}</section>",
            status = o.status,
            upper = o.status.to_uppercase(),
            name = escape(o.scenario),
            measurement = escape(&o.measurement),
            runs = if o.runs > 1 {
                format!(" ({} of {} runs failed)", o.failed_runs, o.runs)
            } else {
                String::new()
            },
            svg = o.svg,
        ));
    }
    page.push_str("</body></html>\n");
    page
}
