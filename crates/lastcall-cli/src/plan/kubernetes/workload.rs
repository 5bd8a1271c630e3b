//! Which workload and container of the file the plan reads (`--workload`, `--container`, or
//! the one carrying `LASTCALL_*` variables), and what the container sets: its environment and
//! how long its preStop hook takes.

use std::time::Duration;

use yaml_rust2::Yaml;

use crate::flags::PlanArgs;
use crate::plan::choice::{choose, Candidate};
use crate::plan::value::scalar;
use crate::plan::{Finding, Refusal, Severity, Var};

/// The kinds whose pod template the plan reads (`Rollout` is Argo Rollouts').
pub(super) const WORKLOADS: [&str; 6] = [
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "ReplicaSet",
    "Rollout",
    "Pod",
];

/// The workload `--workload` names, or the one whose containers carry `LASTCALL_*` variables.
pub(super) fn choose_workload<'a>(
    workloads: &[&'a Yaml],
    args: &PlanArgs,
) -> Result<&'a Yaml, Refusal> {
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
pub(super) fn choose_container<'a>(
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

pub(super) fn env(container: &Yaml) -> Vec<Var> {
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
pub(super) fn pre_stop_of(container: &Yaml, findings: &mut Vec<Finding>) -> Duration {
    pre_stop(&container["lifecycle"]["preStop"], findings)
}

/// How long the preStop hook takes: a `sleep` action, or an exec of `sleep N`.
pub(super) fn pre_stop(hook: &Yaml, findings: &mut Vec<Finding>) -> Duration {
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
