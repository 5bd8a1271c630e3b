use std::process::Command;

use serde_json::Value;

/// Runs `lastcall check` with `args`; returns the exit code and the parsed `--json` output.
fn check(args: &[&str]) -> (Option<i32>, Value, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_lastcall"));
    command.arg("check").arg("--json").args(args);
    for (key, _) in std::env::vars() {
        if key.starts_with("LASTCALL_") && key != "LASTCALL_REQUIRE_SERVICES" {
            command.env_remove(key);
        }
    }
    let output = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let json = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("--json printed no JSON ({e}); stderr:\n{stderr}"));
    (output.status.code(), json, stderr)
}

fn status<'a>(json: &'a Value, scenario: &str) -> (&'a str, &'a str) {
    let found = json["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["scenario"] == scenario)
        .unwrap_or_else(|| panic!("no scenario {scenario} in {json}"));
    (
        found["status"].as_str().unwrap(),
        found["reason"].as_str().unwrap_or(""),
    )
}

#[test]
fn check_passes_the_reference_service_on_every_scenario() {
    let html = std::env::temp_dir().join(format!("lastcall-check-{}.html", std::process::id()));
    let (code, json, stderr) = check(&["--demo", "--html", html.to_str().unwrap()]);
    assert_eq!(json["schema"], "lastcall-check/1");
    let scenarios = json["scenarios"].as_array().unwrap();
    assert_eq!(scenarios.len(), 10, "{json:#}");
    for scenario in scenarios {
        assert_eq!(
            scenario["status"], "pass",
            "{scenario:#}\nstderr:\n{stderr}"
        );
    }
    assert_eq!(json["passed"], true);
    assert_eq!(code, Some(0));
    // The HTML report: one section and one timeline per scenario, with the signal on it.
    let page = std::fs::read_to_string(&html).unwrap();
    let _ = std::fs::remove_file(&html);
    assert_eq!(page.matches("<section>").count(), 10);
    assert_eq!(page.matches("<svg").count(), 10);
    assert!(page.contains("every scenario passed"));
    assert!(
        page.contains("SIGTERM ("),
        "the signal is marked on the timelines"
    );
}

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/bad_service.py");

/// Whether the fixture services can run; they need python3 (fails instead under
/// `LASTCALL_REQUIRE_SERVICES=1`).
fn python() -> bool {
    if Command::new("python3").arg("--version").output().is_ok() {
        return true;
    }
    assert!(
        std::env::var("LASTCALL_REQUIRE_SERVICES").as_deref() != Ok("1"),
        "python3 is required for the fixture services"
    );
    eprintln!("skipping: python3 is missing");
    false
}

#[test]
fn check_fails_a_service_that_exits_at_once_on_sigterm() {
    if !python() {
        return;
    }
    let (code, json, stderr) =
        check(&["--budget", "3s", "--", "python3", FIXTURE, "exits-at-once"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(json["passed"], false);
    let (in_flight, reason) = status(&json, "in_flight");
    assert_eq!(in_flight, "fail");
    assert!(reason.contains("instead of 200"), "{reason}");
    let (readiness, _) = status(&json, "readiness");
    assert_eq!(readiness, "fail", "it never says 503");
    let (deadline, reason) = status(&json, "deadline");
    assert_eq!(deadline, "fail");
    assert!(reason.contains("exited 0"), "{reason}");
    let (sse, reason) = status(&json, "sse");
    assert_eq!(sse, "fail");
    assert!(
        reason.contains("cut") || reason.contains("reset"),
        "{reason}"
    );
    assert_eq!(status(&json, "exit_status").0, "pass", "it does exit 0");
}

#[test]
fn check_refuses_an_unknown_scenario_and_a_missing_command() {
    let output = Command::new(env!("CARGO_BIN_EXE_lastcall"))
        .args(["check", "--only", "everything", "--demo"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("unknown scenario \"everything\""),
        "{stderr}"
    );
    let output = Command::new(env!("CARGO_BIN_EXE_lastcall"))
        .arg("check")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("nothing to check"));
}

#[test]
fn check_fails_each_broken_service_on_the_scenario_it_breaks_with_the_reason() {
    if !python() {
        return;
    }
    let cases: &[(&str, &[&str], &str, &str)] = &[
        (
            "never-unready",
            &["--only", "readiness"],
            "readiness",
            "instead of 503",
        ),
        (
            "hangs",
            &["--only", "deadline", "--tolerance", "1s"],
            "deadline",
            "no deadline of its own",
        ),
        (
            "resets",
            &["--only", "in_flight"],
            "in_flight",
            "connection reset",
        ),
        (
            "rejects-during-drain",
            &["--only", "keep_alive"],
            "keep_alive",
            "was not served",
        ),
        (
            "severs-sse",
            &["--only", "sse"],
            "sse",
            "without its final chunk",
        ),
    ];
    for (mode, options, scenario, expected) in cases {
        let mut args = vec!["--budget", "3s"];
        args.extend_from_slice(options);
        args.extend_from_slice(&["--", "python3", FIXTURE, mode]);
        let (code, json, stderr) = check(&args);
        assert_eq!(code, Some(1), "{mode}: {json:#}\n{stderr}");
        let (status, reason) = status(&json, scenario);
        assert_eq!(status, "fail", "{mode}: {json:#}");
        assert!(
            reason.contains(expected),
            "{mode}: expected {expected:?} in {reason:?}"
        );
    }
    // What severs-sse gets right passes: verdicts are per scenario.
    let (code, json, _) = check(&[
        "--budget",
        "3s",
        "--only",
        "exit_status,readiness",
        "--",
        "python3",
        FIXTURE,
        "severs-sse",
    ]);
    assert_eq!(code, Some(0), "{json:#}");
}

#[test]
fn check_passes_a_graceful_service_written_in_node() {
    if Command::new("node").arg("--version").output().is_err() {
        assert!(
            std::env::var("LASTCALL_REQUIRE_SERVICES").as_deref() != Ok("1"),
            "node is required for the Node.js fixture"
        );
        eprintln!("skipping: node is missing");
        return;
    }
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/graceful.js");
    let (code, json, stderr) = check(&["--budget", "3s", "--", "node", fixture]);
    for scenario in json["scenarios"].as_array().unwrap() {
        assert_eq!(
            scenario["status"], "pass",
            "{scenario:#}\nstderr:\n{stderr}"
        );
    }
    assert_eq!(code, Some(0));
}

/// The pids of processes whose command line contains `token`.
fn processes_with(token: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(token))
        })
        .collect()
}

#[test]
fn interrupting_the_checker_leaves_no_service_behind() {
    if !python() {
        return;
    }
    let token = format!("lastcall-ctrl-c-test-{}", std::process::id());
    let mut checker = Command::new(env!("CARGO_BIN_EXE_lastcall"))
        .args([
            "check", "--budget", "30s", "--only", "deadline", "--", "python3", FIXTURE, "hangs",
            &token,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The checker's own command line holds the token too: wait for another process, the service.
    let service = || -> Vec<u32> {
        processes_with(&token)
            .into_iter()
            .filter(|pid| *pid != checker.id())
            .collect()
    };
    let started = std::time::Instant::now();
    while service().is_empty() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "the service never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(checker.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    assert_eq!(checker.wait().unwrap().code(), Some(130));
    let stopped = std::time::Instant::now();
    while !processes_with(&token).is_empty() {
        assert!(
            stopped.elapsed() < std::time::Duration::from_secs(10),
            "the service outlived the checker: {:?}",
            processes_with(&token)
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn check_passes_the_readme_s_first_example_on_every_scenario() {
    // `crates/lastcall/examples/05_service.rs`, built by `cargo test --workspace`.
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_lastcall"));
    let example = bin
        .parent()
        .expect("target/<profile>")
        .join("examples")
        .join("05_service");
    assert!(
        example.exists(),
        "{} is missing: run `cargo test --workspace`, which builds lastcall's examples",
        example.display()
    );
    let (code, json, stderr) = check(&["--", example.to_str().unwrap()]);
    for scenario in json["scenarios"].as_array().unwrap() {
        assert_eq!(
            scenario["status"], "pass",
            "{scenario:#}\nstderr:\n{stderr}"
        );
    }
    assert_eq!(code, Some(0));
}
