use std::io::Write as _;
use std::process::{Command, Stdio};

/// The files the repository ships, which the plan must pass.
const SHIPPED: &str = include_str!("../../../deploy/kubernetes/deployment.yaml");
const SHIPPED_COMPOSE: &str = include_str!("../../../deploy/compose/compose.yaml");
const SHIPPED_UNIT: &str = include_str!("../../../deploy/systemd/lastcall-demo.service");
const SHIPPED_ECS: &str = include_str!("../../../deploy/ecs/task-definition.json");
/// A pod with an Istio proxy listed before the application, and one meshed by Linkerd.
const ISTIO: &str = include_str!("fixtures/plan/istio.yaml");
const LINKERD: &str = include_str!("fixtures/plan/linkerd.yaml");

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

/// Runs `lastcall plan -` with `input` on its standard input.
fn plan_stdin(input: &str, args: &[&str]) -> Plan {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lastcall"))
        .args(["plan", "-"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
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

/// Asserts that `out` does not contain `needle`.
#[track_caller]
fn assert_not_says(out: &str, needle: &str) {
    assert!(!out.contains(needle), "{needle:?} is in:\n{out}");
}

/// `text` with `from` replaced by `to` (which must occur).
#[track_caller]
fn with(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "{from:?} is not in:\n{text}");
    text.replacen(from, to, 1)
}

/// The shipped manifest with `from` replaced by `to` (which must occur).
#[track_caller]
fn shipped_with(from: &str, to: &str) -> String {
    with(SHIPPED, from, to)
}

#[test]
fn the_shipped_manifest_passes_and_its_timeline_is_printed() {
    let plan = plan("shipped", SHIPPED, &[]);
    assert_eq!(plan.code, Some(0), "{}{}", plan.stdout, plan.stderr);
    for line in [
        "(Deployment lastcall-demo, container demo)",
        "     0s  SIGTERM: readiness answers 503, requests are still served (drain delay 5s)",
        "     5s  stop accepting",
        "  19.2s  in-flight work must be done",
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
    let short = plan("grace", &manifest, &[]);
    assert_eq!(short.code, Some(1), "{}", short.stdout);
    assert_says(&short.stdout, "error [grace_period] preStop 0s + LASTCALL_BUDGET 25s = 25s is longer than terminationGracePeriodSeconds 20");
    assert_says(
        &short.stdout,
        "fix: set terminationGracePeriodSeconds: 27, or LASTCALL_BUDGET=18s",
    );
    // No budget fits under a 5 s drain delay in 6 s: the fix offers only the grace period.
    let tight = shipped_with(
        "terminationGracePeriodSeconds: 30",
        "terminationGracePeriodSeconds: 6",
    );
    let tight = plan("grace-tight", &tight, &[]);
    assert_says(
        &tight.stdout,
        "fix: set terminationGracePeriodSeconds: 27\n",
    );
    // The timeline shows SIGKILL landing before the budget's end.
    let kill = short.stdout.find("SIGKILL").unwrap();
    let end = short.stdout.find("budget ends").unwrap();
    assert!(kill < end, "{}", short.stdout);
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
        "error [env] the service would refuse to start: LASTCALL_BUDGET=\"soon\" is not a duration",
    );
    assert_says(&bad.stdout, "fix: set LASTCALL_BUDGET to a duration");

    // A 6 s budget under a 5 s drain delay: even reserves scaled to it do not fit.
    let manifest = shipped_with("value: \"25s\"", "value: \"6s\"");
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

    // A near miss of the prefix is not read: a warning with the rename.
    let prefix = plan(
        "prefix",
        &shipped_with("name: LASTCALL_DRAIN_DELAY", "name: LASTCAL_DRAIN_DELAY"),
        &[],
    );
    assert_says(&prefix.stdout, "warning [env] LASTCAL_DRAIN_DELAY is not read (did you mean LASTCALL_DRAIN_DELAY? names are case-sensitive)");
    assert_says(&prefix.stdout, "fix: rename it to LASTCALL_DRAIN_DELAY");
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
        none.stderr.contains(
            "no Deployment, StatefulSet, DaemonSet, ReplicaSet, Rollout, Pod in the file"
        ),
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

// Kubernetes: choosing the container, sidecars, signals, probes.

#[test]
fn a_sidecar_listed_first_is_passed_over_for_the_container_with_lastcall_settings() {
    let plan = plan("istio", ISTIO, &[]);
    assert_eq!(plan.code, Some(0), "{}{}", plan.stdout, plan.stderr);
    assert_says(&plan.stdout, "(Deployment orders, container orders)");
    // The proxy's own events are on the timeline.
    assert_says(
        &plan.stdout,
        "     0s  istio-proxy: SIGTERM, the proxy drains (terminationDrainDuration 35s)",
    );
    assert_says(&plan.stdout, "    35s  istio-proxy: exits");
}

#[test]
fn an_ambiguous_container_is_refused_with_status_2_and_the_list() {
    let two_apps = with(ISTIO, "- name: istio-proxy", "- name: cache");
    let none = plan(
        "ambiguous-none",
        &two_apps.replace("LASTCALL_", "ORDERS_"),
        &[],
    );
    assert_eq!(none.code, Some(2), "{}", none.stdout);
    assert_says(&none.stderr, "no container of Deployment orders carries LASTCALL_* variables, so the one that runs lastcall is ambiguous: its containers are cache, orders; choose it with --container NAME");

    let both = with(
        &two_apps,
        "          readinessProbe:\n            httpGet:\n              path: /healthz/ready",
        "          env:\n            - name: LASTCALL_BUDGET\n              value: 10s\n          readinessProbe:\n            httpGet:\n              path: /healthz/ready",
    );
    let several = plan("ambiguous-several", &both, &[]);
    assert_eq!(several.code, Some(2), "{}", several.stdout);
    assert_says(
        &several.stderr,
        "several containers of Deployment orders carry LASTCALL_* variables: cache, orders",
    );
    let chosen = plan("ambiguous-chosen", &both, &["--container", "orders"]);
    assert_says(&chosen.stdout, "(Deployment orders, container orders)");
}

#[test]
fn an_istio_proxy_that_exits_before_the_budget_ends_is_an_error_naming_its_setting() {
    let short = with(
        ISTIO,
        "terminationDrainDuration: 35s",
        "holdApplicationUntilProxyStarts: true",
    );
    let plan_short = plan("istio-short", &short, &[]);
    assert_eq!(plan_short.code, Some(1), "{}", plan_short.stdout);
    assert_says(&plan_short.stdout, "error [sidecar] istio-proxy exits 5s after the deletion (terminationDrainDuration 5s), but lastcall needs it until 30s");
    assert_says(&plan_short.stdout, "fix: set the pod annotation proxy.istio.io/config: '{\"terminationDrainDuration\": \"30s\"}'");
    assert_says(
        &plan_short.stdout,
        "     5s  istio-proxy: exits; connections through the mesh fail from here",
    );

    // EXIT_ON_ZERO_ACTIVE_CONNECTIONS keeps the proxy while connections are open.
    let exit_on_zero = with(
        ISTIO,
        "terminationDrainDuration: 35s",
        "proxyMetadata:\n            EXIT_ON_ZERO_ACTIVE_CONNECTIONS: \"true\"",
    );
    let zero = plan("istio-zero", &exit_on_zero, &[]);
    assert_eq!(zero.code, Some(0), "{}", zero.stdout);
    assert_says(
        &zero.stdout,
        "istio-proxy: exits once no connection is open",
    );

    // A native sidecar is stopped after the application: no drain to race.
    let native = with(
        &with(&short, "      containers:\n        - name: istio-proxy", "      initContainers:\n        - name: istio-proxy\n          restartPolicy: Always"),
        "          readinessProbe:\n            httpGet:\n              path: /healthz/ready\n              port: 15021\n            periodSeconds: 15\n",
        "      containers:\n",
    );
    let native = plan("istio-native", &native, &[]);
    assert_eq!(native.code, Some(0), "{}{}", native.stdout, native.stderr);
    assert_says(
        &native.stdout,
        "    30s  istio-proxy (native sidecar): SIGTERM once the application has exited",
    );
}

#[test]
fn a_linkerd_proxy_signalled_before_the_budget_ends_is_an_error() {
    let no_wait = with(
        LINKERD,
        "        config.alpha.linkerd.io/proxy-wait-before-exit-seconds: \"40\"\n",
        "",
    );
    let early = plan("linkerd-early", &no_wait, &[]);
    assert_eq!(early.code, Some(1), "{}", early.stdout);
    assert_says(&early.stdout, "error [sidecar] linkerd-proxy gets SIGTERM 0s after the deletion and refuses new connections from then on (shutdown-grace-period 60s only lets open ones finish), but lastcall runs until 30s (preStop 0s + LASTCALL_BUDGET 30s): requests still routed to the pod during the drain delay (lastcall accepts until 5s)");
    assert_says(&early.stdout, "fix: set the pod annotation config.alpha.linkerd.io/proxy-wait-before-exit-seconds: \"30\"");
    assert_says(
        &early.stdout,
        "     0s  linkerd-proxy: SIGTERM, the proxy refuses new connections",
    );

    // After the drain delay but before the budget's end: the application's own calls fail.
    let injected = with(
        &no_wait,
        "      containers:\n",
        "      containers:\n        - name: linkerd-proxy\n          image: cr.l5d.io/linkerd/proxy:edge-24.5.1\n          lifecycle:\n            preStop:\n              exec:\n                command: [\"/bin/sleep\", \"10\"]\n",
    );
    let midway = plan("linkerd-midway", &injected, &[]);
    assert_eq!(midway.code, Some(1), "{}", midway.stdout);
    assert_says(
        &midway.stdout,
        "linkerd-proxy gets SIGTERM 10s after the deletion",
    );
    assert_says(
        &midway.stdout,
        "the application's new outbound calls (a database connection, the telemetry flush) fail",
    );

    let good = plan("linkerd-good", LINKERD, &[]);
    assert_eq!(good.code, Some(0), "{}", good.stdout);
    assert_says(
        &good.stdout,
        "    40s  linkerd-proxy: SIGTERM, the proxy refuses new connections",
    );
}

#[test]
fn a_stop_signal_lastcall_does_not_listen_for_is_an_error() {
    let manifest = shipped_with(
        "          terminationMessagePath:",
        "          lifecycle:\n            stopSignal: SIGUSR1\n          terminationMessagePath:",
    );
    let usr1 = plan("stop-signal", &manifest, &[]);
    assert_eq!(usr1.code, Some(1), "{}", usr1.stdout);
    assert_says(&usr1.stdout, "error [stop_signal] lifecycle.stopSignal is SIGUSR1, which lastcall does not listen for (LASTCALL_SIGNALS SIGTERM,SIGINT): its default action ends the process at once, without a drain");
    assert_says(&usr1.stdout, "fix: set lifecycle.stopSignal: SIGTERM");
    assert_says(&usr1.stdout, "     0s  SIGUSR1: readiness answers 503");
    // The field needs the pod's operating system, which this manifest does not name.
    assert_says(&usr1.stdout, "error [stop_signal] lifecycle.stopSignal is set but the pod has no spec.os.name: the API server refuses the pod");

    let sigint = shipped_with(
        "          terminationMessagePath:",
        "          lifecycle:\n            stopSignal: SIGINT\n          terminationMessagePath:",
    )
    .replacen(
        "      containers:\n",
        "      os:\n        name: linux\n      containers:\n",
        1,
    );
    let sigint = plan("stop-sigint", &sigint, &[]);
    assert_eq!(sigint.code, Some(0), "{}", sigint.stdout);
    assert_says(&sigint.stdout, "     0s  SIGINT: readiness answers 503");
}

#[test]
fn a_signal_set_without_sigterm_is_one_error_the_service_would_refuse() {
    let manifest = shipped_with(
        "            - name: PORT\n",
        "            - name: LASTCALL_SIGNALS\n              value: SIGINT\n            - name: PORT\n",
    );
    let plan = plan("no-sigterm", &manifest, &[]);
    assert_eq!(plan.code, Some(1), "{}", plan.stdout);
    assert_says(
        &plan.stdout,
        "error [signals] the service would refuse to start: LASTCALL_SIGNALS is SIGINT",
    );
    assert_says(&plan.stdout, "1 errors, 0 warnings");
}

#[test]
fn a_probe_on_a_port_name_the_container_lacks_is_an_error() {
    let manifest = shipped_with("            - name: http\n", "            - name: web\n");
    let plan = plan("port-name", &manifest, &[]);
    assert_eq!(plan.code, Some(1), "{}", plan.stdout);
    assert_says(&plan.stdout, "error [probe_port] readinessProbe.httpGet uses port \"http\", which no port of the container is named (its named ports: web): the probe always fails");
    assert_says(
        &plan.stdout,
        "error [probe_port] livenessProbe.httpGet uses port \"http\"",
    );
}

#[test]
fn tcp_exec_and_grpc_readiness_probes_are_understood() {
    let ready =
        "            httpGet:\n              path: /health/ready\n              port: http\n";
    let tcp = plan(
        "tcp",
        &shipped_with(ready, "            tcpSocket:\n              port: http\n"),
        &[],
    );
    assert_eq!(tcp.code, Some(0), "{}", tcp.stdout);
    assert_says(&tcp.stdout, "warning [readiness_probe] readinessProbe is a tcpSocket probe: it passes until the listener closes");

    let exec = plan(
        "exec",
        &shipped_with(ready, "            exec:\n              command: [\"curl\", \"-fsS\", \"http://127.0.0.1:8080/health/ready\"]\n"),
        &[],
    );
    assert_eq!(exec.code, Some(0), "{}", exec.stdout);
    assert_says(&exec.stdout, "0 errors, 0 warnings");
    let opaque = plan(
        "exec-opaque",
        &shipped_with(
            ready,
            "            exec:\n              command: [\"/bin/check\"]\n",
        ),
        &[],
    );
    assert_says(
        &opaque.stdout,
        "warning [readiness_probe] readinessProbe runs `/bin/check`",
    );

    let grpc = plan(
        "grpc",
        &shipped_with(ready, "            grpc:\n              port: 8080\n"),
        &[],
    );
    assert_eq!(grpc.code, Some(0), "{}", grpc.stdout);
    assert_says(&grpc.stdout, "0 errors, 0 warnings");
}

#[test]
fn helm_output_on_standard_input_is_checked_at_the_workload_carrying_lastcall() {
    let redis = "---\napiVersion: apps/v1\nkind: StatefulSet\nmetadata:\n  name: redis\nspec:\n  template:\n    spec:\n      containers:\n        - name: redis\n          image: redis:7\n";
    let chart = format!("---\n# Source: orders/templates/service.yaml\napiVersion: v1\nkind: Service\nmetadata:\n  name: orders\n{redis}---\n{SHIPPED}");
    let plan = plan_stdin(&chart, &[]);
    assert_eq!(plan.code, Some(0), "{}{}", plan.stdout, plan.stderr);
    assert_says(
        &plan.stdout,
        "lastcall plan: standard input (Deployment lastcall-demo, container demo)",
    );

    let picked = plan_stdin(&chart, &["--workload", "StatefulSet/redis"]);
    assert_says(&picked.stdout, "(StatefulSet redis, container redis)");
    let two = plan_stdin(
        &format!(
            "{SHIPPED}---\n{}",
            SHIPPED.replace("name: lastcall-demo", "name: orders")
        ),
        &[],
    );
    assert_eq!(two.code, Some(2), "{}", two.stdout);
    assert_says(&two.stderr, "several workloads have containers with LASTCALL_* variables: Deployment/lastcall-demo, Deployment/orders; choose one with --workload NAME");
}

#[test]
fn json_output_has_a_versioned_schema_with_the_timeline_and_findings() {
    let manifest = shipped_with(
        "terminationGracePeriodSeconds: 30",
        "terminationGracePeriodSeconds: 20",
    );
    let plan = plan("json", &manifest, &["--json"]);
    assert_eq!(plan.code, Some(1), "{}", plan.stdout);
    let doc: serde_json::Value = serde_json::from_str(&plan.stdout).unwrap();
    assert_eq!(doc["schema"], "lastcall-plan/1");
    assert_eq!(doc["platform"], "kubernetes");
    assert_eq!(doc["subject"], "Deployment lastcall-demo, container demo");
    assert_eq!(doc["budget"]["total_ms"], 25000.0);
    assert_eq!(doc["errors"], 1);
    assert_eq!(doc["findings"][0]["severity"], "error");
    assert_eq!(doc["findings"][0]["check"], "grace_period");
    assert_says(
        doc["findings"][0]["fix"].as_str().unwrap(),
        "set terminationGracePeriodSeconds: 27",
    );
    let timeline = doc["timeline"].as_array().unwrap();
    let kill = timeline
        .iter()
        .find(|e| e["event"].as_str().unwrap().starts_with("SIGKILL"))
        .unwrap();
    assert_eq!(kill["at_ms"], 20000);
}

// Docker Compose.

#[test]
fn the_shipped_compose_file_passes_and_its_timeline_is_printed() {
    let plan = plan("compose", SHIPPED_COMPOSE, &[]);
    assert_eq!(plan.code, Some(0), "{}{}", plan.stdout, plan.stderr);
    for line in [
        "(Compose service orders)",
        "shutdown timeline, from docker compose stop:",
        "     0s  SIGTERM: readiness answers 503",
        "    25s  budget ends (LASTCALL_BUDGET 25s)",
        "    30s  SIGKILL (stop_grace_period 30s; margin 5s)",
        "no findings",
    ] {
        assert_says(&plan.stdout, line);
    }
}

#[test]
fn a_budget_past_compose_default_grace_is_an_error() {
    let file = with(SHIPPED_COMPOSE, "    stop_grace_period: 30s\n", "");
    let plan = plan("compose-grace", &file, &[]);
    assert_eq!(plan.code, Some(1), "{}", plan.stdout);
    assert_says(&plan.stdout, "error [grace_period] LASTCALL_BUDGET 25s is longer than stop_grace_period 10s: Docker sends SIGKILL before lastcall has finished");
    assert_says(
        &plan.stdout,
        "fix: set stop_grace_period: 27s, or LASTCALL_BUDGET=8s",
    );
}

#[test]
fn a_compose_stop_signal_lastcall_does_not_listen_for_is_an_error() {
    let file = with(
        SHIPPED_COMPOSE,
        "stop_signal: SIGTERM",
        "stop_signal: SIGQUIT",
    );
    let plan = plan("compose-signal", &file, &[]);
    assert_eq!(plan.code, Some(1), "{}", plan.stdout);
    assert_says(
        &plan.stdout,
        "error [stop_signal] stop_signal is SIGQUIT, which lastcall does not listen for",
    );
    assert_says(
        &plan.stdout,
        "fix: set stop_signal: SIGTERM, or LASTCALL_SIGNALS=SIGTERM,SIGINT,SIGQUIT",
    );
}

#[test]
fn a_compose_shell_without_exec_and_a_missing_healthcheck_are_warnings() {
    let file = with(
        SHIPPED_COMPOSE,
        "command: [\"lastcall\", \"demo\"]",
        "command: [\"sh\", \"-c\", \"./migrate && lastcall demo\"]",
    );
    let start = file.find("    healthcheck:").unwrap();
    let end = file.find("    volumes:").unwrap();
    let file = format!("{}{}", &file[..start], &file[end..]);
    let warned = plan("compose-warnings", &file, &[]);
    assert_eq!(warned.code, Some(0), "warnings only: {}", warned.stdout);
    assert_says(
        &warned.stdout,
        "warning [stop_signal] command runs the service through `sh -c` without exec",
    );
    assert_says(
        &warned.stdout,
        "fix: start the script's last command with exec (`./migrate && exec lastcall demo`)",
    );
    assert_says(&warned.stdout, "warning [healthcheck] no healthcheck");
    assert_says(&warned.stdout, "0 errors, 2 warnings");

    let exec = with(
        &file,
        "./migrate && lastcall demo",
        "./migrate && exec lastcall demo",
    );
    assert_not_says(&plan("compose-exec", &exec, &[]).stdout, "[stop_signal]");
}

#[test]
fn compose_services_are_chosen_by_their_lastcall_settings() {
    let file = format!(
        "{}  worker:\n    image: lastcall-demo:latest\n    environment:\n      - LASTCALL_BUDGET=${{WORKER_BUDGET:-20s}}\n\nvolumes:\n  orders-data: {{}}\n",
        SHIPPED_COMPOSE.split("\nvolumes:").next().unwrap().trim_end().to_owned() + "\n"
    );
    let both = plan("compose-two", &file, &[]);
    assert_eq!(both.code, Some(2), "{}", both.stdout);
    assert_says(
        &both.stderr,
        "several services of the Compose file carry LASTCALL_* variables: orders, worker",
    );
    // `${NAME:-default}` is read as its default.
    let worker = plan("compose-worker", &file, &["--service", "worker"]);
    assert_says(&worker.stdout, "budget ends (LASTCALL_BUDGET 20s)");
    assert_says(
        &worker.stdout,
        "error [grace_period] LASTCALL_BUDGET 20s is longer than stop_grace_period 10s",
    );
}

// systemd.

#[test]
fn the_shipped_unit_passes_and_its_timeline_is_printed() {
    let plan = plan("unit", SHIPPED_UNIT, &[]);
    assert_eq!(plan.code, Some(0), "{}{}", plan.stdout, plan.stderr);
    for line in [
        "(systemd service: lastcall demo (orders service))",
        "     0s  systemctl stop: SIGTERM to the main process (KillMode=mixed)",
        "    25s  budget ends",
        "    30s  SIGKILL (TimeoutStopSec 30s; margin 5s)",
        "no findings",
    ] {
        assert_says(&plan.stdout, line);
    }
}

#[test]
fn a_budget_past_timeout_stop_sec_is_an_error_naming_both_remedies() {
    let unit = with(SHIPPED_UNIT, "TimeoutStopSec=30s", "TimeoutStopSec=20s");
    let short = plan("unit-timeout", &unit, &[]);
    assert_eq!(short.code, Some(1), "{}", short.stdout);
    assert_says(&short.stdout, "error [grace_period] LASTCALL_BUDGET 25s is longer than TimeoutStopSec 20s: systemd sends SIGKILL before lastcall has finished");
    assert_says(&short.stdout, "fix: set TimeoutStopSec=27s, or LASTCALL_BUDGET=18s; or keep it and rely on lastcall::systemd::notify, whose EXTEND_TIMEOUT_USEC extends the timeout");

    // Absent, TimeoutStopSec is systemd's default of 90 s.
    let unit = with(SHIPPED_UNIT, "TimeoutStopSec=30s\n", "")
        .replace("LASTCALL_BUDGET=25s", "LASTCALL_BUDGET=2min")
        .replace("Type=notify\nNotifyAccess=main\n", "");
    let plan = plan("unit-default", &unit, &[]);
    assert_eq!(plan.code, Some(1), "{}", plan.stdout);
    assert_says(
        &plan.stdout,
        "    90s  SIGKILL (TimeoutStopSec 90s, the default",
    );
    assert_says(
        &plan.stdout,
        "LASTCALL_BUDGET 120s is longer than TimeoutStopSec 90s",
    );
    assert_says(
        &plan.stdout,
        "or, if the service calls lastcall::systemd::notify, set Type=notify",
    );
}

#[test]
fn a_kill_signal_lastcall_does_not_listen_for_is_an_error() {
    let unit = with(SHIPPED_UNIT, "KillSignal=SIGTERM", "KillSignal=SIGWINCH");
    let plan = plan("unit-signal", &unit, &[]);
    assert_eq!(plan.code, Some(1), "{}", plan.stdout);
    assert_says(&plan.stdout, "error [stop_signal] KillSignal is SIGWINCH, which lastcall does not listen for (LASTCALL_SIGNALS SIGTERM,SIGINT): the process ignores it and is killed at the deadline");
    assert_says(&plan.stdout, "fix: set KillSignal=SIGTERM");
}

#[test]
fn kill_modes_that_leave_the_service_unsignalled_or_its_children_behind_are_flagged() {
    let none = plan(
        "unit-none",
        &with(SHIPPED_UNIT, "KillMode=mixed", "KillMode=none"),
        &[],
    );
    assert_eq!(none.code, Some(1), "{}", none.stdout);
    assert_says(
        &none.stdout,
        "error [kill_mode] KillMode=none and no ExecStop: systemctl stop sends no signal",
    );
    let process = plan(
        "unit-process",
        &with(SHIPPED_UNIT, "KillMode=mixed", "KillMode=process"),
        &[],
    );
    assert_eq!(process.code, Some(0), "{}", process.stdout);
    assert_says(&process.stdout, "warning [kill_mode] KillMode=process");
    assert_says(&process.stdout, "fix: set KillMode=mixed");
}

#[test]
fn type_notify_with_notifications_refused_is_an_error() {
    let plan = plan(
        "unit-notify",
        &with(SHIPPED_UNIT, "NotifyAccess=main", "NotifyAccess=none"),
        &[],
    );
    assert_eq!(plan.code, Some(1), "{}", plan.stdout);
    assert_says(
        &plan.stdout,
        "error [notify] Type=notify with NotifyAccess=none: systemd ignores READY=1",
    );
    assert_says(&plan.stdout, "fix: set NotifyAccess=main");
}

#[test]
fn a_reload_by_sighup_is_flagged_as_a_shutdown_or_a_kill() {
    let reload = with(
        SHIPPED_UNIT,
        "KillSignal=SIGTERM",
        "ExecReload=/bin/kill -HUP $MAINPID\nKillSignal=SIGTERM",
    );
    let killed = plan("unit-reload", &reload, &[]);
    assert_eq!(killed.code, Some(0), "{}", killed.stdout);
    assert_says(&killed.stdout, "warning [reload] ExecReload=/bin/kill -HUP $MAINPID sends SIGHUP, which only a service built with lastcall's `restart` feature handles");
    let trigger = with(
        &reload,
        "Environment=LASTCALL_BUDGET=25s",
        "Environment=LASTCALL_BUDGET=25s \"LASTCALL_SIGNALS=SIGTERM, SIGHUP\"",
    );
    let stopped = plan("unit-reload-trigger", &trigger, &[]);
    assert_eq!(stopped.code, Some(1), "{}", stopped.stdout);
    assert_says(&stopped.stdout, "error [reload] ExecReload=/bin/kill -HUP $MAINPID sends SIGHUP, which LASTCALL_SIGNALS SIGTERM,SIGHUP makes a shutdown trigger");
    // Another restart signal, or none: the reload's SIGHUP kills the process.
    let usr2 = with(
        &reload,
        "Environment=LASTCALL_BUDGET=25s",
        "Environment=LASTCALL_BUDGET=25s LASTCALL_RESTART_SIGNAL=SIGUSR2",
    );
    let killed = plan("unit-reload-usr2", &usr2, &[]);
    assert_eq!(killed.code, Some(1), "{}", killed.stdout);
    assert_says(&killed.stdout, "error [reload] ExecReload=/bin/kill -HUP $MAINPID sends SIGHUP, but LASTCALL_RESTART_SIGNAL=SIGUSR2 makes SIGUSR2 the restart signal: SIGHUP's default action ends the process at once");
    assert_says(
        &killed.stdout,
        "fix: make ExecReload send SIGUSR2 (/bin/kill -USR2 $MAINPID)",
    );
    let off = with(
        &reload,
        "Environment=LASTCALL_BUDGET=25s",
        "Environment=LASTCALL_BUDGET=25s LASTCALL_RESTART_SIGNAL=off",
    );
    let killed = plan("unit-reload-off", &off, &[]);
    assert_eq!(killed.code, Some(1), "{}", killed.stdout);
    assert_says(&killed.stdout, "error [reload] ExecReload=/bin/kill -HUP $MAINPID sends SIGHUP, but LASTCALL_RESTART_SIGNAL=off leaves it unhandled");
}

// Amazon ECS.

#[test]
fn the_shipped_task_definition_passes_behind_its_target_group() {
    let plan = plan("ecs", SHIPPED_ECS, &["--deregistration-delay", "30s"]);
    assert_eq!(plan.code, Some(0), "{}{}", plan.stdout, plan.stderr);
    for line in [
        "(task definition lastcall-demo, container orders)",
        "shutdown timeline, from the task's deregistration:",
        "     0s  the target deregisters",
        "    30s  SIGTERM: readiness answers 503",
        "    55s  budget ends",
        "    60s  SIGKILL (stopTimeout 30; margin 5s)",
        "no findings",
    ] {
        assert_says(&plan.stdout, line);
    }
}

#[test]
fn a_budget_past_the_stop_timeout_is_an_error_and_fargate_caps_it() {
    let long = with(SHIPPED_ECS, "\"value\": \"25s\"", "\"value\": \"45s\"");
    let default = plan(
        "ecs-default",
        &with(&long, "      \"stopTimeout\": 30,\n", ""),
        &[],
    );
    assert_eq!(default.code, Some(1), "{}", default.stdout);
    assert_says(&default.stdout, "error [grace_period] LASTCALL_BUDGET 45s is longer than stopTimeout 30: the ECS agent sends SIGKILL");
    assert_says(
        &default.stdout,
        "fix: set stopTimeout: 47 on container orders, or LASTCALL_BUDGET=28s",
    );

    let capped = plan(
        "ecs-fargate",
        &with(&long, "\"stopTimeout\": 30", "\"stopTimeout\": 150"),
        &[],
    );
    assert_eq!(capped.code, Some(1), "{}", capped.stdout);
    assert_says(
        &capped.stdout,
        "error [grace_period] stopTimeout is 150 but Fargate allows at most 120",
    );
}

#[test]
fn a_deregistration_delay_shorter_than_the_longest_request_is_an_error() {
    let plan = plan(
        "ecs-dereg",
        SHIPPED_ECS,
        &["--deregistration-delay", "30s", "--longest-request", "1m"],
    );
    assert_eq!(plan.code, Some(1), "{}", plan.stdout);
    assert_says(&plan.stdout, "error [deregistration_delay] the deregistration delay 30s is shorter than the longest request 60s (--longest-request)");
    assert_says(
        &plan.stdout,
        "fix: set the target group's deregistration_delay.timeout_seconds to 60",
    );
}

#[test]
fn an_ecs_health_check_on_readiness_and_a_secret_setting_are_warnings() {
    let file = with(SHIPPED_ECS, "/health/live", "/health/ready").replace(
        "      \"stopTimeout\"",
        "      \"secrets\": [{ \"name\": \"LASTCALL_DRAIN_DELAY\", \"valueFrom\": \"arn:aws:ssm:eu-west-1:123456789012:parameter/orders/drain\" }],\n      \"stopTimeout\"",
    );
    let plan = plan("ecs-warnings", &file, &[]);
    assert_eq!(plan.code, Some(0), "{}{}", plan.stdout, plan.stderr);
    assert_says(
        &plan.stdout,
        "warning [health_check] healthCheck requests /health/ready",
    );
    assert_says(
        &plan.stdout,
        "warning [env] LASTCALL_DRAIN_DELAY comes from secrets (valueFrom)",
    );
}

#[test]
fn a_regular_sidecar_is_a_warning_and_a_native_one_stops_after_the_application() {
    let proxy = "        - name: cloud-sql-proxy\n          image: gcr.io/cloud-sql-connectors/cloud-sql-proxy:2.11.0\n          args: [\"--port=5432\", \"orders:europe-west1:orders\"]\n";
    let regular = shipped_with(
        "      containers:\n",
        &format!("      containers:\n{proxy}"),
    );
    let warned = plan("regular-sidecar", &regular, &[]);
    assert_eq!(warned.code, Some(0), "{}{}", warned.stdout, warned.stderr);
    assert_says(
        &warned.stdout,
        "     0s  cloud-sql-proxy (regular sidecar): SIGTERM, with the application",
    );
    assert_says(&warned.stdout, "warning [sidecar] cloud-sql-proxy is a regular sidecar: the kubelet sends it SIGTERM with the application");
    assert_says(&warned.stdout, "fix: if the application uses cloud-sql-proxy while it drains, move it to initContainers with restartPolicy: Always");

    let native = shipped_with(
        "      containers:\n",
        &format!(
            "      initContainers:\n{proxy}          restartPolicy: Always\n      containers:\n"
        ),
    );
    let native = plan("native-sidecar", &native, &[]);
    assert_says(
        &native.stdout,
        "    25s  cloud-sql-proxy (native sidecar): SIGTERM once the application has exited",
    );
    assert_says(&native.stdout, "0 errors, 0 warnings");
}

#[test]
fn an_istio_proxy_asked_for_by_label_alone_is_a_warning_as_its_mode_is_the_injectors() {
    let labelled = shipped_with(
        "      labels:\n        app: lastcall-demo\n    spec:",
        "      labels:\n        app: lastcall-demo\n        sidecar.istio.io/inject: \"true\"\n    spec:",
    );
    let plan = plan("istio-label", &labelled, &[]);
    assert_eq!(plan.code, Some(0), "{}{}", plan.stdout, plan.stderr);
    assert_says(&plan.stdout, "warning [sidecar] istio-proxy exits 5s after the deletion (terminationDrainDuration 5s), if it is injected as a regular sidecar");
    assert_says(&plan.stdout, "sidecar.istio.io/nativeSidecar: \"true\"");
}

#[test]
fn a_json_manifest_and_variables_from_env_from_are_read() {
    // `kubectl get pod -o json`, indented with tabs as some JSON tools do.
    let pod = "{\n\t\"apiVersion\": \"v1\",\n\t\"kind\": \"Pod\",\n\t\"metadata\": {\"name\": \"orders-7d9f\"},\n\t\"spec\": {\n\t\t\"terminationGracePeriodSeconds\": 10,\n\t\t\"containers\": [{\n\t\t\t\"name\": \"orders\",\n\t\t\t\"envFrom\": [{\"configMapRef\": {\"name\": \"orders-shutdown\"}}],\n\t\t\t\"env\": [{\"name\": \"LASTCALL_BUDGET\", \"value\": \"25s\"}]\n\t\t}]\n\t}\n}\n";
    let plan = plan("json-pod", pod, &[]);
    assert_eq!(plan.code, Some(1), "{}{}", plan.stdout, plan.stderr);
    assert_says(&plan.stdout, "(Pod orders-7d9f, container orders)");
    assert_says(
        &plan.stdout,
        "LASTCALL_BUDGET 25s = 25s is longer than terminationGracePeriodSeconds 10",
    );
    assert_says(
        &plan.stdout,
        "warning [env] LASTCALL_* in envFrom may be set from a ConfigMap or Secret (envFrom)",
    );
    assert_says(
        &plan.stdout,
        "fix: set the LASTCALL_* variables in the file itself to have them checked",
    );
}

#[test]
fn an_ecs_sidecar_the_application_does_not_depend_on_is_a_warning() {
    let agent = "    {\n      \"name\": \"datadog-agent\",\n      \"image\": \"public.ecr.aws/datadog/agent:7\",\n      \"essential\": false\n    },\n    {\n      \"name\": \"orders\",";
    let file = with(SHIPPED_ECS, "    {\n      \"name\": \"orders\",", agent);
    let alone = plan("ecs-sidecar", &file, &[]);
    assert_eq!(alone.code, Some(0), "{}{}", alone.stdout, alone.stderr);
    assert_says(
        &alone.stdout,
        "(task definition lastcall-demo, container orders)",
    );
    assert_says(
        &alone.stdout,
        "     0s  datadog-agent: SIGTERM, with the application",
    );
    assert_says(
        &alone.stdout,
        "warning [sidecar] container datadog-agent gets SIGTERM with the application",
    );
    assert_says(&alone.stdout, "fix: if orders uses it while it drains, add \"dependsOn\": [{\"containerName\": \"datadog-agent\", \"condition\": \"START\"}] to orders");

    let ordered = with(
        &file,
        "      \"stopTimeout\": 30,",
        "      \"dependsOn\": [{ \"containerName\": \"datadog-agent\", \"condition\": \"START\" }],\n      \"stopTimeout\": 30,",
    );
    let ordered = plan("ecs-sidecar-ordered", &ordered, &[]);
    assert_says(
        &ordered.stdout,
        "    25s  datadog-agent: SIGTERM once the application has stopped (dependsOn)",
    );
    assert_says(&ordered.stdout, "0 errors, 0 warnings");
}

#[test]
fn an_exec_stop_is_read_as_the_signal_it_sends_or_flagged_as_untimed() {
    let quit = with(
        SHIPPED_UNIT,
        "KillSignal=SIGTERM",
        "ExecStop=/bin/kill -s QUIT $MAINPID\nKillSignal=SIGTERM",
    );
    let quit = plan("unit-execstop-quit", &quit, &[]);
    assert_eq!(quit.code, Some(1), "{}", quit.stdout);
    assert_says(
        &quit.stdout,
        "error [stop_signal] the signal ExecStop sends is QUIT, which lastcall does not listen for",
    );

    let term = with(
        SHIPPED_UNIT,
        "KillSignal=SIGTERM",
        "ExecStop=/bin/kill $MAINPID\nKillSignal=SIGTERM",
    );
    assert_says(
        &plan("unit-execstop-term", &term, &[]).stdout,
        "0 errors, 0 warnings",
    );

    let script = with(
        SHIPPED_UNIT,
        "KillSignal=SIGTERM",
        "ExecStop=/usr/local/bin/orders-drain --wait\nKillSignal=SIGTERM",
    );
    let script = plan("unit-execstop-script", &script, &[]);
    assert_eq!(script.code, Some(0), "{}", script.stdout);
    assert_says(&script.stdout, "warning [exec_stop] ExecStop=/usr/local/bin/orders-drain --wait runs before KillSignal and its time counts against TimeoutStopSec");
}

#[test]
fn behind_an_aws_load_balancer_a_short_deregistration_delay_is_an_error_on_kubernetes_too() {
    let short = plan("k8s-dereg", SHIPPED, &["--deregistration-delay", "10s"]);
    assert_eq!(short.code, Some(1), "{}", short.stdout);
    assert_says(&short.stdout, "    10s  the deregistration delay ends: requests still open through the load balancer are cut");
    assert_says(&short.stdout, "error [deregistration_delay] the deregistration delay 10s is shorter than the longest request 19.2s (the budget's wait-for-work deadline");
    assert_says(
        &short.stdout,
        "fix: set the target group's deregistration_delay.timeout_seconds to 20",
    );
    let enough = plan("k8s-dereg-ok", SHIPPED, &["--deregistration-delay", "300s"]);
    assert_eq!(enough.code, Some(0), "{}", enough.stdout);
}

// Settings the plan cannot read or time, on each platform.

#[test]
fn a_pre_stop_hook_that_is_not_a_sleep_and_a_missing_readiness_probe_are_warnings() {
    let manifest = shipped_with(
        "          terminationMessagePath:",
        "          lifecycle:\n            preStop:\n              httpGet:\n                path: /drain\n                port: http\n          terminationMessagePath:",
    );
    let start = manifest.find("          readinessProbe:").unwrap();
    let end = manifest.find("          livenessProbe:").unwrap();
    let manifest = format!("{}{}", &manifest[..start], &manifest[end..]);
    let warned = plan("untimed", &manifest, &[]);
    assert_eq!(warned.code, Some(0), "warnings only: {}", warned.stdout);
    assert_says(&warned.stdout, "warning [pre_stop] the preStop hook is not a sleep, so the plan cannot know how long it takes; it assumes 0s");
    assert_says(
        &warned.stdout,
        "warning [readiness_probe] no readinessProbe",
    );
    assert_says(&warned.stdout, "0 errors, 2 warnings");

    let elsewhere = plan(
        "liveness-elsewhere",
        &shipped_with("path: /health/live", "path: /healthz"),
        &[],
    );
    assert_eq!(elsewhere.code, Some(0), "{}", elsewhere.stdout);
    assert_says(
        &elsewhere.stdout,
        "warning [liveness_probe] livenessProbe checks /healthz, not lastcall's liveness route",
    );
}

#[test]
fn deadlines_that_are_not_durations_are_errors_naming_the_setting() {
    let k8s = plan(
        "grace-text",
        &shipped_with(
            "terminationGracePeriodSeconds: 30",
            "terminationGracePeriodSeconds: 30s",
        ),
        &[],
    );
    assert_eq!(k8s.code, Some(1), "{}", k8s.stdout);
    assert_says(
        &k8s.stdout,
        "error [grace_period] terminationGracePeriodSeconds is 30s, not a number of seconds",
    );

    let compose = plan(
        "compose-grace-text",
        &with(
            SHIPPED_COMPOSE,
            "stop_grace_period: 30s",
            "stop_grace_period: half a minute",
        ),
        &[],
    );
    assert_eq!(compose.code, Some(1), "{}", compose.stdout);
    assert_says(
        &compose.stdout,
        "error [grace_period] stop_grace_period is \"half a minute\", not a duration",
    );

    let unit = plan(
        "unit-timeout-text",
        &with(SHIPPED_UNIT, "TimeoutStopSec=30s", "TimeoutStopSec=soon"),
        &[],
    );
    assert_eq!(unit.code, Some(1), "{}", unit.stdout);
    assert_says(&unit.stdout, "error [grace_period] TimeoutStopSec=soon is not a time span; systemd ignores it and uses 90s");

    let ecs = plan(
        "ecs-timeout-text",
        &with(
            SHIPPED_ECS,
            "\"stopTimeout\": 30",
            "\"stopTimeout\": \"30s\"",
        ),
        &[],
    );
    assert_eq!(ecs.code, Some(1), "{}", ecs.stdout);
    assert_says(
        &ecs.stdout,
        "error [grace_period] stopTimeout is 30s, not a number of seconds",
    );

    let istio = plan(
        "istio-drain-text",
        &with(
            ISTIO,
            "terminationDrainDuration: 35s",
            "terminationDrainDuration: long",
        ),
        &[],
    );
    assert_says(
        &istio.stdout,
        "error [sidecar] proxy.istio.io/config terminationDrainDuration \"long\" is not a duration",
    );
    let linkerd = plan(
        "linkerd-grace-text",
        &with(
            LINKERD,
            "shutdown-grace-period: \"60s\"",
            "shutdown-grace-period: \"1 minute-ish\"",
        ),
        &[],
    );
    assert_says(&linkerd.stdout, "error [sidecar] config.linkerd.io/shutdown-grace-period \"1 minute-ish\" is not a duration");
}

#[test]
fn variables_the_plan_cannot_see_are_warnings_on_every_platform() {
    let compose = with(
        SHIPPED_COMPOSE,
        "      LASTCALL_DRAIN_DELAY: 0s\n",
        "      LASTCALL_DRAIN_DELAY:\n",
    )
    .replacen(
        "    stop_signal:",
        "    env_file: orders.env\n    stop_signal:",
        1,
    );
    let compose = plan("compose-unseen", &compose, &[]);
    assert_eq!(compose.code, Some(0), "{}", compose.stdout);
    assert_says(&compose.stdout, "warning [env] LASTCALL_DRAIN_DELAY takes its value from the shell that runs docker compose");
    assert_says(
        &compose.stdout,
        "warning [env] LASTCALL_* in env_file may be set in the env_file",
    );

    let unit = with(
        SHIPPED_UNIT,
        "Environment=LASTCALL_BUDGET=25s",
        "Environment=LASTCALL_BUDGET=25s\nEnvironmentFile=-/etc/default/orders",
    );
    let unit = plan("unit-unseen", &unit, &[]);
    assert_eq!(unit.code, Some(0), "{}", unit.stdout);
    assert_says(
        &unit.stdout,
        "warning [env] LASTCALL_* in EnvironmentFile may be set in -/etc/default/orders",
    );

    let k8s = shipped_with(
        "            - name: LASTCALL_DRAIN_DELAY\n              value: \"5s\"",
        "            - name: LASTCALL_DRAIN_DELAY\n              valueFrom:\n                configMapKeyRef: {name: orders, key: drain}",
    );
    let k8s = plan("k8s-unseen", &k8s, &[]);
    assert_says(&k8s.stdout, "warning [env] LASTCALL_DRAIN_DELAY comes from valueFrom; the plan assumes lastcall's default");
    assert_says(
        &k8s.stdout,
        "fix: give LASTCALL_DRAIN_DELAY a literal value to have it checked",
    );
}

#[test]
fn kill_mode_none_with_an_exec_stop_is_a_warning() {
    let unit = with(
        SHIPPED_UNIT,
        "KillMode=mixed",
        "KillMode=none\nExecStop=/usr/local/bin/orders-stop",
    );
    let plan = plan("unit-none-execstop", &unit, &[]);
    assert_eq!(plan.code, Some(0), "{}", plan.stdout);
    assert_says(
        &plan.stdout,
        "warning [kill_mode] KillMode=none: only ExecStop stops the service",
    );
    assert_says(
        &plan.stdout,
        "     0s  systemctl stop: ExecStop runs; KillMode=none sends no signal",
    );
}
