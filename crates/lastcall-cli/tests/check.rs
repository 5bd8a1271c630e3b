use std::process::Command;

use serde_json::Value;

use super::support;

/// What one run of `lastcall check --json` said.
struct Checked {
    code: Option<i32>,
    json: Value,
    stderr: String,
}

/// A scenario's verdict, as the JSON spells it.
#[derive(Debug, Clone, Copy)]
enum Verdict {
    Pass,
    Fail,
    Skip,
}

use Verdict::{Fail, Pass, Skip};

impl Verdict {
    fn as_str(self) -> &'static str {
        match self {
            Pass => "pass",
            Fail => "fail",
            Skip => "skip",
        }
    }
}

/// Runs `lastcall check --json` with `args`.
fn check(args: &[&str]) -> Checked {
    let output = support::lastcall()
        .arg("check")
        .arg("--json")
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let json = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("--json printed no JSON ({e}); stderr:\n{stderr}"));
    Checked {
        code: output.status.code(),
        json,
        stderr,
    }
}

/// [`check`] of `bad_service.py` in `mode`, with a 3 s budget and `options` before the command.
fn check_fixture(mode: &str, options: &[&str]) -> Checked {
    let mut args = vec!["--budget", "3s"];
    args.extend_from_slice(options);
    args.extend_from_slice(&["--", "python3", FIXTURE, mode]);
    check(&args)
}

impl Checked {
    /// Asserts the checker's exit code: 0 when no scenario failed, 1 when one did.
    fn exits(&self, code: i32) -> &Checked {
        assert_eq!(self.code, Some(code), "{:#}\n{}", self.json, self.stderr);
        self
    }

    /// The status and the reason of `scenario`.
    fn status(&self, scenario: &str) -> (&str, &str) {
        let found = self.json["scenarios"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["scenario"] == scenario)
            .unwrap_or_else(|| panic!("no scenario {scenario} in {}", self.json));
        (
            found["status"].as_str().unwrap(),
            found["reason"].as_str().unwrap_or(""),
        )
    }

    /// Asserts that `scenario` ended as `verdict` with a reason that holds each of `says`
    /// (`a|b`: one of them).
    fn graded(&self, scenario: &str, verdict: Verdict, says: &[&str]) -> &Checked {
        let (status, reason) = self.status(scenario);
        assert_eq!(status, verdict.as_str(), "{scenario}: {:#}", self.json);
        for text in says {
            assert!(
                text.split('|').any(|t| reason.contains(t)),
                "{scenario}: expected {text:?} in {reason:?} ({})",
                self.json["command"]
            );
        }
        self
    }
}

#[test]
fn check_passes_the_reference_service_on_every_scenario() {
    let html = std::env::temp_dir().join(format!("lastcall-check-{}.html", std::process::id()));
    let Checked { code, json, stderr } = check(&["--demo", "--html", html.to_str().unwrap()]);
    assert_eq!(json["schema"], "lastcall-check/2");
    assert_eq!(json["baseline_exit"], "exit 0", "{json:#}\n{stderr}");
    let scenarios = json["scenarios"].as_array().unwrap();
    assert_eq!(scenarios.len(), 14, "{json:#}");
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
    assert_eq!(page.matches("<section id=").count(), 14);
    assert_eq!(page.matches("<svg").count(), 14);
    assert!(page.contains("no scenario failed"));
    assert!(
        page.contains("14 passed, 0 failed, 0 skipped"),
        "the summary is at the top"
    );
    assert!(
        page.contains("SIGTERM (0 ms)"),
        "the signal is marked on the timelines, at the axis' zero"
    );
    assert!(page.contains("drain delay ("), "the drain delay is shaded");
    // The request the deadline cut is drawn red, with a bar at the cut, though the scenario
    // passed.
    let deadline = &page[page.find("<section id=\"deadline\"").unwrap()..];
    let deadline = &deadline[..deadline.find("</section>").unwrap()];
    assert!(deadline.contains(r##"fill="#d33""##), "{deadline}");
    assert!(!deadline.contains(r##"fill="#2a7""##), "{deadline}");
    assert!(deadline.contains(r##"stroke="#900""##), "{deadline}");
    assert_texts_inside_viewbox(&page);
}

/// Every `<text>` of every SVG in `page` lies inside its picture's `viewBox`, measured with the
/// pictures' monospace font (12 px: 7.2 px a character).
fn assert_texts_inside_viewbox(page: &str) {
    let attr = |tag: &str, name: &str| -> f64 {
        let key = format!(" {name}=\"");
        let start = tag
            .find(&key)
            .unwrap_or_else(|| panic!("no {name} in {tag}"))
            + key.len();
        let end = start + tag[start..].find('"').unwrap();
        tag[start..end].parse().unwrap()
    };
    let mut texts = 0;
    for svg in page.split("<svg").skip(1) {
        let svg = &svg[..svg.find("</svg>").unwrap()];
        let view = svg[svg.find("viewBox=\"").unwrap() + 9..]
            .split('"')
            .next()
            .unwrap();
        let view: Vec<f64> = view.split(' ').map(|n| n.parse().unwrap()).collect();
        for text in svg.split("<text").skip(1) {
            let tag = &text[..text.find('>').unwrap()];
            let content = &text[tag.len() + 1..text.find("</text>").unwrap()];
            let content = content
                .replace("&amp;", "&")
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"");
            let (x, y) = (attr(tag, "x"), attr(tag, "y"));
            let width = content.chars().count() as f64 * 7.2;
            assert!(
                !tag.contains("text-anchor"),
                "labels are laid out from their left end: {tag}"
            );
            assert!(
                x >= view[0] && x + width <= view[0] + view[2] + 0.5,
                "{content:?} runs outside the picture: x {x}..{} of {view:?}",
                x + width
            );
            assert!(
                y - 12.0 >= view[1] && y <= view[1] + view[3],
                "{content:?} at y {y} of {view:?}"
            );
            texts += 1;
        }
    }
    assert!(texts > 0, "no labels at all");
}

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/bad_service.py");

/// Whether the fixture services can run; they need python3 (fails instead under
/// `LCTEST_REQUIRE_SERVICES=1`).
fn python() -> bool {
    if Command::new("python3").arg("--version").output().is_ok() {
        return true;
    }
    assert!(
        std::env::var("LCTEST_REQUIRE_SERVICES").as_deref() != Ok("1"),
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
    let checked = check_fixture("exits-at-once", &[]);
    checked
        .exits(1)
        .graded("in_flight", Fail, &["instead of 200"])
        // It never says 503.
        .graded("readiness", Fail, &[])
        .graded("deadline", Fail, &["before budget"])
        .graded("sse", Fail, &["cut|reset"])
        // It does exit 0.
        .graded("exit_status", Pass, &[]);
    assert_eq!(checked.json["passed"], false);
}

#[test]
fn check_refuses_an_unknown_scenario_and_a_missing_command() {
    let output = support::lastcall()
        .args(["check", "--only", "everything", "--demo"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("unknown scenario \"everything\""),
        "{stderr}"
    );
    let output = support::lastcall().arg("check").output().unwrap();
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
            // The probe either gets its 200 or, racing the listener's close, is refused: the
            // same defect, named either way.
            "instead of 503|before readiness ever answered 503",
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
        check_fixture(mode, options)
            .exits(1)
            .graded(scenario, Fail, &[*expected]);
    }
    // What severs-sse gets right passes: verdicts are per scenario.
    check_fixture("severs-sse", &["--only", "exit_status,readiness"]).exits(0);
}

#[test]
fn check_passes_a_graceful_service_written_in_node() {
    if Command::new("node").arg("--version").output().is_err() {
        assert!(
            std::env::var("LCTEST_REQUIRE_SERVICES").as_deref() != Ok("1"),
            "node is required for the Node.js fixture"
        );
        eprintln!("skipping: node is missing");
        return;
    }
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/graceful.js");
    let checked = check(&["--budget", "3s", "--", "node", fixture]);
    assert!(
        checked.status("http2").1.contains("does not speak HTTP/2"),
        "{:#}",
        checked.json
    );
    let Checked { code, json, stderr } = checked;
    for scenario in json["scenarios"].as_array().unwrap() {
        // It has no WebSocket endpoint and speaks HTTP/1.1 only: skips, with the reason.
        let skipped = ["websocket", "http2"].contains(&scenario["scenario"].as_str().unwrap());
        let expected = if skipped { "skip" } else { "pass" };
        assert_eq!(
            scenario["status"], expected,
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

/// Waits, 10 s at most, until no process's command line holds `token`; `left` says what a
/// process still there is.
fn assert_none_left_with(token: &str, left: &str) {
    let since = std::time::Instant::now();
    while !processes_with(token).is_empty() {
        assert!(
            since.elapsed() < std::time::Duration::from_secs(10),
            "{left}: {:?}",
            processes_with(token)
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn interrupting_the_checker_leaves_no_service_behind() {
    if !python() {
        return;
    }
    let token = format!("lastcall-ctrl-c-test-{}", std::process::id());
    let mut checker = support::lastcall()
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
    assert_none_left_with(&token, "the service outlived the checker");
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
    let Checked { code, json, stderr } = check(&["--", example.to_str().unwrap()]);
    for scenario in json["scenarios"].as_array().unwrap() {
        // It has no WebSocket route: that scenario is a skip, saying so.
        if scenario["scenario"] == "websocket" && scenario["status"] == "skip" {
            let reason = scenario["reason"].as_str().unwrap();
            assert!(reason.contains("does not speak WebSocket"), "{reason}");
            continue;
        }
        assert_eq!(
            scenario["status"], "pass",
            "{scenario:#}\nstderr:\n{stderr}"
        );
    }
    assert_eq!(code, Some(0));
}

#[test]
fn check_fails_a_server_that_a_wrapper_shell_keeps_from_the_signal_and_names_exec() {
    if !python() {
        return;
    }
    // No `exec`: the shell gets SIGTERM and dies; the server keeps serving the port.
    let wrapped = format!("python3 {FIXTURE} graceful; true");
    let checked = check(&[
        "--budget",
        "3s",
        "--only",
        "in_flight,exit_status",
        "--",
        "sh",
        "-c",
        &wrapped,
    ]);
    checked.exits(1);
    for scenario in ["in_flight", "exit_status"] {
        checked.graded(scenario, Fail, &["still listens", "`exec`"]);
    }
    // The same server run directly, with its port passed as a flag through `{port}` (PORT is
    // set wrong on purpose), passes.
    check(&[
        "--budget",
        "3s",
        "--only",
        "in_flight,exit_status",
        "--env",
        "PORT=9",
        "--",
        "python3",
        FIXTURE,
        "graceful",
        "--port",
        "{port}",
    ])
    .exits(0);
}

#[test]
fn second_signal_sends_its_signals_into_a_request_in_flight_and_names_the_one_that_cut_it() {
    if !python() {
        return;
    }
    // Readiness says 200 until the work is done: signals sent once it changes come too late.
    check_fixture("second-signal-exits", &["--only", "second_signal"])
        .exits(1)
        .graded("second_signal", Fail, &["the SIGTERM sent", "cut it"]);
}

#[test]
fn second_signal_does_not_fail_a_service_for_its_last_moments_after_the_work_is_done() {
    if !python() {
        return;
    }
    // Default signal handlers for the last 300 ms of the exit, as a multi-process master's.
    check_fixture("lingers-at-exit", &["--only", "second_signal,exit_status"]).exits(0);
    // And with no repeated signal, there is nothing to grade.
    check_fixture(
        "graceful",
        &["--only", "second_signal", "--repeat-signal", "none"],
    )
    .exits(0)
    .graded("second_signal", Skip, &[]);
}

#[test]
fn deadline_fails_a_cut_that_exits_as_a_clean_shutdown_does_even_by_signal() {
    if !python() {
        return;
    }
    // Every exit is a re-raised SIGTERM, after a clean shutdown and after a cut alike.
    let checked = check_fixture("reraises", &["--only", "deadline,exit_status"]);
    checked
        .exits(1)
        .graded("deadline", Fail, &["the same as after a clean shutdown"])
        // Exit 0 is expected by default.
        .graded("exit_status", Fail, &["killed by SIGTERM"]);
    assert_eq!(checked.json["baseline_exit"], "killed by SIGTERM");
    // Death by the stop signal may be accepted as clean; the cut still fails.
    check_fixture(
        "reraises",
        &[
            "--only",
            "deadline,exit_status",
            "--expect-exit",
            "0,signal",
        ],
    )
    .graded("exit_status", Pass, &[])
    .graded("deadline", Fail, &[]);
    // The graceful mode exits 3 after a cut and 0 when clean: a pass.
    check_fixture("graceful", &["--only", "deadline"]).exits(0);
}

#[test]
fn a_cut_long_before_the_budget_fails_deadline_and_in_flight() {
    if !python() {
        return;
    }
    // It cuts at the drain delay + 1.2 s, with a 5 s budget.
    check(&[
        "--budget",
        "5s",
        "--only",
        "in_flight,deadline",
        "--",
        "python3",
        FIXTURE,
        "cuts-early",
    ])
    .exits(1)
    .graded("deadline", Fail, &["before budget", "at least 3000 ms"])
    .graded("in_flight", Fail, &["instead of 200"]);
}

#[test]
fn a_slow_path_that_answers_at_once_stops_the_check_before_any_verdict() {
    if !python() {
        return;
    }
    let output = support::lastcall()
        .args([
            "check",
            "--budget",
            "3s",
            "--",
            "python3",
            FIXTURE,
            "instant-slow",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--slow-path"), "{stderr}");
    assert!(stderr.contains("not after 400 ms"), "{stderr}");
    assert!(output.stdout.is_empty(), "no table: nothing was graded");
}

#[test]
fn keep_alive_scenarios_are_skipped_on_a_server_without_keep_alive() {
    if !python() {
        return;
    }
    let checked = check_fixture("no-keep-alive", &["--only", "idle_connections,keep_alive"]);
    checked.exits(0);
    for scenario in ["idle_connections", "keep_alive"] {
        checked.graded(scenario, Skip, &["no keep-alive"]);
    }
}

#[test]
fn no_drain_delay_grades_only_what_follows_the_close_on_the_reference_service() {
    let checked = check(&[
        "--demo",
        "--drain-delay",
        "0s",
        "--only",
        "keep_alive,readiness",
    ]);
    checked.exits(0).graded("keep_alive", Pass, &[]);
    // Readiness may be caught saying 503 in the instant before the listener closes, or not.
    assert_ne!(checked.status("readiness").0, "fail");
}

#[test]
fn a_start_failure_is_reported_once_with_the_services_stderr() {
    let output = support::lastcall()
        .args([
            "check",
            "--",
            "sh",
            "-c",
            "echo no-such-config >&2; exit 78",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.matches("no-such-config").count(), 1, "{stderr}");
    assert!(stderr.contains("exited (exit status: 78)"), "{stderr}");
}

#[test]
fn repeat_reports_the_worst_run_with_counts_and_json_may_go_to_a_file() {
    if !python() {
        return;
    }
    let file = std::env::temp_dir().join(format!("lastcall-check-{}.json", std::process::id()));
    let output = support::lastcall()
        .args([
            "check",
            "--budget",
            "3s",
            "--only",
            "exit_status,in_flight",
            "--repeat",
            "2",
        ])
        .arg("--json")
        .arg(&file)
        .args(["--", "python3", FIXTURE, "exits-at-once"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(
        table.contains("1 passed, 1 failed"),
        "the table still prints: {table}"
    );
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let _ = std::fs::remove_file(&file);
    let checked = Checked {
        code: output.status.code(),
        json,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    let (in_flight, reason) = checked.status("in_flight");
    assert_eq!(in_flight, "fail");
    assert!(reason.starts_with("failed 2 of 2 runs"), "{reason}");
    let json = &checked.json;
    let scenarios = json["scenarios"].as_array().unwrap();
    assert!(scenarios.iter().all(|s| s["runs"] == 2), "{json:#}");
}

#[test]
fn load_fails_requests_refused_while_readiness_still_said_200() {
    if !python() {
        return;
    }
    check_fixture("rejects-while-ready", &["--only", "load"])
        .exits(1)
        .graded("load", Fail, &["while readiness still answered 200"]);
    check_fixture("graceful", &["--only", "load"]).exits(0);
}

#[test]
fn load_fails_server_errors_after_the_signal_even_once_readiness_said_503() {
    if !python() {
        return;
    }
    check_fixture("errors-while-stopping", &["--only", "load"])
        .exits(1)
        .graded("load", Fail, &["answered with a server error", "500"]);
}

#[test]
fn slow_clients_fails_a_drain_that_waits_for_connections_without_a_whole_request() {
    if !python() {
        return;
    }
    check_fixture("waits-for-connections", &["--only", "slow_clients"])
        .exits(1)
        .graded("slow_clients", Fail, &["half-sent request head"]);
    check_fixture("graceful", &["--only", "slow_clients"]).exits(0);
}

#[test]
fn websocket_fails_a_session_cut_without_a_close_frame_and_skips_a_server_without_websockets() {
    if !python() {
        return;
    }
    check_fixture("severs-sse", &["--only", "websocket"])
        .exits(1)
        .graded("websocket", Fail, &["without a WebSocket close frame"]);
    check_fixture("graceful", &["--only", "websocket"])
        .exits(0)
        .graded("websocket", Pass, &[]);
    check_fixture(
        "graceful",
        &["--only", "websocket", "--ws-path", "/nowhere"],
    )
    .exits(0)
    .graded("websocket", Skip, &["does not speak WebSocket"]);
}

/// Whether node can run the Node.js fixtures (fails instead under `LCTEST_REQUIRE_SERVICES=1`).
fn node() -> bool {
    if Command::new("node").arg("--version").output().is_ok() {
        return true;
    }
    assert!(
        std::env::var("LCTEST_REQUIRE_SERVICES").as_deref() != Ok("1"),
        "node is required for the Node.js fixtures"
    );
    eprintln!("skipping: node is missing");
    false
}

#[test]
fn http2_fails_a_server_that_closes_its_connections_without_goaway() {
    if !node() {
        return;
    }
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/h2_service.js");
    check(&[
        "--budget", "3s", "--only", "http2", "--", "node", fixture, "abrupt",
    ])
    .exits(1)
    .graded("http2", Fail, &["without a GOAWAY"]);
    check(&[
        "--budget", "3s", "--only", "http2", "--", "node", fixture, "graceful",
    ])
    .exits(0);
}

#[test]
fn pre_stop_readiness_url_and_host_are_options_a_graceful_service_passes_with() {
    if !python() {
        return;
    }
    // Readiness from a URL (the service's own port through `{port}`; --ready-path would 404),
    // a preStop played before each signal, and the service's address by name.
    let checked = check(&[
        "--budget",
        "3s",
        "--only",
        "in_flight,readiness",
        "--pre-stop",
        "500ms",
        "--ready-url",
        "http://127.0.0.1:{port}/health/ready",
        "--ready-path",
        "/nowhere",
        "--host",
        "localhost",
        "--",
        "python3",
        FIXTURE,
        "graceful",
    ]);
    checked.exits(0);
    assert_eq!(checked.json["pre_stop_ms"], 500);
    assert_eq!(checked.json["host"], "127.0.0.1");
}

#[test]
fn a_server_that_documents_another_graceful_signal_gets_a_hint_when_sigterm_cuts_work() {
    if !python() {
        return;
    }
    // The shell's $0 names the server, as a wrapper script for nginx would.
    let exec = format!("exec python3 {FIXTURE} exits-at-once");
    let checked = check(&[
        "--budget",
        "3s",
        "--only",
        "in_flight",
        "--",
        "sh",
        "-c",
        &exec,
        "nginx",
    ]);
    let json = &checked.exits(1).json;
    let hint = json["hints"][0].as_str().unwrap_or_default();
    assert!(hint.contains("--signal SIGQUIT"), "{json:#}");
    // With the graceful signal, no hint.
    let Checked { json, .. } = check(&[
        "--budget",
        "3s",
        "--only",
        "in_flight",
        "--signal",
        "SIGQUIT",
        "--",
        "sh",
        "-c",
        &exec,
        "nginx",
    ]);
    assert_eq!(json["hints"].as_array().map(Vec::len), Some(0), "{json:#}");
}

const RESTART_FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/restart_service.py"
);

/// The `restart` entry of the scenario called `restart`.
fn restart_report(json: &Value) -> &Value {
    let found = json["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["scenario"] == "restart")
        .unwrap_or_else(|| panic!("no restart scenario in {json:#}"));
    &found["restart"]
}

#[test]
fn restart_passes_a_service_that_hands_its_listener_to_a_successor_and_leaves_none_behind() {
    if !python() {
        return;
    }
    let token = format!("lastcall-restart-test-{}", std::process::id());
    let pid_file = std::env::temp_dir().join(format!("{token}.pid"));
    let pid_env = format!("LASTCALL_PID_FILE={}", pid_file.display());
    let html = std::env::temp_dir().join(format!("{token}.html"));
    // The successor starts a session of its own: killing the group the checker started
    // would not reach it.
    let checked = check(&[
        "--budget",
        "3s",
        "--html",
        html.to_str().unwrap(),
        "--only",
        "exit_status",
        "--restart-signal",
        "HUP",
        "--pid-file",
        pid_file.to_str().unwrap(),
        "--env",
        &pid_env,
        "--",
        "python3",
        RESTART_FIXTURE,
        "hands-over",
        "--new-session",
        &token,
    ]);
    let _ = std::fs::remove_file(&pid_file);
    checked.exits(0).graded("restart", Pass, &[]);
    let json = &checked.json;
    assert_eq!(json["restart_signal"], "SIGHUP");
    let report = restart_report(json);
    assert_ne!(report["new_pid"], report["old_pid"], "{report:#}");
    assert_eq!(report["pid_file_pid"], report["new_pid"], "{report:#}");
    assert_eq!(report["successor_in_process_group"], false, "{report:#}");
    assert_eq!(report["old_exit"], "exit 0");
    assert_eq!(report["failed"], 0);
    assert!(report["requests"].as_u64().unwrap() > 0, "{report:#}");
    assert!(report["new_serving_ms"].is_u64(), "{report:#}");
    assert!(
        report["in_flight"].as_str().unwrap().starts_with("200"),
        "{report:#}"
    );
    // The checker killed the successor, which was outside its process group.
    assert_none_left_with(&token, "the successor outlived the check");
    // The HTML report has its section, with the signal and the successor on its timeline.
    let page = std::fs::read_to_string(&html).unwrap();
    let _ = std::fs::remove_file(&html);
    let section = &page[page.find("<section id=\"restart\"").unwrap()..];
    let section = &section[..section.find("</section>").unwrap()];
    assert!(section.contains("SIGHUP (0 ms)"), "{section}");
    assert!(section.contains("first answer from pid"), "{section}");
    assert_texts_inside_viewbox(&page);
    // Not in the default set: the other scenarios' JSON carries no restart entry.
    assert!(json["scenarios"][0].get("restart").is_none(), "{json:#}");
}

#[test]
fn restart_fails_a_restart_that_refuses_connections_stops_or_is_ignored_with_the_reason() {
    if !python() {
        return;
    }
    let cases: &[(&str, &[&str])] = &[
        // It closes its listener and re-executes itself, which binds the port anew.
        (
            "re-execs",
            &[
                "requests failed across the restart",
                "refused",
                "hand the listening socket itself to the successor",
            ],
        ),
        // No SIGHUP handler: the default action kills it.
        ("dies", &["killed by SIGHUP", "the restart is a stop"]),
        (
            "ignores",
            &[
                "alone still holds the listener",
                "the restart signal was ignored",
            ],
        ),
    ];
    for (mode, expected) in cases {
        check(&[
            "--budget",
            "3s",
            "--only",
            "restart",
            "--restart-timeout",
            "2s",
            "--",
            "python3",
            RESTART_FIXTURE,
            mode,
        ])
        .exits(1)
        .graded("restart", Fail, expected);
    }
}

#[test]
fn a_restart_signal_that_is_also_the_stop_signal_is_refused_before_anything_starts() {
    let output = support::lastcall()
        .args(["check", "--restart-signal", "TERM", "--demo"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--restart-signal SIGTERM is also the stop signal"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("preflight"),
        "nothing was started: {stderr}"
    );
}

#[test]
fn restart_kills_a_successor_that_never_became_ready_even_outside_its_process_group() {
    if !python() {
        return;
    }
    let token = format!("lastcall-never-ready-test-{}", std::process::id());
    // The successor drops the socket and waits forever, in a session of its own; the old
    // process would kill it only after 10 s, long after the check is over.
    let checked = check(&[
        "--budget",
        "3s",
        "--only",
        "restart",
        "--restart-timeout",
        "2s",
        "--",
        "python3",
        RESTART_FIXTURE,
        "never-ready",
        "--new-session",
        &token,
    ]);
    checked.exits(1).graded("restart", Fail, &["rolled back"]);
    assert_eq!(
        restart_report(&checked.json)["failed"],
        0,
        "the old process kept serving"
    );
    assert_none_left_with(&token, "the successor outlived the check");
}
