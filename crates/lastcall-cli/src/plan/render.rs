//! The output of `lastcall plan`: the text report and the `--json` document.

use std::fmt;
use std::time::Duration;

use super::value::secs;
use super::{Checked, Event, Severity};

/// The version of the `--json` output; bumped when a field changes meaning or goes away.
const SCHEMA: &str = "lastcall-plan/1";

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

impl Checked {
    fn counts(&self) -> (usize, usize) {
        let errors = self
            .findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
            .count();
        (errors, self.findings.len() - errors)
    }

    /// The timeline in order; events at the same moment keep the order they were added in.
    fn sorted(&self) -> Vec<&Event> {
        let mut events: Vec<&Event> = self.timeline.iter().collect();
        events.sort_by_key(|e| e.at);
        events
    }
}

pub(super) fn render(file: &str, c: &Checked) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "lastcall plan: {file} ({})", c.subject);
    let _ = writeln!(out, "\nshutdown timeline, from {}:", c.origin);
    for event in c.sorted() {
        let _ = writeln!(out, "{:>7}  {}", secs(event.at), event.what);
    }
    if c.findings.is_empty() {
        let _ = writeln!(out, "\nno findings: the budget fits the platform");
    } else {
        let _ = writeln!(out, "\nfindings:");
        for f in &c.findings {
            let _ = writeln!(
                out,
                "  {} [{}] {}\n      fix: {}",
                f.severity, f.check, f.problem, f.fix
            );
        }
    }
    let (errors, warnings) = c.counts();
    let _ = writeln!(out, "\n{errors} errors, {warnings} warnings");
    out
}

/// The `--json` document (schema `lastcall-plan/1`, documented in the README).
pub(super) fn json(file: &str, c: &Checked) -> serde_json::Value {
    let (errors, warnings) = c.counts();
    let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    serde_json::json!({
        "schema": SCHEMA,
        "file": file,
        "platform": c.platform,
        "subject": c.subject,
        "origin": c.origin,
        "budget": c.service.budget,
        "signals": c.service.signals,
        "timeline": c.sorted().iter().map(|e| serde_json::json!({
            "at_ms": millis(e.at),
            "event": e.what,
        })).collect::<Vec<_>>(),
        "findings": c.findings.iter().map(|f| serde_json::json!({
            "severity": f.severity.to_string(),
            "check": f.check,
            "problem": f.problem,
            "fix": f.fix,
        })).collect::<Vec<_>>(),
        "errors": errors,
        "warnings": warnings,
    })
}
