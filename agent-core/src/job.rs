//! The job model: ids, specs, steps, statuses, results and events.
//!
//! Everything here is plain data with serde support; the JSON forms are the ones the REST API and
//! the LLM plan use (`{"type":"shell","command":"…"}` for a step, `"timed_out"` for a status).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Error, Result};

/// Identifies a job: a UUID v4, always parsed, never a bare string.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct JobId(Uuid);

impl JobId {
    /// A fresh random id.
    pub fn new() -> Self {
        Self(Uuid::new_v4())
    }

    /// The underlying UUID.
    pub fn as_uuid(&self) -> &Uuid {
        &self.0
    }
}

impl Default for JobId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl fmt::Debug for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JobId({})", self.0.hyphenated())
    }
}

impl FromStr for JobId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let uuid = Uuid::try_parse(s.trim()).map_err(|e| Error::InvalidJobId {
            input: truncate_for_error(s),
            reason: e.to_string(),
        })?;
        if uuid.get_version_num() != 4 {
            return Err(Error::InvalidJobId {
                input: truncate_for_error(s),
                reason: format!("expected a UUID v4, got version {}", uuid.get_version_num()),
            });
        }
        Ok(Self(uuid))
    }
}

impl TryFrom<String> for JobId {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<JobId> for String {
    fn from(id: JobId) -> Self {
        id.to_string()
    }
}

fn truncate_for_error(s: &str) -> String {
    const MAX: usize = 64;
    if s.chars().count() <= MAX {
        s.to_string()
    } else {
        let mut out: String = s.chars().take(MAX).collect();
        out.push('…');
        out
    }
}

/// A long-lived service a job's sandbox can run beside its steps, reached through the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Service {
    /// A desktop: an X display every step draws on (`DISPLAY`), seen through VNC.
    Desktop,
    /// Jupyter Lab, working in `/workspace`.
    Jupyter,
}

impl Service {
    /// Every service.
    pub const ALL: [Service; 2] = [Service::Desktop, Service::Jupyter];

    /// Its name (in JSON, paths and labels).
    pub fn as_str(self) -> &'static str {
        match self {
            Service::Desktop => "desktop",
            Service::Jupyter => "jupyter",
        }
    }

    /// The path under which the server reaches it for `job` (`/desktop/{id}/`,
    /// `/jupyter/{id}/`): Jupyter's base URL.
    pub fn base_path(self, job: JobId) -> String {
        format!("/{}/{job}/", self.as_str())
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Service {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Service::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| {
                Error::invalid(
                    "services",
                    format!(
                        "expected \"desktop\" or \"jupyter\", got {:?}",
                        truncate_for_error(s)
                    ),
                )
            })
    }
}

/// Network access for a job's sandbox.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum NetworkMode {
    /// No network at all: only the loopback interface. The default.
    #[default]
    None,
    /// The container runtime's default bridge network (outbound access).
    Bridge,
}

impl fmt::Display for NetworkMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NetworkMode::None => "none",
            NetworkMode::Bridge => "bridge",
        })
    }
}

impl TryFrom<String> for NetworkMode {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl FromStr for NetworkMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        // Exactly the JSON names, as the API takes them (`BRIDGE` is refused everywhere).
        match s {
            "none" => Ok(NetworkMode::None),
            "bridge" => Ok(NetworkMode::Bridge),
            other => Err(Error::invalid(
                "network",
                format!(
                    "expected \"none\" or \"bridge\", got {:?}",
                    truncate_for_error(other)
                ),
            )),
        }
    }
}

/// Resource limits applied to a job's sandbox.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ResourceLimits {
    /// Memory limit in bytes (swap is set equal to it: no swap). Default 2 GiB.
    pub memory_bytes: u64,
    /// CPU limit in cores. Default 1.0.
    pub cpus: f64,
    /// Maximum number of processes. Default 256.
    pub pids: u32,
    /// Size of the writable `/workspace` in bytes. Default 1 GiB.
    pub workspace_bytes: u64,
    /// Size of the writable `/tmp` in bytes. Default 256 MiB.
    pub tmp_bytes: u64,
}

impl Default for ResourceLimits {
    fn default() -> Self {
        Self {
            memory_bytes: 2 << 30,
            cpus: 1.0,
            pids: 256,
            workspace_bytes: 1 << 30,
            tmp_bytes: 256 << 20,
        }
    }
}

impl ResourceLimits {
    /// Checks the limits are usable.
    pub fn validate(&self) -> Result<()> {
        if self.memory_bytes < (16 << 20) {
            return Err(Error::invalid(
                "limits.memory_bytes",
                "must be at least 16 MiB",
            ));
        }
        if !(self.cpus.is_finite() && self.cpus > 0.0 && self.cpus <= 1024.0) {
            return Err(Error::invalid("limits.cpus", "must be in (0, 1024]"));
        }
        if self.pids < 8 {
            return Err(Error::invalid("limits.pids", "must be at least 8"));
        }
        if self.workspace_bytes < (1 << 20) || self.tmp_bytes < (1 << 20) {
            return Err(Error::invalid(
                "limits.workspace_bytes",
                "workspace and tmp sizes must be at least 1 MiB",
            ));
        }
        Ok(())
    }
}

/// What a step does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepKind {
    /// A command run by `bash -c` in `/workspace`.
    Shell {
        /// The command line.
        command: String,
    },
    /// Python source, saved in the workspace and run with `python3`.
    Python {
        /// The source code.
        code: String,
        /// Run in the sandbox's one long-lived interpreter, so variables, imports and open files
        /// persist between stateful steps; the result carries a [`PythonOutcome`].
        stateful: bool,
    },
    /// A file written under `/workspace`.
    WriteFile {
        /// Path relative to `/workspace` (or absolute under it).
        path: String,
        /// The file's content (UTF-8).
        content: String,
    },
}

impl StepKind {
    /// Every step type, as the JSON `type` field names it.
    pub const TYPES: [&'static str; 3] = ["shell", "python", "write_file"];

    /// `"shell"`, `"python"` or `"write_file"`.
    pub fn type_name(&self) -> &'static str {
        match self {
            StepKind::Shell { .. } => "shell",
            StepKind::Python { .. } => "python",
            StepKind::WriteFile { .. } => "write_file",
        }
    }
}

/// One step of a plan.
///
/// Its JSON form (the API's, the plan's and the stored one) is
/// `{"type":"shell","command":"…","description":"…","timeout_secs":60}`; unknown fields are refused.
/// The JSON Schema of that form, generated from this type, is [`crate::schema::step_schema`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(into = "StepJson")]
pub struct Step {
    /// What the step does.
    pub kind: StepKind,
    /// A human description, as the planner gave it.
    pub description: Option<String>,
    /// A timeout for this step alone, overriding the job's per-step timeout.
    pub timeout: Option<Duration>,
}

/// The JSON form of a [`Step`]: the one definition of the step format (serde and the schema).
#[derive(Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
#[schemars(
    rename = "Step",
    description = "One step, selected by `type`: `shell` runs `command` with bash, `python` runs `code` with python3, `write_file` writes `content` to `path` under /workspace."
)]
enum StepJson {
    /// Runs `command` with `bash -c` in `/workspace`.
    Shell {
        /// The command line.
        #[schemars(length(min = 1), regex(pattern = crate::schema::NOT_BLANK))]
        command: String,
        /// What the step is for.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        description: Option<String>,
        /// A timeout for this step alone, in seconds (default: the job's per-step timeout).
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "crate::serde_duration::optional_whole_number"
        )]
        #[schemars(range(min = 1, max = MAX_TIMEOUT_SECS))]
        timeout_secs: Option<u64>,
    },
    /// Saves `code` in the workspace and runs it with `python3`.
    Python {
        /// The Python source.
        #[schemars(length(min = 1), regex(pattern = crate::schema::NOT_BLANK))]
        code: String,
        /// Run in the sandbox's one long-lived interpreter: variables, imports and open files
        /// persist between stateful steps, and the value of a final expression is returned.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        stateful: bool,
        /// What the step is for.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        description: Option<String>,
        /// A timeout for this step alone, in seconds (default: the job's per-step timeout).
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "crate::serde_duration::optional_whole_number"
        )]
        #[schemars(range(min = 1, max = MAX_TIMEOUT_SECS))]
        timeout_secs: Option<u64>,
    },
    /// Writes `content` to `path` under `/workspace`.
    WriteFile {
        /// Path relative to `/workspace` (or absolute under it).
        #[schemars(length(min = 1), regex(pattern = crate::schema::NO_NUL))]
        path: String,
        /// The file's content (UTF-8).
        content: String,
        /// What the step is for.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        description: Option<String>,
        /// A timeout for this step alone, in seconds (default: the job's per-step timeout).
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "crate::serde_duration::optional_whole_number"
        )]
        #[schemars(range(min = 1, max = MAX_TIMEOUT_SECS))]
        timeout_secs: Option<u64>,
    },
}

impl<'de> Deserialize<'de> for Step {
    /// [`StepJson`], from a JSON object only: serde would also take an internally tagged enum
    /// from an array (`["shell","ls"]`), which is not the step format.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let map = serde_json::Map::<String, serde_json::Value>::deserialize(deserializer)?;
        StepJson::deserialize(serde_json::Value::Object(map))
            .map(Step::from)
            .map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Step {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        StepJson::schema_name()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        StepJson::json_schema(generator)
    }
}

impl From<StepJson> for Step {
    fn from(json: StepJson) -> Self {
        let (kind, description, timeout_secs) = match json {
            StepJson::Shell {
                command,
                description,
                timeout_secs,
            } => (StepKind::Shell { command }, description, timeout_secs),
            StepJson::Python {
                code,
                stateful,
                description,
                timeout_secs,
            } => (
                StepKind::Python { code, stateful },
                description,
                timeout_secs,
            ),
            StepJson::WriteFile {
                path,
                content,
                description,
                timeout_secs,
            } => (
                StepKind::WriteFile { path, content },
                description,
                timeout_secs,
            ),
        };
        Step {
            kind,
            description,
            timeout: timeout_secs.map(Duration::from_secs),
        }
    }
}

impl From<Step> for StepJson {
    fn from(step: Step) -> Self {
        let description = step.description;
        let timeout_secs = step.timeout.map(|t| t.as_secs());
        match step.kind {
            StepKind::Shell { command } => StepJson::Shell {
                command,
                description,
                timeout_secs,
            },
            StepKind::Python { code, stateful } => StepJson::Python {
                code,
                stateful,
                description,
                timeout_secs,
            },
            StepKind::WriteFile { path, content } => StepJson::WriteFile {
                path,
                content,
                description,
                timeout_secs,
            },
        }
    }
}

impl Step {
    /// A shell step.
    pub fn shell(command: impl Into<String>) -> Self {
        Self::from_kind(StepKind::Shell {
            command: command.into(),
        })
    }

    /// A Python step.
    pub fn python(code: impl Into<String>) -> Self {
        Self::from_kind(StepKind::Python {
            code: code.into(),
            stateful: false,
        })
    }

    /// A stateful Python step: run in the sandbox's one long-lived interpreter.
    pub fn python_stateful(code: impl Into<String>) -> Self {
        Self::from_kind(StepKind::Python {
            code: code.into(),
            stateful: true,
        })
    }

    /// A write_file step.
    pub fn write_file(path: impl Into<String>, content: impl Into<String>) -> Self {
        Self::from_kind(StepKind::WriteFile {
            path: path.into(),
            content: content.into(),
        })
    }

    fn from_kind(kind: StepKind) -> Self {
        Self {
            kind,
            description: None,
            timeout: None,
        }
    }

    /// Sets the description.
    pub fn with_description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }

    /// Sets a per-step timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Checks the step is runnable: a non-empty command/code without NUL bytes, a path inside
    /// `/workspace`, a timeout of 1 to [`MAX_TIMEOUT_SECS`] seconds. Fields are named as in JSON.
    pub fn validate(&self) -> Result<()> {
        match &self.kind {
            StepKind::Shell { command } => text_field("command", command)?,
            StepKind::Python { code, .. } => text_field("code", code)?,
            StepKind::WriteFile { path, .. } => {
                if path.trim().is_empty() {
                    return Err(Error::invalid("path", "a write_file step needs a path"));
                }
                crate::executor::normalize_workspace_path(path)
                    .map_err(|e| Error::invalid("path", e.message))?;
            }
        }
        if let Some(t) = self.timeout {
            timeout_field("timeout_secs", t)?;
        }
        Ok(())
    }
}

/// A command or source: not blank, no NUL byte (no process can take one in its argv).
fn text_field(field: &str, value: &str) -> Result<()> {
    if value.trim().is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if value.contains('\0') {
        return Err(Error::invalid(field, "contains a NUL byte"));
    }
    Ok(())
}

fn timeout_field(field: &str, timeout: Duration) -> Result<()> {
    if timeout < Duration::from_secs(1) || timeout > Duration::from_secs(MAX_TIMEOUT_SECS) {
        return Err(Error::invalid(
            field,
            format!("must be between 1 and {MAX_TIMEOUT_SECS} seconds"),
        ));
    }
    Ok(())
}

/// Checks an image reference against the Docker reference grammar
/// (`[domain[:port]/]path[:tag][@digest]`, lower-case path components, a name of at most 255
/// characters), or an image ID (`sha256:` and 64 hex digits).
pub fn validate_image_reference(image: &str) -> Result<()> {
    static REFERENCE: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        // distribution/reference's grammar, written out.
        let alnum = "[a-z0-9]+";
        let separator = "(?:[._]|__|-+)";
        let component = format!("{alnum}(?:{separator}{alnum})*");
        let domain_part = "(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])";
        let host = format!(r"(?:{domain_part}(?:\.{domain_part})*|\[[a-fA-F0-9:]+\])");
        let domain = format!("{host}(?::[0-9]+)?");
        let name = format!("(?:{domain}/)?{component}(?:/{component})*");
        let tag = "[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}";
        // The algorithms the engine knows, with their digests' lengths (lower-case hex).
        let digest = "(?:sha256:[0-9a-f]{64}|sha384:[0-9a-f]{96}|sha512:[0-9a-f]{128})";
        let pattern = format!("^(?P<name>{name})(?::{tag})?(?:@{digest})?$");
        regex::Regex::new(&pattern).unwrap_or_else(|e| unreachable!("a fixed pattern: {e}"))
    });
    let refuse = |why: &str| Err(Error::invalid("image", why.to_string()));
    if image.len() > 4096 {
        return refuse("longer than 4096 bytes");
    }
    if image.len() == 71
        && image.starts_with("sha256:")
        && image[7..].bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Ok(());
    }
    match REFERENCE.captures(image) {
        Some(c) if c.name("name").map_or(0, |n| n.len()) > 255 => {
            refuse("the repository name is longer than 255 characters")
        }
        Some(_) => Ok(()),
        None => refuse(
            "not an image reference ([registry/]name[:tag][@digest], lower-case name components)",
        ),
    }
}

/// Everything needed to run a job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct JobSpec {
    /// The task in plain language. May be empty when `steps` are given.
    pub prompt: String,
    /// Explicit steps: when present the job skips planning and repair and needs no LLM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<Step>>,
    /// Container image; `None` means the executor's default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Default timeout of each step. Default 5 minutes.
    #[serde(rename = "step_timeout_secs", with = "crate::serde_duration::secs")]
    pub step_timeout: Duration,
    /// Timeout of the whole job, planning included. Default 30 minutes.
    #[serde(rename = "timeout_secs", with = "crate::serde_duration::secs")]
    pub job_timeout: Duration,
    /// Resource limits of the sandbox.
    pub limits: ResourceLimits,
    /// Network access of the sandbox. Default none.
    pub network: NetworkMode,
    /// Extra environment variables for every step.
    pub env: BTreeMap<String, String>,
    /// How many times a failed step may go back to the LLM for a repair. Default 2.
    pub max_repairs: u32,
    /// Services the sandbox runs beside the steps (started before the first one).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<Service>,
    /// How long the sandbox is kept after the steps end (zero: removed at once), so its desktop
    /// or notebook can still be looked at. The job's status is final meanwhile.
    #[serde(
        rename = "keep_alive_secs",
        with = "crate::serde_duration::secs",
        skip_serializing_if = "Duration::is_zero"
    )]
    pub keep_alive: Duration,
    /// Set when the job is a live sandbox: its steps arrive over time (see
    /// [`JobManager::create_sandbox`](crate::manager::JobManager::create_sandbox)).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live: Option<LiveSettings>,
    /// Set when the job's sandbox is to be continued as a live sandbox once its steps end (it
    /// ends as usual, with its final status and ZIP; [`Job::continued_in`] names the sandbox).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_sandbox: Option<KeepSandbox>,
    /// Files placed under `/workspace` before the first step (set by
    /// [`JobManager::submit_with_inputs`](crate::manager::JobManager::submit_with_inputs)); the
    /// planner is told they exist.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<crate::inputs::InputFile>,
    /// The tenant that owns the job: the name of the API token that submitted it, stamped by
    /// the server at admission (a request cannot set it). `None`: submitted by the admin, or by
    /// a server without tenants. A tenant sees and controls only its own jobs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

/// What a job asks for when its sandbox is to be continued as a live sandbox after its steps:
/// the container is handed over as it is (workspace files, a stateful Python interpreter's
/// variables) to a new live sandbox, a job of its own with its own id that the caller then
/// drives step by step. Only a job that ends `succeeded` or `failed` hands its sandbox over (not
/// one cancelled, timed out or interrupted).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeepSandbox {
    /// The live sandbox's idle timeout. Default 5 minutes.
    #[serde(
        rename = "idle_timeout_secs",
        with = "crate::serde_duration::secs",
        default = "default_idle_timeout"
    )]
    pub idle_timeout: Duration,
    /// The live sandbox's hard maximum lifetime, counted from the handover. Default 30 minutes.
    #[serde(
        rename = "timeout_secs",
        with = "crate::serde_duration::secs",
        default = "default_job_timeout"
    )]
    pub lifetime: Duration,
}

impl KeepSandbox {
    /// Checks the settings and that `job` may hand its sandbox over.
    fn validate(&self, job: &JobSpec) -> Result<()> {
        if self.idle_timeout.is_zero() {
            return Err(Error::invalid(
                "keep_sandbox.idle_timeout_secs",
                "must be at least 1",
            ));
        }
        if self.lifetime.is_zero() {
            return Err(Error::invalid(
                "keep_sandbox.timeout_secs",
                "must be at least 1",
            ));
        }
        if job.live.is_some() {
            return Err(Error::invalid(
                "keep_sandbox",
                "a live sandbox is one already",
            ));
        }
        if !job.keep_alive.is_zero() {
            return Err(Error::invalid(
                "keep_sandbox",
                "keep_alive_secs and keep_sandbox exclude each other: a kept sandbox is only \
                 looked at, a handed-over one is driven step by step",
            ));
        }
        if !job.services.is_empty() {
            return Err(Error::invalid(
                "keep_sandbox",
                "a job with services cannot hand its sandbox over (its services are bound to \
                 the job's id); use keep_alive_secs, or a live sandbox with services",
            ));
        }
        Ok(())
    }
}

impl Default for KeepSandbox {
    fn default() -> Self {
        Self {
            idle_timeout: default_idle_timeout(),
            lifetime: default_job_timeout(),
        }
    }
}

fn default_idle_timeout() -> Duration {
    LiveSettings::default().idle_timeout
}

fn default_job_timeout() -> Duration {
    JobSpec::default().job_timeout
}

/// What makes a job a live sandbox: it holds its sandbox open and runs steps as they are sent,
/// until destroyed, idle for `idle_timeout`, or older than the job's `timeout_secs` (its hard
/// maximum lifetime).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveSettings {
    /// Ended after this long without a step or file operation (extendable). Default 5 minutes.
    #[serde(rename = "idle_timeout_secs", with = "crate::serde_duration::secs")]
    pub idle_timeout: Duration,
}

impl Default for LiveSettings {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(300),
        }
    }
}

impl Default for JobSpec {
    fn default() -> Self {
        Self {
            prompt: String::new(),
            steps: None,
            image: None,
            step_timeout: Duration::from_secs(300),
            job_timeout: Duration::from_secs(1800),
            limits: ResourceLimits::default(),
            network: NetworkMode::None,
            env: BTreeMap::new(),
            max_repairs: 2,
            services: Vec::new(),
            keep_alive: Duration::ZERO,
            live: None,
            keep_sandbox: None,
            inputs: Vec::new(),
            tenant: None,
        }
    }
}

impl JobSpec {
    /// A job planned by the LLM from a prompt.
    pub fn from_prompt(prompt: impl Into<String>) -> Self {
        Self {
            prompt: prompt.into(),
            ..Self::default()
        }
    }

    /// A job that runs these steps as given (no LLM).
    pub fn from_steps(steps: Vec<Step>) -> Self {
        Self {
            steps: Some(steps),
            ..Self::default()
        }
    }

    /// Sets the image.
    pub fn with_image(mut self, image: impl Into<String>) -> Self {
        self.image = Some(image.into());
        self
    }

    /// Sets the whole-job timeout.
    pub fn with_job_timeout(mut self, timeout: Duration) -> Self {
        self.job_timeout = timeout;
        self
    }

    /// Sets the default per-step timeout.
    pub fn with_step_timeout(mut self, timeout: Duration) -> Self {
        self.step_timeout = timeout;
        self
    }

    /// Sets the network mode.
    pub fn with_network(mut self, network: NetworkMode) -> Self {
        self.network = network;
        self
    }

    /// Adds an environment variable.
    pub fn with_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// Sets the resource limits.
    pub fn with_limits(mut self, limits: ResourceLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Asks for a service (started before the first step).
    pub fn with_service(mut self, service: Service) -> Self {
        if !self.services.contains(&service) {
            self.services.push(service);
        }
        self
    }

    /// Keeps the sandbox this long after the steps end.
    pub fn with_keep_alive(mut self, keep_alive: Duration) -> Self {
        self.keep_alive = keep_alive;
        self
    }

    /// Sets the repair budget.
    pub fn with_max_repairs(mut self, max_repairs: u32) -> Self {
        self.max_repairs = max_repairs;
        self
    }

    /// Whether this job needs an LLM (it has no explicit steps).
    pub fn needs_llm(&self) -> bool {
        self.steps.is_none() && self.live.is_none()
    }

    /// Checks the spec: a prompt or steps, valid steps, sane timeouts, limits and env.
    pub fn validate(&self) -> Result<()> {
        match &self.steps {
            None if self.prompt.trim().is_empty() && self.live.is_none() => {
                return Err(Error::invalid("prompt", "a prompt or steps is required"))
            }
            Some(steps) if steps.is_empty() => {
                return Err(Error::invalid("steps", "must contain at least one step"))
            }
            Some(steps) if steps.len() > MAX_STEPS => {
                return Err(Error::invalid(
                    "steps",
                    format!("at most {MAX_STEPS} steps are allowed"),
                ))
            }
            Some(steps) => {
                for (i, step) in steps.iter().enumerate() {
                    step.validate()
                        .map_err(|e| e.within(&format!("steps[{i}]")))?;
                }
            }
            None => {}
        }
        if self.prompt.len() > MAX_PROMPT_BYTES {
            return Err(Error::invalid(
                "prompt",
                format!("longer than {MAX_PROMPT_BYTES} bytes"),
            ));
        }
        if self.max_repairs > MAX_REPAIRS {
            return Err(Error::invalid(
                "max_repairs",
                format!("must be at most {MAX_REPAIRS}"),
            ));
        }
        // At least a second; the upper bound (`MAX_TIMEOUT_SECS`) is the API's, an embedder may
        // ask for longer.
        if self.step_timeout < Duration::from_secs(1) {
            return Err(Error::invalid("step_timeout_secs", "must be at least 1"));
        }
        if self.job_timeout < Duration::from_secs(1) {
            return Err(Error::invalid("timeout_secs", "must be at least 1"));
        }
        if self.live.is_some_and(|l| l.idle_timeout.is_zero()) {
            return Err(Error::invalid("idle_timeout_secs", "must be at least 1"));
        }
        if let Some(keep) = &self.keep_sandbox {
            keep.validate(self)?;
        }
        if let Some(image) = &self.image {
            validate_image_reference(image)?;
        }
        for (i, service) in self.services.iter().enumerate() {
            if self.services[..i].contains(service) {
                return Err(Error::invalid(
                    "services",
                    format!("{service} is listed twice"),
                ));
            }
        }
        for (key, value) in &self.env {
            let valid = !key.is_empty()
                && !key.starts_with(|c: char| c.is_ascii_digit())
                && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(Error::invalid(
                    "env",
                    format!("{:?} is not a valid variable name", truncate_for_error(key)),
                ));
            }
            if value.contains('\0') {
                return Err(Error::invalid(format!("env.{key}"), "contains a NUL byte"));
            }
        }
        self.limits.validate()
    }
}

pub use crate::serde_duration::optional_whole_number;

/// The longest timeout (job, step or per-step) a job may ask for: 7 days, in seconds.
pub const MAX_TIMEOUT_SECS: u64 = 7 * 86_400;

/// The largest prompt accepted (256 KiB).
pub const MAX_PROMPT_BYTES: usize = 256 << 10;

/// The most steps a plan (explicit or from the LLM) may have.
pub const MAX_STEPS: usize = 1000;

/// The most repair rounds a job may ask for.
pub const MAX_REPAIRS: u32 = 20;

/// The lifecycle state of a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Accepted, waiting for a worker.
    Queued,
    /// Planning or running steps.
    Running,
    /// Every step succeeded.
    Succeeded,
    /// A step failed (after repairs), planning failed, or the infrastructure failed.
    Failed,
    /// Cancelled by a user.
    Cancelled,
    /// The job ran past its timeout.
    TimedOut,
    /// The process running the job stopped (crash or shutdown) while the job ran.
    Interrupted,
}

impl JobStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [JobStatus; 7] = [
        JobStatus::Queued,
        JobStatus::Running,
        JobStatus::Succeeded,
        JobStatus::Failed,
        JobStatus::Cancelled,
        JobStatus::TimedOut,
        JobStatus::Interrupted,
    ];

    /// Whether the job can change no further.
    pub fn is_terminal(self) -> bool {
        !matches!(self, JobStatus::Queued | JobStatus::Running)
    }

    /// The one place that says which transitions are allowed.
    pub fn can_transition_to(self, to: JobStatus) -> bool {
        use JobStatus::*;
        matches!(
            (self, to),
            (Queued, Running)
                | (Queued, Cancelled)
                | (Queued, Failed)
                | (Queued, Interrupted)
                | (Running, Succeeded)
                | (Running, Failed)
                | (Running, Cancelled)
                | (Running, TimedOut)
                | (Running, Interrupted)
        )
    }

    /// Checks a transition, as a typed error.
    pub fn transition(self, to: JobStatus) -> Result<JobStatus> {
        if self.can_transition_to(to) {
            Ok(to)
        } else {
            Err(Error::InvalidTransition { from: self, to })
        }
    }

    /// The snake_case name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
            JobStatus::TimedOut => "timed_out",
            JobStatus::Interrupted => "interrupted",
        }
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobStatus {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        JobStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                Error::invalid(
                    "status",
                    format!(
                        "unknown status {:?}; expected one of queued, running, succeeded, failed, cancelled, timed_out, interrupted",
                        truncate_for_error(s)
                    ),
                )
            })
    }
}

/// How a step's run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Termination {
    /// The process exited by itself (look at the exit code).
    Exited,
    /// Killed at its timeout.
    TimedOut,
    /// Killed because the job was cancelled.
    Cancelled,
    /// Killed by the kernel's out-of-memory killer.
    OutOfMemory,
    /// Stopped because it wrote more than the output cap.
    OutputLimit,
}

/// The outcome of running one step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepResult {
    /// Exit code; 128+N for a process killed by signal N; -1 when there was no process.
    pub exit_code: i32,
    /// How the run ended.
    pub termination: Termination,
    /// The last bytes of stdout (lossy UTF-8).
    pub stdout_tail: String,
    /// The last bytes of stderr (lossy UTF-8).
    pub stderr_tail: String,
    /// Whether stdout was longer than its tail.
    pub stdout_truncated: bool,
    /// Whether stderr was longer than its tail.
    pub stderr_truncated: bool,
    /// Wall time of the step.
    #[serde(rename = "duration_ms", with = "crate::serde_duration::millis")]
    pub duration: Duration,
    /// What a stateful Python step's interpreter said (`None` for other steps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub python: Option<Box<PythonOutcome>>,
}

/// The outcome of a stateful Python step, beside its exit code and output.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PythonOutcome {
    /// `repr()` of the value of the code's final expression, when it has one that is not `None`
    /// (cut at 8 KiB, with a note).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The exception the code raised, as its last traceback line (the full traceback is on
    /// stderr).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Workspace files the step created or changed (e.g. a plot saved with `savefig`), sorted,
    /// at most 100.
    #[serde(default)]
    pub files: Vec<String>,
    /// Whether more files changed than `files` lists.
    #[serde(default)]
    pub files_truncated: bool,
    /// This step started a new interpreter: nothing from earlier steps was defined.
    #[serde(default)]
    pub fresh_interpreter: bool,
    /// The interpreter ended during this step (it timed out, was cancelled, flooded its output,
    /// or the code ended it): its state is gone and the next stateful step starts afresh.
    #[serde(default)]
    pub state_lost: bool,
    /// What happened to the interpreter, for people, when something did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl StepResult {
    /// A result with no output: `exit_code` and `termination` after `duration`.
    pub fn without_output(exit_code: i32, termination: Termination, duration: Duration) -> Self {
        Self {
            exit_code,
            termination,
            stdout_tail: String::new(),
            stderr_tail: String::new(),
            stdout_truncated: false,
            stderr_truncated: false,
            duration,
            python: None,
        }
    }

    /// The result of a step cancelled before it started.
    pub fn cancelled(duration: Duration) -> Self {
        Self::without_output(-1, Termination::Cancelled, duration)
    }

    /// The result of a step whose file the sandbox refused (`PathRefused`, `TooLarge`, …): it
    /// failed, with the refusal as its stderr.
    pub fn refused(error: &impl fmt::Display, duration: Duration) -> Self {
        Self {
            stderr_tail: error.to_string(),
            ..Self::without_output(-1, Termination::Exited, duration)
        }
    }

    /// Whether the step succeeded: it exited by itself with code 0.
    pub fn success(&self) -> bool {
        self.termination == Termination::Exited && self.exit_code == 0
    }
}

/// The state of one step within a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Not started.
    Pending,
    /// Running now.
    Running,
    /// Exited 0.
    Succeeded,
    /// Exited non-zero, was killed, or could not run.
    Failed,
    /// Replaced by a repair or never reached.
    Skipped,
}

/// A step as run within a job, with its result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Position in the job (0-based, counting every step ever run, repairs included).
    pub index: usize,
    /// The step.
    pub step: Step,
    /// Its state.
    pub status: StepStatus,
    /// Its result once finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<StepResult>,
    /// Which repair round produced the step (0 = the original plan).
    #[serde(default)]
    pub attempt: u32,
}

impl StepRecord {
    /// Records how the step ended (succeeded or failed, with its result) and returns the event
    /// that says so: `step_finished`, or a log line when the sandbox could not run it.
    pub(crate) fn finish(
        &mut self,
        outcome: &std::result::Result<StepResult, crate::executor::SandboxError>,
    ) -> EventKind {
        match outcome {
            Ok(result) => {
                self.status = if result.success() {
                    StepStatus::Succeeded
                } else {
                    StepStatus::Failed
                };
                self.result = Some(result.clone());
                EventKind::StepFinished {
                    index: self.index,
                    result: result.clone(),
                }
            }
            Err(e) => {
                self.status = StepStatus::Failed;
                EventKind::Log {
                    message: format!("step {} could not run: {e}", self.index),
                }
            }
        }
    }
}

/// Tokens used by LLM calls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUsage {
    /// Prompt (input) tokens.
    pub prompt_tokens: u64,
    /// Completion (output) tokens.
    pub completion_tokens: u64,
    /// Total tokens.
    pub total_tokens: u64,
}

impl TokenUsage {
    /// Adds another usage to this one.
    pub fn add(&mut self, other: TokenUsage) {
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.total_tokens += other.total_tokens;
    }

    /// What was used since `before` (an earlier reading of the same counter).
    pub fn since(&self, before: TokenUsage) -> TokenUsage {
        TokenUsage {
            prompt_tokens: self.prompt_tokens.saturating_sub(before.prompt_tokens),
            completion_tokens: self
                .completion_tokens
                .saturating_sub(before.completion_tokens),
            total_tokens: self.total_tokens.saturating_sub(before.total_tokens),
        }
    }
}

/// A plan produced by the LLM (or given explicitly). Its JSON Schema is
/// [`crate::schema::plan_schema`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(description = "A plan: steps that run in order inside the sandbox, and a summary.")]
pub struct Plan {
    /// The steps, run in order; a step that fails stops the plan.
    #[schemars(length(min = 1, max = MAX_STEPS))]
    pub steps: Vec<Step>,
    /// A short summary of what the plan does.
    #[serde(default)]
    pub summary: String,
}

/// Information about a job's result archive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    /// Where the ZIP is stored (a path or key understood by the job manager's artifact directory).
    pub path: String,
    /// Its size in bytes.
    pub size_bytes: u64,
    /// Number of files in it.
    pub files: u64,
}

/// A job as stored: its spec, state and results.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Its id.
    pub id: JobId,
    /// What to run.
    pub spec: JobSpec,
    /// Where it is in its lifecycle.
    pub status: JobStatus,
    /// When it was submitted.
    pub created_at: DateTime<Utc>,
    /// When a worker took it.
    pub started_at: Option<DateTime<Utc>>,
    /// When it reached a terminal status.
    pub finished_at: Option<DateTime<Utc>>,
    /// Why it failed, when it did.
    pub error: Option<String>,
    /// The plan being run.
    pub plan: Option<Plan>,
    /// Every step run so far.
    pub steps: Vec<StepRecord>,
    /// Which LLM provider answered (the last one that did).
    pub provider: Option<String>,
    /// LLM token usage over the whole job.
    pub usage: TokenUsage,
    /// The result archive, once written.
    pub artifact: Option<Artifact>,
    /// The live sandbox this job's sandbox was handed over to ([`JobSpec::keep_sandbox`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continued_in: Option<JobId>,
    /// For a live sandbox made from a finished job's sandbox: that job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continues: Option<JobId>,
    /// Its sandbox kept after its steps ([`JobSpec::keep_alive`]): until when, and once it is
    /// gone, when and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept_sandbox: Option<KeptSandbox>,
}

/// A finished job's kept sandbox, as its record tells it ([`Job::kept_sandbox`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct KeptSandbox {
    /// When it was to go at the latest (its keep-alive's expiry).
    pub until: DateTime<Utc>,
    /// When and why it went; `None` while it is kept (or when the process keeping it died
    /// without saying: restart recovery then ends it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<SandboxEnd>,
}

impl KeptSandbox {
    /// A sandbox kept until `until`.
    pub fn new(until: DateTime<Utc>) -> Self {
        Self { until, ended: None }
    }
}

/// When and why a kept sandbox went.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SandboxEnd {
    /// When.
    pub at: DateTime<Utc>,
    /// Why.
    pub reason: SandboxEndReason,
}

impl SandboxEnd {
    /// A sandbox gone now for `reason`.
    pub fn now(reason: SandboxEndReason) -> Self {
        Self {
            at: Utc::now(),
            reason,
        }
    }
}

/// Why a kept sandbox went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum SandboxEndReason {
    /// Its keep-alive ran out.
    Expired,
    /// It was released (`release`, or a cancel of the finished job).
    Released,
    /// The server stopped (a graceful shutdown removes the sandboxes it keeps).
    ServerStopped,
    /// The server that kept it stopped without removing it (a crash, a kill): the restarted
    /// server cannot reach it (its link was the old process's) and removed its container.
    ServerRestarted,
}

impl SandboxEndReason {
    /// Its name in the API (`expired`, `released`, `server_stopped`, `server_restarted`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Expired => "expired",
            Self::Released => "released",
            Self::ServerStopped => "server_stopped",
            Self::ServerRestarted => "server_restarted",
        }
    }
}

impl Job {
    /// A new queued job.
    pub fn new(id: JobId, spec: JobSpec) -> Self {
        Self {
            id,
            spec,
            status: JobStatus::Queued,
            created_at: Utc::now(),
            started_at: None,
            finished_at: None,
            error: None,
            plan: None,
            steps: Vec::new(),
            provider: None,
            usage: TokenUsage::default(),
            artifact: None,
            continued_in: None,
            continues: None,
            kept_sandbox: None,
        }
    }

    /// Moves to `to` if allowed, stamping start and finish times.
    pub fn transition(&mut self, to: JobStatus) -> Result<()> {
        self.status = self.status.transition(to)?;
        let now = Utc::now();
        if to == JobStatus::Running {
            self.started_at = Some(now);
        }
        if to.is_terminal() {
            self.finished_at = Some(now);
        }
        Ok(())
    }
}

/// Which output stream a chunk came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// What happened, as recorded in a job's event log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// The job's status changed.
    Status {
        /// The new status.
        status: JobStatus,
        /// Why, for failures.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// Text streamed by the LLM while planning or repairing.
    Planning {
        /// A text delta.
        text: String,
    },
    /// A plan (or a repaired remainder of one) was accepted.
    Plan {
        /// The steps that will run next.
        steps: Vec<Step>,
        /// The planner's summary.
        summary: String,
        /// The provider that produced it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        provider: Option<String>,
        /// Repair round (0 = the first plan).
        attempt: u32,
    },
    /// A step started.
    StepStarted {
        /// Its index in the job.
        index: usize,
        /// The step.
        step: Step,
    },
    /// Output from a running step.
    Output {
        /// The step's index.
        index: usize,
        /// stdout or stderr.
        stream: OutputStream,
        /// The text (lossy UTF-8).
        text: String,
    },
    /// A step finished.
    StepFinished {
        /// Its index.
        index: usize,
        /// Its result.
        result: StepResult,
    },
    /// A free-form note from the job manager (e.g. "repairing step 2").
    Log {
        /// The message.
        message: String,
    },
}

/// One entry of a job's event log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobEvent {
    /// The job.
    pub job_id: JobId,
    /// Strictly increasing within a job, starting at 1.
    pub seq: u64,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

impl JobEvent {
    /// Whether this event is a terminal status change (the last event of a job).
    pub fn is_final(&self) -> bool {
        matches!(&self.kind, EventKind::Status { status, .. } if status.is_terminal())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_id_round_trips_and_rejects_garbage() {
        let id = JobId::new();
        let parsed: JobId = id.to_string().parse().unwrap();
        assert_eq!(id, parsed);
        assert!(matches!(
            "not-a-uuid".parse::<JobId>(),
            Err(Error::InvalidJobId { .. })
        ));
        // A valid UUID of another version is refused.
        assert!("00000000-0000-1000-8000-000000000000"
            .parse::<JobId>()
            .is_err());
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{id}\""));
        assert!(serde_json::from_str::<JobId>("\"x\"").is_err());
    }

    #[test]
    fn status_transitions_are_checked() {
        use JobStatus::*;
        for from in JobStatus::ALL {
            for to in JobStatus::ALL {
                let allowed = from.can_transition_to(to);
                if from.is_terminal() {
                    assert!(!allowed, "{from} is terminal but may go to {to}");
                }
                assert_eq!(from.transition(to).is_ok(), allowed);
            }
        }
        assert!(Queued.can_transition_to(Running));
        assert!(Running.can_transition_to(TimedOut));
        assert!(!Queued.can_transition_to(Succeeded));
        assert!(!Running.can_transition_to(Queued));
        assert!(!Succeeded.can_transition_to(Cancelled));
    }

    #[test]
    fn status_names_round_trip() {
        for st in JobStatus::ALL {
            assert_eq!(st.as_str().parse::<JobStatus>().unwrap(), st);
            assert_eq!(serde_json::to_string(&st).unwrap(), format!("\"{st}\""));
        }
        assert!("done".parse::<JobStatus>().is_err());
    }

    #[test]
    fn step_json_is_the_plan_format() {
        let step = Step::shell("echo hi").with_description("greet");
        let json = serde_json::to_value(&step).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"type":"shell","command":"echo hi","description":"greet"})
        );
        let back: Step = serde_json::from_value(json).unwrap();
        assert_eq!(back, step);
        let wf: Step = serde_json::from_str(
            r#"{"type":"write_file","path":"a.txt","content":"x","timeout_secs":5}"#,
        )
        .unwrap();
        assert_eq!(wf.timeout, Some(Duration::from_secs(5)));
        assert!(serde_json::from_str::<Step>(r#"{"type":"rm_rf","path":"/"}"#).is_err());
    }

    #[test]
    fn spec_validation() {
        assert!(JobSpec::default().validate().is_err());
        assert!(JobSpec::from_prompt("do it").validate().is_ok());
        assert!(JobSpec::from_steps(vec![]).validate().is_err());
        assert!(JobSpec::from_steps(vec![Step::shell("  ")])
            .validate()
            .is_err());
        assert!(JobSpec::from_steps(vec![Step::shell("true")])
            .validate()
            .is_ok());
        assert!(JobSpec::from_prompt("x")
            .with_env("BAD-NAME", "1")
            .validate()
            .is_err());
        assert!(
            JobSpec::from_steps(vec![Step::shell("true"); MAX_STEPS + 1])
                .validate()
                .is_err()
        );
        assert!(JobSpec::from_prompt("x")
            .with_max_repairs(MAX_REPAIRS + 1)
            .validate()
            .is_err());
        assert!(JobSpec::from_prompt("x")
            .with_job_timeout(Duration::ZERO)
            .validate()
            .is_err());
    }

    #[test]
    fn image_references_follow_the_docker_grammar() {
        for ok in [
            "containerized-agent:latest",
            "debian",
            "library/debian:bookworm-slim",
            "registry.example.com:5000/team/app:v1.2_3",
            "localhost/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "a__b/c-d--e.f:T",
        ] {
            assert!(validate_image_reference(ok).is_ok(), "{ok} refused");
        }
        let long = "a".repeat(5000);
        let long_name = format!("{}:x", "a".repeat(256));
        for bad in [
            "",
            "../x",
            "Debian",
            "debian:",
            ":latest",
            "debian:la test",
            "debian\0",
            "a/../b",
            "-a",
            "a_",
            "debian:-x",
            "debian@sha256:abc",
            long.as_str(),
            long_name.as_str(),
        ] {
            let err = validate_image_reference(bad).unwrap_err();
            assert!(
                matches!(&err, Error::InvalidInput { field, .. } if field == "image"),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn nul_bytes_paths_and_timeouts_are_refused_naming_the_field() {
        let field_of = |spec: JobSpec| match spec.validate() {
            Err(Error::InvalidInput { field, .. }) => field,
            other => panic!("expected an invalid field, got {other:?}"),
        };
        let steps = |step: Step| JobSpec::from_steps(vec![Step::shell("true"), step]);
        assert_eq!(field_of(steps(Step::shell("echo \0"))), "steps[1].command");
        assert_eq!(field_of(steps(Step::python("\0"))), "steps[1].code");
        assert_eq!(
            field_of(steps(Step::write_file("a\0b", ""))),
            "steps[1].path"
        );
        assert_eq!(
            field_of(steps(Step::write_file("../x", ""))),
            "steps[1].path"
        );
        assert_eq!(
            field_of(steps(Step::write_file("/etc/x", ""))),
            "steps[1].path"
        );
        // Content is data: a NUL byte in a file is fine.
        assert!(steps(Step::write_file("a.bin", "\0")).validate().is_ok());
        let too_long = Duration::from_secs(MAX_TIMEOUT_SECS + 1);
        assert_eq!(
            field_of(steps(Step::shell("true").with_timeout(too_long))),
            "steps[1].timeout_secs"
        );
        assert_eq!(
            field_of(JobSpec::from_prompt("x").with_step_timeout(Duration::ZERO)),
            "step_timeout_secs"
        );
        assert_eq!(
            field_of(JobSpec::from_prompt("x").with_env("A", "1\0x")),
            "env.A"
        );
        assert_eq!(
            field_of(JobSpec::from_prompt("x").with_image("../x")),
            "image"
        );
    }

    #[test]
    fn a_step_is_an_object_with_known_fields_only() {
        assert!(serde_json::from_str::<Step>(r#"["shell","ls"]"#).is_err());
        let err = serde_json::from_str::<Step>(r#"{"type":"shell","command":"x","timeout_sec":1}"#)
            .unwrap_err();
        assert!(
            err.to_string().contains("unknown field `timeout_sec`"),
            "{err}"
        );
        // Round trip of every kind, description and timeout included.
        for step in [
            Step::shell("ls").with_timeout(Duration::from_secs(3)),
            Step::python("print(1)").with_description("p"),
            Step::write_file("a", "b").with_timeout(Duration::from_secs(9)),
        ] {
            let json = serde_json::to_string(&step).unwrap();
            assert_eq!(serde_json::from_str::<Step>(&json).unwrap(), step, "{json}");
        }
    }

    #[test]
    fn network_names_are_exact() {
        assert_eq!(
            "bridge".parse::<NetworkMode>().unwrap(),
            NetworkMode::Bridge
        );
        assert_eq!("none".parse::<NetworkMode>().unwrap(), NetworkMode::None);
        for bad in ["BRIDGE", "Bridge", " none", "host", ""] {
            assert!(bad.parse::<NetworkMode>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn job_transition_stamps_times() {
        let mut job = Job::new(JobId::new(), JobSpec::from_prompt("x"));
        job.transition(JobStatus::Running).unwrap();
        assert!(job.started_at.is_some());
        job.transition(JobStatus::Succeeded).unwrap();
        assert!(job.finished_at.is_some());
        assert!(job.transition(JobStatus::Failed).is_err());
    }
}
