//! A job's event log as text, for `GET /logs/{id}` and `agent logs`.

use agent_core::{EventKind, JobEvent, StepKind};

/// Formats events as text lines; step output is written as it was produced.
///
/// Keeps track of whether the last output ended a line, so that an event line never runs into
/// output that had no trailing newline.
#[derive(Debug, Default)]
pub struct LogFormatter {
    mid_line: bool,
}

fn one_line(s: &str, max: usize) -> String {
    let line = s.lines().next().unwrap_or("").trim();
    let mut out: String = line.chars().take(max).collect();
    if out.len() < line.len() || s.lines().nth(1).is_some() {
        out.push('…');
    }
    out
}

/// A short description of a step: `shell: echo hi`, `python: import os…`, `write_file: a.txt`.
pub fn describe_step(kind: &StepKind) -> String {
    match kind {
        StepKind::Shell { command } => format!("shell: {}", one_line(command, 100)),
        StepKind::Python { code, .. } => format!("python: {}", one_line(code, 100)),
        StepKind::WriteFile { path, content } => {
            format!("write_file: {path} ({} bytes)", content.len())
        }
    }
}

impl LogFormatter {
    /// A formatter at the start of a line.
    pub fn new() -> Self {
        Self::default()
    }

    /// The text for one event (possibly empty, always ending in a newline for event lines).
    pub fn format(&mut self, event: &JobEvent) -> String {
        let ts = event.at.format("%Y-%m-%dT%H:%M:%S%.3fZ");
        let line = match &event.kind {
            // stdout and stderr are interleaved as they were produced.
            EventKind::Output { text, .. } => {
                if text.is_empty() {
                    return String::new();
                }
                self.mid_line = !text.ends_with('\n');
                return text.clone();
            }
            EventKind::Status { status, error } => match error {
                Some(e) => format!("{ts} status {status}: {e}"),
                None => format!("{ts} status {status}"),
            },
            EventKind::Planning { .. } => return String::new(),
            EventKind::Plan {
                steps,
                summary,
                provider,
                attempt,
            } => {
                let by = provider
                    .as_deref()
                    .map(|p| format!(" by {p}"))
                    .unwrap_or_default();
                let what = if *attempt == 0 { "plan" } else { "repair plan" };
                let mut s = format!("{ts} {what}{by}: {} step(s)", steps.len());
                if !summary.is_empty() {
                    s.push_str(" — ");
                    s.push_str(&one_line(summary, 200));
                }
                s
            }
            EventKind::StepStarted { index, step } => {
                let desc = step
                    .description
                    .as_deref()
                    .map(|d| format!(" ({})", one_line(d, 100)))
                    .unwrap_or_default();
                format!(
                    "{ts} step {index} started{desc}: {}",
                    describe_step(&step.kind)
                )
            }
            EventKind::StepFinished { index, result } => format!(
                "{ts} step {index} finished: exit {} ({:?}) in {} ms",
                result.exit_code,
                result.termination,
                result.duration.as_millis()
            ),
            EventKind::Log { message } => format!("{ts} {message}"),
        };
        let prefix = if self.mid_line { "\n" } else { "" };
        self.mid_line = false;
        format!("{prefix}{line}\n")
    }
}

/// The SSE event name of an event: its `type` (`status`, `step_started`, `output`, …).
pub fn event_name(kind: &EventKind) -> &'static str {
    match kind {
        EventKind::Status { .. } => "status",
        EventKind::Planning { .. } => "planning",
        EventKind::Plan { .. } => "plan",
        EventKind::StepStarted { .. } => "step_started",
        EventKind::Output { .. } => "output",
        EventKind::StepFinished { .. } => "step_finished",
        EventKind::Log { .. } => "log",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_core::{JobId, JobStatus, OutputStream, Step};
    use chrono::Utc;

    fn ev(seq: u64, kind: EventKind) -> JobEvent {
        JobEvent {
            job_id: JobId::new(),
            seq,
            at: Utc::now(),
            kind,
        }
    }

    #[test]
    fn output_without_newline_does_not_swallow_the_next_line() {
        let mut f = LogFormatter::new();
        let a = f.format(&ev(
            1,
            EventKind::StepStarted {
                index: 0,
                step: Step::shell("printf hi"),
            },
        ));
        assert!(a.contains("step 0 started: shell: printf hi"), "{a}");
        let b = f.format(&ev(
            2,
            EventKind::Output {
                index: 0,
                stream: OutputStream::Stdout,
                text: "hi".into(),
            },
        ));
        assert_eq!(b, "hi");
        let c = f.format(&ev(
            3,
            EventKind::Status {
                status: JobStatus::Succeeded,
                error: None,
            },
        ));
        assert!(
            c.starts_with('\n') && c.ends_with("status succeeded\n"),
            "{c:?}"
        );
    }
}
