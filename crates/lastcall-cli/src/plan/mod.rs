//! `lastcall plan FILE`: checks a deployment file's shutdown arithmetic against lastcall's budget.
//!
//! The platform is recognised from the file's content: a Kubernetes manifest
//! ([`kubernetes`]), a Docker Compose file ([`compose`]), a systemd unit ([`systemd`]) or an
//! ECS task definition ([`ecs`]). Each reader finds the service that runs lastcall (the one
//! carrying `LASTCALL_*` variables), resolves its budget the way the library does
//! ([`Service::from_env`]), and returns a [`Checked`]: the shutdown timeline as the platform
//! will run it and one [`Finding`] per problem, with the setting and the value to set. Exit
//! status: 0 when there is no error, 1 with an error, 2 when the file cannot be read or the
//! service cannot be chosen.

mod checks;
mod choice;
mod compose;
mod ecs;
mod kubernetes;
mod render;
mod service;
mod systemd;
mod value;

use std::io::{Read as _, Write as _};
use std::process::ExitCode;
use std::time::Duration;

use lastcall::{Budget, Signal};
use yaml_rust2::YamlLoader;

use crate::flags::PlanArgs;
use render::{json, render};
use value::from_json;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Severity {
    /// The shutdown will fail in a way a user notices (exit status 1).
    Error,
    /// Worth a look, but not wrong in every deployment.
    Warning,
}

/// One problem, and the fix.
#[derive(Debug)]
struct Finding {
    severity: Severity,
    check: &'static str,
    problem: String,
    fix: String,
}

/// One moment of the shutdown, counted from the platform's first move (the pod's deletion,
/// `docker compose stop`, `systemctl stop`, the ECS task stop).
#[derive(Debug)]
struct Event {
    at: Duration,
    what: String,
}

/// What a platform reader found: the service checked, its timeline and its findings.
#[derive(Debug)]
struct Checked {
    platform: &'static str,
    /// The service checked, as the platform names it: `Deployment web, container app`.
    subject: String,
    /// What the timeline counts from: `the pod's deletion`.
    origin: &'static str,
    service: Service,
    timeline: Vec<Event>,
    findings: Vec<Finding>,
}

/// Why the plan could not be made (exit status 2): the message names the input and the fix.
#[derive(Debug)]
struct Refusal(String);

/// An environment variable as the file gives it: a literal value, or why there is none
/// (`valueFrom`, a secret, an interpolation).
#[derive(Debug)]
struct Var {
    name: String,
    value: Result<String, String>,
}

/// lastcall's side of the shutdown, resolved from the service's `LASTCALL_*` variables.
#[derive(Debug)]
struct Service {
    budget: Budget,
    signals: Vec<Signal>,
    /// `LASTCALL_RESTART_SIGNAL` (`SIGHUP` unless set; `None`: `off`), for a service built with
    /// the `restart` feature.
    restart_signal: Option<Signal>,
    /// `LASTCALL_REPORT_FILE`, if set.
    report_file: Option<String>,
    /// The service refuses `LASTCALL_SIGNALS` (already a finding): no stop-signal rule then.
    signals_refused: bool,
    /// The reserves as set (`None`: scaled to the budget), to try another budget with.
    reserves: [Option<Duration>; 3],
}

pub(crate) fn main(args: PlanArgs) -> ExitCode {
    let name = if args.file.as_os_str() == "-" {
        "standard input".to_owned()
    } else {
        args.file.display().to_string()
    };
    let text = if args.file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).map(|_| text)
    } else {
        std::fs::read_to_string(&args.file)
    };
    let text = match text {
        Ok(text) => text,
        Err(err) => {
            eprintln!("lastcall plan: cannot read {name}: {err}");
            return ExitCode::from(2);
        }
    };
    let checked = match plan(&text, &args) {
        Ok(checked) => checked,
        Err(Refusal(why)) => {
            eprintln!("lastcall plan: {name}: {why}");
            return ExitCode::from(2);
        }
    };
    let out = if args.json {
        let mut text = serde_json::to_string_pretty(&json(&name, &checked)).unwrap_or_default();
        text.push('\n');
        text
    } else {
        render(&name, &checked)
    };
    // A closed pipe (`| head`) is the reader's choice, not an error of the plan's.
    let _ = std::io::stdout().write_all(out.as_bytes());
    if checked
        .findings
        .iter()
        .any(|f| f.severity == Severity::Error)
    {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// Recognises the platform from the content and hands the file to its reader.
fn plan(text: &str, args: &PlanArgs) -> Result<Checked, Refusal> {
    if systemd::is_unit(text) {
        return systemd::plan(text, args);
    }
    let docs = if text.trim_start().starts_with(['{', '[']) {
        // JSON (an ECS task definition, `kubectl get -o json`), read by serde_json: it is
        // YAML too, but yaml-rust2 refuses the tabs JSON tools indent with.
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| Refusal(format!("not valid JSON: {e}")))?;
        vec![from_json(&value)]
    } else {
        YamlLoader::load_from_str(text).map_err(|e| Refusal(format!("not valid YAML: {e}")))?
    };
    if let Some(task) = docs.iter().find_map(ecs::task_definition) {
        return ecs::plan(task, args);
    }
    if docs
        .iter()
        .any(|d| d["kind"].is_badvalue() && !d["services"].is_badvalue())
    {
        return compose::plan(&docs, args);
    }
    if docs.iter().any(|d| !d["kind"].is_badvalue()) {
        return kubernetes::plan(&docs, args);
    }
    Err(Refusal(
        "not a deployment file lastcall plan knows: no Kubernetes workload (kind: Deployment, ...), \
         no Compose services:, no systemd [Service] section, no ECS containerDefinitions"
            .into(),
    ))
}
