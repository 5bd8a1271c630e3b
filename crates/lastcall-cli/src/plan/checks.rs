//! The rules every platform shares: the kill deadline over the budget, the load balancer's
//! deregistration delay, the stop signal, and a shell that does not pass the signal on.

use std::time::Duration;

use lastcall::Signal;

use super::value::{ceil_secs, secs};
use super::{Finding, Service, Severity};
use crate::flags::PlanArgs;

/// The platform's deadline for the service and how to move it, for [`check_kill_deadline`].
pub(super) struct KillDeadline<'a> {
    /// Time spent before the stop signal that counts against the deadline (a preStop hook).
    pub(super) before: Option<(&'a str, Duration)>,
    /// The setting and its value as written: `terminationGracePeriodSeconds 30`.
    pub(super) setting: String,
    /// When the platform kills the service, counted from the same origin as `before`.
    pub(super) at: Duration,
    /// Who sends SIGKILL: `the kubelet`, `Docker`.
    pub(super) killer: &'a str,
    /// The fix that moves the deadline to the given number of seconds.
    pub(super) set: &'a dyn Fn(u64) -> String,
    /// Another remedy, appended to the fix when not empty.
    pub(super) also: &'a str,
}

/// The budget, and what runs before the signal, fit in the platform's deadline with
/// `margin` to spare: past the deadline is an error (SIGKILL cuts the shutdown), a thin margin
/// a warning (the exit itself and a loaded host need a little time).
pub(super) fn check_kill_deadline(
    d: &KillDeadline<'_>,
    service: &Service,
    margin: Duration,
    findings: &mut Vec<Finding>,
) {
    let total = service.budget.total;
    let before = d.before.map_or(Duration::ZERO, |(_, t)| t);
    let used = before + total;
    let left = d.at.saturating_sub(used);
    if used <= d.at && left >= margin {
        return;
    }
    let used_text = match d.before {
        Some((what, t)) => format!(
            "{what} {} + LASTCALL_BUDGET {} = {}",
            secs(t),
            secs(total),
            secs(used)
        ),
        None => format!("LASTCALL_BUDGET {}", secs(total)),
    };
    let (severity, problem) = if used > d.at {
        (
            Severity::Error,
            format!(
                "{used_text} is longer than {}: {} sends SIGKILL before lastcall has finished",
                d.setting, d.killer
            ),
        )
    } else {
        (
            Severity::Warning,
            format!(
                "only {} between the end of the budget and SIGKILL (at least {} wanted, for the exit itself and a loaded host)",
                secs(left),
                secs(margin)
            ),
        )
    };
    let mut fix = (d.set)(ceil_secs(used + margin));
    // The budget that fits, offered only if the service would accept it with its drain delay
    // and reserves (whole seconds, or tenths under ten seconds, rounded down).
    let fits = d.at.saturating_sub(before + margin);
    let fits = if fits >= Duration::from_secs(10) {
        Duration::from_secs(fits.as_secs())
    } else {
        Duration::from_secs(fits.as_secs())
            + Duration::from_millis(u64::from(fits.subsec_millis() / 100 * 100))
    };
    if service.with_total(fits).is_some() {
        fix.push_str(&format!(", or LASTCALL_BUDGET={}", secs(fits)));
    }
    if !d.also.is_empty() {
        fix.push_str("; ");
        fix.push_str(d.also);
    }
    findings.push(Finding {
        severity,
        check: "grace_period",
        problem,
        fix,
    });
}

/// A load balancer's deregistration delay lets the longest request finish: when it ends the
/// balancer stops waiting for the target's open requests and cuts them. The longest request
/// is `--longest-request`, else `wait`: the longest lastcall lets a request run.
pub(super) fn check_deregistration(
    delay: Duration,
    wait: Duration,
    args: &PlanArgs,
    findings: &mut Vec<Finding>,
) {
    let (longest, source) = match args.longest_request {
        Some(longest) => (longest, "--longest-request"),
        None => (
            wait,
            "the budget's wait-for-work deadline, the longest lastcall lets a request run; pass --longest-request for yours",
        ),
    };
    if delay < longest {
        findings.push(Finding {
            severity: Severity::Error,
            check: "deregistration_delay",
            problem: format!(
                "the deregistration delay {} is shorter than the longest request {} ({source}): the load balancer gives up on requests still open when the delay ends",
                secs(delay),
                secs(longest)
            ),
            fix: format!(
                "set the target group's deregistration_delay.timeout_seconds to {}",
                ceil_secs(longest)
            ),
        });
    }
}

/// The platform's stop signal is one the service listens for. Any other signal either ends
/// the process at once (its default action: no drain at all) or is ignored until SIGKILL;
/// both are errors.
pub(super) fn check_stop_signal(
    written: &str,
    setting: &str,
    set: &dyn Fn(&str) -> String,
    service: &Service,
    findings: &mut Vec<Finding>,
) {
    if service.signals_refused {
        return;
    }
    let name = signal_name(written);
    let known = name.parse::<Signal>().ok();
    if known.is_some_and(|s| service.signals.contains(&s)) {
        return;
    }
    // The signals whose default action is to do nothing: the process carries on until SIGKILL.
    let ignored = ["SIGCHLD", "SIGCONT", "SIGURG", "SIGWINCH"].contains(&name.as_str());
    let effect = if ignored {
        "the process ignores it and is killed at the deadline, without a drain"
    } else {
        "its default action ends the process at once, without a drain"
    };
    let preferred = if service.signals.contains(&Signal::Terminate) {
        "SIGTERM"
    } else {
        service.signals[0].as_str()
    };
    let fix = match known {
        Some(signal) => format!(
            "{}, or LASTCALL_SIGNALS={},{}",
            set(preferred),
            service.signal_list(),
            signal.as_str()
        ),
        None => set(preferred),
    };
    findings.push(Finding {
        severity: Severity::Error,
        check: "stop_signal",
        problem: format!(
            "{setting} is {written}, which lastcall does not listen for (LASTCALL_SIGNALS {}): {effect}",
            service.signal_list()
        ),
        fix,
    });
}

/// `TERM`, `sigterm`, `15` → `SIGTERM`.
pub(super) fn signal_name(written: &str) -> String {
    let upper = written.trim().to_ascii_uppercase();
    let by_number = match upper.as_str() {
        "1" => Some("SIGHUP"),
        "2" => Some("SIGINT"),
        "3" => Some("SIGQUIT"),
        "9" => Some("SIGKILL"),
        "10" => Some("SIGUSR1"),
        "12" => Some("SIGUSR2"),
        "15" => Some("SIGTERM"),
        _ => None,
    };
    match by_number {
        Some(name) => name.to_owned(),
        None if upper.starts_with("SIG") => upper,
        None => format!("SIG{upper}"),
    }
}

/// A command that runs the service through `sh -c` without `exec`: the shell is PID 1 and
/// does not pass the stop signal on, so the service is killed at the deadline, never drained.
pub(super) fn check_shell(setting: &str, command: &[String], findings: &mut Vec<Finding>) {
    let Some(at) = command
        .iter()
        .position(|w| w == "-c" || w == "-ec" || w == "-ce")
    else {
        return;
    };
    let shell = at > 0
        && command[..at]
            .iter()
            .any(|w| w.ends_with("/sh") || w.ends_with("/bash") || w == "sh" || w == "bash");
    let script = command[at + 1..].join(" ");
    if !shell
        || script.trim_start().starts_with("exec ")
        || script.contains("; exec ")
        || script.contains("&& exec ")
    {
        return;
    }
    findings.push(Finding {
        severity: Severity::Warning,
        check: "stop_signal",
        problem: format!(
            "{setting} runs the service through `{} -c` without exec: the shell gets the stop signal, and most shells do not pass it on, so the service is killed at the deadline without a drain",
            command[at - 1]
        ),
        fix: format!(
            "start the script's last command with exec (`{}`), or use the exec form without a shell",
            with_exec(script.trim())
        ),
    });
}

/// The script with `exec` before its last command: `migrate && exec lastcall demo`.
fn with_exec(script: &str) -> String {
    let cut = script
        .rfind("&&")
        .map(|i| i + 2)
        .max(script.rfind(';').map(|i| i + 1))
        .unwrap_or(0);
    let (head, last) = script.split_at(cut);
    let space = if head.is_empty() { "" } else { " " };
    format!("{head}{space}exec {}", last.trim_start())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_goes_before_the_scripts_last_command() {
        assert_eq!(with_exec("lastcall demo"), "exec lastcall demo");
        assert_eq!(
            with_exec("./migrate && lastcall demo"),
            "./migrate && exec lastcall demo"
        );
        assert_eq!(with_exec("a; b && c; d"), "a; b && c; exec d");
    }

    #[test]
    fn signal_names_are_read_in_every_spelling() {
        for written in ["SIGTERM", "TERM", "sigterm", "15"] {
            assert_eq!(signal_name(written), "SIGTERM");
        }
        assert_eq!(signal_name("USR1"), "SIGUSR1");
    }
}
