use std::process::Command;

/// The manifest the repository ships, which the plan must pass.
const SHIPPED: &str = include_str!("../../../deploy/kubernetes/deployment.yaml");

struct Plan {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `lastcall plan` on `manifest`, written to a file of the test's own.
fn plan(name: &str, manifest: &str, args: &[&str]) -> Plan {
    let path =
        std::env::temp_dir().join(format!("lastcall-plan-{name}-{}.yaml", std::process::id()));
    std::fs::write(&path, manifest).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lastcall"))
        .arg("plan")
        .arg(&path)
        .args(args)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    Plan {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Asserts that `out` contains `needle`, printing all of `out` when it does not.
#[track_caller]
fn assert_says(out: &str, needle: &str) {
    assert!(out.contains(needle), "{needle:?} is not in:\n{out}");
}

/// The shipped manifest with `from` replaced by `to` (which must occur).
fn shipped_with(from: &str, to: &str) -> String {
    assert!(
        SHIPPED.contains(from),
        "{from:?} is not in the shipped manifest"
    );
    SHIPPED.replacen(from, to, 1)
}

#[test]
fn the_shipped_manifest_passes_and_its_timeline_is_printed() {
    let plan = plan("shipped", SHIPPED, &[]);
    assert_eq!(plan.code, Some(0), "{}{}", plan.stdout, plan.stderr);
    for line in [
        "(Deployment lastcall-demo, container demo)",
        "     0s  SIGTERM: readiness answers 503, requests are still served (drain delay 5s)",
        "     5s  stop accepting",
        "    18s  in-flight work must be done",
        "    25s  budget ends (LASTCALL_BUDGET 25s)",
        "    30s  SIGKILL (terminationGracePeriodSeconds 30; margin 5s)",
        "no findings",
    ] {
        assert_says(&plan.stdout, line);
    }
}

#[test]
fn a_budget_longer_than_the_grace_period_is_an_error_with_both_fixes() {
    let manifest = shipped_with(
        "terminationGracePeriodSeconds: 30",
        "terminationGracePeriodSeconds: 20",
    );
    let plan = plan("grace", &manifest, &[]);
    assert_eq!(plan.code, Some(1), "{}", plan.stdout);
    assert_says(&plan.stdout, "error [grace_period] preStop 0s + LASTCALL_BUDGET 25s = 25s is longer than terminationGracePeriodSeconds 20");
    assert_says(
        &plan.stdout,
        "fix: set terminationGracePeriodSeconds: 27, or LASTCALL_BUDGET=18s",
    );
    // The timeline shows SIGKILL landing before the budget's end.
    let kill = plan.stdout.find("SIGKILL").unwrap();
    let end = plan.stdout.find("budget ends").unwrap();
    assert!(kill < end, "{}", plan.stdout);
}

#[test]
fn a_pre_stop_sleep_counts_against_the_grace_period() {
    let manifest = shipped_with(
        "          terminationMessagePath:",
        "          lifecycle:\n            preStop:\n              exec:\n                command: [\"/bin/sh\", \"-c\", \"sleep 10\"]\n          terminationMessagePath:",
    );
    let plan = plan("prestop", &manifest, &[]);
    assert_eq!(plan.code, Some(1), "{}", plan.stdout);
    assert_says(&plan.stdout, "preStop hook runs (10s)");
    assert_says(&plan.stdout, "    10s  SIGTERM");
    assert_says(&plan.stdout, "preStop 10s + LASTCALL_BUDGET 25s = 35s");
    assert_says(&plan.stdout, "LASTCALL_BUDGET=18s");
}

#[test]
fn a_drain_delay_shorter_than_the_probes_detection_is_an_error() {
    let manifest = shipped_with(
        "            periodSeconds: 1\n            failureThreshold: 1",
        "            periodSeconds: 10\n            failureThreshold: 3",
    );
    let plan = plan("drain", &manifest, &[]);
    assert_eq!(plan.code, Some(1), "{}", plan.stdout);
    assert_says(&plan.stdout, "error [drain_delay]");
    assert_says(
        &plan.stdout,
        "periodSeconds 10 x failureThreshold 3 = 30s plus 3s of endpoint propagation = 33s",
    );
    assert_says(&plan.stdout, "fix: set LASTCALL_DRAIN_DELAY=33s");
}

#[test]
fn probes_on_the_wrong_paths_are_errors() {
    let manifest = shipped_with("path: /health/live", "path: /health/ready");
    let plan_live = plan("liveness", &manifest, &[]);
    assert_eq!(plan_live.code, Some(1), "{}", plan_live.stdout);
    assert_says(
        &plan_live.stdout,
        "error [liveness_probe] livenessProbe checks /health/ready",
    );
    assert_says(
        &plan_live.stdout,
        "fix: set livenessProbe.httpGet.path: /health/live",
    );

    let manifest = shipped_with("path: /health/ready", "path: /healthz");
    let plan_ready = plan("readiness", &manifest, &[]);
    assert_eq!(plan_ready.code, Some(1), "{}", plan_ready.stdout);
    assert_says(
        &plan_ready.stdout,
        "fix: set readinessProbe.httpGet.path: /health/ready",
    );
}

#[test]
fn settings_the_service_would_reject_are_errors() {
    let manifest = shipped_with("value: \"25s\"", "value: \"soon\"");
    let bad = plan("duration", &manifest, &[]);
    assert_eq!(bad.code, Some(1), "{}", bad.stdout);
    assert_says(
        &bad.stdout,
        "error [env] LASTCALL_BUDGET=\"soon\" is not a duration",
    );

    let manifest = shipped_with("value: \"25s\"", "value: \"8s\"");
    let small = plan("reserves", &manifest, &[]);
    assert_eq!(small.code, Some(1), "{}", small.stdout);
    assert_says(
        &small.stdout,
        "error [budget] the service would refuse to start",
    );
}

#[test]
fn unknown_lastcall_variables_are_flagged_as_the_service_would_refuse_them() {
    let typo = plan(
        "typo",
        &shipped_with("name: LASTCALL_DRAIN_DELAY", "name: LASTCALL_DRAIN_DEALY"),
        &[],
    );
    assert_eq!(typo.code, Some(1), "{}", typo.stdout);
    assert_says(&typo.stdout, "error [env] LASTCALL_DRAIN_DEALY is not a lastcall setting (did you mean LASTCALL_DRAIN_DELAY?)");
    assert_says(&typo.stdout, "fix: rename it to LASTCALL_DRAIN_DELAY");

    // A name of the application's own: a warning, which `--allow-env` answers.
    let manifest = shipped_with(
        "            - name: PORT\n",
        "            - name: LASTCALL_ORDERS_REGION\n              value: eu\n            - name: PORT\n",
    );
    let own = plan("own", &manifest, &[]);
    assert_eq!(own.code, Some(0), "a warning only: {}", own.stdout);
    assert_says(
        &own.stdout,
        "warning [env] LASTCALL_ORDERS_REGION is not a lastcall setting",
    );
    assert_says(&own.stdout, "--allow-env LASTCALL_ORDERS_REGION");
    let allowed = plan(
        "allowed",
        &manifest,
        &["--allow-env", "LASTCALL_ORDERS_REGION"],
    );
    assert_says(&allowed.stdout, "0 errors, 0 warnings");
}

#[test]
fn a_thin_margin_and_a_missing_report_file_are_warnings() {
    let manifest = shipped_with(
        "terminationGracePeriodSeconds: 30",
        "terminationGracePeriodSeconds: 26",
    )
    .replacen(
        "            - name: LASTCALL_REPORT_FILE\n              value: /dev/termination-log\n",
        "",
        1,
    );
    let plan = plan("warnings", &manifest, &[]);
    assert_eq!(plan.code, Some(0), "warnings only: {}", plan.stdout);
    assert_says(
        &plan.stdout,
        "warning [grace_period] only 1s between the end of the budget and SIGKILL",
    );
    assert_says(&plan.stdout, "warning [report_file]");
    assert_says(&plan.stdout, "0 errors, 2 warnings");
}

#[test]
fn a_file_without_a_workload_or_container_is_refused_with_status_2() {
    let service = "apiVersion: v1\nkind: Service\nmetadata:\n  name: demo\n";
    let none = plan("service", service, &[]);
    assert_eq!(none.code, Some(2));
    assert!(
        none.stderr
            .contains("no Deployment, StatefulSet, DaemonSet, ReplicaSet, Pod in the file"),
        "{}",
        none.stderr
    );

    let wrong = plan("container", SHIPPED, &["--container", "sidecar"]);
    assert_eq!(wrong.code, Some(2));
    assert!(
        wrong
            .stderr
            .contains("has no container \"sidecar\"; its containers are demo"),
        "{}",
        wrong.stderr
    );

    let broken = plan("yaml", "kind: [Deployment", &[]);
    assert_eq!(broken.code, Some(2));
    assert!(
        broken.stderr.contains("not valid YAML"),
        "{}",
        broken.stderr
    );
}
