//! Server configuration: environment variables (and a `.env` file), overridable by flags.

use std::path::PathBuf;
use std::time::Duration;

use agent_core::artifacts::ArtifactStore;
use agent_core::SecretString;
use agent_core::{LiveSettings, NetworkMode, ResourceLimits};

use crate::api::{JobDefaults, MAX_TIMEOUT_SECS};
use crate::policy::{ImageRule, Maxima, Policy};

/// [`ServerConfig::record_cache_bytes`]'s default: 4 MiB, about 750 finished jobs of a few
/// steps (measured: 8 MiB, full after a `GET /status` load over 10,000 finished jobs, added
/// 9.3 MB of RSS; the server's target is 40 MB).
pub const DEFAULT_RECORD_CACHE_BYTES: u64 = 4 << 20;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Everything `agent-server` (and `agent serve`) can be configured with.
///
/// Every field reads an environment variable (a `.env` file in the working directory is loaded
/// first, without overriding variables already set) and can be overridden by its flag.
/// The LLM providers are configured by agent-llm's own variables (`ALCHEMYST_API_KEY`,
/// `GEMINI_API_KEY`, …).
#[derive(Clone, Debug, clap::Args)]
pub struct ServerConfig {
    /// Address to listen on (`127.0.0.1:0` picks a free port).
    #[arg(long, env = "AGENT_BIND", default_value = "127.0.0.1:8000")]
    pub bind: String,

    /// Directory for the SQLite database, the logs and the result ZIPs.
    #[arg(long, env = "AGENT_OUTPUT_DIR", default_value = "/tmp/agent_jobs")]
    pub output_dir: PathBuf,

    /// Where result ZIPs are kept, as a URL: `file:///dir`, or with the matching cargo feature
    /// `s3://bucket/prefix`, `gs://bucket/prefix`, `az://container/prefix` (credentials from the
    /// backend's own variables, e.g. `AWS_ACCESS_KEY_ID`). Default: `<output dir>/artifacts`.
    #[arg(long, env = "AGENT_ARTIFACTS")]
    pub artifacts: Option<String>,

    /// Image the job sandboxes run.
    #[arg(
        long,
        env = "AGENT_IMAGE",
        default_value = "containerized-agent:latest"
    )]
    pub image: String,

    /// Days a finished job (record, logs, ZIP) is kept; 0 keeps everything forever.
    #[arg(long, env = "RETENTION_DAYS", default_value_t = 1.0)]
    pub retention_days: f64,

    /// Jobs run at the same time; the rest wait in the queue.
    #[arg(long, env = "AGENT_MAX_CONCURRENT_JOBS", default_value_t = 4)]
    pub max_concurrent_jobs: usize,

    /// Jobs that may wait in the queue; past it `POST /schedule` answers 503 `queue_full`.
    #[arg(long, env = "AGENT_MAX_QUEUED_JOBS", default_value_t = 10_000)]
    pub max_queued_jobs: usize,

    /// Default timeout of a whole job, in seconds (a request's `timeout_secs` overrides it).
    #[arg(long, env = "AGENT_JOB_TIMEOUT_SECS", default_value_t = 1800)]
    pub job_timeout_secs: u64,

    /// Default timeout of one step, in seconds.
    #[arg(long, env = "AGENT_STEP_TIMEOUT_SECS", default_value_t = 300)]
    pub step_timeout_secs: u64,

    /// Default network of a job's sandbox: `none` or `bridge` (a request's `network` overrides it).
    #[arg(long, env = "AGENT_NETWORK", default_value = "none")]
    pub network: NetworkMode,

    /// Sandboxes kept created and started ahead of demand (0 = none). Default 1: measured
    /// (`benches/job.rs`), a job on a warm container finishes several times sooner than a cold
    /// one, and an idle warm container holds a few MiB (its Python supervisor).
    #[arg(long, env = "AGENT_WARM_POOL", default_value_t = 1)]
    pub warm_pool: usize,

    /// When set, every endpoint but `GET /` needs `Authorization: Bearer <token>`.
    #[arg(long, env = "AGENT_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<SecretString>,

    /// A JSON file of named tenants and the SHA-256 of each one's token (see
    /// [`crate::tenants`]; `agent token new NAME` makes an entry). Each tenant sees and
    /// controls only its own jobs and sandboxes; `AGENT_API_TOKEN`, when also set, stays the
    /// admin's.
    #[arg(long, env = "AGENT_API_TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,

    /// Serve `/docs` and `/openapi.json` without the token.
    #[arg(long, env = "AGENT_PUBLIC_DOCS", default_value_t = false)]
    pub public_docs: bool,

    /// Largest request body accepted, in bytes.
    #[arg(long, env = "AGENT_MAX_BODY_BYTES", default_value_t = 1 << 20)]
    pub max_body_bytes: usize,

    /// Client connections served at once (default: the open-files limit, raised to its hard
    /// limit at start-up, less 1,024). When full, the connection that has waited longest without
    /// sending a request is closed for a newcomer; if none is waiting, new connections wait.
    #[arg(long, env = "AGENT_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// Seconds a client has to send a request's headers, from when it connects or its last
    /// response was sent (so also the idle timeout of a kept-alive connection).
    #[arg(long, env = "AGENT_HEADER_TIMEOUT_SECS", default_value_t = 10)]
    pub header_timeout_secs: u64,

    /// The longest `keep_alive_secs` a job may ask for (its sandbox kept after the steps).
    #[arg(long, env = "AGENT_MAX_KEEP_ALIVE_SECS", default_value_t = 3600)]
    pub max_keep_alive_secs: u64,

    /// Seconds running jobs get to finish on SIGTERM/SIGINT before they are interrupted.
    #[arg(long, env = "AGENT_SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    pub shutdown_grace_secs: u64,

    /// Seconds between runs of the reaper, which removes job containers whose owner is gone
    /// (a crashed server's, those an engine outage stopped); it also runs at start-up and when
    /// the engine answers again after an outage. 0: only then. It never removes a container a
    /// live server still uses.
    #[arg(long, env = "AGENT_REAP_INTERVAL_SECS", default_value_t = 60)]
    pub reap_interval_secs: u64,

    /// Seconds jobs wait for a Docker engine that stopped answering, counted from when it
    /// stopped: meanwhile queued jobs stay queued and `POST /schedule` accepts new ones (with a
    /// `notice`); a longer outage fails the waiting jobs and `POST /schedule` answers 503
    /// `executor_unavailable` until the engine answers again.
    #[arg(long, env = "AGENT_ENGINE_WAIT_SECS", default_value_t = 600)]
    pub engine_wait_secs: u64,

    /// Megabytes that must stay free on the output directory's file system: below it
    /// `POST /schedule` answers 507 `insufficient_storage` (jobs already accepted still run).
    /// 0: no check.
    #[arg(long, env = "AGENT_MIN_FREE_MB", default_value_t = 100)]
    pub min_free_mb: u64,

    /// Most bytes the output directory (database, logs, ZIPs, input files) may hold: above it
    /// new jobs and sandboxes are refused with 507 `storage_cap_reached` until retention (or an
    /// operator) removes old jobs. Measured every 2 s in the background (a tree whose walk takes longer than 0.2 s: ten walks apart). 0: no cap.
    #[arg(long, env = "AGENT_MAX_OUTPUT_BYTES", default_value_t = 0)]
    pub max_output_bytes: u64,

    /// Bytes of memory for finished jobs' records and their `GET /status` answers, so a client
    /// polling a finished job is answered without reading the database (three quarters for
    /// the records, a quarter for the answers). 0: no cache.
    #[arg(long, env = "AGENT_RECORD_CACHE_BYTES", default_value_t = DEFAULT_RECORD_CACHE_BYTES)]
    pub record_cache_bytes: u64,

    /// Log format: `text` or `json` (the level comes from `RUST_LOG`, default `info`).
    #[arg(long, env = "AGENT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Operator policy: what requests may ask for, and what a job may store.
    #[command(flatten)]
    pub policy: PolicyConfig,
}

/// Operator policy (see [`crate::policy`]): what a request may ask for (refused with 403
/// `policy_refused` past it) and how much a job may store.
#[derive(Clone, Debug, clap::Args)]
pub struct PolicyConfig {
    /// Images requests may name, comma-separated: exact references (a missing tag means
    /// `:latest`) or patterns where `*` is any run of characters (`registry.example.com/team/*`).
    /// The server's own images (`AGENT_IMAGE`, `AGENT_DESKTOP_IMAGE`) are always allowed;
    /// unset: only they are. `*` allows every image.
    #[arg(long, env = "AGENT_ALLOWED_IMAGES", value_delimiter = ',')]
    pub allowed_images: Vec<String>,

    /// Whether requests may ask for `bridge` networking. Default: only when `AGENT_NETWORK` is
    /// not `none`.
    #[arg(long, env = "AGENT_ALLOW_NETWORK")]
    pub allow_network: Option<bool>,

    /// The longest whole-job timeout (and live-sandbox lifetime) a request may ask for, in
    /// seconds.
    #[arg(long, env = "AGENT_MAX_JOB_TIMEOUT_SECS", default_value_t = 86_400)]
    pub max_job_timeout_secs: u64,

    /// The longest step timeout a request (or one of its steps) may ask for, in seconds.
    #[arg(long, env = "AGENT_MAX_STEP_TIMEOUT_SECS", default_value_t = 86_400)]
    pub max_step_timeout_secs: u64,

    /// The longest idle timeout a live sandbox may ask for, in seconds.
    #[arg(long, env = "AGENT_MAX_IDLE_TIMEOUT_SECS", default_value_t = 86_400)]
    pub max_idle_timeout_secs: u64,

    /// The most memory a sandbox may ask for, in bytes (the default of 2 GiB is lowered to it).
    #[arg(long, env = "AGENT_MAX_MEMORY_BYTES", default_value_t = 4 << 30)]
    pub max_memory_bytes: u64,

    /// The most CPU cores a sandbox may ask for (the default of 1 is lowered to it).
    #[arg(long, env = "AGENT_MAX_CPUS", default_value_t = 2.0)]
    pub max_cpus: f64,

    /// The most processes a sandbox may ask for (the default of 256 is lowered to it).
    #[arg(long, env = "AGENT_MAX_PIDS", default_value_t = 1024)]
    pub max_pids: u32,

    /// The largest `/workspace` a sandbox may ask for, in bytes (the default of 1 GiB is lowered
    /// to it).
    #[arg(long, env = "AGENT_MAX_WORKSPACE_BYTES", default_value_t = 2 << 30)]
    pub max_workspace_bytes: u64,

    /// The largest `/tmp` a sandbox may ask for, in bytes (the default of 256 MiB is lowered to
    /// it).
    #[arg(long, env = "AGENT_MAX_TMP_BYTES", default_value_t = 1 << 30)]
    pub max_tmp_bytes: u64,

    /// Bytes of step output stored per job (its log in the database); past it the rest is not
    /// stored, a marker says so, and `agent_log_bytes_dropped_total` counts it (the step results'
    /// tails and the ZIP are unaffected). 0: no cap.
    #[arg(long, env = "AGENT_MAX_LOG_BYTES", default_value_t = 64 << 20)]
    pub max_log_bytes: u64,

    /// The largest workspace export turned into a job's ZIP, in bytes (what one job may put in
    /// the output directory besides its log).
    #[arg(long, env = "AGENT_MAX_ARCHIVE_BYTES", default_value_t = 2 << 30)]
    pub max_archive_bytes: u64,

    /// The largest input file a job (`POST /schedule`, multipart) or a directory upload into a
    /// live sandbox may hold, in bytes (at most 16 MiB).
    #[arg(long, env = "AGENT_MAX_INPUT_FILE_BYTES", default_value_t = 16 << 20)]
    pub max_input_file_bytes: u64,

    /// The most bytes of input files together, per job or upload.
    #[arg(long, env = "AGENT_MAX_INPUT_BYTES", default_value_t = 64 << 20)]
    pub max_input_bytes: u64,

    /// The most entries (files and directories) of input files, per job or upload.
    #[arg(long, env = "AGENT_MAX_INPUT_ENTRIES", default_value_t = 1000)]
    pub max_input_entries: usize,
}

impl ServerConfig {
    /// [`record_cache_bytes`](Self::record_cache_bytes) split into the records' share and the
    /// encoded answers': three quarters and a quarter (an answer is about a quarter of its
    /// record's size, and is reused only while its record is cached).
    pub fn record_cache_split(&self) -> (u64, u64) {
        let answers = self.record_cache_bytes / 4;
        (self.record_cache_bytes - answers, answers)
    }

    /// The caps of input files (`AGENT_MAX_INPUT_*`).
    pub fn input_limits(&self) -> agent_core::inputs::InputLimits {
        agent_core::inputs::InputLimits {
            max_file_bytes: self
                .policy
                .max_input_file_bytes
                .min(agent_core::inputs::MAX_INPUT_FILE_BYTES),
            max_total_bytes: self.policy.max_input_bytes,
            max_entries: self.policy.max_input_entries,
        }
    }

    /// The configuration from the environment alone (no flags), after loading `.env`.
    pub fn from_env() -> Result<Self, clap::Error> {
        load_dotenv();
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            config: ServerConfig,
        }
        <Wrapper as clap::Parser>::try_parse_from(["agent-server"]).map(|w| w.config)
    }

    /// The API token, if one is set and not empty.
    pub fn token(&self) -> Option<&SecretString> {
        self.api_token.as_ref().filter(|t| !t.expose().is_empty())
    }

    /// The API's tokens: `AGENT_API_TOKEN` (the admin) and the tenants of
    /// `AGENT_API_TOKENS_FILE`. A malformed file is an error naming its line or field.
    pub fn tokens(&self) -> Result<crate::tenants::Tokens, String> {
        let tenants = match &self.tokens_file {
            Some(path) => crate::tenants::load_tokens_file(path)?,
            None => Vec::new(),
        };
        crate::tenants::Tokens::new(self.token(), &tenants)
    }

    /// How often the reaper runs (`None`: only at start-up and after an engine outage).
    pub fn reap_interval(&self) -> Option<Duration> {
        (self.reap_interval_secs > 0).then(|| Duration::from_secs(self.reap_interval_secs))
    }

    /// How long jobs wait for an engine that stopped answering.
    pub fn engine_wait(&self) -> Duration {
        Duration::from_secs(self.engine_wait_secs)
    }

    /// How long finished jobs are kept (`None` = forever).
    pub fn retention(&self) -> Option<Duration> {
        if self.retention_days.is_finite() && self.retention_days > 0.0 {
            Some(Duration::from_secs_f64(
                (self.retention_days * 86_400.0).min(1e10),
            ))
        } else {
            None
        }
    }

    /// The operator policy, with the server's own images (`AGENT_IMAGE`, and agent-docker's
    /// `AGENT_DESKTOP_IMAGE`) always allowed.
    pub fn operator_policy(&self) -> Result<Policy, String> {
        let docker = agent_docker::DockerConfig::from_env();
        let own: Vec<&str> = std::iter::once(self.image.as_str())
            .chain(docker.services_image.as_deref())
            .collect();
        self.policy(&own)
    }

    /// The operator policy; `images` are the server's own images (always allowed).
    pub fn policy(&self, images: &[&str]) -> Result<Policy, String> {
        let p = &self.policy;
        let mut rules = Vec::new();
        for image in images
            .iter()
            .copied()
            .chain(p.allowed_images.iter().map(String::as_str))
        {
            if !image.trim().is_empty() {
                rules
                    .push(ImageRule::new(image).map_err(|e| format!("AGENT_ALLOWED_IMAGES: {e}"))?);
            }
        }
        let allow_network =
            match (p.allow_network, self.network) {
                (Some(false), NetworkMode::Bridge) => return Err(
                    "AGENT_ALLOW_NETWORK=false contradicts AGENT_NETWORK=bridge (the default a \
                     request would get)"
                        .into(),
                ),
                (Some(allow), _) => allow,
                (None, network) => network != NetworkMode::None,
            };
        let limits = ResourceLimits {
            memory_bytes: p.max_memory_bytes,
            cpus: p.max_cpus,
            pids: p.max_pids,
            workspace_bytes: p.max_workspace_bytes,
            tmp_bytes: p.max_tmp_bytes,
        };
        // The smallest a sandbox may have at all (`ResourceLimits::validate`).
        if limits.validate().is_err() {
            return Err(
                "AGENT_MAX_MEMORY_BYTES must be at least 16 MiB, AGENT_MAX_CPUS above 0, \
                        AGENT_MAX_PIDS at least 8, AGENT_MAX_WORKSPACE_BYTES and \
                        AGENT_MAX_TMP_BYTES at least 1 MiB"
                    .into(),
            );
        }
        let maxima = Maxima {
            job_timeout: secs("AGENT_MAX_JOB_TIMEOUT_SECS", p.max_job_timeout_secs)?,
            step_timeout: secs("AGENT_MAX_STEP_TIMEOUT_SECS", p.max_step_timeout_secs)?,
            idle_timeout: secs("AGENT_MAX_IDLE_TIMEOUT_SECS", p.max_idle_timeout_secs)?,
            keep_alive: Duration::from_secs(self.max_keep_alive_secs),
            limits,
        };
        if self.job_timeout_secs > p.max_job_timeout_secs {
            return Err(format!(
                "AGENT_JOB_TIMEOUT_SECS ({}) is over AGENT_MAX_JOB_TIMEOUT_SECS ({})",
                self.job_timeout_secs, p.max_job_timeout_secs
            ));
        }
        if self.step_timeout_secs > p.max_step_timeout_secs {
            return Err(format!(
                "AGENT_STEP_TIMEOUT_SECS ({}) is over AGENT_MAX_STEP_TIMEOUT_SECS ({})",
                self.step_timeout_secs, p.max_step_timeout_secs
            ));
        }
        Ok(Policy::new(rules, allow_network, maxima))
    }

    /// The defaults of new jobs. Refuses a default timeout of 0 or over [`MAX_TIMEOUT_SECS`] (the
    /// same range a request may ask for).
    pub fn job_defaults(&self) -> Result<JobDefaults, String> {
        Ok(JobDefaults {
            job_timeout: secs("AGENT_JOB_TIMEOUT_SECS", self.job_timeout_secs)?,
            step_timeout: secs("AGENT_STEP_TIMEOUT_SECS", self.step_timeout_secs)?,
            network: self.network,
            limits: capped_limits(&self.policy),
            idle_timeout: LiveSettings::default()
                .idle_timeout
                .min(Duration::from_secs(
                    self.policy.max_idle_timeout_secs.max(1),
                )),
        })
    }

    /// The grace period given to running jobs at shutdown.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }

    /// Where the SQLite database lives.
    pub fn database_path(&self) -> PathBuf {
        self.output_dir.join("jobs.sqlite3")
    }

    /// The local artifact directory (or, with `AGENT_ARTIFACTS` naming a bucket, where ZIPs are
    /// built before they are uploaded).
    pub fn artifact_dir(&self) -> PathBuf {
        self.output_dir.join("artifacts")
    }

    /// The artifact store `AGENT_ARTIFACTS` names; `None` = the local default.
    pub fn artifact_store(&self) -> Result<Option<ArtifactStore>, String> {
        self.artifacts
            .as_deref()
            .map(|url| {
                ArtifactStore::from_url(url, self.artifact_dir())
                    .map_err(|e| format!("AGENT_ARTIFACTS: {e}"))
            })
            .transpose()
    }
}

/// `value` seconds, when it is a timeout a request could ask for (1 to [`MAX_TIMEOUT_SECS`]).
fn secs(name: &str, value: u64) -> Result<Duration, String> {
    if (1..=MAX_TIMEOUT_SECS).contains(&value) {
        Ok(Duration::from_secs(value))
    } else {
        Err(format!(
            "{name} must be between 1 and {MAX_TIMEOUT_SECS} seconds, not {value}"
        ))
    }
}

/// The default resource limits of a sandbox, lowered to the policy's maxima.
fn capped_limits(p: &PolicyConfig) -> ResourceLimits {
    let d = ResourceLimits::default();
    ResourceLimits {
        memory_bytes: d.memory_bytes.min(p.max_memory_bytes),
        cpus: d.cpus.min(p.max_cpus),
        pids: d.pids.min(p.max_pids),
        workspace_bytes: d.workspace_bytes.min(p.max_workspace_bytes),
        tmp_bytes: d.tmp_bytes.min(p.max_tmp_bytes),
    }
}

/// Loads `.env` from the working directory (if any) without overriding variables already set.
pub fn load_dotenv() {
    // A missing file is normal; a malformed one is reported on stderr (tracing is not up yet).
    match dotenvy::dotenv() {
        Ok(_) => {}
        Err(e) if e.not_found() => {}
        Err(e) => eprintln!("warning: ignoring .env: {e}"),
    }
}

/// Installs the global tracing subscriber (`RUST_LOG`, default `info`), text or JSON lines on
/// stderr. Calling it twice is harmless.
pub fn init_tracing(format: LogFormat) {
    init_tracing_with_default(format, "info");
}

/// Like [`init_tracing`], with another default filter when `RUST_LOG` is unset.
pub fn init_tracing_with_default(format: LogFormat, default_filter: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let ansi = use_colour(
        std::io::IsTerminal::is_terminal(&std::io::stderr()),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Whether log lines get ANSI colour: only on a terminal, and never when `NO_COLOR` is set to a
/// non-empty value (<https://no-color.org>). A pipe or a file gets plain text.
pub fn use_colour(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_cache_gives_three_quarters_to_records() {
        let config = parse(&[]);
        assert_eq!(config.record_cache_bytes, DEFAULT_RECORD_CACHE_BYTES);
        assert_eq!(config.record_cache_split(), (3 << 20, 1 << 20));
        let config = parse(&["--record-cache-bytes", "0"]);
        assert_eq!(config.record_cache_split(), (0, 0));
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(use_colour(true, None));
        assert!(use_colour(true, Some(OsStr::new(""))));
        assert!(!use_colour(true, Some(OsStr::new("1"))));
        assert!(!use_colour(false, None));
        assert!(!use_colour(false, Some(OsStr::new(""))));
    }

    fn parse(args: &[&str]) -> ServerConfig {
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            config: ServerConfig,
        }
        let argv = std::iter::once("agent-server").chain(args.iter().copied());
        <Wrapper as clap::Parser>::try_parse_from(argv)
            .map(|w| w.config)
            .unwrap()
    }

    #[test]
    fn job_defaults_refuse_zero_and_huge_timeouts() {
        let ok = parse(&["--job-timeout-secs", "60", "--step-timeout-secs", "5"]);
        let d = ok.job_defaults().unwrap();
        assert_eq!(d.job_timeout, Duration::from_secs(60));
        assert_eq!(d.step_timeout, Duration::from_secs(5));
        for (flag, value, var) in [
            ("--job-timeout-secs", "0", "AGENT_JOB_TIMEOUT_SECS"),
            ("--step-timeout-secs", "0", "AGENT_STEP_TIMEOUT_SECS"),
            (
                "--job-timeout-secs",
                "18446744073709551615",
                "AGENT_JOB_TIMEOUT_SECS",
            ),
        ] {
            let err = parse(&[flag, value]).job_defaults().unwrap_err();
            assert!(err.contains(var), "{err}");
        }
    }

    #[test]
    fn the_token_is_not_in_debug_output() {
        let config = parse(&["--api-token", "tok-very-secret-1234"]);
        assert_eq!(
            config.token().map(SecretString::expose),
            Some("tok-very-secret-1234")
        );
        assert!(!format!("{config:?}").contains("tok-very-secret-1234"));
    }
}
