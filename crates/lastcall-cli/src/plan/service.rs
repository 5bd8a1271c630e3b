//! lastcall's side of the shutdown: the [`Service`] resolved from its `LASTCALL_*` variables
//! the way the library resolves them, what the service would refuse at startup, and the
//! events lastcall adds to the timeline once the stop signal arrives.

use std::time::Duration;

use lastcall::error::{ConfigError, Setting};
use lastcall::{Budget, Controller, Phase, Signal};

use super::value::secs;
use super::{Event, Finding, Service, Severity, Var};
use crate::flags::PlanArgs;

impl Service {
    /// Resolves lastcall's settings from the service's environment as the library would: the
    /// library's builder decides what the service refuses, and the budget is resolved by
    /// [`Budget::from_settings`], so unset reserves scale with the budget as they do at run
    /// time. Variables it cannot read become findings.
    pub(super) fn from_env(vars: &[Var], args: &PlanArgs, findings: &mut Vec<Finding>) -> Service {
        let mut literal: Vec<(&str, &str)> = Vec::new();
        // A near miss of the prefix (`LASTCAL_BUDGET`, `lastcall_budget`) is not read: the
        // service warns and runs with the default, as the plan does.
        for var in vars.iter().filter(|v| !v.name.starts_with("LASTCALL_")) {
            if let Some(meant) = Setting::prefix_near_miss(&var.name) {
                findings.push(Finding {
                    severity: Severity::Warning,
                    check: "env",
                    problem: format!(
                        "{} is not read (did you mean {}? names are case-sensitive); the service warns and uses the default",
                        var.name,
                        meant.env_name()
                    ),
                    fix: format!("rename it to {}", meant.env_name()),
                });
            }
        }
        for var in vars.iter().filter(|v| v.name.starts_with("LASTCALL_")) {
            let key = var.name.as_str();
            let value = match &var.value {
                Ok(value) => value.as_str(),
                Err(why) => {
                    findings.push(Finding {
                        severity: Severity::Warning,
                        check: "env",
                        problem: format!("{key} {why}; the plan assumes lastcall's default"),
                        // A name with a space is a note for a source of variables the plan
                        // cannot open (`envFrom`, `env_file`, `EnvironmentFile=`).
                        fix: if key.contains(' ') {
                            "set the LASTCALL_* variables in the file itself to have them checked"
                                .to_owned()
                        } else {
                            format!("give {key} a literal value to have it checked")
                        },
                    });
                    continue;
                }
            };
            // Names the service accepts without reading them as settings.
            if key == crate::demo::DB_ENV || args.allow_env.iter().any(|name| name == key) {
                continue;
            }
            if Setting::from_env_name(key).is_none() {
                // As the builder does: a near miss of a real setting is almost surely a typo,
                // which the service refuses; any other name it ignores with a warning, unless
                // the application declared it with `Builder::allow_env` (`--allow-env` here).
                findings.push(match Setting::closest(key) {
                    Some(meant) => Finding {
                        severity: Severity::Error,
                        check: "env",
                        problem: format!(
                            "{key} is not a lastcall setting (did you mean {}?); the service would refuse to start",
                            meant.env_name()
                        ),
                        fix: format!("rename it to {}", meant.env_name()),
                    },
                    None => Finding {
                        severity: Severity::Warning,
                        check: "env",
                        problem: format!(
                            "{key} is not a lastcall setting; the service ignores it with a warning"
                        ),
                        fix: format!(
                            "remove it if nothing reads it; if the application does, declare it with Builder::allow_env(\"{key}\") and pass --allow-env {key}"
                        ),
                    },
                });
                continue;
            }
            literal.push((key, value));
        }

        let refused = refusal(&literal);
        let signals_refused = refused.as_ref().is_some_and(|f| f.check == "signals");
        findings.extend(refused);

        let get = |setting: Setting| {
            literal
                .iter()
                .rev()
                .find(|(k, _)| *k == setting.env_name())
                .map(|(_, v)| *v)
        };
        // A value the builder refuses was reported above; the timeline then shows the default.
        let duration =
            |setting: Setting| get(setting).and_then(|v| humantime::parse_duration(v.trim()).ok());
        let defaults = Budget::default();
        let reserves = [
            duration(Setting::StopTimeout),
            duration(Setting::FlushTimeout),
            duration(Setting::CloseTimeout),
        ];
        let budget = Budget::from_settings(
            duration(Setting::Budget).unwrap_or(defaults.total),
            duration(Setting::DrainDelay).unwrap_or(defaults.drain_delay),
            reserves[0],
            reserves[1],
            reserves[2],
        );
        let signals = get(Setting::Signals)
            .and_then(|v| {
                v.split(|c: char| c == ',' || c.is_whitespace())
                    .filter(|s| !s.is_empty())
                    .map(str::parse::<Signal>)
                    .collect::<Result<Vec<_>, _>>()
                    .ok()
            })
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| Signal::DEFAULT.to_vec());
        // A value the builder refuses was reported above; the plan then assumes the default.
        let restart_signal =
            match get(Setting::RestartSignal).map(|v| v.trim().to_ascii_lowercase()) {
                Some(v) if v == "off" || v == "none" => None,
                Some(v) => Some(v.parse().unwrap_or(Signal::Hangup)),
                None => Some(Signal::Hangup),
            };
        Service {
            budget,
            signals,
            restart_signal,
            report_file: get(Setting::ReportFile).map(str::to_owned),
            signals_refused,
            reserves,
        }
    }

    /// This service's settings with another total, if the service would accept it.
    pub(super) fn with_total(&self, total: Duration) -> Option<Budget> {
        let [stop, flush, close] = self.reserves;
        let budget = Budget::from_settings(total, self.budget.drain_delay, stop, flush, close);
        budget.plan().is_ok().then_some(budget)
    }

    pub(super) fn signal_list(&self) -> String {
        self.signals
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// What the service would say at startup about these settings: the library's own builder
/// checks them (outside a tokio runtime it stops at [`ConfigError::NoRuntime`], after every
/// check of the settings and before installing any signal handler).
fn refusal(literal: &[(&str, &str)]) -> Option<Finding> {
    // The report file is left out: the builder opens it, and this machine is not the service's.
    let vars: Vec<(String, String)> = literal
        .iter()
        .filter(|(k, _)| *k != Setting::ReportFile.env_name())
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let err = match Controller::builder().env_vars(vars).watchdog(false).build() {
        Err(ConfigError::NoRuntime) => return None,
        Err(err) => err,
        // Only inside a runtime, which plan never starts; nothing to refuse then.
        Ok(_) => return None,
    };
    let (check, fix) = match &err {
        ConfigError::Unparsable { setting, .. } => (
            "env",
            format!("set {} to a duration such as 25s or 1500ms", setting.env_name()),
        ),
        ConfigError::Invalid { setting, .. } => {
            ("env", format!("set {} to a value the message lists", setting.env_name()))
        }
        ConfigError::NoSignals { .. } | ConfigError::SigtermNotHandled { .. } => (
            "signals",
            format!("set {}=SIGTERM,SIGINT", Setting::Signals.env_name()),
        ),
        ConfigError::ReservesExceedBudget { reserved, .. } => (
            "budget",
            format!(
                "set LASTCALL_BUDGET above {} (and the platform's grace to match), or lower LASTCALL_DRAIN_DELAY and the reserves",
                secs(*reserved)
            ),
        ),
        err => (
            "budget",
            match err.setting() {
                Some(setting) => format!("change {} as the message says", setting.env_name()),
                None => "change the LASTCALL_* values as the message says".into(),
            },
        ),
    };
    Some(Finding {
        severity: Severity::Error,
        check,
        problem: format!("the service would refuse to start: {err}"),
        fix,
    })
}

/// lastcall's own events once the stop signal arrives at `signal_at`.
pub(super) fn service_events(signal_at: Duration, signal: &str, service: &Service) -> Vec<Event> {
    let b = &service.budget;
    let mut events = vec![Event {
        at: signal_at,
        what: format!(
            "{signal}: readiness answers 503, requests are still served (drain delay {})",
            secs(b.drain_delay)
        ),
    }];
    if let Ok(plan) = b.plan() {
        events.push(Event {
            at: signal_at + plan.window(Phase::StopAccepting).start,
            what: format!(
                "stop accepting: the listener closes, keep-alive ends (at most {})",
                secs(b.stop_accepting)
            ),
        });
        events.push(Event {
            at: signal_at + plan.deadline(Phase::WaitForWork),
            what: "in-flight work must be done; what is left is cut and named in the report".into(),
        });
        events.push(Event {
            at: signal_at + plan.deadline(Phase::FlushTelemetry),
            what: format!(
                "flush telemetry done (reserved {})",
                secs(b.flush_telemetry)
            ),
        });
    }
    events.push(Event {
        at: signal_at + b.total,
        what: format!(
            "budget ends (LASTCALL_BUDGET {}): dependencies closed, the process has exited",
            secs(b.total)
        ),
    });
    events
}
