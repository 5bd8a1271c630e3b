//! What happened during one scenario, in time: signals, readiness, listener, requests, exit.
//! Rendered as an SVG picture in the `--html` report, with the time axis counted from the
//! signal.

use std::fmt::Write as _;

use tokio::time::Instant;

/// Marks, spans and shaded periods, in milliseconds from the scenario's start.
#[derive(Debug, Clone)]
pub(crate) struct Timeline {
    origin: Instant,
    /// The first stop signal: zero on the picture's axis.
    signal: Option<f64>,
    marks: Vec<Mark>,
    spans: Vec<Span>,
    shades: Vec<Shade>,
}

#[derive(Debug, Clone)]
struct Mark {
    at: f64,
    label: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Look {
    /// A client would be satisfied.
    Ok,
    /// A client would not be.
    Failed,
    /// The request was cut.
    Cut,
}

#[derive(Debug, Clone)]
struct Span {
    start: f64,
    end: f64,
    label: String,
    look: Look,
}

#[derive(Debug, Clone)]
struct Shade {
    start: f64,
    end: f64,
    label: String,
}

/// The picture's width, in its own units (its `viewBox`).
pub(crate) const WIDTH: f64 = 900.0;
/// The width of one character of the picture's 12 px monospace font: 0.6 em.
pub(crate) const CHAR_WIDTH: f64 = 7.2;
const LEFT: f64 = 10.0;
const ROW: f64 = 22.0;
const SPAN_ROW: f64 = 34.0;

impl Timeline {
    pub(crate) fn new() -> Timeline {
        Timeline {
            origin: Instant::now(),
            signal: None,
            marks: Vec::new(),
            spans: Vec::new(),
            shades: Vec::new(),
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

    /// The stop signal: the axis counts from the first one.
    pub(crate) fn signal(&mut self, at: Instant, label: impl Into<String>) {
        if self.signal.is_none() {
            self.signal = Some(self.ms(at));
        }
        self.mark(at, label);
    }

    /// A request from when it was sent to when it ended, and whether a client is satisfied.
    pub(crate) fn span(
        &mut self,
        start: Instant,
        end: Instant,
        label: impl Into<String>,
        ok: bool,
    ) {
        self.push_span(
            start,
            end,
            label.into(),
            if ok { Look::Ok } else { Look::Failed },
        );
    }

    /// A request the service cut: drawn red whatever the exit status says.
    pub(crate) fn cut(&mut self, start: Instant, end: Instant, label: impl Into<String>) {
        self.push_span(start, end, label.into(), Look::Cut);
    }

    fn push_span(&mut self, start: Instant, end: Instant, label: String, look: Look) {
        let (start, end) = (self.ms(start), self.ms(end));
        self.spans.push(Span {
            start,
            end,
            label,
            look,
        });
    }

    /// A period drawn as a shaded band: the drain delay, a preStop.
    pub(crate) fn shade(&mut self, start: Instant, end: Instant, label: impl Into<String>) {
        let (start, end) = (self.ms(start), self.ms(end));
        self.shades.push(Shade {
            start,
            end,
            label: label.into(),
        });
    }

    /// The timeline as an SVG picture; every label lies inside its `viewBox`.
    pub(crate) fn svg(&self) -> String {
        let zero = self.signal.unwrap_or(0.0);
        let first = self
            .marks
            .iter()
            .map(|m| m.at)
            .chain(self.spans.iter().map(|s| s.start))
            .chain(self.shades.iter().map(|s| s.start))
            .fold(zero, f64::min);
        let last = self
            .marks
            .iter()
            .map(|m| m.at)
            .chain(self.spans.iter().map(|s| s.end))
            .chain(self.shades.iter().map(|s| s.end))
            .fold(zero + 1.0, f64::max);
        let span = (last - first).max(1.0) * 1.04;
        let x = |ms: f64| LEFT + (ms - first) / span * (WIDTH - 2.0 * LEFT);
        let marks_height = ROW * self.marks.len() as f64;
        let top = 30.0;
        let height = top + marks_height + SPAN_ROW * self.spans.len() as f64 + 28.0;
        let axis = height - 20.0;
        let mut svg = String::new();
        let _ = write!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}" font-family="monospace" font-size="12">"#
        );
        for shade in &self.shades {
            let (x1, x2) = (x(shade.start), x(shade.end));
            let _ = write!(
                svg,
                r##"<rect x="{x1:.1}" y="4" width="{:.1}" height="{:.1}" fill="#fd8" fill-opacity="0.35"/>"##,
                (x2 - x1).max(1.0),
                axis - 4.0
            );
            let label = format!("{} ({:.0} ms)", shade.label, shade.end - shade.start);
            svg.push_str(&text(x1 + 3.0, 16.0, &label, "#864", Some((x1, x2))));
        }
        // The axis, in milliseconds from the signal.
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" y1="{axis}" x2="{}" y2="{axis}" stroke="#888"/>"##,
            WIDTH - LEFT
        );
        let step = tick_step(span);
        let mut tick = ((first - zero) / step).ceil() * step;
        while zero + tick <= first + span {
            let tx = x(zero + tick);
            let _ = write!(
                svg,
                r##"<line x1="{tx:.1}" y1="{axis}" x2="{tx:.1}" y2="{}" stroke="#888"/>"##,
                axis + 4.0
            );
            let label = if tick == 0.0 {
                "0".to_owned()
            } else {
                format!("{tick:+.0}")
            };
            svg.push_str(&text(tx, height - 3.0, &label, "#555", None));
            tick += step;
        }
        svg.push_str(&text(
            WIDTH - LEFT,
            axis - 4.0,
            "ms from the signal",
            "#555",
            None,
        ));
        for (i, mark) in self.marks.iter().enumerate() {
            let mx = x(mark.at);
            let y = top + ROW * i as f64;
            let _ = write!(
                svg,
                r##"<line x1="{mx:.1}" y1="{}" x2="{mx:.1}" y2="{axis}" stroke="#c60" stroke-dasharray="3,3"/>"##,
                y - 12.0
            );
            let label = format!("{} ({})", mark.label, relative(mark.at - zero));
            svg.push_str(&text(mx + 3.0, y, &label, "#c60", None));
        }
        // Each span takes two lines: its label, then its bar, so no label covers a bar.
        for (i, span) in self.spans.iter().enumerate() {
            let y = top + marks_height + SPAN_ROW * i as f64 + 4.0;
            let (x1, x2) = (x(span.start), x(span.end).max(x(span.start) + 2.0));
            let color = match span.look {
                Look::Ok => "#2a7",
                Look::Failed | Look::Cut => "#d33",
            };
            svg.push_str(&text(x1, y, &span.label, "#222", None));
            let _ = write!(
                svg,
                r#"<rect x="{x1:.1}" y="{}" width="{:.1}" height="10" fill="{color}"/>"#,
                y + 4.0,
                x2 - x1
            );
            if span.look == Look::Cut {
                // A cut end: a bar across the span's end.
                let _ = write!(
                    svg,
                    r##"<line x1="{x2:.1}" y1="{}" x2="{x2:.1}" y2="{}" stroke="#900" stroke-width="3"/>"##,
                    y + 1.0,
                    y + 17.0
                );
            }
        }
        svg.push_str("</svg>");
        svg
    }
}

/// A label at `x` (its left end), moved and shortened so that it lies inside the picture;
/// with `avoid`, a label that does not fit right of that range goes left of it.
fn text(x: f64, y: f64, label: &str, color: &str, avoid: Option<(f64, f64)>) -> String {
    let max_chars = ((WIDTH - 2.0 * LEFT) / CHAR_WIDTH).floor() as usize;
    let label: String = if label.chars().count() > max_chars {
        let mut short: String = label.chars().take(max_chars.saturating_sub(1)).collect();
        short.push('…');
        short
    } else {
        label.to_owned()
    };
    let width = label.chars().count() as f64 * CHAR_WIDTH;
    let mut start = x;
    if start + width > WIDTH - LEFT {
        start = match avoid {
            Some((from, _)) if from - 4.0 - width >= LEFT => from - 4.0 - width,
            _ => WIDTH - LEFT - width,
        };
    }
    let start = start.max(LEFT);
    format!(
        r##"<text x="{start:.1}" y="{y:.1}" fill="{color}">{}</text>"##,
        escape(&label)
    )
}

/// A tick every 1, 2 or 5 times a power of ten, about eight on the axis.
fn tick_step(span: f64) -> f64 {
    let rough = span / 8.0;
    let power = 10f64.powf(rough.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|step| *step >= rough)
        .unwrap_or(10.0 * power)
}

/// `+1500 ms`, `-20 ms`, `0 ms`.
fn relative(ms: f64) -> String {
    if ms.abs() < 0.5 {
        "0 ms".to_owned()
    } else {
        format!("{ms:+.0} ms")
    }
}

/// Escapes text for HTML and SVG.
pub(crate) fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
