//! Kubernetes: a workload's pod, the container that runs lastcall, its probes and its sidecars.
//!
//! The kubelet runs each container's preStop hook, then sends its stop signal
//! (`lifecycle.stopSignal`, default SIGTERM) and SIGKILL at `terminationGracePeriodSeconds`,
//! all counted from the pod's deletion. Regular sidecars get their signal at the same moment
//! as the application; native sidecars (init containers with `restartPolicy: Always`) only
//! once every main container has exited.

use std::time::Duration;

use lastcall::Phase;
use yaml_rust2::{Yaml, YamlLoader};

use super::{
    check_deregistration, check_kill_deadline, check_stop_signal, choose, scalar, secs,
    service_events, Candidate, Checked, Event, Finding, KillDeadline, Refusal, Service, Severity,
    Var,
};
use crate::flags::PlanArgs;

/// The kinds whose pod template the plan reads (`Rollout` is Argo Rollouts').
const WORKLOADS: [&str; 6] = [
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "ReplicaSet",
    "Rollout",
    "Pod",
];

/// Istio's drain when `terminationDrainDuration` is not set.
const ISTIO_DRAIN: Duration = Duration::from_secs(5);
/// Linkerd's `config.linkerd.io/shutdown-grace-period` when not set.
const LINKERD_GRACE: Duration = Duration::from_secs(120);

/// How a probe asks.
#[derive(Debug)]
enum Check {
    Http { path: String, port: Option<String> },
    Tcp { port: Option<String> },
    Grpc,
    Exec { command: String },
}

#[derive(Debug)]
struct Probe {
    check: Check,
    period: u64,
    failure_threshold: u64,
}

/// A mesh proxy beside the application.
#[derive(Debug)]
enum Proxy {
    Istio {
        /// Stopped after the application (`restartPolicy: Always` init container).
        native: bool,
        /// The container is in the file; `false` when only the injection label asks for it,
        /// and the injector, not the file, decides whether it is a native sidecar.
        seen: bool,
        pre_stop: Duration,
        drain: Duration,
        /// `EXIT_ON_ZERO_ACTIVE_CONNECTIONS`: the proxy stays while connections are open.
        exit_on_zero: bool,
    },
    Linkerd {
        native: bool,
        /// `config.alpha.linkerd.io/proxy-wait-before-exit-seconds`, or the injected proxy's
        /// preStop sleep.
        wait: Duration,
        /// `config.linkerd.io/shutdown-grace-period`.
        grace: Duration,
    },
}

pub(super) fn plan(docs: &[Yaml], args: &PlanArgs) -> Result<Checked, Refusal> {
    let mut all = Vec::new();
    for doc in docs {
        // `kubectl get -o yaml` of several objects gives a List.
        match doc["items"].as_vec() {
            Some(items) if doc["kind"].as_str() == Some("List") => all.extend(items.iter()),
            _ => all.push(doc),
        }
    }
    let workloads: Vec<&Yaml> = all
        .into_iter()
        .filter(|doc| doc["kind"].as_str().is_some_and(|k| WORKLOADS.contains(&k)))
        .collect();
    let doc = choose_workload(&workloads, args)?;
    let kind = doc["kind"].as_str().unwrap_or_default();
    let name = doc["metadata"]["name"].as_str().unwrap_or("(unnamed)");
    let (pod, pod_meta) = if kind == "Pod" {
        (&doc["spec"], &doc["metadata"])
    } else {
        (
            &doc["spec"]["template"]["spec"],
            &doc["spec"]["template"]["metadata"],
        )
    };
    let containers = pod["containers"]
        .as_vec()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| Refusal(format!("{kind} {name} has no containers")))?;
    let container = choose_container(kind, name, containers, args)?;
    let container_name = container["name"].as_str().unwrap_or("(unnamed)");
    let mut findings = Vec::new();

    let grace = match &pod["terminationGracePeriodSeconds"] {
        Yaml::BadValue | Yaml::Null => Duration::from_secs(30),
        value => match value.as_i64().and_then(|s| u64::try_from(s).ok()) {
            Some(secs) => Duration::from_secs(secs),
            None => {
                findings.push(Finding {
                    severity: Severity::Error,
                    check: "grace_period",
                    problem: format!(
                        "terminationGracePeriodSeconds is {}, not a number of seconds",
                        scalar(value).unwrap_or_else(|| format!("{value:?}"))
                    ),
                    fix: "set terminationGracePeriodSeconds: 30".into(),
                });
                Duration::from_secs(30)
            }
        },
    };

    let service = Service::from_env(&env(container), args, &mut findings);
    let pre_stop = pre_stop(&container["lifecycle"]["preStop"], &mut findings);
    let stop_signal = container["lifecycle"]["stopSignal"]
        .as_str()
        .unwrap_or("SIGTERM")
        .to_owned();
    let ports = Ports::of(container);
    let readiness = probe(&container["readinessProbe"]);
    let liveness = probe(&container["livenessProbe"]);
    let message_path = container["terminationMessagePath"]
        .as_str()
        .unwrap_or("/dev/termination-log");
    let proxies = proxies(pod, pod_meta, &mut findings);

    // The timeline: the kubelet, lastcall, and the proxies' own events.
    let mut timeline = Vec::new();
    timeline.push(Event {
        at: Duration::ZERO,
        what: if pre_stop.is_zero() {
            format!("no preStop hook: {stop_signal} at once")
        } else {
            format!("preStop hook runs ({})", secs(pre_stop))
        },
    });
    timeline.extend(service_events(pre_stop, &stop_signal, &service));
    let app_end = pre_stop + service.budget.total;
    for proxy in &proxies {
        timeline.extend(proxy.events(app_end, grace));
    }
    for sidecar in pod["initContainers"].as_vec().into_iter().flatten() {
        let name = sidecar["name"].as_str().unwrap_or("(unnamed)");
        if sidecar["restartPolicy"].as_str() == Some("Always")
            && !matches!(name, "istio-proxy" | "linkerd-proxy")
        {
            timeline.push(Event {
                at: app_end,
                what: format!("{name} (native sidecar): SIGTERM once the application has exited"),
            });
        }
    }
    let mut ignored = Vec::new();
    let regular: Vec<(&str, Duration)> = containers
        .iter()
        .filter_map(|c| Some((c["name"].as_str()?, c)))
        .filter(|(n, _)| *n != container_name && !matches!(*n, "istio-proxy" | "linkerd-proxy"))
        .map(|(n, c)| (n, pre_stop_of(c, &mut ignored)))
        .collect();
    for (name, at) in &regular {
        timeline.push(Event {
            at: *at,
            what: format!("{name} (regular sidecar): SIGTERM, with the application"),
        });
    }
    if let Some(delay) = args.deregistration_delay {
        timeline.push(Event {
            at: Duration::ZERO,
            what: format!("the load balancer deregisters the pod: no new requests once it takes effect, open ones have the deregistration delay ({})", secs(delay)),
        });
        timeline.push(Event {
            at: delay,
            what: "the deregistration delay ends: requests still open through the load balancer are cut".into(),
        });
    }
    timeline.push(Event {
        at: grace,
        what: format!(
            "SIGKILL (terminationGracePeriodSeconds {}; margin {})",
            grace.as_secs(),
            secs(grace.saturating_sub(app_end))
        ),
    });

    // 1. preStop + budget + margin fit in the grace period.
    check_kill_deadline(
        &KillDeadline {
            before: Some(("preStop", pre_stop)),
            setting: format!("terminationGracePeriodSeconds {}", grace.as_secs()),
            at: grace,
            killer: "the kubelet",
            set: &|s| format!("set terminationGracePeriodSeconds: {s}"),
            also: "",
        },
        &service,
        args.margin,
        &mut findings,
    );
    // 2. The kubelet's stop signal is one lastcall listens for.
    check_stop_signal(
        &stop_signal,
        "lifecycle.stopSignal",
        &|s| format!("set lifecycle.stopSignal: {s} (or remove it: the default is SIGTERM)"),
        &service,
        &mut findings,
    );
    if !container["lifecycle"]["stopSignal"].is_badvalue() && pod["os"]["name"].as_str().is_none() {
        findings.push(Finding {
            severity: Severity::Error,
            check: "stop_signal",
            problem: "lifecycle.stopSignal is set but the pod has no spec.os.name: the API server refuses the pod".into(),
            fix: "set spec.os.name: linux in the pod template".into(),
        });
    }
    // 3. The drain delay covers the readiness probe; the probes ask the right questions.
    check_readiness(
        readiness.as_ref(),
        pre_stop,
        &service,
        &ports,
        args,
        &mut findings,
    );
    check_liveness(liveness.as_ref(), &ports, args, &mut findings);
    // 4. No proxy stops before lastcall is done.
    for proxy in &proxies {
        proxy.check(pre_stop, &service, grace, &mut findings);
    }
    // 5. Behind an AWS load balancer (its controller deregisters the pod at its deletion), the
    // deregistration delay lets the longest request finish.
    if let Some(delay) = args.deregistration_delay {
        let wait = service
            .budget
            .plan()
            .map_or(app_end, |p| pre_stop + p.deadline(Phase::WaitForWork));
        check_deregistration(delay, wait, args, &mut findings);
    }
    // 6. Other containers stop with the application: a warning, as only the application's
    // authors know whether it needs them while it drains.
    for (name, _) in &regular {
        findings.push(Finding {
            severity: Severity::Warning,
            check: "sidecar",
            problem: format!(
                "{name} is a regular sidecar: the kubelet sends it SIGTERM with the application, so what the application needs from it while draining (a database or auth proxy, a log shipper) may be gone"
            ),
            fix: format!(
                "if the application uses {name} while it drains, move it to initContainers with restartPolicy: Always (a native sidecar, stopped after the application)"
            ),
        });
    }
    // 7. The report reaches `kubectl describe pod`.
    match &service.report_file {
        None => findings.push(Finding {
            severity: Severity::Warning,
            check: "report_file",
            problem: "LASTCALL_REPORT_FILE is not set: how the last shutdown went dies with the container".into(),
            fix: format!("set LASTCALL_REPORT_FILE={message_path}"),
        }),
        Some(file) if file != message_path => findings.push(Finding {
            severity: Severity::Warning,
            check: "report_file",
            problem: format!(
                "LASTCALL_REPORT_FILE is {file} but terminationMessagePath is {message_path}: kubectl describe pod will not show the report"
            ),
            fix: format!("set LASTCALL_REPORT_FILE={message_path}"),
        }),
        Some(_) => {}
    }

    Ok(Checked {
        platform: "kubernetes",
        subject: format!("{kind} {name}, container {container_name}"),
        origin: "the pod's deletion",
        service,
        timeline,
        findings,
    })
}

/// The workload `--workload` names, or the one whose containers carry `LASTCALL_*` variables.
fn choose_workload<'a>(workloads: &[&'a Yaml], args: &PlanArgs) -> Result<&'a Yaml, Refusal> {
    let label = |doc: &Yaml| {
        format!(
            "{}/{}",
            doc["kind"].as_str().unwrap_or_default(),
            doc["metadata"]["name"].as_str().unwrap_or("(unnamed)")
        )
    };
    let labels = || {
        workloads
            .iter()
            .map(|d| label(d))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if workloads.is_empty() {
        return Err(Refusal(format!(
            "no {} in the file; give the manifest of the workload that runs the service",
            WORKLOADS.join(", ")
        )));
    }
    if let Some(wanted) = &args.workload {
        return workloads
            .iter()
            .find(|d| {
                d["metadata"]["name"].as_str() == Some(wanted.as_str()) || label(d) == *wanted
            })
            .copied()
            .ok_or_else(|| {
                Refusal(format!(
                    "no workload {wanted:?} in the file; its workloads are {}",
                    labels()
                ))
            });
    }
    if workloads.len() == 1 {
        return Ok(workloads[0]);
    }
    let with_settings: Vec<&Yaml> = workloads
        .iter()
        .copied()
        .filter(|d| {
            let pod = if d["kind"].as_str() == Some("Pod") {
                &d["spec"]
            } else {
                &d["spec"]["template"]["spec"]
            };
            pod["containers"]
                .as_vec()
                .is_some_and(|cs| cs.iter().any(carries_settings))
        })
        .collect();
    match with_settings.as_slice() {
        [one] => Ok(one),
        [] => Err(Refusal(format!(
            "none of the workloads {} has a container with LASTCALL_* variables; choose one with --workload NAME",
            labels()
        ))),
        several => Err(Refusal(format!(
            "several workloads have containers with LASTCALL_* variables: {}; choose one with --workload NAME",
            several.iter().map(|d| label(d)).collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// The container `--container` names, or the one carrying `LASTCALL_*` variables; without
/// any, the only container that is not a mesh proxy.
fn choose_container<'a>(
    kind: &str,
    name: &str,
    containers: &'a [Yaml],
    args: &PlanArgs,
) -> Result<&'a Yaml, Refusal> {
    let candidates: Vec<Candidate<'a>> = containers
        .iter()
        .map(|c| Candidate {
            name: c["name"].as_str().unwrap_or("(unnamed)").to_owned(),
            item: c,
            carries: carries_settings(c),
            proxy: matches!(c["name"].as_str(), Some("istio-proxy" | "linkerd-proxy")),
        })
        .collect();
    let owner = format!("{kind} {name}");
    choose("container", &owner, &candidates, args.container.as_deref()).map(|(_, c)| c)
}

fn carries_settings(container: &Yaml) -> bool {
    container["env"].as_vec().is_some_and(|vars| {
        vars.iter().any(|v| {
            v["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("LASTCALL_"))
        })
    })
}

fn env(container: &Yaml) -> Vec<Var> {
    let mut vars: Vec<Var> = container["env"]
        .as_vec()
        .into_iter()
        .flatten()
        .filter_map(|var| {
            let name = var["name"].as_str()?.to_owned();
            let value = match scalar(&var["value"]) {
                Some(value) => Ok(value),
                None if !var["valueFrom"].is_badvalue() => Err("comes from valueFrom".into()),
                // `value` absent: the variable is set, to the empty string.
                None => Ok(String::new()),
            };
            Some(Var { name, value })
        })
        .collect();
    // `envFrom` may set more; the plan cannot see them, which it says once.
    if container["envFrom"].as_vec().is_some_and(|v| !v.is_empty()) {
        vars.push(Var {
            name: "LASTCALL_* in envFrom".into(),
            value: Err("may be set from a ConfigMap or Secret (envFrom)".into()),
        });
    }
    vars
}

/// How long the container's preStop hook takes.
fn pre_stop_of(container: &Yaml, findings: &mut Vec<Finding>) -> Duration {
    pre_stop(&container["lifecycle"]["preStop"], findings)
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
struct Ports(Vec<String>);

impl Ports {
    fn of(container: &Yaml) -> Ports {
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

fn check_readiness(
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
fn check_liveness(
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

/// The mesh proxies in the pod: a container (regular or native sidecar) or an injection
/// annotation for one not injected yet.
fn proxies(pod: &Yaml, meta: &Yaml, findings: &mut Vec<Finding>) -> Vec<Proxy> {
    let annotation =
        |key: &str| scalar(&meta["annotations"][key]).or_else(|| scalar(&meta["labels"][key]));
    let find = |name: &str| -> Option<(&Yaml, bool)> {
        let regular = pod["containers"]
            .as_vec()
            .into_iter()
            .flatten()
            .find(|c| c["name"].as_str() == Some(name));
        let native = pod["initContainers"]
            .as_vec()
            .into_iter()
            .flatten()
            .find(|c| {
                c["name"].as_str() == Some(name) && c["restartPolicy"].as_str() == Some("Always")
            });
        regular.map(|c| (c, false)).or(native.map(|c| (c, true)))
    };
    let mut proxies = Vec::new();

    let istio = find("istio-proxy");
    if istio.is_some() || annotation("sidecar.istio.io/inject").as_deref() == Some("true") {
        let container = istio.map_or(&Yaml::BadValue, |(c, _)| c);
        let proxy_env = |key: &str| {
            container["env"]
                .as_vec()
                .into_iter()
                .flatten()
                .find(|v| v["name"].as_str() == Some(key))
                .and_then(|v| scalar(&v["value"]))
        };
        // `proxy.istio.io/config` (the annotation) and `PROXY_CONFIG` (what injection
        // writes into the container) are both a ProxyConfig, in YAML or JSON.
        let configs: Vec<Yaml> = [
            annotation("proxy.istio.io/config"),
            proxy_env("PROXY_CONFIG"),
        ]
        .into_iter()
        .flatten()
        .filter_map(|text| YamlLoader::load_from_str(&text).ok()?.into_iter().next())
        .collect();
        let mut drain = ISTIO_DRAIN;
        if let Some(secs) =
            proxy_env("TERMINATION_DRAIN_DURATION_SECONDS").and_then(|s| s.parse::<u64>().ok())
        {
            drain = Duration::from_secs(secs);
        }
        let mut exit_on_zero =
            proxy_env("EXIT_ON_ZERO_ACTIVE_CONNECTIONS").as_deref() == Some("true");
        for config in &configs {
            if let Some(text) = scalar(&config["terminationDrainDuration"]) {
                match humantime::parse_duration(&text) {
                    Ok(d) => drain = d,
                    Err(e) => findings.push(Finding {
                        severity: Severity::Error,
                        check: "sidecar",
                        problem: format!("proxy.istio.io/config terminationDrainDuration {text:?} is not a duration ({e})"),
                        fix: "set terminationDrainDuration to a duration such as \"30s\"".into(),
                    }),
                }
            }
            if scalar(&config["proxyMetadata"]["EXIT_ON_ZERO_ACTIVE_CONNECTIONS"]).as_deref()
                == Some("true")
            {
                exit_on_zero = true;
            }
        }
        let native = istio.is_some_and(|(_, native)| native)
            || annotation("sidecar.istio.io/nativeSidecar").as_deref() == Some("true");
        let mut ignored = Vec::new();
        proxies.push(Proxy::Istio {
            native,
            seen: istio.is_some(),
            pre_stop: pre_stop(&container["lifecycle"]["preStop"], &mut ignored),
            drain,
            exit_on_zero,
        });
    }

    let linkerd = find("linkerd-proxy");
    if linkerd.is_some() || annotation("linkerd.io/inject").as_deref() == Some("enabled") {
        let native = linkerd.is_some_and(|(_, native)| native)
            || annotation("config.alpha.linkerd.io/proxy-enable-native-sidecar").as_deref()
                == Some("true");
        // The annotation becomes the injected proxy's preStop sleep; either may be in the file.
        let mut ignored = Vec::new();
        let wait = annotation("config.alpha.linkerd.io/proxy-wait-before-exit-seconds")
            .and_then(|s| s.parse::<u64>().ok())
            .map_or(Duration::ZERO, Duration::from_secs)
            .max(linkerd.map_or(Duration::ZERO, |(c, _)| pre_stop_of(c, &mut ignored)));
        let grace = match annotation("config.linkerd.io/shutdown-grace-period") {
            None => LINKERD_GRACE,
            Some(text) => match humantime::parse_duration(&text) {
                Ok(d) => d,
                Err(e) => {
                    findings.push(Finding {
                        severity: Severity::Error,
                        check: "sidecar",
                        problem: format!("config.linkerd.io/shutdown-grace-period {text:?} is not a duration ({e})"),
                        fix: "set config.linkerd.io/shutdown-grace-period to a duration such as \"30s\"".into(),
                    });
                    LINKERD_GRACE
                }
            },
        };
        proxies.push(Proxy::Linkerd {
            native,
            wait,
            grace,
        });
    }
    proxies
}

impl Proxy {
    fn name(&self) -> &'static str {
        match self {
            Proxy::Istio { .. } => "istio-proxy",
            Proxy::Linkerd { .. } => "linkerd-proxy",
        }
    }

    /// The proxy's own events; `app_end` is when lastcall's budget ends.
    fn events(&self, app_end: Duration, pod_grace: Duration) -> Vec<Event> {
        let name = self.name();
        match *self {
            Proxy::Istio { native: true, .. } | Proxy::Linkerd { native: true, .. } => vec![Event {
                at: app_end,
                what: format!("{name} (native sidecar): SIGTERM once the application has exited"),
            }],
            Proxy::Istio { pre_stop, drain, exit_on_zero, .. } => {
                let mut events = vec![Event {
                    at: pre_stop,
                    what: format!("{name}: SIGTERM, the proxy drains (terminationDrainDuration {})", secs(drain)),
                }];
                events.push(if exit_on_zero {
                    Event {
                        at: pre_stop + drain,
                        what: format!("{name}: exits once no connection is open (EXIT_ON_ZERO_ACTIVE_CONNECTIONS)"),
                    }
                } else {
                    Event {
                        at: pre_stop + drain,
                        what: format!("{name}: exits; connections through the mesh fail from here"),
                    }
                });
                events
            }
            Proxy::Linkerd { wait, grace, .. } => vec![
                Event {
                    at: wait,
                    what: format!("{name}: SIGTERM, the proxy refuses new connections and waits for open ones (shutdown-grace-period {})", secs(grace)),
                },
                if wait + grace < pod_grace {
                    Event {
                        at: wait + grace,
                        what: format!("{name}: exits at the latest"),
                    }
                } else {
                    Event {
                        at: pod_grace,
                        what: format!("{name}: killed with the pod if still open"),
                    }
                },
            ],
        }
    }

    /// The proxy carries the application's traffic until lastcall is done: it must accept
    /// connections until lastcall stops accepting, and stay until its budget ends (responses
    /// in flight, and the service's own calls through the mesh while it flushes and closes).
    fn check(
        &self,
        pre_stop: Duration,
        service: &Service,
        grace: Duration,
        findings: &mut Vec<Finding>,
    ) {
        let b = &service.budget;
        let app_end = pre_stop + b.total;
        let stop_accepting = pre_stop + b.drain_delay;
        let native_fix = "or inject it as a native sidecar (annotation config.alpha.linkerd.io/proxy-enable-native-sidecar: \"true\"), which Kubernetes stops after the application";
        match *self {
            Proxy::Istio { native: true, .. } | Proxy::Linkerd { native: true, .. } => {}
            Proxy::Istio {
                pre_stop: proxy_pre_stop,
                drain,
                exit_on_zero: false,
                seen,
                ..
            } => {
                let exit = proxy_pre_stop + drain;
                if exit < app_end {
                    // Injected at admission, the proxy may be a native sidecar (recent Istio
                    // makes it one where the cluster supports it): the file cannot tell.
                    let (severity, caveat) = if seen {
                        (Severity::Error, "")
                    } else {
                        (
                            Severity::Warning,
                            ", if it is injected as a regular sidecar",
                        )
                    };
                    findings.push(Finding {
                        severity,
                        check: "sidecar",
                        problem: format!(
                            "istio-proxy exits {} after the deletion (terminationDrainDuration {}){caveat}, but lastcall needs it until {} (preStop {} + LASTCALL_BUDGET {}): responses still in flight and the service's own calls through the mesh fail",
                            secs(exit), secs(drain), secs(app_end), secs(pre_stop), secs(b.total)
                        ),
                        fix: format!(
                            "set the pod annotation proxy.istio.io/config: '{{\"terminationDrainDuration\": \"{}s\"}}', or proxyMetadata EXIT_ON_ZERO_ACTIVE_CONNECTIONS: \"true\" there; or inject it as a native sidecar (annotation sidecar.istio.io/nativeSidecar: \"true\"), which Kubernetes stops after the application",
                            super::ceil_secs(app_end.saturating_sub(proxy_pre_stop)).min(grace.as_secs().max(1))
                        ),
                    });
                }
            }
            Proxy::Istio { .. } => {}
            Proxy::Linkerd {
                wait,
                grace: proxy_grace,
                ..
            } => {
                // Linkerd's proxy refuses every new connection from its SIGTERM on, inbound
                // and the application's own outbound ones alike.
                if wait < app_end {
                    let what = if wait < stop_accepting {
                        format!(
                            "requests still routed to the pod during the drain delay (lastcall accepts until {}) and the application's new outbound calls fail",
                            secs(stop_accepting)
                        )
                    } else {
                        "the application's new outbound calls (a database connection, the telemetry flush) fail while it finishes in-flight work".to_owned()
                    };
                    findings.push(Finding {
                        severity: Severity::Error,
                        check: "sidecar",
                        problem: format!(
                            "linkerd-proxy gets SIGTERM {} after the deletion and refuses new connections from then on (shutdown-grace-period {} only lets open ones finish), but lastcall runs until {} (preStop {} + LASTCALL_BUDGET {}): {what}",
                            secs(wait), secs(proxy_grace), secs(app_end), secs(pre_stop), secs(b.total)
                        ),
                        fix: format!(
                            "set the pod annotation config.alpha.linkerd.io/proxy-wait-before-exit-seconds: \"{}\" (and terminationGracePeriodSeconds to cover it); {native_fix}",
                            super::ceil_secs(app_end)
                        ),
                    });
                }
            }
        }
    }
}
