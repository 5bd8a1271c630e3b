//! `lastcall plan FILE.yaml`: checks a Kubernetes manifest's shutdown arithmetic.
//!
//! Reads a Deployment, StatefulSet, DaemonSet, ReplicaSet or Pod, the container's `LASTCALL_*`
//! environment and its probes, then checks what the platform will do against what lastcall
//! will do: the preStop hook, the drain delay and the budget fit in
//! `terminationGracePeriodSeconds` with a margin; the drain delay covers the readiness probe's
//! `periodSeconds x failureThreshold` plus endpoint propagation; the probes point at the right
//! paths; the report reaches the termination message. It prints the shutdown timeline as the
//! platform will run it and one finding per problem, with the value to set. Exit status: 0 when
//! there is no error, 1 with an error, 2 when the file cannot be read.

use std::fmt;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use lastcall::error::Setting;
use lastcall::{Budget, Phase};
use yaml_rust2::{Yaml, YamlLoader};

use crate::flags::PlanArgs;

const WORKLOADS: [&str; 5] = [
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "ReplicaSet",
    "Pod",
];

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Severity {
    Error,
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

/// What the manifest says, as far as the shutdown is concerned.
#[derive(Debug)]
struct Manifest {
    kind: String,
    name: String,
    container: String,
    grace: Duration,
    pre_stop: Duration,
    budget: Budget,
    /// `LASTCALL_REPORT_FILE`, if set.
    report_file: Option<String>,
    termination_message_path: String,
    readiness: Option<Probe>,
    liveness: Option<Probe>,
}

#[derive(Debug)]
struct Probe {
    /// `httpGet.path`, or `None` for an exec / tcpSocket / grpc probe.
    path: Option<String>,
    period: u64,
    failure_threshold: u64,
}

pub(crate) fn main(args: PlanArgs) -> ExitCode {
    let text = match std::fs::read_to_string(&args.file) {
        Ok(text) => text,
        Err(err) => {
            eprintln!("lastcall plan: cannot read {}: {err}", args.file.display());
            return ExitCode::from(2);
        }
    };
    let mut findings = Vec::new();
    let manifest = match read(&text, &args, &mut findings) {
        Ok(manifest) => manifest,
        Err(err) => {
            eprintln!("lastcall plan: {}: {err}", args.file.display());
            return ExitCode::from(2);
        }
    };
    check(&manifest, &args, &mut findings);
    print!("{}", render(&args.file, &manifest, &findings));
    if findings.iter().any(|f| f.severity == Severity::Error) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// Finds the workload and its container, and reads what the checks need. Settings it cannot
/// read become findings; only a file with nothing to check is an `Err`.
fn read(text: &str, args: &PlanArgs, findings: &mut Vec<Finding>) -> Result<Manifest, String> {
    let docs = YamlLoader::load_from_str(text).map_err(|e| format!("not valid YAML: {e}"))?;
    let doc = docs
        .iter()
        .find(|doc| doc["kind"].as_str().is_some_and(|k| WORKLOADS.contains(&k)))
        .ok_or_else(|| {
            format!(
                "no {} in the file; give the manifest of the workload that runs the service",
                WORKLOADS.join(", ")
            )
        })?;
    let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
    let name = doc["metadata"]["name"]
        .as_str()
        .unwrap_or("(unnamed)")
        .to_owned();
    let pod = if kind == "Pod" {
        &doc["spec"]
    } else {
        &doc["spec"]["template"]["spec"]
    };
    let containers = pod["containers"]
        .as_vec()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| format!("{kind} {name} has no containers"))?;
    let container = match &args.container {
        Some(wanted) => containers
            .iter()
            .find(|c| c["name"].as_str() == Some(wanted.as_str()))
            .ok_or_else(|| {
                let names: Vec<&str> = containers
                    .iter()
                    .filter_map(|c| c["name"].as_str())
                    .collect();
                format!(
                    "{kind} {name} has no container {wanted:?}; its containers are {}",
                    names.join(", ")
                )
            })?,
        None => &containers[0],
    };
    let container_name = container["name"].as_str().unwrap_or("(unnamed)").to_owned();

    let grace = match &pod["terminationGracePeriodSeconds"] {
        Yaml::BadValue => Duration::from_secs(30),
        value => match value.as_i64().and_then(|s| u64::try_from(s).ok()) {
            Some(secs) => Duration::from_secs(secs),
            None => {
                findings.push(Finding {
                    severity: Severity::Error,
                    check: "grace_period",
                    problem: format!(
                        "terminationGracePeriodSeconds is {value:?}, not a number of seconds"
                    ),
                    fix: "set terminationGracePeriodSeconds: 30".into(),
                });
                Duration::from_secs(30)
            }
        },
    };

    let mut budget = Budget::default();
    let mut report_file = None;
    for var in container["env"]
        .as_vec()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let Some(key) = var["name"].as_str() else {
            continue;
        };
        if !key.starts_with("LASTCALL_") {
            continue;
        }
        let Some(value) = var["value"].as_str() else {
            findings.push(Finding {
                severity: Severity::Warning,
                check: "env",
                problem: format!("{key} comes from valueFrom; the plan assumes lastcall's default"),
                fix: format!("give {key} a literal value to have it checked"),
            });
            continue;
        };
        // Names the service accepts without reading them as settings.
        if key == crate::demo::DB_ENV || args.allow_env.iter().any(|name| name == key) {
            continue;
        }
        // The variable names are the library's own (`Setting::env_name`).
        let Some(setting) = Setting::from_env_name(key) else {
            // The service refuses a `LASTCALL_*` name it does not know, unless the application
            // reads it itself and declared it with `Builder::allow_env` (`--allow-env` here);
            // a near miss of a real setting is almost surely a typo.
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
        };
        let setter: fn(Budget, Duration) -> Budget = match setting {
            Setting::ReportFile => {
                report_file = Some(value.to_owned());
                continue;
            }
            Setting::Budget => |b, d| Budget { total: d, ..b },
            Setting::DrainDelay => Budget::with_drain_delay,
            Setting::StopTimeout => Budget::with_stop_accepting,
            Setting::FlushTimeout => Budget::with_flush_telemetry,
            Setting::CloseTimeout => Budget::with_close_dependencies,
            // The signals and the repeated-interrupt policy do not change the timeline.
            _ => continue,
        };
        match humantime::parse_duration(value) {
            Ok(d) => budget = setter(budget, d),
            Err(e) => findings.push(Finding {
                severity: Severity::Error,
                check: "env",
                problem: format!(
                    "{key}={value:?} is not a duration ({e}); the service would refuse to start"
                ),
                fix: format!("set {key} to a duration such as 25s or 1500ms"),
            }),
        }
    }

    let pre_stop = pre_stop(&container["lifecycle"]["preStop"], findings);
    Ok(Manifest {
        kind,
        name,
        container: container_name,
        grace,
        pre_stop,
        budget,
        report_file,
        termination_message_path: container["terminationMessagePath"]
            .as_str()
            .unwrap_or("/dev/termination-log")
            .to_owned(),
        readiness: probe(&container["readinessProbe"]),
        liveness: probe(&container["livenessProbe"]),
    })
}

/// How long the preStop hook takes: a `sleep` action, or an exec of `sleep N`.
fn pre_stop(hook: &Yaml, findings: &mut Vec<Finding>) -> Duration {
    if hook.is_badvalue() || hook.is_null() {
        return Duration::ZERO;
    }
    if let Some(secs) = hook["sleep"]["seconds"].as_i64() {
        return Duration::from_secs(u64::try_from(secs).unwrap_or(0));
    }
    let words: Vec<&str> = hook["exec"]["command"]
        .as_vec()
        .map(|cmd| {
            cmd.iter()
                .filter_map(Yaml::as_str)
                .flat_map(str::split_whitespace)
                .collect()
        })
        .unwrap_or_default();
    if let Some(at) = words
        .iter()
        .position(|w| *w == "sleep" || w.ends_with("/sleep"))
    {
        if let Some(d) = words
            .get(at + 1)
            .and_then(|w| w.trim_end_matches(['"', '\'', ';']).parse::<f64>().ok())
            .and_then(|s| Duration::try_from_secs_f64(s).ok())
        {
            return d;
        }
    }
    findings.push(Finding {
        severity: Severity::Warning,
        check: "pre_stop",
        problem: "the preStop hook is not a sleep, so the plan cannot know how long it takes; it assumes 0s".into(),
        fix: "prefer no preStop hook and LASTCALL_DRAIN_DELAY, or a `sleep: {seconds: N}` action".into(),
    });
    Duration::ZERO
}

fn probe(probe: &Yaml) -> Option<Probe> {
    if probe.is_badvalue() || probe.is_null() {
        return None;
    }
    let number = |key: &str, default: u64| {
        probe[key]
            .as_i64()
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(default)
    };
    Some(Probe {
        path: probe["httpGet"]["path"].as_str().map(str::to_owned),
        period: number("periodSeconds", 10),
        failure_threshold: number("failureThreshold", 3),
    })
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

fn check(m: &Manifest, args: &PlanArgs, findings: &mut Vec<Finding>) {
    let b = &m.budget;
    if let Err(err) = b.plan() {
        findings.push(Finding {
            severity: Severity::Error,
            check: "budget",
            problem: format!("the service would refuse to start: {err}"),
            fix: "adjust the LASTCALL_* values as the message says".into(),
        });
    }

    // 1. preStop + budget + margin fit in the grace period.
    let used = m.pre_stop + b.total;
    let margin = m.grace.saturating_sub(used);
    if used > m.grace || margin < args.margin {
        let severity = if used > m.grace {
            Severity::Error
        } else {
            Severity::Warning
        };
        let grace_needed = ceil_secs(used + args.margin);
        let budget_fits = m.grace.saturating_sub(m.pre_stop + args.margin);
        let problem = if used > m.grace {
            format!(
                "preStop {} + LASTCALL_BUDGET {} = {} is longer than terminationGracePeriodSeconds {}: the kubelet sends SIGKILL before lastcall has finished",
                secs(m.pre_stop), secs(b.total), secs(used), m.grace.as_secs()
            )
        } else {
            format!(
                "only {} between the end of the budget and SIGKILL (at least {} wanted, for the exit itself and a loaded node)",
                secs(margin),
                secs(args.margin)
            )
        };
        findings.push(Finding {
            severity,
            check: "grace_period",
            problem,
            fix: format!(
                "set terminationGracePeriodSeconds: {grace_needed}, or LASTCALL_BUDGET={}",
                secs(budget_fits)
            ),
        });
    }

    // 2. The drain delay covers the readiness probe's detection time plus propagation.
    match &m.readiness {
        None => findings.push(Finding {
            severity: Severity::Warning,
            check: "readiness_probe",
            problem: "no readinessProbe: endpoints learn of the shutdown only from the pod's deletion".into(),
            fix: format!("add readinessProbe: {{httpGet: {{path: {}, port: ...}}, periodSeconds: 1, failureThreshold: 1}}", args.ready_path),
        }),
        Some(probe) => {
            let detect = Duration::from_secs(probe.period * probe.failure_threshold);
            let needed = detect + args.propagation;
            let have = m.pre_stop + b.drain_delay;
            if have < needed {
                let delay = needed.saturating_sub(m.pre_stop);
                findings.push(Finding {
                    severity: Severity::Error,
                    check: "drain_delay",
                    problem: format!(
                        "the listener closes {} after the deletion (preStop {} + LASTCALL_DRAIN_DELAY {}), but readiness fails only after periodSeconds {} x failureThreshold {} = {} plus {} of endpoint propagation = {}: requests still routed to the pod are refused",
                        secs(have), secs(m.pre_stop), secs(b.drain_delay), probe.period, probe.failure_threshold, secs(detect), secs(args.propagation), secs(needed)
                    ),
                    fix: format!(
                        "set LASTCALL_DRAIN_DELAY={} (and raise the budget and grace period to match), or probe faster: periodSeconds: 1, failureThreshold: 1",
                        secs(delay)
                    ),
                });
            }
            match probe.path.as_deref() {
                Some(path) if path == args.ready_path => {}
                Some(path) => findings.push(Finding {
                    severity: Severity::Error,
                    check: "readiness_probe",
                    problem: format!("readinessProbe checks {path}, which does not answer 503 when the shutdown starts"),
                    fix: format!("set readinessProbe.httpGet.path: {}", args.ready_path),
                }),
                None => findings.push(Finding {
                    severity: Severity::Warning,
                    check: "readiness_probe",
                    problem: "readinessProbe is not an httpGet: it will not see readiness flip at the signal".into(),
                    fix: format!("use readinessProbe.httpGet.path: {}", args.ready_path),
                }),
            }
        }
    }

    // 3. Liveness must not follow readiness, or the kubelet restarts a draining container.
    if let Some(path) = m.liveness.as_ref().and_then(|p| p.path.as_deref()) {
        if path == args.ready_path {
            findings.push(Finding {
                severity: Severity::Error,
                check: "liveness_probe",
                problem: format!("livenessProbe checks {path}, which answers 503 from the signal on: the kubelet would kill the container in the middle of its drain"),
                fix: format!("set livenessProbe.httpGet.path: {}", args.live_path),
            });
        } else if path != args.live_path {
            findings.push(Finding {
                severity: Severity::Warning,
                check: "liveness_probe",
                problem: format!("livenessProbe checks {path}, not lastcall's liveness route"),
                fix: format!("set livenessProbe.httpGet.path: {}", args.live_path),
            });
        }
    }

    // 4. The report reaches `kubectl describe pod`.
    match &m.report_file {
        None => findings.push(Finding {
            severity: Severity::Warning,
            check: "report_file",
            problem: "LASTCALL_REPORT_FILE is not set: how the last shutdown went dies with the container".into(),
            fix: format!("set LASTCALL_REPORT_FILE={}", m.termination_message_path),
        }),
        Some(file) if *file != m.termination_message_path => findings.push(Finding {
            severity: Severity::Warning,
            check: "report_file",
            problem: format!(
                "LASTCALL_REPORT_FILE is {file} but terminationMessagePath is {}: kubectl describe pod will not show the report",
                m.termination_message_path
            ),
            fix: format!("set LASTCALL_REPORT_FILE={}", m.termination_message_path),
        }),
        Some(_) => {}
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

fn render(file: &Path, m: &Manifest, findings: &[Finding]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let b = &m.budget;
    let _ = writeln!(
        out,
        "lastcall plan: {} ({} {}, container {})",
        file.display(),
        m.kind,
        m.name,
        m.container
    );
    let _ = writeln!(out, "\nshutdown timeline, from the pod's deletion:");
    // (offset from the deletion, event), sorted: SIGKILL may come before the budget ends.
    let mut events: Vec<(Duration, String)> = Vec::new();
    if m.pre_stop.is_zero() {
        events.push((Duration::ZERO, "no preStop hook: SIGTERM at once".into()));
    } else {
        events.push((
            Duration::ZERO,
            format!("preStop hook runs ({})", secs(m.pre_stop)),
        ));
    }
    events.push((
        m.pre_stop,
        format!(
            "SIGTERM: readiness answers 503, requests are still served (drain delay {})",
            secs(b.drain_delay)
        ),
    ));
    if let Ok(plan) = b.plan() {
        events.push((
            m.pre_stop + plan.window(Phase::StopAccepting).start,
            format!(
                "stop accepting: the listener closes, keep-alive ends (at most {})",
                secs(b.stop_accepting)
            ),
        ));
        events.push((
            m.pre_stop + plan.deadline(Phase::WaitForWork),
            "in-flight work must be done; what is left is cut and named in the report".into(),
        ));
        events.push((
            m.pre_stop + plan.deadline(Phase::FlushTelemetry),
            format!(
                "flush telemetry done (reserved {})",
                secs(b.flush_telemetry)
            ),
        ));
    }
    events.push((
        m.pre_stop + b.total,
        format!(
            "budget ends (LASTCALL_BUDGET {}): dependencies closed, the process has exited",
            secs(b.total)
        ),
    ));
    let margin = m.grace.saturating_sub(m.pre_stop + b.total);
    events.push((
        m.grace,
        format!(
            "SIGKILL (terminationGracePeriodSeconds {}; margin {})",
            m.grace.as_secs(),
            secs(margin)
        ),
    ));
    events.sort_by_key(|(offset, _)| *offset);
    for (offset, event) in events {
        let _ = writeln!(out, "{:>7}  {event}", secs(offset));
    }
    let errors = findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    let warnings = findings.len() - errors;
    if findings.is_empty() {
        let _ = writeln!(out, "\nno findings: the budget fits the platform");
    } else {
        let _ = writeln!(out, "\nfindings:");
        for f in findings {
            let _ = writeln!(
                out,
                "  {} [{}] {}\n      fix: {}",
                f.severity, f.check, f.problem, f.fix
            );
        }
    }
    let _ = writeln!(out, "\n{errors} errors, {warnings} warnings");
    out
}
