//! Docker Compose: a service's `stop_grace_period`, `stop_signal` and `healthcheck`.
//!
//! `docker compose stop` (and `down`, and a recreate on `up`) sends the service's
//! `stop_signal` (default SIGTERM), then SIGKILL after `stop_grace_period` (default 10 s).
//! Compose puts no balancer in front of the service, so there is no rotation to drain and no
//! drain-delay rule.

use std::time::Duration;

use yaml_rust2::Yaml;

use super::checks::{check_kill_deadline, check_shell, check_stop_signal, KillDeadline};
use super::choice::{choose, Candidate};
use super::service::service_events;
use super::value::{scalar, secs, split_quoted};
use super::{Checked, Event, Finding, Refusal, Service, Severity, Var};
use crate::flags::PlanArgs;

/// Docker's grace when `stop_grace_period` is not set.
const DEFAULT_GRACE: Duration = Duration::from_secs(10);

pub(super) fn plan(docs: &[Yaml], args: &PlanArgs) -> Result<Checked, Refusal> {
    let doc = docs
        .iter()
        .find(|d| !d["services"].is_badvalue())
        .ok_or_else(|| Refusal("no services: in the Compose file".into()))?;
    let items: Vec<Candidate<'_>> = doc["services"]
        .as_hash()
        .into_iter()
        .flatten()
        .map(|(name, service)| {
            let name = scalar(name).unwrap_or_default();
            let carries = env(service)
                .iter()
                .any(|v| v.name.starts_with("LASTCALL_") && !v.name.contains(' '));
            Candidate {
                name,
                item: service,
                carries,
                proxy: false,
            }
        })
        .collect();
    let (name, service) = choose(
        "service",
        "the Compose file",
        &items,
        args.container.as_deref(),
    )?;
    let mut findings = Vec::new();

    let grace = match scalar(&service["stop_grace_period"]) {
        None => DEFAULT_GRACE,
        Some(text) => match compose_duration(&text) {
            Some(d) => d,
            None => {
                findings.push(Finding {
                    severity: Severity::Error,
                    check: "grace_period",
                    problem: format!("stop_grace_period is {text:?}, not a duration"),
                    fix: "set stop_grace_period: 30s".into(),
                });
                DEFAULT_GRACE
            }
        },
    };
    let lastcall = Service::from_env(&env(service), args, &mut findings);
    let stop_signal = scalar(&service["stop_signal"]).unwrap_or_else(|| "SIGTERM".into());

    let mut timeline = vec![Event {
        at: Duration::ZERO,
        what: format!("docker compose stop: {stop_signal} to the container's main process"),
    }];
    timeline.extend(service_events(Duration::ZERO, &stop_signal, &lastcall));
    timeline.push(Event {
        at: grace,
        what: format!(
            "SIGKILL (stop_grace_period {}; margin {})",
            secs(grace),
            secs(grace.saturating_sub(lastcall.budget.total))
        ),
    });

    check_kill_deadline(
        &KillDeadline {
            before: None,
            setting: format!("stop_grace_period {}", secs(grace)),
            at: grace,
            killer: "Docker",
            set: &|s| format!("set stop_grace_period: {s}s"),
            also: "",
        },
        &lastcall,
        args.margin,
        &mut findings,
    );
    check_stop_signal(
        &stop_signal,
        "stop_signal",
        &|s| format!("set stop_signal: {s}"),
        &lastcall,
        &mut findings,
    );
    for key in ["entrypoint", "command"] {
        check_shell(key, &words(&service[key]), &mut findings);
    }
    check_healthcheck(&service["healthcheck"], args, &mut findings);

    Ok(Checked {
        platform: "compose",
        subject: format!("Compose service {name}"),
        origin: "docker compose stop",
        service: lastcall,
        timeline,
        findings,
    })
}

/// A healthcheck is how Compose (`depends_on: condition: service_healthy`, `docker compose
/// ps`) and Swarm learn the service's state. None at all is a warning; one that checks the
/// readiness route is right, as Compose restarts nothing that turns unhealthy.
fn check_healthcheck(check: &Yaml, args: &PlanArgs, findings: &mut Vec<Finding>) {
    let test = words(&check["test"]);
    let disabled = check["disable"].as_bool() == Some(true)
        || test.first().map(String::as_str) == Some("NONE");
    if check.is_badvalue() || disabled {
        findings.push(Finding {
            severity: Severity::Warning,
            check: "healthcheck",
            problem: "no healthcheck: depends_on: condition: service_healthy and docker compose ps cannot see when the service is ready or draining".into(),
            fix: format!(
                "add healthcheck: {{test: [\"CMD\", \"curl\", \"-fsS\", \"http://127.0.0.1:PORT{}\"], interval: 5s}}",
                args.ready_path
            ),
        });
    }
}

/// A Compose command or healthcheck test as words: the list form, or a string split the
/// shell's way, as Compose does.
fn words(value: &Yaml) -> Vec<String> {
    match value {
        Yaml::Array(items) => items.iter().filter_map(scalar).collect(),
        other => scalar(other).map(|s| split_quoted(&s)).unwrap_or_default(),
    }
}

/// The service's environment: a map (`KEY: value`, or `KEY:` to take it from the shell) or a
/// list (`KEY=value`, or `KEY`). `${NAME:-default}` is read as its default.
fn env(service: &Yaml) -> Vec<Var> {
    let mut vars = Vec::new();
    match &service["environment"] {
        Yaml::Hash(map) => {
            for (key, value) in map {
                let Some(name) = scalar(key) else { continue };
                vars.push(Var {
                    value: match scalar(value) {
                        Some(v) => interpolated(&v),
                        None => {
                            Err("takes its value from the shell that runs docker compose".into())
                        }
                    },
                    name,
                });
            }
        }
        Yaml::Array(items) => {
            for item in items.iter().filter_map(scalar) {
                vars.push(match item.split_once('=') {
                    Some((name, value)) => Var {
                        name: name.to_owned(),
                        value: interpolated(value),
                    },
                    None => Var {
                        name: item,
                        value: Err("takes its value from the shell that runs docker compose".into()),
                    },
                });
            }
        }
        _ => {}
    }
    if !service["env_file"].is_badvalue() {
        vars.push(Var {
            name: "LASTCALL_* in env_file".into(),
            value: Err("may be set in the env_file, which the plan does not read".into()),
        });
    }
    vars
}

/// A value with `${...}`: its default when it has one (`${BUDGET:-25s}`), else unknown.
fn interpolated(value: &str) -> Result<String, String> {
    let Some(start) = value.find("${") else {
        return Ok(value.to_owned());
    };
    let inner = value[start + 2..].split('}').next().unwrap_or_default();
    match inner.split_once(":-").or_else(|| inner.split_once('-')) {
        Some((_, default)) if start == 0 && value.ends_with('}') => Ok(default.to_owned()),
        _ => Err(format!("is interpolated from the environment ({value})")),
    }
}

/// A Compose duration: `1m30s`, `10s`, `500ms`, `1h`.
fn compose_duration(text: &str) -> Option<Duration> {
    humantime::parse_duration(text.trim()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interpolation_is_read_as_its_default_or_not_at_all() {
        assert_eq!(interpolated("25s"), Ok("25s".to_owned()));
        assert_eq!(interpolated("${BUDGET:-25s}"), Ok("25s".to_owned()));
        assert_eq!(interpolated("${BUDGET-25s}"), Ok("25s".to_owned()));
        assert!(interpolated("${BUDGET}").is_err());
        assert!(interpolated("${BUDGET:-25}s").is_err());
    }
}
