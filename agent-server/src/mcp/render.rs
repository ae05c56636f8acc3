//! How tool results read: text for the model (exit code, output tails, notes when something was
//! cut) and the same as structured content for programs; errors as tool errors.

use rmcp::handler::server::tool::IntoCallToolResult;
use rmcp::model::{CallToolResponse, CallToolResult, ContentBlock};
use serde_json::{json, Value};

use agent_core::{Job, PythonOutcome, StepRecord, StepResult};

use crate::error::ApiError;

/// The most characters of one output stream (or of a file read) a tool result carries.
pub const MAX_TEXT_CHARS: usize = 4000;

/// A tool's failure, answered as a tool error (`isError: true`) with the REST API's code and
/// message (and its structured form), never as a JSON-RPC error.
#[derive(Debug)]
pub(crate) struct ToolError(ApiError);

impl From<ApiError> for ToolError {
    fn from(e: ApiError) -> Self {
        Self(e)
    }
}

impl From<agent_core::Error> for ToolError {
    fn from(e: agent_core::Error) -> Self {
        Self(ApiError::from(e))
    }
}

impl IntoCallToolResult for ToolError {
    fn into_call_tool_result(self) -> Result<CallToolResponse, rmcp::ErrorData> {
        let detail = self.0.detail;
        let mut text = format!("error ({}): {}", detail.code, detail.message);
        if let Some(status) = detail.status {
            text.push_str(&format!(" [status: {status}]"));
        }
        let mut result = CallToolResult::error(vec![ContentBlock::text(text)]);
        result.structured_content = Some(json!({ "error": detail }));
        Ok(result.into())
    }
}

/// A successful result: `text` for people and models, `value` as structured content.
pub(crate) fn with_structured(text: String, value: Value) -> CallToolResult {
    let mut result = CallToolResult::success(vec![ContentBlock::text(text)]);
    result.structured_content = Some(value);
    result
}

/// A file's content as text, cut after [`MAX_TEXT_CHARS`] characters with a note.
pub(crate) fn file_text(bytes: &[u8]) -> CallToolResult {
    let text = String::from_utf8_lossy(bytes);
    let (head, cut) = head_chars(&text, MAX_TEXT_CHARS);
    let mut out = head.to_string();
    if cut {
        out.push_str(&format!(
            "\n[truncated: the file has {} bytes; only its first {MAX_TEXT_CHARS} characters are shown]",
            bytes.len()
        ));
    }
    if matches!(text, std::borrow::Cow::Owned(_)) {
        out.push_str("\n[note: the file is not valid UTF-8; invalid bytes are shown as U+FFFD]");
    }
    let mut result = CallToolResult::success(vec![ContentBlock::text(out)]);
    result.structured_content = Some(json!({
        "size_bytes": bytes.len(),
        "truncated": cut,
    }));
    result
}

/// One step's result in a live sandbox.
pub(crate) fn step_result(record: &StepRecord) -> CallToolResult {
    match &record.result {
        Some(result) => with_structured(
            result_text(result),
            json!({"index": record.index, "status": record.status, "result": result_json(result)}),
        ),
        None => with_structured(
            format!(
                "step {} did not run ({})",
                record.index,
                wire_name(&record.status)
            ),
            json!({"index": record.index, "status": record.status}),
        ),
    }
}

/// A job once it has ended: its status, then each step's exit code and output tails.
pub(crate) fn job_result(job: &Job) -> CallToolResult {
    let mut text = format!("job {} {}", job.id, job.status);
    if let Some(e) = &job.error {
        text.push_str(&format!(": {e}"));
    }
    text.push('\n');
    let steps = steps_into(&job.steps, &mut text);
    let download = job
        .artifact
        .as_ref()
        .map(|_| format!("/download/{}", job.id));
    if let Some(link) = &download {
        text.push_str(&format!("\nresult ZIP: GET {link}\n"));
    }
    with_structured(
        text,
        json!({
            "job_id": job.id,
            "status": job.status,
            "error": job.error,
            "steps": steps,
            "download_link": download,
        }),
    )
}

/// An enum's JSON name (`succeeded`, `timed_out`, …).
/// A live sandbox's planned run: its status, then each step's exit code and output tails.
pub(crate) fn plan_result(run: &agent_core::manager::SandboxPlanRun) -> CallToolResult {
    let mut text = format!(
        "planned run in sandbox {} {} ({} step(s), {} repair(s))",
        run.id,
        run.status,
        run.steps.len(),
        run.repairs
    );
    if let Some(e) = &run.error {
        text.push_str(&format!(": {e}"));
    }
    text.push('\n');
    if let Some(summary) = run
        .plan
        .as_ref()
        .map(|p| &p.summary)
        .filter(|s| !s.is_empty())
    {
        text.push_str(&format!("summary: {summary}\n"));
    }
    let steps = steps_into(&run.steps, &mut text);
    with_structured(
        text,
        json!({
            "sandbox_id": run.id,
            "status": run.status,
            "error": run.error,
            "steps": steps,
            "repairs": run.repairs,
        }),
    )
}

/// Appends each step's outcome to `text`; returns them as JSON.
fn steps_into(records: &[StepRecord], text: &mut String) -> Vec<Value> {
    let mut steps = Vec::new();
    for record in records {
        text.push_str(&format!(
            "\nstep {} ({}): ",
            record.index,
            record.step.kind.type_name()
        ));
        match &record.result {
            Some(result) => {
                text.push_str(&result_text(result));
                steps.push(json!({"index": record.index, "status": record.status, "result": result_json(result)}));
            }
            None => {
                text.push_str(&format!("did not run ({})\n", wire_name(&record.status)));
                steps.push(json!({"index": record.index, "status": record.status}));
            }
        }
    }
    steps
}

fn wire_name<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn result_text(result: &StepResult) -> String {
    let mut text = format!(
        "exit code {} ({}) in {} ms\n",
        result.exit_code,
        wire_name(&result.termination),
        result.duration.as_millis()
    );
    if let Some(py) = &result.python {
        text.push_str(&python_text(py));
    }
    text.push_str(&stream_text(
        "stdout",
        &result.stdout_tail,
        result.stdout_truncated,
    ));
    text.push_str(&stream_text(
        "stderr",
        &result.stderr_tail,
        result.stderr_truncated,
    ));
    text
}

fn python_text(py: &PythonOutcome) -> String {
    let mut text = String::new();
    if let Some(value) = &py.value {
        text.push_str(&format!("value: {value}\n"));
    }
    if let Some(error) = &py.error {
        text.push_str(&format!("exception: {error}\n"));
    }
    if !py.files.is_empty() {
        let more = if py.files_truncated { ", …" } else { "" };
        text.push_str(&format!("files changed: {}{more}\n", py.files.join(", ")));
    }
    if py.fresh_interpreter {
        text.push_str("(a fresh interpreter: nothing from earlier calls was defined)\n");
    }
    if py.state_lost {
        text.push_str("(the interpreter ended: its state is lost; the next call starts afresh)\n");
    }
    if let Some(note) = &py.note {
        text.push_str(&format!("note: {note}\n"));
    }
    text
}

fn result_json(result: &StepResult) -> Value {
    let (stdout, stdout_cut) = tail_chars(&result.stdout_tail, MAX_TEXT_CHARS);
    let (stderr, stderr_cut) = tail_chars(&result.stderr_tail, MAX_TEXT_CHARS);
    let mut value = json!({
        "exit_code": result.exit_code,
        "termination": result.termination,
        "stdout_tail": stdout,
        "stderr_tail": stderr,
        "stdout_truncated": result.stdout_truncated || stdout_cut,
        "stderr_truncated": result.stderr_truncated || stderr_cut,
        "duration_ms": u64::try_from(result.duration.as_millis()).unwrap_or(u64::MAX),
    });
    if let (Some(py), Value::Object(map)) = (&result.python, &mut value) {
        map.insert("python".into(), json!(py));
    }
    value
}

/// One stream's tail as text, with a note when it is not the whole output.
fn stream_text(name: &str, tail: &str, truncated_before: bool) -> String {
    let (shown, cut) = tail_chars(tail, MAX_TEXT_CHARS);
    let mut out = format!("{name}:\n{shown}");
    if !shown.is_empty() && !shown.ends_with('\n') {
        out.push('\n');
    }
    if cut || truncated_before {
        out.push_str(&format!(
            "[{name} truncated: only its last {} characters are shown]\n",
            shown.chars().count()
        ));
    }
    out
}

/// The first `max` characters of `s`, and whether anything was cut.
fn head_chars(s: &str, max: usize) -> (&str, bool) {
    match s.char_indices().nth(max) {
        Some((i, _)) => (&s[..i], true),
        None => (s, false),
    }
}

/// The last `max` characters of `s`, and whether anything was cut.
fn tail_chars(s: &str, max: usize) -> (&str, bool) {
    let count = s.chars().count();
    if count <= max {
        return (s, false);
    }
    match s.char_indices().nth(count - max) {
        Some((i, _)) => (&s[i..], true),
        None => (s, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_output_keeps_its_end_and_says_so() {
        let long = "x".repeat(MAX_TEXT_CHARS) + "END";
        let text = stream_text("stdout", &long, false);
        assert!(text.contains("END\n"));
        assert!(text.contains("[stdout truncated"));
        assert!(!text.contains(&"x".repeat(MAX_TEXT_CHARS)));
        assert_eq!(stream_text("stderr", "oops", false), "stderr:\noops\n");
        assert!(stream_text("stdout", "tail", true).contains("truncated"));
    }

    #[test]
    fn cuts_fall_on_character_boundaries() {
        assert_eq!(tail_chars("héllo wörld", 5), ("wörld", true));
        assert_eq!(tail_chars("wörld", 5), ("wörld", false));
        assert_eq!(head_chars("héllo", 2), ("hé", true));
        assert_eq!(head_chars("hé", 2), ("hé", false));
    }

    #[test]
    fn a_long_file_is_cut_with_a_note() {
        let result = file_text("é".repeat(MAX_TEXT_CHARS + 10).as_bytes());
        let text = match &result.content[0] {
            ContentBlock::Text(t) => t.text.clone(),
            other => panic!("not text: {other:?}"),
        };
        assert!(text.contains("[truncated: the file has"), "{text}");
        assert_eq!(result.structured_content.unwrap()["truncated"], true);
        let result = file_text(b"\xff\xfeok");
        let ContentBlock::Text(t) = &result.content[0] else {
            panic!("not text")
        };
        assert!(t.text.contains("not valid UTF-8"));
    }
}
