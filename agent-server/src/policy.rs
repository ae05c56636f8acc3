//! Operator policy: what a request may ask for, checked at the door.
//!
//! Every job (`POST /schedule`), live sandbox (`POST /sandboxes`, its steps and extensions) and
//! any other front end that makes jobs goes through [`Policy::check`] once its request has been
//! turned into a [`JobSpec`], so the rules are the same whichever way a job arrives. A refusal
//! is a 403 `policy_refused` naming the field (`error.field`) and the limit with the variable
//! that sets it.
//!
//! The rules, each set by an environment variable (see [`crate::ServerConfig`]):
//! - **images**: only the configured agent images (`AGENT_IMAGE`, `AGENT_DESKTOP_IMAGE`) unless
//!   `AGENT_ALLOWED_IMAGES` lists more (exact references, or patterns with `*`);
//! - **network**: a request may ask for `bridge` only when `AGENT_ALLOW_NETWORK` is true
//!   (default: only when the server's own default `AGENT_NETWORK` is not `none`);
//! - **maxima**: job, step and idle timeouts, keep-alive, memory, CPUs, processes and the sizes of
//!   `/workspace` and `/tmp`.
//!
//! What a job may store (its log in the database, its ZIP) is capped by the job manager
//! (`AGENT_MAX_LOG_BYTES`, `AGENT_MAX_ARCHIVE_BYTES`), not refused here.

use std::time::Duration;

use axum::http::StatusCode;

use agent_core::{JobSpec, NetworkMode, ResourceLimits, Step};

use crate::error::ApiError;

/// The error code of a refusal.
pub const POLICY_REFUSED: &str = "policy_refused";

/// An image the operator allows: an exact reference or a pattern where `*` stands for any run
/// of characters (`registry.example.com/team/*`, `python:3.*`).
#[derive(Clone, Debug)]
pub struct ImageRule {
    text: String,
    pattern: regex::Regex,
}

impl ImageRule {
    /// The rule for `text` (a reference; `*` is a wildcard). A reference without a tag or
    /// digest means its `:latest`.
    pub fn new(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("an empty image pattern".into());
        }
        let normal = normalize_image(text);
        let body = normal
            .split('*')
            .map(regex::escape)
            .collect::<Vec<_>>()
            .join(".*");
        let pattern = regex::Regex::new(&format!("^{body}$"))
            .map_err(|e| format!("image pattern {text:?}: {e}"))?;
        Ok(Self {
            text: text.to_string(),
            pattern,
        })
    }

    /// Whether `image` is allowed by this rule.
    pub fn matches(&self, image: &str) -> bool {
        self.pattern.is_match(&normalize_image(image))
    }

    /// The rule as the operator wrote it.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// `image` with `:latest` added when it names neither a tag nor a digest (the engine's own
/// reading), so `foo` and `foo:latest` are one image.
fn normalize_image(image: &str) -> String {
    let last = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') || last.contains(':') || image.ends_with('*') {
        image.to_string()
    } else {
        format!("{image}:latest")
    }
}

/// The largest values a request may ask for.
#[derive(Clone, Debug, PartialEq)]
pub struct Maxima {
    /// Whole-job timeout (also a live sandbox's lifetime). `AGENT_MAX_JOB_TIMEOUT_SECS`.
    pub job_timeout: Duration,
    /// Per-step timeout (the job's default and each step's own). `AGENT_MAX_STEP_TIMEOUT_SECS`.
    pub step_timeout: Duration,
    /// How long a sandbox is kept after its steps. `AGENT_MAX_KEEP_ALIVE_SECS`.
    pub keep_alive: Duration,
    /// A live sandbox's idle timeout. `AGENT_MAX_IDLE_TIMEOUT_SECS`.
    pub idle_timeout: Duration,
    /// The resource limits: memory, CPUs, processes, `/workspace` and `/tmp` sizes
    /// (`AGENT_MAX_MEMORY_BYTES`, `AGENT_MAX_CPUS`, `AGENT_MAX_PIDS`,
    /// `AGENT_MAX_WORKSPACE_BYTES`, `AGENT_MAX_TMP_BYTES`).
    pub limits: ResourceLimits,
}

impl Default for Maxima {
    fn default() -> Self {
        Self {
            job_timeout: Duration::from_secs(86_400),
            step_timeout: Duration::from_secs(86_400),
            keep_alive: Duration::from_secs(3600),
            idle_timeout: Duration::from_secs(86_400),
            limits: ResourceLimits {
                memory_bytes: 4 << 30,
                cpus: 2.0,
                pids: 1024,
                workspace_bytes: 2 << 30,
                tmp_bytes: 1 << 30,
            },
        }
    }
}

/// What requests may ask for. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Policy {
    images: Vec<ImageRule>,
    allow_network: bool,
    maxima: Maxima,
}

impl Default for Policy {
    /// The default agent images, no network, the default maxima.
    fn default() -> Self {
        Self::new(
            [
                agent_docker::DEFAULT_IMAGE,
                agent_docker::DEFAULT_DESKTOP_IMAGE,
            ]
            .iter()
            .filter_map(|i| ImageRule::new(i).ok())
            .collect(),
            false,
            Maxima::default(),
        )
    }
}

impl Policy {
    /// A policy allowing `images`, `bridge` networking when `allow_network`, up to `maxima`.
    pub fn new(images: Vec<ImageRule>, allow_network: bool, maxima: Maxima) -> Self {
        Self {
            images,
            allow_network,
            maxima,
        }
    }

    /// A policy that allows anything the API's own ranges allow (for embedders and tests that
    /// want no operator policy).
    pub fn permissive() -> Self {
        Self::new(
            vec![ImageRule::new("*").unwrap_or_else(|e| unreachable!("a fixed pattern: {e}"))],
            true,
            Maxima {
                job_timeout: Duration::from_secs(agent_core::job::MAX_TIMEOUT_SECS),
                step_timeout: Duration::from_secs(agent_core::job::MAX_TIMEOUT_SECS),
                keep_alive: Duration::from_secs(agent_core::job::MAX_TIMEOUT_SECS),
                idle_timeout: Duration::from_secs(agent_core::job::MAX_TIMEOUT_SECS),
                limits: ResourceLimits {
                    memory_bytes: u64::MAX,
                    cpus: 1024.0,
                    pids: u32::MAX,
                    workspace_bytes: u64::MAX,
                    tmp_bytes: u64::MAX,
                },
            },
        )
    }

    /// The maxima.
    pub fn maxima(&self) -> &Maxima {
        &self.maxima
    }

    /// The image rules, as written.
    pub fn images(&self) -> impl Iterator<Item = &str> {
        self.images.iter().map(ImageRule::as_str)
    }

    /// Whether `bridge` may be asked for.
    pub fn allows_network(&self) -> bool {
        self.allow_network
    }

    /// Whether `image` may be run.
    pub fn allows_image(&self, image: &str) -> bool {
        self.images.iter().any(|r| r.matches(image))
    }

    /// Validates a job's (or a live sandbox's) spec (a malformed value is a 422 naming it), then
    /// checks it against the policy: what every front end (`/schedule`, `/sandboxes`, MCP) calls
    /// before handing a spec to the job manager.
    pub fn admit(&self, spec: &JobSpec) -> Result<(), ApiError> {
        spec.validate()?;
        self.check(spec)
    }

    /// Checks a spec against the policy (403 `policy_refused` naming the field and the limit).
    pub fn check(&self, spec: &JobSpec) -> Result<(), ApiError> {
        if let Some(image) = &spec.image {
            if !self.allows_image(image) {
                let allowed: Vec<&str> = self.images().collect();
                return Err(refused(
                    "image",
                    format!(
                        "image: {:?} is not allowed on this server (allowed: {}; the operator \
                         sets AGENT_ALLOWED_IMAGES)",
                        shorten(image),
                        allowed.join(", ")
                    ),
                ));
            }
        }
        if spec.network != NetworkMode::None && !self.allow_network {
            return Err(refused(
                "network",
                format!(
                    "network: {} is not allowed on this server, only none (the operator sets \
                     AGENT_ALLOW_NETWORK)",
                    spec.network
                ),
            ));
        }
        let m = &self.maxima;
        at_most_secs(
            "timeout_secs",
            spec.job_timeout,
            m.job_timeout,
            "AGENT_MAX_JOB_TIMEOUT_SECS",
        )?;
        at_most_secs(
            "step_timeout_secs",
            spec.step_timeout,
            m.step_timeout,
            "AGENT_MAX_STEP_TIMEOUT_SECS",
        )?;
        for (i, step) in spec.steps.iter().flatten().enumerate() {
            self.check_step(&format!("steps[{i}].timeout_secs"), step)?;
        }
        at_most_secs(
            "keep_alive_secs",
            spec.keep_alive,
            m.keep_alive,
            "AGENT_MAX_KEEP_ALIVE_SECS",
        )?;
        if let Some(live) = &spec.live {
            self.check_idle_timeout(live.idle_timeout)?;
        }
        if let Some(keep) = &spec.keep_sandbox {
            at_most_secs(
                "keep_sandbox.idle_timeout_secs",
                keep.idle_timeout,
                m.idle_timeout,
                "AGENT_MAX_IDLE_TIMEOUT_SECS",
            )?;
            at_most_secs(
                "keep_sandbox.timeout_secs",
                keep.lifetime,
                m.job_timeout,
                "AGENT_MAX_JOB_TIMEOUT_SECS",
            )?;
        }
        let (l, max) = (&spec.limits, &m.limits);
        at_most(
            "limits.memory_bytes",
            l.memory_bytes,
            max.memory_bytes,
            "AGENT_MAX_MEMORY_BYTES",
        )?;
        if l.cpus > max.cpus {
            return Err(over("limits.cpus", l.cpus, max.cpus, "AGENT_MAX_CPUS"));
        }
        at_most(
            "limits.pids",
            u64::from(l.pids),
            u64::from(max.pids),
            "AGENT_MAX_PIDS",
        )?;
        at_most(
            "limits.workspace_bytes",
            l.workspace_bytes,
            max.workspace_bytes,
            "AGENT_MAX_WORKSPACE_BYTES",
        )?;
        at_most(
            "limits.tmp_bytes",
            l.tmp_bytes,
            max.tmp_bytes,
            "AGENT_MAX_TMP_BYTES",
        )
    }

    /// Checks one step's own timeout (a step sent to a live sandbox, or one of a job's).
    pub fn check_step(&self, field: &str, step: &Step) -> Result<(), ApiError> {
        match step.timeout {
            Some(t) => at_most_secs(
                field,
                t,
                self.maxima.step_timeout,
                "AGENT_MAX_STEP_TIMEOUT_SECS",
            ),
            None => Ok(()),
        }
    }

    /// Checks a live sandbox's idle timeout (at creation and when extended).
    pub fn check_idle_timeout(&self, idle: Duration) -> Result<(), ApiError> {
        at_most_secs(
            "idle_timeout_secs",
            idle,
            self.maxima.idle_timeout,
            "AGENT_MAX_IDLE_TIMEOUT_SECS",
        )
    }
}

fn refused(field: &str, message: String) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, POLICY_REFUSED, message).with_field(field)
}

fn over<T: std::fmt::Display>(field: &str, asked: T, max: T, var: &str) -> ApiError {
    refused(
        field,
        format!(
            "{field}: {asked} is over this server's maximum of {max} (the operator sets {var})"
        ),
    )
}

fn at_most(field: &str, asked: u64, max: u64, var: &str) -> Result<(), ApiError> {
    if asked > max {
        return Err(over(field, asked, max, var));
    }
    Ok(())
}

fn at_most_secs(field: &str, asked: Duration, max: Duration, var: &str) -> Result<(), ApiError> {
    at_most(field, asked.as_secs(), max.as_secs(), var)
}

fn shorten(s: &str) -> String {
    let mut out: String = s.chars().take(120).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rules(list: &[&str]) -> Vec<ImageRule> {
        list.iter().map(|r| ImageRule::new(r).unwrap()).collect()
    }

    #[test]
    fn images_match_exactly_or_by_pattern_and_latest_is_implied() {
        let p = Policy::new(
            rules(&[
                "containerized-agent:latest",
                "registry.example.com/team/*",
                "python:3.*",
            ]),
            false,
            Maxima::default(),
        );
        assert!(p.allows_image("containerized-agent"));
        assert!(p.allows_image("containerized-agent:latest"));
        assert!(!p.allows_image("containerized-agent:other"));
        assert!(!p.allows_image("containerized-agent-desktop:latest"));
        assert!(p.allows_image("registry.example.com/team/tool:1"));
        assert!(p.allows_image("registry.example.com/team/a/b"));
        assert!(!p.allows_image("registry.example.com/other/tool"));
        assert!(p.allows_image("python:3.12-slim"));
        assert!(!p.allows_image("python:2.7"));
        assert!(!p.allows_image("python"));
        // Regex metacharacters in a rule are literal.
        let p = Policy::new(rules(&["a.b:1"]), false, Maxima::default());
        assert!(p.allows_image("a.b:1"));
        assert!(!p.allows_image("axb:1"));
        assert!(!p.allows_image(
            "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
        ));
    }

    #[test]
    fn each_rule_refuses_with_its_field_and_variable() {
        let p = Policy::default();
        let ok = JobSpec::from_steps(vec![Step::shell("true")]);
        let limits = |set: fn(&mut ResourceLimits)| {
            let mut l = ResourceLimits::default();
            set(&mut l);
            ok.clone().with_limits(l)
        };
        p.check(&ok).unwrap();
        let cases: Vec<(JobSpec, &str, &str)> = vec![
            (
                ok.clone().with_image("alpine:3"),
                "image",
                "AGENT_ALLOWED_IMAGES",
            ),
            (
                ok.clone().with_network(NetworkMode::Bridge),
                "network",
                "AGENT_ALLOW_NETWORK",
            ),
            (
                ok.clone().with_job_timeout(Duration::from_secs(86_401)),
                "timeout_secs",
                "AGENT_MAX_JOB_TIMEOUT_SECS",
            ),
            (
                ok.clone().with_step_timeout(Duration::from_secs(86_401)),
                "step_timeout_secs",
                "AGENT_MAX_STEP_TIMEOUT_SECS",
            ),
            (
                JobSpec::from_steps(vec![
                    Step::shell("true"),
                    Step::shell("true").with_timeout(Duration::from_secs(90_000)),
                ]),
                "steps[1].timeout_secs",
                "AGENT_MAX_STEP_TIMEOUT_SECS",
            ),
            (
                ok.clone().with_keep_alive(Duration::from_secs(3601)),
                "keep_alive_secs",
                "AGENT_MAX_KEEP_ALIVE_SECS",
            ),
            (
                limits(|l| l.memory_bytes = 5 << 30),
                "limits.memory_bytes",
                "AGENT_MAX_MEMORY_BYTES",
            ),
            (limits(|l| l.cpus = 2.5), "limits.cpus", "AGENT_MAX_CPUS"),
            (limits(|l| l.pids = 5000), "limits.pids", "AGENT_MAX_PIDS"),
            (
                limits(|l| l.workspace_bytes = 3 << 30),
                "limits.workspace_bytes",
                "AGENT_MAX_WORKSPACE_BYTES",
            ),
            (
                limits(|l| l.tmp_bytes = 2 << 30),
                "limits.tmp_bytes",
                "AGENT_MAX_TMP_BYTES",
            ),
        ];
        for (spec, field, var) in cases {
            let err = p.check(&spec).unwrap_err();
            assert_eq!(err.http, StatusCode::FORBIDDEN, "{field}");
            assert_eq!(err.detail.code, POLICY_REFUSED);
            assert_eq!(err.detail.field.as_deref(), Some(field));
            assert!(err.detail.message.contains(var), "{}", err.detail.message);
        }
        Policy::permissive()
            .check(&ok.with_image("alpine:3").with_network(NetworkMode::Bridge))
            .unwrap();
    }
}
