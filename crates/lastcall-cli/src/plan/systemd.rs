//! systemd: a service unit's `TimeoutStopSec`, `KillSignal`, `KillMode`, `Type`/`NotifyAccess`
//! and `ExecReload`.
//!
//! `systemctl stop` sends `KillSignal` (default SIGTERM) and SIGKILL after `TimeoutStopSec`
//! (default 90 s). A service that uses `lastcall::systemd::notify` under `Type=notify` sends
//! `EXTEND_TIMEOUT_USEC` while it drains, which moves that deadline; the plan cannot see from
//! the unit whether it does, so it checks the budget against `TimeoutStopSec` as written.

use std::time::Duration;

use lastcall::Signal;

use super::checks::{check_kill_deadline, check_stop_signal, signal_name, KillDeadline};
use super::service::service_events;
use super::value::{secs, split_quoted};
use super::{Checked, Event, Finding, Refusal, Service, Severity, Var};
use crate::flags::PlanArgs;

/// systemd's `DefaultTimeoutStopSec`.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(90);

/// Whether the text is a systemd unit file: it has a section header such as `[Service]`.
pub(super) fn is_unit(text: &str) -> bool {
    text.lines().any(|line| {
        matches!(
            line.trim(),
            "[Unit]" | "[Service]" | "[Install]" | "[Socket]" | "[Timer]"
        )
    })
}

pub(super) fn plan(text: &str, args: &PlanArgs) -> Result<Checked, Refusal> {
    let unit = Unit::parse(text);
    if !unit.has_service {
        return Err(Refusal(
            "a systemd unit without a [Service] section (a .socket or .timer?): give the .service unit that runs lastcall".into(),
        ));
    }
    let mut findings = Vec::new();
    let service = Service::from_env(&unit.env(), args, &mut findings);

    // `TimeoutSec=` sets the start and the stop timeouts at once.
    let timeout_key = if unit.get("TimeoutStopSec").is_none() && unit.get("TimeoutSec").is_some() {
        "TimeoutSec"
    } else {
        "TimeoutStopSec"
    };
    // `None`: infinity, no SIGKILL at all.
    let timeout = match unit.get(timeout_key) {
        None => Some(DEFAULT_TIMEOUT),
        Some(text) => {
            match timespan(text) {
                Ok(timeout) => timeout,
                Err(()) => {
                    findings.push(Finding {
                    severity: Severity::Error,
                    check: "grace_period",
                    problem: format!("{timeout_key}={text} is not a time span; systemd ignores it and uses 90s"),
                    fix: "set TimeoutStopSec=30s".into(),
                });
                    Some(DEFAULT_TIMEOUT)
                }
            }
        }
    };
    let kill_signal = unit.get("KillSignal").unwrap_or("SIGTERM").to_owned();
    let kill_mode = unit.get("KillMode").unwrap_or("control-group").to_owned();
    let unit_type = unit.get("Type").unwrap_or("simple").to_owned();
    let notify_access = unit.get("NotifyAccess").map(str::to_owned);
    let notifies = match notify_access.as_deref() {
        Some("none") => false,
        Some(_) => true,
        None => unit_type == "notify" || unit_type == "notify-reload",
    };

    let mut timeline = vec![Event {
        at: Duration::ZERO,
        what: match kill_mode.as_str() {
            "none" => "systemctl stop: ExecStop runs; KillMode=none sends no signal".into(),
            "control-group" => format!("systemctl stop: {kill_signal} to every process of the unit (KillMode=control-group)"),
            mode => format!("systemctl stop: {kill_signal} to the main process (KillMode={mode})"),
        },
    }];
    if let Some(stop) = unit.get("ExecStop").filter(|_| kill_mode != "none") {
        timeline.push(Event {
            at: Duration::ZERO,
            what: format!("ExecStop={stop} runs first; KillSignal follows when it returns"),
        });
    }
    timeline.extend(service_events(Duration::ZERO, &kill_signal, &service));
    if notifies {
        timeline.push(Event {
            at: Duration::ZERO,
            what: "a service using lastcall::systemd::notify sends STOPPING=1, then EXTEND_TIMEOUT_USEC while it drains".into(),
        });
    }
    match timeout {
        Some(at) => timeline.push(Event {
            at,
            what: format!(
                "SIGKILL ({timeout_key} {}{}; margin {})",
                secs(at),
                if unit.get(timeout_key).is_none() {
                    ", the default"
                } else {
                    ""
                },
                secs(at.saturating_sub(service.budget.total))
            ),
        }),
        None => timeline.push(Event {
            at: service.budget.total,
            what: format!(
                "no SIGKILL ({timeout_key}=infinity): lastcall's watchdog is the only deadline"
            ),
        }),
    }

    // 1. The budget fits TimeoutStopSec with a margin.
    if let Some(at) = timeout {
        let also = if notifies {
            "or keep it and rely on lastcall::systemd::notify, whose EXTEND_TIMEOUT_USEC extends the timeout while the service drains (the plan cannot see from the unit that the service calls it)".to_owned()
        } else {
            "or, if the service calls lastcall::systemd::notify, set Type=notify (NotifyAccess=main) so its EXTEND_TIMEOUT_USEC extends the timeout while it drains (the plan cannot see from the unit that it does)".to_owned()
        };
        check_kill_deadline(
            &KillDeadline {
                before: None,
                setting: format!("{timeout_key} {}", secs(at)),
                at,
                killer: "systemd",
                set: &|s| format!("set TimeoutStopSec={s}s"),
                also: &also,
            },
            &service,
            args.margin,
            &mut findings,
        );
    }
    // 2. The signal systemd sends is one lastcall listens for.
    if kill_mode != "none" {
        check_stop_signal(
            &kill_signal,
            "KillSignal",
            &|s| format!("set KillSignal={s}"),
            &service,
            &mut findings,
        );
    }
    // ExecStop runs before KillSignal: a `kill` of the main process makes its signal the stop
    // signal; anything else takes a time the plan cannot know, out of TimeoutStopSec.
    if let Some(stop) = unit.get("ExecStop").filter(|_| kill_mode != "none") {
        match sent_by(stop) {
            Some(signal) => check_stop_signal(
                &signal,
                "the signal ExecStop sends",
                &|s| format!("send {s} in ExecStop, or remove it (KillSignal={kill_signal} follows)"),
                &service,
                &mut findings,
            ),
            None => findings.push(Finding {
                severity: Severity::Warning,
                check: "exec_stop",
                problem: format!("ExecStop={stop} runs before KillSignal and its time counts against {timeout_key}; the plan assumes it returns at once"),
                fix: "remove ExecStop: KillSignal starts lastcall's shutdown".into(),
            }),
        }
    }
    // 3. KillMode: who gets the signal, and who is left at the timeout.
    match kill_mode.as_str() {
        "none" if unit.get("ExecStop").is_none() => findings.push(Finding {
            severity: Severity::Error,
            check: "kill_mode",
            problem: "KillMode=none and no ExecStop: systemctl stop sends no signal, so lastcall never starts its shutdown, and nothing ends the service".into(),
            fix: "set KillMode=mixed".into(),
        }),
        "none" => findings.push(Finding {
            severity: Severity::Warning,
            check: "kill_mode",
            problem: "KillMode=none: only ExecStop stops the service, which the plan cannot follow, and processes left behind are never killed".into(),
            fix: "set KillMode=mixed and drop ExecStop: the signal starts lastcall's shutdown".into(),
        }),
        "process" => findings.push(Finding {
            severity: Severity::Warning,
            check: "kill_mode",
            problem: "KillMode=process: at the timeout only the main process is killed; processes it started are left running".into(),
            fix: "set KillMode=mixed: the signal still goes to the main process alone, and SIGKILL to all".into(),
        }),
        _ => {}
    }
    // 4. Type=notify needs notifications to be accepted, or the start never completes.
    if unit_type == "notify" && notify_access.as_deref() == Some("none") {
        findings.push(Finding {
            severity: Severity::Error,
            check: "notify",
            problem: "Type=notify with NotifyAccess=none: systemd ignores READY=1, so the start times out (TimeoutStartSec) and the unit fails".into(),
            fix: "set NotifyAccess=main".into(),
        });
    }
    // 5. A reload by SIGHUP must not be a shutdown, nor kill the process.
    if let Some(reload) = unit.get("ExecReload").filter(|r| sends_hangup(r)) {
        if service.signals.contains(&Signal::Hangup) {
            findings.push(Finding {
                severity: Severity::Error,
                check: "reload",
                problem: format!("ExecReload={reload} sends SIGHUP, which LASTCALL_SIGNALS {} makes a shutdown trigger: systemctl reload stops the service", service.signal_list()),
                fix: "remove SIGHUP from LASTCALL_SIGNALS, or remove ExecReload".into(),
            });
        } else if service.restart_signal != Some(Signal::Hangup) {
            let (setting, fix) = match service.restart_signal {
                Some(signal) => (
                    format!("LASTCALL_RESTART_SIGNAL={signal} makes {signal} the restart signal"),
                    format!(
                        "make ExecReload send {signal} (/bin/kill -{} $MAINPID), or set LASTCALL_RESTART_SIGNAL=SIGHUP",
                        signal.as_str().trim_start_matches("SIG")
                    ),
                ),
                None => (
                    "LASTCALL_RESTART_SIGNAL=off leaves it unhandled".to_owned(),
                    "remove LASTCALL_RESTART_SIGNAL=off, or remove ExecReload".to_owned(),
                ),
            };
            findings.push(Finding {
                severity: Severity::Error,
                check: "reload",
                problem: format!("ExecReload={reload} sends SIGHUP, but {setting}: SIGHUP's default action ends the process at once, without a drain"),
                fix,
            });
        } else {
            findings.push(Finding {
                severity: Severity::Warning,
                check: "reload",
                problem: format!("ExecReload={reload} sends SIGHUP, which only a service built with lastcall's `restart` feature handles (a restart in place, its default LASTCALL_RESTART_SIGNAL): otherwise its default action ends the process at once, without a drain"),
                fix: "build the service with the `restart` feature (units in deploy/systemd/), or remove ExecReload".into(),
            });
        }
    }

    let subject = match &unit.description {
        Some(description) => format!("systemd service: {description}"),
        None => "systemd service".to_owned(),
    };
    Ok(Checked {
        platform: "systemd",
        subject,
        origin: "systemctl stop",
        service,
        timeline,
        findings,
    })
}

/// The `[Service]` section's assignments, in order (a key may repeat).
struct Unit {
    has_service: bool,
    /// `[Unit]`'s `Description=`.
    description: Option<String>,
    assignments: Vec<(String, String)>,
}

impl Unit {
    fn parse(text: &str) -> Unit {
        let mut section = String::new();
        let mut has_service = false;
        let mut assignments = Vec::new();
        let mut description = None;
        let mut pending = String::new();
        for raw in text.lines() {
            // A trailing backslash continues the line.
            if let Some(head) = raw.strip_suffix('\\') {
                pending.push_str(head);
                pending.push(' ');
                continue;
            }
            pending.push_str(raw);
            let line = std::mem::take(&mut pending);
            let line = line.trim();
            if line.is_empty() || line.starts_with(['#', ';']) {
                continue;
            }
            if line.starts_with('[') && line.ends_with(']') {
                section = line.to_owned();
                has_service |= section == "[Service]";
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let (key, value) = (key.trim(), value.trim());
            match section.as_str() {
                "[Service]" => assignments.push((key.to_owned(), value.to_owned())),
                "[Unit]" if key == "Description" => description = Some(value.to_owned()),
                _ => {}
            }
        }
        Unit {
            has_service,
            description,
            assignments,
        }
    }

    /// The last assignment of `key` (systemd: the last one wins); an empty one resets it.
    fn get(&self, key: &str) -> Option<&str> {
        self.assignments
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    /// `Environment=` lines (each may hold several, quoted, assignments) and a note for
    /// `EnvironmentFile=`, whose contents the plan does not read.
    fn env(&self) -> Vec<Var> {
        let mut vars = Vec::new();
        for (key, value) in &self.assignments {
            match key.as_str() {
                "Environment" if value.is_empty() => vars.clear(),
                "Environment" => {
                    for word in split_quoted(value) {
                        if let Some((name, value)) = word.split_once('=') {
                            vars.push(Var {
                                name: name.to_owned(),
                                value: Ok(value.to_owned()),
                            });
                        }
                    }
                }
                "EnvironmentFile" if !value.is_empty() => vars.push(Var {
                    name: "LASTCALL_* in EnvironmentFile".into(),
                    value: Err(format!(
                        "may be set in {value}, which the plan does not read"
                    )),
                }),
                _ => {}
            }
        }
        vars
    }
}

/// A systemd time span: `30`, `30s`, `1min 30s`, `500ms`, or `infinity` (`Ok(None)`).
fn timespan(text: &str) -> Result<Option<Duration>, ()> {
    let text = text.trim();
    if text == "infinity" {
        return Ok(None);
    }
    // A bare number is seconds.
    if let Ok(secs) = text.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).map(Some).map_err(|_| ());
    }
    humantime::parse_duration(text).map(Some).map_err(|_| ())
}

/// Whether an `ExecReload=` command sends SIGHUP (`kill -HUP $MAINPID`, `kill -s HUP ...`).
fn sends_hangup(command: &str) -> bool {
    sent_by(command).is_some_and(|s| signal_name(&s) == "SIGHUP")
}

/// The signal a `kill` command sends (`kill -HUP $MAINPID`, `kill -s QUIT ...`, `kill PID`:
/// SIGTERM), or `None` when the command is not a `kill`.
fn sent_by(command: &str) -> Option<String> {
    let words: Vec<&str> = command.split_whitespace().collect();
    let at = words.iter().position(|w| {
        w.trim_start_matches(['-', '@', ':', '+', '!'])
            .ends_with("kill")
    })?;
    let mut rest = words[at + 1..].iter();
    while let Some(word) = rest.next() {
        match *word {
            "-s" | "--signal" => return rest.next().map(|s| (*s).to_owned()),
            flag if flag.starts_with('-') && flag.len() > 1 => {
                return Some(flag[1..].to_owned());
            }
            _ => {}
        }
    }
    Some("SIGTERM".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_spans_are_read_as_systemd_reads_them() {
        assert_eq!(timespan("30"), Ok(Some(Duration::from_secs(30))));
        assert_eq!(timespan("1min 30s"), Ok(Some(Duration::from_secs(90))));
        assert_eq!(timespan("500ms"), Ok(Some(Duration::from_millis(500))));
        assert_eq!(timespan("infinity"), Ok(None));
        assert_eq!(timespan("soon"), Err(()));
    }

    #[test]
    fn the_signal_a_kill_command_sends_is_found() {
        assert_eq!(sent_by("/bin/kill -HUP $MAINPID").as_deref(), Some("HUP"));
        assert_eq!(
            sent_by("/bin/kill -s QUIT $MAINPID").as_deref(),
            Some("QUIT")
        );
        assert_eq!(
            sent_by("-/usr/bin/kill $MAINPID").as_deref(),
            Some("SIGTERM")
        );
        assert_eq!(sent_by("/usr/local/bin/orders-drain --wait"), None);
        assert!(sends_hangup("/bin/kill -1 $MAINPID"));
    }

    #[test]
    fn later_assignments_win_and_an_empty_environment_resets_the_list() {
        let unit = Unit::parse(
            "[Unit]\nDescription=orders\n[Service]\nEnvironment=A=1 B=2\nEnvironment=\nEnvironment=\"C=3 4\"\nTimeoutStopSec=10s\nTimeoutStopSec=20s\nExecStart=/bin/orders \\\n  --port 8080\n",
        );
        let names: Vec<(String, Result<String, String>)> =
            unit.env().into_iter().map(|v| (v.name, v.value)).collect();
        assert_eq!(names, [("C".to_owned(), Ok("3 4".to_owned()))]);
        assert_eq!(unit.get("TimeoutStopSec"), Some("20s"));
        assert_eq!(unit.get("ExecStart"), Some("/bin/orders    --port 8080"));
        assert_eq!(unit.description.as_deref(), Some("orders"));
    }
}
