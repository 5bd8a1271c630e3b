//! Amazon ECS: a task definition's container, its `stopTimeout`, and the target group's
//! deregistration delay (`--deregistration-delay`).
//!
//! When a service's task stops, ECS first deregisters it from the target group and waits the
//! deregistration delay (the load balancer sends it no new requests and lets open ones
//! finish), then sends SIGTERM (the image's STOPSIGNAL), then SIGKILL after the container's
//! `stopTimeout` (default 30 s; at most 120 s on Fargate). The balancer is drained before the
//! signal, so the rules are the stop timeout over the budget and a deregistration delay that
//! lets the longest request finish, not a drain delay.

use std::time::Duration;

use lastcall::Phase;
use yaml_rust2::Yaml;

use super::checks::{check_deregistration, check_kill_deadline, KillDeadline};
use super::choice::{choose, Candidate};
use super::service::service_events;
use super::value::{scalar, secs};
use super::{Checked, Event, Finding, Refusal, Service, Severity, Var};
use crate::flags::PlanArgs;

/// The agent's `ECS_CONTAINER_STOP_TIMEOUT` default.
const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Fargate's largest `stopTimeout`.
const FARGATE_MAX: Duration = Duration::from_secs(120);

/// The task definition in `doc`: the document itself, or the `taskDefinition` of `aws ecs
/// describe-task-definition`'s output.
pub(super) fn task_definition(doc: &Yaml) -> Option<&Yaml> {
    if doc["containerDefinitions"].as_vec().is_some() {
        Some(doc)
    } else if doc["taskDefinition"]["containerDefinitions"]
        .as_vec()
        .is_some()
    {
        Some(&doc["taskDefinition"])
    } else {
        None
    }
}

pub(super) fn plan(task: &Yaml, args: &PlanArgs) -> Result<Checked, Refusal> {
    let family = task["family"].as_str().unwrap_or("(no family)");
    let owner = format!("task definition {family}");
    let items: Vec<Candidate<'_>> = task["containerDefinitions"]
        .as_vec()
        .into_iter()
        .flatten()
        .map(|c| {
            let carries = env(c)
                .iter()
                .any(|v| v.name.starts_with("LASTCALL_") && !v.name.contains(' '));
            Candidate {
                name: scalar(&c["name"]).unwrap_or_default(),
                item: c,
                carries,
                proxy: false,
            }
        })
        .collect();
    let (name, container) = choose("container", &owner, &items, args.container.as_deref())?;
    let mut findings = Vec::new();
    let service = Service::from_env(&env(container), args, &mut findings);
    let fargate = task["requiresCompatibilities"]
        .as_vec()
        .into_iter()
        .flatten()
        .any(|c| c.as_str() == Some("FARGATE"));

    let stop_timeout = match &container["stopTimeout"] {
        Yaml::BadValue | Yaml::Null => DEFAULT_STOP_TIMEOUT,
        value => match value.as_i64().and_then(|s| u64::try_from(s).ok()) {
            Some(s) => Duration::from_secs(s),
            None => {
                findings.push(Finding {
                    severity: Severity::Error,
                    check: "grace_period",
                    problem: format!(
                        "stopTimeout is {}, not a number of seconds",
                        scalar(value).unwrap_or_else(|| format!("{value:?}"))
                    ),
                    fix: "set stopTimeout: 30".into(),
                });
                DEFAULT_STOP_TIMEOUT
            }
        },
    };
    if fargate && stop_timeout > FARGATE_MAX {
        findings.push(Finding {
            severity: Severity::Error,
            check: "grace_period",
            problem: format!(
                "stopTimeout is {} but Fargate allows at most 120: the task definition is refused",
                stop_timeout.as_secs()
            ),
            fix: format!(
                "set stopTimeout: 120, and LASTCALL_BUDGET={} at most",
                secs(FARGATE_MAX.saturating_sub(args.margin))
            ),
        });
    }
    // What the agent really waits: Fargate never waits longer than 120 s.
    let stop_timeout = if fargate {
        stop_timeout.min(FARGATE_MAX)
    } else {
        stop_timeout
    };

    let signal_at = args.deregistration_delay.unwrap_or(Duration::ZERO);
    let mut timeline = Vec::new();
    if let Some(delay) = args.deregistration_delay {
        timeline.push(Event {
            at: Duration::ZERO,
            what: format!(
                "the target deregisters: the load balancer sends no new requests, open ones have the deregistration delay ({})",
                secs(delay)
            ),
        });
    }
    timeline.extend(service_events(signal_at, "SIGTERM", &service));
    timeline.push(Event {
        at: signal_at + stop_timeout,
        what: format!(
            "SIGKILL (stopTimeout {}{}; margin {})",
            stop_timeout.as_secs(),
            if container["stopTimeout"].is_badvalue() {
                ", the default"
            } else {
                ""
            },
            secs(stop_timeout.saturating_sub(service.budget.total))
        ),
    });

    // 1. The budget fits the stop timeout with a margin.
    let set = |s: u64| {
        if fargate && s > FARGATE_MAX.as_secs() {
            format!("lower the budget: Fargate allows at most stopTimeout: 120 (wanted {s})")
        } else {
            format!("set stopTimeout: {s} on container {name}")
        }
    };
    check_kill_deadline(
        &KillDeadline {
            before: None,
            setting: format!("stopTimeout {}", stop_timeout.as_secs()),
            at: stop_timeout,
            killer: "the ECS agent",
            set: &set,
            also: "",
        },
        &service,
        args.margin,
        &mut findings,
    );
    // 2. The deregistration delay lets the longest request finish.
    if let Some(delay) = args.deregistration_delay {
        let wait = service
            .budget
            .plan()
            .map_or(service.budget.total, |p| p.deadline(Phase::WaitForWork));
        check_deregistration(delay, wait, args, &mut findings);
    }
    // 3. Other containers of the task get SIGTERM with the application unless it depends on
    // them (ECS stops containers in the reverse order of dependsOn): a warning, as only the
    // application's authors know whether it needs them while it drains.
    let depends_on: Vec<String> = container["dependsOn"]
        .as_vec()
        .into_iter()
        .flatten()
        .filter_map(|d| scalar(&d["containerName"]))
        .collect();
    for other in items.iter().filter(|c| c.name != name) {
        if depends_on.contains(&other.name) {
            timeline.push(Event {
                at: signal_at + service.budget.total,
                what: format!(
                    "{}: SIGTERM once the application has stopped (dependsOn)",
                    other.name
                ),
            });
        } else {
            timeline.push(Event {
                at: signal_at,
                what: format!("{}: SIGTERM, with the application", other.name),
            });
            findings.push(Finding {
                severity: Severity::Warning,
                check: "sidecar",
                problem: format!(
                    "container {} gets SIGTERM with the application, so what the application needs from it while draining (a proxy, an agent) may be gone",
                    other.name
                ),
                fix: format!(
                    "if {name} uses it while it drains, add \"dependsOn\": [{{\"containerName\": \"{}\", \"condition\": \"START\"}}] to {name}: ECS then stops it after {name}",
                    other.name
                ),
            });
        }
    }
    // 4. The container's health check is a liveness check: ECS replaces a task whose
    // essential container turns unhealthy.
    let command = container["healthCheck"]["command"]
        .as_vec()
        .into_iter()
        .flatten()
        .filter_map(scalar)
        .collect::<Vec<_>>()
        .join(" ");
    if command.contains(&args.ready_path) {
        findings.push(Finding {
            severity: Severity::Warning,
            check: "health_check",
            problem: format!(
                "healthCheck requests {}, which answers 503 whenever the service is not ready: ECS replaces a task whose essential container is unhealthy",
                args.ready_path
            ),
            fix: format!(
                "request {} in healthCheck; readiness belongs in the target group's health check",
                args.live_path
            ),
        });
    }

    Ok(Checked {
        platform: "ecs",
        subject: format!("{owner}, container {name}"),
        origin: if args.deregistration_delay.is_some() {
            "the task's deregistration"
        } else {
            "the task's stop (no --deregistration-delay given)"
        },
        service,
        timeline,
        findings,
    })
}

/// `environment` (literal), `secrets` (from Secrets Manager or SSM) and `environmentFiles`.
fn env(container: &Yaml) -> Vec<Var> {
    let mut vars: Vec<Var> = container["environment"]
        .as_vec()
        .into_iter()
        .flatten()
        .filter_map(|v| {
            Some(Var {
                name: scalar(&v["name"])?,
                value: Ok(scalar(&v["value"]).unwrap_or_default()),
            })
        })
        .collect();
    vars.extend(
        container["secrets"]
            .as_vec()
            .into_iter()
            .flatten()
            .filter_map(|v| {
                Some(Var {
                    name: scalar(&v["name"])?,
                    value: Err("comes from secrets (valueFrom)".into()),
                })
            }),
    );
    if container["environmentFiles"]
        .as_vec()
        .is_some_and(|f| !f.is_empty())
    {
        vars.push(Var {
            name: "LASTCALL_* in environmentFiles".into(),
            value: Err("may be set in environmentFiles, which the plan does not read".into()),
        });
    }
    vars
}
