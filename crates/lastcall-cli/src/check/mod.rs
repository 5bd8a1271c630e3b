//! `lastcall check`: grades a service's graceful shutdown from the outside.
//!
//! Each scenario starts the service afresh ([`service::Service`]), talks to it with a client
//! that tells a clean close from a reset from a truncation ([`client`]), sends real signals, and
//! reports what a client would have seen ([`scenario`]).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use nix::sys::signal::Signal;
use serde::Serialize;
use tokio::signal::unix::SignalKind;

use crate::flags::CheckArgs;

mod client;
mod scenario;
mod service;
mod timeline;

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
    pub(crate) ready_path: String,
    pub(crate) path: String,
    pub(crate) slow_path: String,
    pub(crate) events_path: String,
    pub(crate) connections: usize,
}

impl Spec {
    /// The slow path for `ms` milliseconds.
    pub(crate) fn slow(&self, ms: impl std::fmt::Display) -> String {
        self.slow_path.replace("{ms}", &ms.to_string())
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
    duration_ms: u64,
    /// The timeline picture, for `--html` only.
    #[serde(skip)]
    svg: String,
}

/// The JSON document `--json` prints.
#[derive(Debug, Serialize)]
struct Summary<'a> {
    schema: &'static str,
    command: &'a [String],
    budget_ms: u64,
    drain_delay_ms: u64,
    passed: bool,
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
    let (spec, _db) = spec(&args)?;
    let selected: Vec<&'static str> = scenario::ALL
        .into_iter()
        .filter(|name| args.only.is_empty() || args.only.iter().any(|o| o == name))
        .collect();
    for name in args.only.iter().chain(&args.skip) {
        if !scenario::ALL.contains(&name.as_str()) {
            bail!(
                "unknown scenario {name:?}; the scenarios are {}",
                scenario::ALL.join(", ")
            );
        }
    }
    let live = std::io::stderr().is_terminal();
    let mut outcomes = Vec::new();
    for (i, name) in selected.iter().enumerate() {
        if args.skip.iter().any(|s| s == name) {
            outcomes.push(Outcome {
                scenario: name,
                status: "skip",
                measurement: String::new(),
                reason: Some("skipped with --skip".into()),
                duration_ms: 0,
                svg: String::new(),
            });
            continue;
        }
        let progress = format!("[{}/{}] {name}", i + 1, selected.len());
        if live {
            eprint!("{progress} ...");
            let _ = std::io::stderr().flush();
        }
        let started = Instant::now();
        let outcome = match scenario::run(name, &spec).await {
            Ok((finding, timeline)) => Outcome {
                scenario: name,
                status: if finding.passed { "pass" } else { "fail" },
                measurement: finding.measurement,
                reason: finding.reason,
                duration_ms: started.elapsed().as_millis() as u64,
                svg: timeline.svg(),
            },
            Err(err) => Outcome {
                scenario: name,
                status: "fail",
                measurement: String::new(),
                reason: Some(format!("{err:#}")),
                duration_ms: started.elapsed().as_millis() as u64,
                svg: String::new(),
            },
        };
        if live {
            eprintln!("\r{progress} {}", outcome.status);
        } else {
            eprintln!("{progress} {}", outcome.status);
        }
        outcomes.push(outcome);
    }
    let passed = outcomes.iter().all(|o| o.status != "fail");
    if let Some(path) = &args.html {
        std::fs::write(path, html(&spec, &outcomes, passed))
            .with_context(|| format!("writing the HTML report to {}", path.display()))?;
        eprintln!("lastcall check: wrote {}", path.display());
    }
    if args.json {
        let summary = Summary {
            schema: "lastcall-check/1",
            command: &spec.command,
            budget_ms: spec.budget.as_millis() as u64,
            drain_delay_ms: spec.drain_delay.as_millis() as u64,
            passed,
            scenarios: &outcomes,
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&summary).context("writing JSON")?
        );
    } else {
        print_table(&outcomes);
    }
    Ok(passed)
}

/// The spec from the arguments; for `--demo`, also the temporary database to remove afterwards.
fn spec(args: &CheckArgs) -> anyhow::Result<(Spec, Option<TempFile>)> {
    let signal = parse_signal(&args.signal)?;
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
        ready_path: args.ready_path.clone(),
        path: args.path.clone(),
        slow_path: args.slow_path.clone(),
        events_path: args.events_path.clone(),
        connections: args.connections,
    };
    Ok((spec, db))
}

fn parse_signal(name: &str) -> anyhow::Result<Signal> {
    let upper = name.trim().to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    full.parse().with_context(|| {
        format!("--signal {name:?} is not a signal name (SIGTERM, SIGINT, SIGQUIT, ...)")
    })
}

fn print_table(outcomes: &[Outcome]) {
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
    println!("\n{passed} passed, {failed} failed");
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

/// The self-contained HTML report: a section per scenario with its verdict and timeline.
fn html(spec: &Spec, outcomes: &[Outcome], passed: bool) -> String {
    let mut page = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>lastcall check</title><style>\
         body{font-family:system-ui,sans-serif;margin:2em;color:#222}\
         h1{font-size:1.4em}section{border-top:1px solid #ddd;padding:.6em 0}\
         .pass{color:#2a7}.fail{color:#d33}.skip{color:#888}code{background:#f4f4f4;padding:0 .3em}\
         </style></head><body>",
    );
    page.push_str(&format!(
        "<h1>lastcall check: <span class=\"{cls}\">{verdict}</span></h1><p><code>{cmd}</code> · budget {b} ms · drain delay {d} ms</p>",
        cls = if passed { "pass" } else { "fail" },
        verdict = if passed { "every scenario passed" } else { "some scenarios failed" },
        cmd = escape(&spec.command.join(" ")),
        b = spec.budget.as_millis(),
        d = spec.drain_delay.as_millis(),
    ));
    for o in outcomes {
        page.push_str(&format!(
            "<section><h2><span class=\"{status}\">{upper}</span> {name}</h2><p>{measurement}</p>{reason}{svg}</section>",
            status = o.status,
            upper = o.status.to_uppercase(),
            name = escape(o.scenario),
            measurement = escape(&o.measurement),
            reason = o
                .reason
                .as_deref()
                .map(|r| format!("<p class=\"fail\">{}</p>", escape(r)))
                .unwrap_or_default(),
            svg = o.svg,
        ));
    }
    page.push_str("</body></html>\n");
    page
}
