//! The container's readiness and liveness probes: read from the file, their named ports
//! resolved, and checked against the drain (readiness must see the shutdown within the drain
//! delay; liveness must not follow readiness).

use std::time::Duration;

use yaml_rust2::Yaml;

use crate::flags::PlanArgs;
use crate::plan::value::{scalar, secs};
use crate::plan::{Finding, Service, Severity};

/// How a probe asks.
#[derive(Debug)]
enum Check {
    Http { path: String, port: Option<String> },
    Tcp { port: Option<String> },
    Grpc,
    Exec { command: String },
}

#[derive(Debug)]
pub(super) struct Probe {
    check: Check,
    period: u64,
    failure_threshold: u64,
}

pub(super) fn probe(probe: &Yaml) -> Option<Probe> {
    if probe.is_badvalue() || probe.is_null() {
        return None;
    }
    let number = |key: &str, default: u64| {
        probe[key]
            .as_i64()
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(default)
    };
    let check = if !probe["httpGet"].is_badvalue() {
        Check::Http {
            path: probe["httpGet"]["path"].as_str().unwrap_or("/").to_owned(),
            port: scalar(&probe["httpGet"]["port"]),
        }
    } else if !probe["tcpSocket"].is_badvalue() {
        Check::Tcp {
            port: scalar(&probe["tcpSocket"]["port"]),
        }
    } else if !probe["grpc"].is_badvalue() {
        Check::Grpc
    } else {
        Check::Exec {
            command: probe["exec"]["command"]
                .as_vec()
                .into_iter()
                .flatten()
                .filter_map(scalar)
                .collect::<Vec<_>>()
                .join(" "),
        }
    };
    Some(Probe {
        check,
        period: number("periodSeconds", 10),
        failure_threshold: number("failureThreshold", 3),
    })
}

/// The container's named ports.
pub(super) struct Ports(Vec<String>);

impl Ports {
    pub(super) fn of(container: &Yaml) -> Ports {
        Ports(
            container["ports"]
                .as_vec()
                .into_iter()
                .flatten()
                .filter_map(|p| p["name"].as_str().map(str::to_owned))
                .collect(),
        )
    }

    /// A named probe port that the container does not declare: the kubelet cannot resolve
    /// it, the probe fails, and the container never becomes ready (or is restarted).
    fn check(&self, probe: &str, port: Option<&str>, findings: &mut Vec<Finding>) {
        let Some(port) = port else { return };
        if port.parse::<u16>().is_ok() || self.0.iter().any(|p| p == port) {
            return;
        }
        findings.push(Finding {
            severity: Severity::Error,
            check: "probe_port",
            problem: format!(
                "{probe} uses port {port:?}, which no port of the container is named (its named ports: {}): the probe always fails",
                if self.0.is_empty() { "none".to_owned() } else { self.0.join(", ") }
            ),
            fix: format!("name the port in ports: [{{name: {port}, containerPort: ...}}], or give the probe the port's number"),
        });
    }
}

pub(super) fn check_readiness(
    readiness: Option<&Probe>,
    pre_stop: Duration,
    service: &Service,
    ports: &Ports,
    args: &PlanArgs,
    findings: &mut Vec<Finding>,
) {
    let Some(probe) = readiness else {
        findings.push(Finding {
            severity: Severity::Warning,
            check: "readiness_probe",
            problem: "no readinessProbe: endpoints learn of the shutdown only from the pod's deletion".into(),
            fix: format!("add readinessProbe: {{httpGet: {{path: {}, port: ...}}, periodSeconds: 1, failureThreshold: 1}}", args.ready_path),
        });
        return;
    };
    match &probe.check {
        Check::Http { path, port } => {
            ports.check("readinessProbe.httpGet", port.as_deref(), findings);
            if *path != args.ready_path {
                findings.push(Finding {
                    severity: Severity::Error,
                    check: "readiness_probe",
                    problem: format!("readinessProbe checks {path}, which does not answer 503 when the shutdown starts"),
                    fix: format!("set readinessProbe.httpGet.path: {}", args.ready_path),
                });
            }
        }
        Check::Tcp { port } => {
            ports.check("readinessProbe.tcpSocket", port.as_deref(), findings);
            findings.push(Finding {
                severity: Severity::Warning,
                check: "readiness_probe",
                problem: "readinessProbe is a tcpSocket probe: it passes until the listener closes, so it never sees readiness flip at the signal".into(),
                fix: format!("use readinessProbe.httpGet.path: {}", args.ready_path),
            });
            // The probe cannot fail during the drain delay, so there is no detection time
            // for the delay to cover.
            return;
        }
        // lastcall's gRPC health service (`lastcall::grpc::health_reporter`) answers
        // NOT_SERVING from the signal on, as the HTTP route answers 503.
        Check::Grpc => {}
        Check::Exec { command } => {
            if !command.contains(&args.ready_path) {
                findings.push(Finding {
                    severity: Severity::Warning,
                    check: "readiness_probe",
                    problem: format!("readinessProbe runs `{command}`, which the plan cannot tell fails when readiness flips at the signal"),
                    fix: format!("make it request {} (or use readinessProbe.httpGet.path: {})", args.ready_path, args.ready_path),
                });
            }
        }
    }
    let detect = Duration::from_secs(probe.period * probe.failure_threshold);
    let needed = detect + args.propagation;
    let b = &service.budget;
    let have = pre_stop + b.drain_delay;
    if have < needed {
        findings.push(Finding {
            severity: Severity::Error,
            check: "drain_delay",
            problem: format!(
                "the listener closes {} after the deletion (preStop {} + LASTCALL_DRAIN_DELAY {}), but readiness fails only after periodSeconds {} x failureThreshold {} = {} plus {} of endpoint propagation = {}: requests still routed to the pod are refused",
                secs(have), secs(pre_stop), secs(b.drain_delay), probe.period, probe.failure_threshold, secs(detect), secs(args.propagation), secs(needed)
            ),
            fix: format!(
                "set LASTCALL_DRAIN_DELAY={} (and raise the budget and grace period to match), or probe faster: periodSeconds: 1, failureThreshold: 1",
                secs(needed.saturating_sub(pre_stop))
            ),
        });
    }
}

/// Liveness must not follow readiness, or the kubelet restarts a draining container.
pub(super) fn check_liveness(
    liveness: Option<&Probe>,
    ports: &Ports,
    args: &PlanArgs,
    findings: &mut Vec<Finding>,
) {
    let Some(probe) = liveness else { return };
    let on_readiness = match &probe.check {
        Check::Http { path, port } => {
            ports.check("livenessProbe.httpGet", port.as_deref(), findings);
            if *path != args.ready_path && *path != args.live_path {
                findings.push(Finding {
                    severity: Severity::Warning,
                    check: "liveness_probe",
                    problem: format!("livenessProbe checks {path}, not lastcall's liveness route"),
                    fix: format!("set livenessProbe.httpGet.path: {}", args.live_path),
                });
            }
            *path == args.ready_path
        }
        Check::Tcp { port } => {
            ports.check("livenessProbe.tcpSocket", port.as_deref(), findings);
            false
        }
        Check::Grpc => false,
        Check::Exec { command } => command.contains(&args.ready_path),
    };
    if on_readiness {
        findings.push(Finding {
            severity: Severity::Error,
            check: "liveness_probe",
            problem: format!("livenessProbe checks {}, which answers 503 from the signal on: the kubelet would kill the container in the middle of its drain", args.ready_path),
            fix: format!("set livenessProbe.httpGet.path: {}", args.live_path),
        });
    }
}
