//! What happened during one scenario, in time: signals, readiness, listener, requests, exit.
//! Rendered as an SVG picture in the `--html` report.

use std::fmt::Write as _;

use tokio::time::Instant;

/// Marks and spans, in milliseconds from the scenario's start.
#[derive(Debug, Clone)]
pub(crate) struct Timeline {
    origin: Instant,
    marks: Vec<Mark>,
    spans: Vec<Span>,
}

#[derive(Debug, Clone)]
struct Mark {
    at: f64,
    label: String,
}

#[derive(Debug, Clone)]
struct Span {
    start: f64,
    end: f64,
    label: String,
    ok: bool,
}

impl Timeline {
    pub(crate) fn new() -> Timeline {
        Timeline {
            origin: Instant::now(),
            marks: Vec::new(),
            spans: Vec::new(),
        }
    }

    fn ms(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.origin).as_secs_f64() * 1000.0
    }

    /// A moment: a signal, readiness flipping, the listener closing, the exit.
    pub(crate) fn mark(&mut self, at: Instant, label: impl Into<String>) {
        let at = self.ms(at);
        self.marks.push(Mark {
            at,
            label: label.into(),
        });
    }

    /// A request from when it was sent to when it ended, and how.
    pub(crate) fn span(
        &mut self,
        start: Instant,
        end: Instant,
        label: impl Into<String>,
        ok: bool,
    ) {
        let (start, end) = (self.ms(start), self.ms(end));
        self.spans.push(Span {
            start,
            end,
            label: label.into(),
            ok,
        });
    }

    /// The timeline as an SVG picture.
    pub(crate) fn svg(&self) -> String {
        const WIDTH: f64 = 900.0;
        const LEFT: f64 = 10.0;
        const ROW: f64 = 22.0;
        let end = self
            .marks
            .iter()
            .map(|m| m.at)
            .chain(self.spans.iter().map(|s| s.end))
            .fold(1.0, f64::max)
            * 1.05;
        let x = |ms: f64| LEFT + ms / end * (WIDTH - 2.0 * LEFT);
        let marks_height = ROW * self.marks.len() as f64;
        let height = 30.0 + marks_height + ROW * self.spans.len() as f64 + 20.0;
        let mut svg = String::new();
        let _ = write!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="monospace" font-size="12">"#
        );
        // Time axis.
        let axis = height - 15.0;
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" y1="{axis}" x2="{}" y2="{axis}" stroke="#888"/>"##,
            WIDTH - LEFT
        );
        for i in 0..=4 {
            let ms = end * f64::from(i) / 4.0;
            let anchor = match i {
                0 => "start",
                4 => "end",
                _ => "middle",
            };
            let _ = write!(
                svg,
                r##"<text x="{:.1}" y="{}" fill="#555" text-anchor="{anchor}">{:.0} ms</text>"##,
                x(ms),
                height - 2.0,
                ms
            );
        }
        for (i, mark) in self.marks.iter().enumerate() {
            let mx = x(mark.at);
            let y = 20.0 + ROW * i as f64;
            let _ = write!(
                svg,
                r##"<line x1="{mx:.1}" y1="{}" x2="{mx:.1}" y2="{axis}" stroke="#c60" stroke-dasharray="3,3"/>"##,
                y - 12.0
            );
            // Labels past the middle go left of their line, so none runs off the picture.
            let (tx, anchor) = if mx > WIDTH / 2.0 {
                (mx - 3.0, "end")
            } else {
                (mx + 3.0, "start")
            };
            let _ = write!(
                svg,
                r##"<text x="{tx:.1}" y="{y}" fill="#c60" text-anchor="{anchor}">{} ({:.0} ms)</text>"##,
                escape(&mark.label),
                mark.at
            );
        }
        for (i, span) in self.spans.iter().enumerate() {
            let y = 20.0 + marks_height + ROW * i as f64;
            let (x1, x2) = (x(span.start), x(span.end).max(x(span.start) + 2.0));
            let color = if span.ok { "#2a7" } else { "#d33" };
            let _ = write!(
                svg,
                r#"<rect x="{x1:.1}" y="{}" width="{:.1}" height="12" fill="{color}"/>"#,
                y - 10.0,
                x2 - x1
            );
            let (tx, anchor) = if x2 > WIDTH / 2.0 {
                (x1 - 4.0, "end")
            } else {
                (x2 + 4.0, "start")
            };
            let _ = write!(
                svg,
                r##"<text x="{tx:.1}" y="{y}" fill="#222" text-anchor="{anchor}">{}</text>"##,
                escape(&span.label)
            );
        }
        svg.push_str("</svg>");
        svg
    }
}

/// Escapes text for HTML and SVG.
pub(crate) fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
