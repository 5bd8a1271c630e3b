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

mod compose;
mod ecs;
mod kubernetes;
mod systemd;

use std::fmt;
use std::io::{Read as _, Write as _};
use std::process::ExitCode;
use std::time::Duration;

use lastcall::error::{ConfigError, Setting};
use lastcall::{Budget, Controller, Phase, Signal};
use yaml_rust2::{Yaml, YamlLoader};

use crate::flags::PlanArgs;

/// The version of the `--json` output; bumped when a field changes meaning or goes away.
const SCHEMA: &str = "lastcall-plan/1";

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
    /// `LASTCALL_REPORT_FILE`, if set.
    report_file: Option<String>,
    /// The service refuses `LASTCALL_SIGNALS` (already a finding): no stop-signal rule then.
    signals_refused: bool,
    /// The reserves as set (`None`: scaled to the budget), to try another budget with.
    reserves: [Option<Duration>; 3],
}

/// The platform's deadline for the service and how to move it, for [`check_kill_deadline`].
struct KillDeadline<'a> {
    /// Time spent before the stop signal that counts against the deadline (a preStop hook).
    before: Option<(&'a str, Duration)>,
    /// The setting and its value as written: `terminationGracePeriodSeconds 30`.
    setting: String,
    /// When the platform kills the service, counted from the same origin as `before`.
    at: Duration,
    /// Who sends SIGKILL: `the kubelet`, `Docker`.
    killer: &'a str,
    /// The fix that moves the deadline to the given number of seconds.
    set: &'a dyn Fn(u64) -> String,
    /// Another remedy, appended to the fix when not empty.
    also: &'a str,
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

impl Service {
    /// Resolves lastcall's settings from the service's environment as the library would: the
    /// library's builder decides what the service refuses, and the budget is resolved by
    /// [`Budget::from_settings`], so unset reserves scale with the budget as they do at run
    /// time. Variables it cannot read become findings.
    fn from_env(vars: &[Var], args: &PlanArgs, findings: &mut Vec<Finding>) -> Service {
        let mut literal: Vec<(&str, &str)> = Vec::new();
        // A near miss of the prefix (`LASTCAL_BUDGET`, `lastcall_budget`) is not read: the
        // service warns and runs with the default, as the plan does.
        for var in vars.iter().filter(|v| !v.name.starts_with("LASTCALL_")) {
            if let Some(meant) = Setting::prefix_near_miss(&var.name) {
                findings.push(Finding {
                    severity: Severity::Warning,
                    check: "env",
                    problem: format!(
                        "{} is not read (did you mean {}? names are case-sensitive); the service warns and uses the default",
                        var.name,
                        meant.env_name()
                    ),
                    fix: format!("rename it to {}", meant.env_name()),
                });
            }
        }
        for var in vars.iter().filter(|v| v.name.starts_with("LASTCALL_")) {
            let key = var.name.as_str();
            let value = match &var.value {
                Ok(value) => value.as_str(),
                Err(why) => {
                    findings.push(Finding {
                        severity: Severity::Warning,
                        check: "env",
                        problem: format!("{key} {why}; the plan assumes lastcall's default"),
                        // A name with a space is a note for a source of variables the plan
                        // cannot open (`envFrom`, `env_file`, `EnvironmentFile=`).
                        fix: if key.contains(' ') {
                            "set the LASTCALL_* variables in the file itself to have them checked"
                                .to_owned()
                        } else {
                            format!("give {key} a literal value to have it checked")
                        },
                    });
                    continue;
                }
            };
            // Names the service accepts without reading them as settings.
            if key == crate::demo::DB_ENV || args.allow_env.iter().any(|name| name == key) {
                continue;
            }
            if Setting::from_env_name(key).is_none() {
                // As the builder does: a near miss of a real setting is almost surely a typo,
                // which the service refuses; any other name it ignores with a warning, unless
                // the application declared it with `Builder::allow_env` (`--allow-env` here).
                findings.push(match Setting::closest(key) {
                    Some(meant) => Finding {
                        severity: Severity::Error,
                        check: "env",
                        problem: format!(
                            "{key} is not a lastcall setting (did you mean {}?); the service would refuse to start",
                            meant.env_name()
                        ),
                        fix: format!("rename it to {}", meant.env_name()),
                    },
                    None => Finding {
                        severity: Severity::Warning,
                        check: "env",
                        problem: format!(
                            "{key} is not a lastcall setting; the service ignores it with a warning"
                        ),
                        fix: format!(
                            "remove it if nothing reads it; if the application does, declare it with Builder::allow_env(\"{key}\") and pass --allow-env {key}"
                        ),
                    },
                });
                continue;
            }
            literal.push((key, value));
        }

        let refused = refusal(&literal);
        let signals_refused = refused.as_ref().is_some_and(|f| f.check == "signals");
        findings.extend(refused);

        let get = |setting: Setting| {
            literal
                .iter()
                .rev()
                .find(|(k, _)| *k == setting.env_name())
                .map(|(_, v)| *v)
        };
        // A value the builder refuses was reported above; the timeline then shows the default.
        let duration =
            |setting: Setting| get(setting).and_then(|v| humantime::parse_duration(v.trim()).ok());
        let defaults = Budget::default();
        let reserves = [
            duration(Setting::StopTimeout),
            duration(Setting::FlushTimeout),
            duration(Setting::CloseTimeout),
        ];
        let budget = Budget::from_settings(
            duration(Setting::Budget).unwrap_or(defaults.total),
            duration(Setting::DrainDelay).unwrap_or(defaults.drain_delay),
            reserves[0],
            reserves[1],
            reserves[2],
        );
        let signals = get(Setting::Signals)
            .and_then(|v| {
                v.split(|c: char| c == ',' || c.is_whitespace())
                    .filter(|s| !s.is_empty())
                    .map(str::parse::<Signal>)
                    .collect::<Result<Vec<_>, _>>()
                    .ok()
            })
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| Signal::DEFAULT.to_vec());
        Service {
            budget,
            signals,
            report_file: get(Setting::ReportFile).map(str::to_owned),
            signals_refused,
            reserves,
        }
    }

    /// This service's settings with another total, if the service would accept it.
    fn with_total(&self, total: Duration) -> Option<Budget> {
        let [stop, flush, close] = self.reserves;
        let budget = Budget::from_settings(total, self.budget.drain_delay, stop, flush, close);
        budget.plan().is_ok().then_some(budget)
    }

    fn signal_list(&self) -> String {
        self.signals
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// What the service would say at startup about these settings: the library's own builder
/// checks them (outside a tokio runtime it stops at [`ConfigError::NoRuntime`], after every
/// check of the settings and before installing any signal handler).
fn refusal(literal: &[(&str, &str)]) -> Option<Finding> {
    // The report file is left out: the builder opens it, and this machine is not the service's.
    let vars: Vec<(String, String)> = literal
        .iter()
        .filter(|(k, _)| *k != Setting::ReportFile.env_name())
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let err = match Controller::builder().env_vars(vars).watchdog(false).build() {
        Err(ConfigError::NoRuntime) => return None,
        Err(err) => err,
        // Only inside a runtime, which plan never starts; nothing to refuse then.
        Ok(_) => return None,
    };
    let (check, fix) = match &err {
        ConfigError::Unparsable { setting, .. } => (
            "env",
            format!("set {} to a duration such as 25s or 1500ms", setting.env_name()),
        ),
        ConfigError::Invalid { setting, .. } => {
            ("env", format!("set {} to a value the message lists", setting.env_name()))
        }
        ConfigError::NoSignals { .. } | ConfigError::SigtermNotHandled { .. } => (
            "signals",
            format!("set {}=SIGTERM,SIGINT", Setting::Signals.env_name()),
        ),
        ConfigError::ReservesExceedBudget { reserved, .. } => (
            "budget",
            format!(
                "set LASTCALL_BUDGET above {} (and the platform's grace to match), or lower LASTCALL_DRAIN_DELAY and the reserves",
                secs(*reserved)
            ),
        ),
        err => (
            "budget",
            match err.setting() {
                Some(setting) => format!("change {} as the message says", setting.env_name()),
                None => "change the LASTCALL_* values as the message says".into(),
            },
        ),
    };
    Some(Finding {
        severity: Severity::Error,
        check,
        problem: format!("the service would refuse to start: {err}"),
        fix,
    })
}

/// lastcall's own events once the stop signal arrives at `signal_at`.
fn service_events(signal_at: Duration, signal: &str, service: &Service) -> Vec<Event> {
    let b = &service.budget;
    let mut events = vec![Event {
        at: signal_at,
        what: format!(
            "{signal}: readiness answers 503, requests are still served (drain delay {})",
            secs(b.drain_delay)
        ),
    }];
    if let Ok(plan) = b.plan() {
        events.push(Event {
            at: signal_at + plan.window(Phase::StopAccepting).start,
            what: format!(
                "stop accepting: the listener closes, keep-alive ends (at most {})",
                secs(b.stop_accepting)
            ),
        });
        events.push(Event {
            at: signal_at + plan.deadline(Phase::WaitForWork),
            what: "in-flight work must be done; what is left is cut and named in the report".into(),
        });
        events.push(Event {
            at: signal_at + plan.deadline(Phase::FlushTelemetry),
            what: format!(
                "flush telemetry done (reserved {})",
                secs(b.flush_telemetry)
            ),
        });
    }
    events.push(Event {
        at: signal_at + b.total,
        what: format!(
            "budget ends (LASTCALL_BUDGET {}): dependencies closed, the process has exited",
            secs(b.total)
        ),
    });
    events
}

/// The budget, and what runs before the signal, fit in the platform's deadline with
/// `margin` to spare: past the deadline is an error (SIGKILL cuts the shutdown), a thin margin
/// a warning (the exit itself and a loaded host need a little time).
fn check_kill_deadline(
    d: &KillDeadline<'_>,
    service: &Service,
    margin: Duration,
    findings: &mut Vec<Finding>,
) {
    let total = service.budget.total;
    let before = d.before.map_or(Duration::ZERO, |(_, t)| t);
    let used = before + total;
    let left = d.at.saturating_sub(used);
    if used <= d.at && left >= margin {
        return;
    }
    let used_text = match d.before {
        Some((what, t)) => format!(
            "{what} {} + LASTCALL_BUDGET {} = {}",
            secs(t),
            secs(total),
            secs(used)
        ),
        None => format!("LASTCALL_BUDGET {}", secs(total)),
    };
    let (severity, problem) = if used > d.at {
        (
            Severity::Error,
            format!(
                "{used_text} is longer than {}: {} sends SIGKILL before lastcall has finished",
                d.setting, d.killer
            ),
        )
    } else {
        (
            Severity::Warning,
            format!(
                "only {} between the end of the budget and SIGKILL (at least {} wanted, for the exit itself and a loaded host)",
                secs(left),
                secs(margin)
            ),
        )
    };
    let mut fix = (d.set)(ceil_secs(used + margin));
    // The budget that fits, offered only if the service would accept it with its drain delay
    // and reserves (whole seconds, or tenths under ten seconds, rounded down).
    let fits = d.at.saturating_sub(before + margin);
    let fits = if fits >= Duration::from_secs(10) {
        Duration::from_secs(fits.as_secs())
    } else {
        Duration::from_secs(fits.as_secs())
            + Duration::from_millis(u64::from(fits.subsec_millis() / 100 * 100))
    };
    if service.with_total(fits).is_some() {
        fix.push_str(&format!(", or LASTCALL_BUDGET={}", secs(fits)));
    }
    if !d.also.is_empty() {
        fix.push_str("; ");
        fix.push_str(d.also);
    }
    findings.push(Finding {
        severity,
        check: "grace_period",
        problem,
        fix,
    });
}

/// A load balancer's deregistration delay lets the longest request finish: when it ends the
/// balancer stops waiting for the target's open requests and cuts them. The longest request
/// is `--longest-request`, else `wait`: the longest lastcall lets a request run.
fn check_deregistration(
    delay: Duration,
    wait: Duration,
    args: &PlanArgs,
    findings: &mut Vec<Finding>,
) {
    let (longest, source) = match args.longest_request {
        Some(longest) => (longest, "--longest-request"),
        None => (
            wait,
            "the budget's wait-for-work deadline, the longest lastcall lets a request run; pass --longest-request for yours",
        ),
    };
    if delay < longest {
        findings.push(Finding {
            severity: Severity::Error,
            check: "deregistration_delay",
            problem: format!(
                "the deregistration delay {} is shorter than the longest request {} ({source}): the load balancer gives up on requests still open when the delay ends",
                secs(delay),
                secs(longest)
            ),
            fix: format!(
                "set the target group's deregistration_delay.timeout_seconds to {}",
                ceil_secs(longest)
            ),
        });
    }
}

/// The platform's stop signal is one the service listens for. Any other signal either ends
/// the process at once (its default action: no drain at all) or is ignored until SIGKILL;
/// both are errors.
fn check_stop_signal(
    written: &str,
    setting: &str,
    set: &dyn Fn(&str) -> String,
    service: &Service,
    findings: &mut Vec<Finding>,
) {
    if service.signals_refused {
        return;
    }
    let name = signal_name(written);
    let known = name.parse::<Signal>().ok();
    if known.is_some_and(|s| service.signals.contains(&s)) {
        return;
    }
    // The signals whose default action is to do nothing: the process carries on until SIGKILL.
    let ignored = ["SIGCHLD", "SIGCONT", "SIGURG", "SIGWINCH"].contains(&name.as_str());
    let effect = if ignored {
        "the process ignores it and is killed at the deadline, without a drain"
    } else {
        "its default action ends the process at once, without a drain"
    };
    let preferred = if service.signals.contains(&Signal::Terminate) {
        "SIGTERM"
    } else {
        service.signals[0].as_str()
    };
    let fix = match known {
        Some(signal) => format!(
            "{}, or LASTCALL_SIGNALS={},{}",
            set(preferred),
            service.signal_list(),
            signal.as_str()
        ),
        None => set(preferred),
    };
    findings.push(Finding {
        severity: Severity::Error,
        check: "stop_signal",
        problem: format!(
            "{setting} is {written}, which lastcall does not listen for (LASTCALL_SIGNALS {}): {effect}",
            service.signal_list()
        ),
        fix,
    });
}

/// `TERM`, `sigterm`, `15` → `SIGTERM`.
fn signal_name(written: &str) -> String {
    let upper = written.trim().to_ascii_uppercase();
    let by_number = match upper.as_str() {
        "1" => Some("SIGHUP"),
        "2" => Some("SIGINT"),
        "3" => Some("SIGQUIT"),
        "9" => Some("SIGKILL"),
        "10" => Some("SIGUSR1"),
        "12" => Some("SIGUSR2"),
        "15" => Some("SIGTERM"),
        _ => None,
    };
    match by_number {
        Some(name) => name.to_owned(),
        None if upper.starts_with("SIG") => upper,
        None => format!("SIG{upper}"),
    }
}

/// A service the file may run lastcall in, for [`choose`].
struct Candidate<'a> {
    name: String,
    item: &'a Yaml,
    /// It has `LASTCALL_*` variables.
    carries: bool,
    /// A mesh proxy, never the application.
    proxy: bool,
}

/// Picks the service to check: the one `wanted` names, else the one carrying `LASTCALL_*`
/// variables, else the only one that is not a mesh proxy; any ambiguity is refused with the
/// list to choose from and the flag that chooses.
fn choose<'a>(
    what: &str,
    owner: &str,
    all: &[Candidate<'a>],
    wanted: Option<&str>,
) -> Result<(String, &'a Yaml), Refusal> {
    let names = |items: &[&Candidate<'a>]| {
        items
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let every: Vec<&Candidate<'a>> = all.iter().collect();
    if every.is_empty() {
        return Err(Refusal(format!("{owner} has no {what}s")));
    }
    if let Some(wanted) = wanted {
        return every
            .iter()
            .find(|c| c.name == wanted)
            .map(|c| (c.name.clone(), c.item))
            .ok_or_else(|| {
                Refusal(format!(
                    "{owner} has no {what} {wanted:?}; its {what}s are {}",
                    names(&every)
                ))
            });
    }
    let carrying: Vec<&Candidate<'a>> = every.iter().copied().filter(|c| c.carries).collect();
    let apps: Vec<&Candidate<'a>> = every.iter().copied().filter(|c| !c.proxy).collect();
    match (carrying.as_slice(), apps.as_slice()) {
        ([one], _) | ([], [one]) => Ok((one.name.clone(), one.item)),
        ([], _) => Err(Refusal(format!(
            "no {what} of {owner} carries LASTCALL_* variables, so the one that runs lastcall is ambiguous: its {what}s are {}; choose it with --container NAME",
            names(&every)
        ))),
        (several, _) => Err(Refusal(format!(
            "several {what}s of {owner} carry LASTCALL_* variables: {}; choose the one that runs lastcall with --container NAME",
            names(several)
        ))),
    }
}

/// A command that runs the service through `sh -c` without `exec`: the shell is PID 1 and
/// does not pass the stop signal on, so the service is killed at the deadline, never drained.
fn check_shell(setting: &str, command: &[String], findings: &mut Vec<Finding>) {
    let Some(at) = command
        .iter()
        .position(|w| w == "-c" || w == "-ec" || w == "-ce")
    else {
        return;
    };
    let shell = at > 0
        && command[..at]
            .iter()
            .any(|w| w.ends_with("/sh") || w.ends_with("/bash") || w == "sh" || w == "bash");
    let script = command[at + 1..].join(" ");
    if !shell
        || script.trim_start().starts_with("exec ")
        || script.contains("; exec ")
        || script.contains("&& exec ")
    {
        return;
    }
    findings.push(Finding {
        severity: Severity::Warning,
        check: "stop_signal",
        problem: format!(
            "{setting} runs the service through `{} -c` without exec: the shell gets the stop signal, and most shells do not pass it on, so the service is killed at the deadline without a drain",
            command[at - 1]
        ),
        fix: format!(
            "start the script's last command with exec (`{}`), or use the exec form without a shell",
            with_exec(script.trim())
        ),
    });
}

/// The script with `exec` before its last command: `migrate && exec lastcall demo`.
fn with_exec(script: &str) -> String {
    let cut = script
        .rfind("&&")
        .map(|i| i + 2)
        .max(script.rfind(';').map(|i| i + 1))
        .unwrap_or(0);
    let (head, last) = script.split_at(cut);
    let space = if head.is_empty() { "" } else { " " };
    format!("{head}{space}exec {}", last.trim_start())
}

/// Splits words the shell's way, as far as quotes go: `A=1 "B=two words" 'C=3'`, or
/// `sh -c "exec lastcall demo"`.
fn split_quoted(value: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quote = None;
    for c in value.chars() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, c) if c.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            (_, c) => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

/// Converts a JSON document to the YAML tree the readers walk.
fn from_json(value: &serde_json::Value) -> Yaml {
    use serde_json::Value;
    match value {
        Value::Null => Yaml::Null,
        Value::Bool(b) => Yaml::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Yaml::Integer(i),
            None => Yaml::Real(n.to_string()),
        },
        Value::String(s) => Yaml::String(s.clone()),
        Value::Array(items) => Yaml::Array(items.iter().map(from_json).collect()),
        Value::Object(map) => Yaml::Hash(
            map.iter()
                .map(|(k, v)| (Yaml::String(k.clone()), from_json(v)))
                .collect(),
        ),
    }
}

/// A YAML scalar as text, whatever its YAML type (`8080`, `"8080"`, `true`).
fn scalar(value: &Yaml) -> Option<String> {
    match value {
        Yaml::String(s) | Yaml::Real(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0}s")
    } else {
        format!("{s:.1}s")
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

impl Checked {
    fn counts(&self) -> (usize, usize) {
        let errors = self
            .findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
            .count();
        (errors, self.findings.len() - errors)
    }

    /// The timeline in order; events at the same moment keep the order they were added in.
    fn sorted(&self) -> Vec<&Event> {
        let mut events: Vec<&Event> = self.timeline.iter().collect();
        events.sort_by_key(|e| e.at);
        events
    }
}

fn render(file: &str, c: &Checked) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "lastcall plan: {file} ({})", c.subject);
    let _ = writeln!(out, "\nshutdown timeline, from {}:", c.origin);
    for event in c.sorted() {
        let _ = writeln!(out, "{:>7}  {}", secs(event.at), event.what);
    }
    if c.findings.is_empty() {
        let _ = writeln!(out, "\nno findings: the budget fits the platform");
    } else {
        let _ = writeln!(out, "\nfindings:");
        for f in &c.findings {
            let _ = writeln!(
                out,
                "  {} [{}] {}\n      fix: {}",
                f.severity, f.check, f.problem, f.fix
            );
        }
    }
    let (errors, warnings) = c.counts();
    let _ = writeln!(out, "\n{errors} errors, {warnings} warnings");
    out
}

/// The `--json` document (schema `lastcall-plan/1`, documented in the README).
fn json(file: &str, c: &Checked) -> serde_json::Value {
    let (errors, warnings) = c.counts();
    let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    serde_json::json!({
        "schema": SCHEMA,
        "file": file,
        "platform": c.platform,
        "subject": c.subject,
        "origin": c.origin,
        "budget": c.service.budget,
        "signals": c.service.signals,
        "timeline": c.sorted().iter().map(|e| serde_json::json!({
            "at_ms": millis(e.at),
            "event": e.what,
        })).collect::<Vec<_>>(),
        "findings": c.findings.iter().map(|f| serde_json::json!({
            "severity": f.severity.to_string(),
            "check": f.check,
            "problem": f.problem,
            "fix": f.fix,
        })).collect::<Vec<_>>(),
        "errors": errors,
        "warnings": warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_split_the_shells_way_as_far_as_quotes_go() {
        assert_eq!(
            split_quoted(r#"A=1 "B=two words" 'C=3'"#),
            ["A=1", "B=two words", "C=3"]
        );
        assert_eq!(
            split_quoted(r#"sh -c "exec lastcall demo""#),
            ["sh", "-c", "exec lastcall demo"]
        );
    }

    #[test]
    fn exec_goes_before_the_scripts_last_command() {
        assert_eq!(with_exec("lastcall demo"), "exec lastcall demo");
        assert_eq!(
            with_exec("./migrate && lastcall demo"),
            "./migrate && exec lastcall demo"
        );
        assert_eq!(with_exec("a; b && c; d"), "a; b && c; exec d");
    }

    #[test]
    fn signal_names_are_read_in_every_spelling() {
        for written in ["SIGTERM", "TERM", "sigterm", "15"] {
            assert_eq!(signal_name(written), "SIGTERM");
        }
        assert_eq!(signal_name("USR1"), "SIGUSR1");
    }
}
