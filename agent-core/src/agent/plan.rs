//! The plan format the LLM is asked for, the prompts, and a forgiving-but-strict parser.
//!
//! The model is asked for a [`Plan`] in its JSON form,
//! `{"steps":[{"type":"shell","command":"…","description":"…"},{"type":"python","code":"…"},{"type":"write_file","path":"…","content":"…"}],"summary":"…"}`,
//! described by [`plan_schema`] (put in the system prompt and passed to the provider as the
//! response schema). [`parse_plan`] accepts it bare, inside a fenced code block, or with prose
//! around it, and refuses anything else — through the same serde definition the API uses — with an
//! error that can be shown to the model for one more try.

use std::fmt;
use std::sync::LazyLock;

use serde::Deserialize;
use serde_json::Value;

use crate::inputs::InputFile;
use crate::job::{Plan, Step, StepKind, StepResult, MAX_STEPS};
use crate::schema::plan_schema;

/// The system prompt for planning and repair: the sandbox, the rules, and the plan's JSON Schema
/// ([`plan_schema`], the same value the server documents and the providers are given).
pub fn system_prompt() -> &'static str {
    &SYSTEM_PROMPT
}

static SYSTEM_PROMPT: LazyLock<String> = LazyLock::new(|| {
    format!(
        r#"You are a planning agent that turns a task into steps that run, in order, inside an isolated Linux sandbox (Debian, bash, coreutils, python3 with pip and venv, git, curl). The working directory is /workspace; every file the task produces must be written under /workspace, which is packaged for the user at the end. Steps run as a non-root user; the root filesystem is read-only (write only to /workspace and /tmp); there may be no network access.

Respond with exactly one JSON object and nothing else, for example:
{{"steps":[{{"type":"write_file","path":"hello.py","content":"print('hi')\n","description":"…"}},{{"type":"shell","command":"python3 hello.py","description":"…"}}],"summary":"…"}}

The object must match this JSON Schema:
{schema}

Rules:
- "type" is one of "shell" (run with bash -c), "python" (run with python3), "write_file" (path relative to /workspace).
- A "python" step with "stateful": true runs in one Python interpreter that lives for the whole job: variables, imports and open files defined by one stateful step persist into the next stateful steps (not into plain "python" or "shell" steps), and the value of a final expression is reported. A step that times out loses that state.
- Steps run strictly in the order given; a step that exits non-zero stops the plan.
- Prefer write_file for creating source files, then shell or python steps to run and check them.
- Keep the plan short and self-contained; do not ask questions."#,
        schema = plan_schema()
    )
});

/// The most files the planning prompt lists one by one.
pub(crate) const LISTED_FILES: usize = 200;

/// The first user message: the task, and what the planner should know about the sandbox
/// (`context`: [`inputs_context`], [`sandbox_context`]).
pub fn planning_prompt(task: &str, context: Option<&str>) -> String {
    match context {
        Some(context) => format!(
            "Task:\n{task}\n\n{}\n\nReturn the JSON plan.",
            context.trim_end()
        ),
        None => format!("Task:\n{task}\n\nReturn the JSON plan."),
    }
}

/// What the planner is told of a job's input files, already in `/workspace` (path and size;
/// the first 200, then how many more); `None` without any.
pub fn inputs_context(inputs: &[InputFile]) -> Option<String> {
    if inputs.is_empty() {
        return None;
    }
    let mut list = file_lines(inputs);
    if inputs.len() > LISTED_FILES {
        list.push_str(&format!(
            "- … and {} more files\n",
            inputs.len() - LISTED_FILES
        ));
    }
    Some(format!(
        "Input files already in /workspace (given with the task; paths relative to \
         /workspace):\n{list}"
    ))
}

/// What the planner is told about a live sandbox handed to it: it is not new (`steps_run`
/// steps ran in it), the files its workspace holds (`files`, the first 200; `more` when there
/// are more), and that stateful Python variables from earlier steps persist.
pub fn sandbox_context(files: &[InputFile], more: bool, steps_run: usize) -> String {
    let mut out = format!(
        "The sandbox is not new: {steps_run} step(s) already ran in it, and their effects are \
         still there. "
    );
    if files.is_empty() {
        out.push_str("/workspace holds no files yet.\n");
    } else {
        out.push_str("/workspace already holds these files (path, size in bytes):\n");
        out.push_str(&file_lines(files));
        if more || files.len() > LISTED_FILES {
            out.push_str("- … and more files not listed\n");
        }
    }
    out.push_str(
        "Python variables, imports and open files defined by earlier stateful python steps \
         (\"stateful\": true) persist in the sandbox's interpreter: a stateful python step can \
         use them.",
    );
    out
}

/// The first [`LISTED_FILES`] files, one a line: `- path (size bytes)`.
fn file_lines(files: &[InputFile]) -> String {
    files
        .iter()
        .take(LISTED_FILES)
        .map(|f| format!("- {} ({} bytes)\n", f.path, f.size_bytes))
        .collect()
}

/// The message sent after a reply that could not be parsed.
pub fn reparse_prompt(error: &PlanError) -> String {
    format!(
        "Your reply could not be used: {error}. Reply again with only the JSON object in the required form."
    )
}

/// The repair request: the failed step, its exit code and output tails, and what remains.
pub fn repair_prompt(
    task: &str,
    failed: &Step,
    result: &StepResult,
    completed: &[Step],
    remaining: &[Step],
) -> String {
    let step_json = serde_json::to_string_pretty(failed).unwrap_or_else(|_| format!("{failed:?}"));
    let list = |steps: &[Step]| -> String {
        if steps.is_empty() {
            "(none)".to_string()
        } else {
            steps
                .iter()
                .map(|s| serde_json::to_string(s).unwrap_or_default())
                .collect::<Vec<_>>()
                .join("\n")
        }
    };
    format!(
        "Task:\n{task}\n\nA step failed.\n\nFailed step:\n{step_json}\n\nExit code: {code} ({how:?})\n\n\
         stderr (tail{st}):\n{stderr}\n\nstdout (tail{ot}):\n{stdout}\n\n\
         Steps that already succeeded (their effects are in /workspace):\n{done}\n\n\
         Steps that were still to run:\n{todo}\n\n\
         Return the JSON plan of the steps that should run now, replacing the failed step and the \
         remaining ones, so that the task is completed.",
        code = result.exit_code,
        how = result.termination,
        st = if result.stderr_truncated { ", truncated" } else { "" },
        ot = if result.stdout_truncated { ", truncated" } else { "" },
        stderr = result.stderr_tail,
        stdout = result.stdout_tail,
        done = list(completed),
        todo = list(remaining),
    )
}

/// Why a reply is not a usable plan.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// No JSON object in the reply.
    #[error("no JSON object found in the reply")]
    NoJson,
    /// The JSON is malformed.
    #[error("malformed JSON: {0}")]
    Syntax(String),
    /// The JSON is not a plan (a missing or wrongly typed field).
    #[error("not a plan: {0}")]
    Shape(String),
    /// A step has an unknown type.
    #[error(
        "step {index} has unknown type {found:?}; expected \"shell\", \"python\" or \"write_file\""
    )]
    UnknownStepType {
        /// The step's position.
        index: usize,
        /// The type found.
        found: String,
    },
    /// The plan has no steps.
    #[error("the plan has no steps")]
    Empty,
    /// A step is invalid (e.g. an empty command).
    #[error("step {index}: {message}")]
    InvalidStep {
        /// The step's position.
        index: usize,
        /// What is wrong.
        message: String,
    },
}

/// [`Plan`] with its steps still unparsed, so that each step's error names its index.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlan {
    steps: Vec<Value>,
    #[serde(default)]
    summary: Option<Value>,
}

/// Parses a model reply into a [`Plan`].
///
/// Accepts the JSON object bare, in a fenced block, or with prose around it. Refuses malformed
/// JSON, wrong field types, unknown step types and empty plans, with a message meant to be shown
/// to the model.
pub fn parse_plan(reply: &str) -> Result<Plan, PlanError> {
    let candidates = json_candidates(reply);
    if candidates.is_empty() {
        return Err(PlanError::NoJson);
    }
    let mut first_err = None;
    for candidate in candidates {
        match parse_candidate(candidate) {
            Ok(plan) => return Ok(plan),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    Err(first_err.unwrap_or(PlanError::NoJson))
}

fn parse_candidate(text: &str) -> Result<Plan, PlanError> {
    let value: Value = serde_json::from_str(text).map_err(|e| PlanError::Syntax(e.to_string()))?;
    let raw: RawPlan = match value {
        Value::Object(ref map) if !map.contains_key("steps") => {
            return Err(PlanError::Shape("missing field \"steps\"".into()))
        }
        v => serde_json::from_value(v).map_err(|e| PlanError::Shape(e.to_string()))?,
    };
    if raw.steps.is_empty() {
        return Err(PlanError::Empty);
    }
    if raw.steps.len() > MAX_STEPS {
        return Err(PlanError::Shape(format!(
            "the plan has {} steps; at most {MAX_STEPS} are allowed",
            raw.steps.len()
        )));
    }
    let mut steps = Vec::with_capacity(raw.steps.len());
    for (index, value) in raw.steps.into_iter().enumerate() {
        steps.push(parse_step(index, value)?);
    }
    let summary = match raw.summary {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s,
        Some(other) => {
            return Err(PlanError::Shape(format!(
                "\"summary\" must be a string, got {}",
                type_name(&other)
            )))
        }
    };
    Ok(Plan { steps, summary })
}

fn parse_step(index: usize, value: Value) -> Result<Step, PlanError> {
    let Value::Object(map) = &value else {
        return Err(PlanError::Shape(format!(
            "step {index} must be an object, got {}",
            type_name(&value)
        )));
    };
    let ty = match map.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(other) => {
            return Err(PlanError::Shape(format!(
                "step {index}: \"type\" must be a string, got {}",
                type_name(other)
            )))
        }
        None => return Err(PlanError::Shape(format!("step {index}: missing \"type\""))),
    };
    if !StepKind::TYPES.contains(&ty) {
        return Err(PlanError::UnknownStepType {
            index,
            found: ty.to_string(),
        });
    }
    let ty = ty.to_string();
    let step: Step = serde_json::from_value(value)
        .map_err(|e| PlanError::Shape(format!("step {index} ({ty}): {e}")))?;
    step.validate().map_err(|e| PlanError::InvalidStep {
        index,
        message: e.to_string(),
    })?;
    Ok(step)
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Candidate JSON texts in a reply, most likely first: the whole reply, fenced blocks, then each
/// balanced `{…}` object found by scanning (string-aware).
fn json_candidates(reply: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let trimmed = reply.trim();
    if trimmed.starts_with('{') {
        out.push(trimmed);
    }
    let mut rest = reply;
    while let Some(start) = rest.find("```") {
        let after = &rest[start + 3..];
        let body_start = after.find('\n').map(|i| i + 1).unwrap_or(0);
        let body = &after[body_start..];
        let Some(end) = body.find("```") else { break };
        let block = body[..end].trim();
        if block.starts_with('{') {
            out.push(block);
        }
        rest = &body[end + 3..];
    }
    out.extend(balanced_objects(reply));
    out
}

fn balanced_objects(text: &str) -> Vec<&str> {
    let bytes = text.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'{' {
            i += 1;
            continue;
        }
        let (mut depth, mut in_str, mut escaped) = (0usize, false, false);
        let mut end = None;
        for (j, &b) in bytes.iter().enumerate().skip(i) {
            if in_str {
                match (escaped, b) {
                    (true, _) => escaped = false,
                    (false, b'\\') => escaped = true,
                    (false, b'"') => in_str = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => in_str = true,
                b'{' => depth += 1,
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = Some(j);
                        break;
                    }
                }
                _ => {}
            }
        }
        match end {
            Some(j) => {
                found.push(&text[i..=j]);
                i = j + 1;
            }
            None => break,
        }
    }
    found
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, step) in self.steps.iter().enumerate() {
            let what = match &step.kind {
                StepKind::Shell { command } => format!("shell: {command}"),
                StepKind::Python { code, .. } => {
                    format!("python: {} lines", code.lines().count())
                }
                StepKind::WriteFile { path, content } => {
                    format!("write_file: {path} ({} bytes)", content.len())
                }
            };
            match &step.description {
                Some(d) => writeln!(f, "{:>2}. {d} — {what}", i + 1)?,
                None => writeln!(f, "{:>2}. {what}", i + 1)?,
            }
        }
        if !self.summary.is_empty() {
            write!(f, "Summary: {}", self.summary)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAN: &str = r#"{"steps":[{"type":"shell","command":"echo hi","description":"greet"},{"type":"python","code":"print(1)"},{"type":"write_file","path":"a.txt","content":"x"}],"summary":"s"}"#;

    #[test]
    fn bare_fenced_and_prose() {
        let bare = parse_plan(PLAN).unwrap();
        assert_eq!(bare.steps.len(), 3);
        assert_eq!(bare.summary, "s");
        assert_eq!(bare.steps[0].description.as_deref(), Some("greet"));
        let fenced = parse_plan(&format!("```json\n{PLAN}\n```")).unwrap();
        assert_eq!(fenced, bare);
        let prose = parse_plan(&format!(
            "Sure! Here is the plan:\n\n{PLAN}\n\nLet me know {{if}} you need more."
        ))
        .unwrap();
        assert_eq!(prose, bare);
        let fenced_prose = parse_plan(&format!("Plan below.\n```\n{PLAN}\n```\nDone.")).unwrap();
        assert_eq!(fenced_prose, bare);
    }

    #[test]
    fn braces_inside_strings_do_not_confuse_the_scanner() {
        let plan = r#"Here: {"steps":[{"type":"python","code":"d = {'a': '}'}\nprint(d)"}],"summary":"x"} ok"#;
        let parsed = parse_plan(plan).unwrap();
        assert!(
            matches!(&parsed.steps[0].kind, StepKind::Python { code, .. } if code.contains("'}'"))
        );
    }

    #[test]
    fn the_planner_is_told_the_input_files() {
        assert_eq!(
            planning_prompt("t", None),
            "Task:\nt\n\nReturn the JSON plan."
        );
        let files: Vec<_> = (0..203)
            .map(|i| InputFile {
                path: format!("data/{i}.csv"),
                size_bytes: i,
            })
            .collect();
        let prompt = planning_prompt("sum them", inputs_context(&files).as_deref());
        assert!(
            prompt.contains("Input files already in /workspace"),
            "{prompt}"
        );
        assert!(prompt.contains("- data/0.csv (0 bytes)\n"), "{prompt}");
        assert!(prompt.contains("- data/199.csv (199 bytes)\n"), "{prompt}");
        assert!(!prompt.contains("data/200.csv"), "{prompt}");
        assert!(prompt.contains("… and 3 more files"), "{prompt}");
    }

    #[test]
    fn the_planner_is_told_stateful_python_and_its_plans_may_use_it() {
        assert!(system_prompt().contains("\"stateful\": true"));
        assert!(system_prompt().contains("persist"));
        let plan = r#"{"steps":[{"type":"python","code":"x = 1","stateful":true},{"type":"python","code":"x"}],"summary":"s"}"#;
        let parsed = parse_plan(plan).unwrap();
        assert_eq!(parsed.steps[0], Step::python_stateful("x = 1"));
        assert_eq!(parsed.steps[1], Step::python("x"));
        let back = serde_json::to_value(&parsed.steps).unwrap();
        assert_eq!(back[0]["stateful"], true);
        assert!(back[1].get("stateful").is_none(), "{back}");
    }

    #[test]
    fn a_sandbox_handed_to_the_planner_is_described_in_the_first_message() {
        let files = [InputFile {
            path: "data/a.csv".into(),
            size_bytes: 12,
        }];
        let prompt = planning_prompt("sum it", Some(&sandbox_context(&files, true, 3)));
        assert!(prompt.starts_with("Task:\nsum it\n\n"), "{prompt}");
        assert!(prompt.contains("3 step(s) already ran"), "{prompt}");
        assert!(
            prompt.contains("- data/a.csv (12 bytes)\n- … and more"),
            "{prompt}"
        );
        assert!(prompt.contains("persist"), "{prompt}");
        assert!(prompt.ends_with("Return the JSON plan."), "{prompt}");
        let empty = sandbox_context(&[], false, 0);
        assert!(empty.contains("no files yet"), "{empty}");
        assert_eq!(
            planning_prompt("t", None),
            "Task:\nt\n\nReturn the JSON plan."
        );
    }

    #[test]
    fn refusals_are_clear() {
        assert_eq!(parse_plan("I cannot help"), Err(PlanError::NoJson));
        assert!(matches!(
            parse_plan("{\"steps\": [}"),
            Err(PlanError::Syntax(_))
        ));
        assert_eq!(
            parse_plan(r#"{"steps":[],"summary":"x"}"#),
            Err(PlanError::Empty)
        );
        let err = parse_plan(r#"{"steps":[{"type":"shell","command":5}]}"#).unwrap_err();
        assert!(
            err.to_string()
                .contains("step 0 (shell): invalid type: integer `5`, expected a string"),
            "{err}"
        );
        let err = parse_plan(r#"{"steps":"echo"}"#).unwrap_err();
        assert!(matches!(err, PlanError::Shape(_)), "{err}");
        let err = parse_plan(r#"{"steps":[{"type":"rm","command":"x"}]}"#).unwrap_err();
        assert_eq!(
            err,
            PlanError::UnknownStepType {
                index: 0,
                found: "rm".into()
            }
        );
        assert!(err.to_string().contains("expected \"shell\""));
        let err = parse_plan(r#"{"steps":[{"type":"write_file","path":"../x","content":""}]}"#)
            .unwrap_err();
        assert!(
            matches!(err, PlanError::InvalidStep { index: 0, .. }),
            "{err}"
        );
        let err = parse_plan(r#"{"steps":[{"type":"shell"}]}"#).unwrap_err();
        assert!(err.to_string().contains("missing field `command`"), "{err}");
        // The plan format is the API's: a misspelt field is refused, not ignored.
        let err = parse_plan(r#"{"steps":[{"type":"shell","command":"x","timeout_sec":1}]}"#)
            .unwrap_err();
        assert!(
            err.to_string().contains("unknown field `timeout_sec`"),
            "{err}"
        );
        let err =
            parse_plan(r#"{"steps":[{"type":"shell","command":"x"}],"sumary":""}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `sumary`"), "{err}");
        let many = format!(
            "{{\"steps\":[{}]}}",
            vec![r#"{"type":"shell","command":"true"}"#; MAX_STEPS + 1].join(",")
        );
        assert!(parse_plan(&many)
            .unwrap_err()
            .to_string()
            .contains("at most"));
        let err = parse_plan(r#"{"plan":[]}"#).unwrap_err();
        assert!(err.to_string().contains("missing field \"steps\""), "{err}");
    }
}
