//! Live progress of a local run (`agent run`), drawn with indicatif on stderr.

use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use agent_core::{EventKind, JobEvent, JobStatus};

use crate::logs::describe_step;

/// The longest unfinished output line [`Progress`] holds before printing it anyway.
const MAX_PARTIAL_LINE: usize = 64 << 10;

/// Live progress of a local run: a spinner per step, step output above the bars, elapsed time.
pub(super) struct Progress {
    multi: MultiProgress,
    main: ProgressBar,
    step: Option<(usize, ProgressBar, Instant)>,
    partial: String,
    quiet: bool,
}

impl Progress {
    pub(super) fn new(quiet: bool) -> Self {
        let multi = if quiet {
            MultiProgress::with_draw_target(ProgressDrawTarget::hidden())
        } else {
            MultiProgress::with_draw_target(ProgressDrawTarget::stderr())
        };
        let main = multi.add(ProgressBar::new_spinner());
        main.set_style(
            ProgressStyle::with_template("{spinner:.cyan} [{elapsed_precise}] {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        main.enable_steady_tick(Duration::from_millis(120));
        main.set_message("starting a sandbox…");
        Self {
            multi,
            main,
            step: None,
            partial: String::new(),
            quiet,
        }
    }

    pub(super) fn line(&self, text: &str) {
        if self.quiet {
            return;
        }
        if self.multi.is_hidden() {
            eprintln!("{text}");
        } else {
            let _ = self.multi.println(text);
        }
    }

    fn output(&mut self, text: &str) {
        self.partial.push_str(text);
        while let Some(pos) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=pos).collect();
            self.line(&format!("  │ {}", line.trim_end_matches(['\n', '\r'])));
        }
        // Output that never ends its line is printed in pieces rather than held without bound.
        if self.partial.len() >= MAX_PARTIAL_LINE {
            self.flush_output();
        }
    }

    fn flush_output(&mut self) {
        if !self.partial.is_empty() {
            let rest = std::mem::take(&mut self.partial);
            self.line(&format!("  │ {rest}"));
        }
    }

    pub(super) fn event(&mut self, ev: &JobEvent) {
        match &ev.kind {
            EventKind::Status { status, error } => match status {
                JobStatus::Running => self.main.set_message("running"),
                st if st.is_terminal() => {
                    self.flush_output();
                    if let Some((_, bar, _)) = self.step.take() {
                        bar.abandon();
                    }
                    let msg = match error {
                        Some(e) => format!("{st}: {e}"),
                        None => st.to_string(),
                    };
                    self.main.finish_with_message(msg);
                }
                _ => {}
            },
            EventKind::Planning { .. } => self.main.set_message("planning with the LLM…"),
            EventKind::Plan {
                steps,
                provider,
                attempt,
                ..
            } => {
                let by = provider.as_deref().unwrap_or("the plan file");
                let what = if *attempt == 0 { "plan" } else { "repair" };
                self.line(&format!("{what} from {by}: {} step(s)", steps.len()));
                self.main.set_message("running");
            }
            EventKind::StepStarted { index, step } => {
                let bar = self.multi.add(ProgressBar::new_spinner());
                bar.set_style(
                    ProgressStyle::with_template(
                        "  {spinner:.green} step {prefix} [{elapsed}] {msg}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                bar.set_prefix(index.to_string());
                let desc = step
                    .description
                    .clone()
                    .unwrap_or_else(|| describe_step(&step.kind));
                bar.set_message(desc);
                bar.enable_steady_tick(Duration::from_millis(100));
                self.main.set_message(format!("step {index}"));
                self.step = Some((*index, bar, Instant::now()));
            }
            EventKind::Output { text, .. } => self.output(text),
            EventKind::StepFinished { index, result } => {
                self.flush_output();
                let mark = if result.success() { "✔" } else { "✘" };
                let how = match result.termination {
                    agent_core::Termination::Exited => format!("exit {}", result.exit_code),
                    other => format!("{other:?} (exit {})", result.exit_code).to_lowercase(),
                };
                let line = format!(
                    "{mark} step {index} {how} in {} ms",
                    result.duration.as_millis()
                );
                match self.step.take() {
                    Some((_, bar, _)) => {
                        bar.finish_and_clear();
                        self.line(&line);
                    }
                    None => self.line(&line),
                }
            }
            EventKind::Log { message } => self.line(message),
        }
    }
}
