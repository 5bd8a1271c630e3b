//! Kubernetes: a workload's pod, the container that runs lastcall, its probes and its sidecars.
//!
//! The kubelet runs each container's preStop hook, then sends its stop signal
//! (`lifecycle.stopSignal`, default SIGTERM) and SIGKILL at `terminationGracePeriodSeconds`,
//! all counted from the pod's deletion. Regular sidecars get their signal at the same moment
//! as the application; native sidecars (init containers with `restartPolicy: Always`) only
//! once every main container has exited.
//!
//! [`plan`] reads the pod, builds the timeline and runs the checks; `workload.rs` chooses the
//! workload and container, `probes.rs` reads and checks the probes, `mesh.rs` the proxies.

use std::time::Duration;

use lastcall::Phase;
use yaml_rust2::Yaml;

use super::checks::{check_deregistration, check_kill_deadline, check_stop_signal, KillDeadline};
use super::service::service_events;
use super::value::{scalar, secs};
use super::{Checked, Event, Finding, Refusal, Service, Severity};
use crate::flags::PlanArgs;

mod mesh;
mod probes;
mod workload;

use mesh::proxies;
use probes::{check_liveness, check_readiness, probe, Ports};
use workload::{choose_container, choose_workload, env, pre_stop, pre_stop_of, WORKLOADS};

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
