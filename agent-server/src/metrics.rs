//! Prometheus metrics: jobs by status, queue depth, live sandboxes, step durations, LLM latency,
//! tokens and errors by provider. Rendered by hand in the text exposition format (version 0.0.4).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use async_trait::async_trait;
use futures::StreamExt;

use agent_core::llm::{ChatStream, LlmErrorKind};
use agent_core::manager::JobManager;
use agent_core::{
    ChatChunk, ChatRequest, ChatResponse, EventKind, JobEvent, LlmError, LlmProvider, TokenUsage,
};

const STEP_BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];
const LLM_BUCKETS: &[f64] = &[0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0];

/// A cumulative histogram with fixed buckets.
#[derive(Clone, Debug)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        for (i, b) in self.bounds.iter().enumerate() {
            if v <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {c}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

#[derive(Debug)]
struct LlmStats {
    latency: Histogram,
    errors: BTreeMap<&'static str, u64>,
    last_ok: Option<chrono::DateTime<chrono::Utc>>,
    last_error: Option<(chrono::DateTime<chrono::Utc>, &'static str)>,
    prompt_tokens: u64,
    completion_tokens: u64,
}

/// What the server has seen of one LLM provider since it started (no call is made to find out).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct LlmHealth {
    /// Successful calls.
    pub ok: u64,
    /// Failed calls.
    pub errors: u64,
    /// Mean latency of the successful calls, in seconds.
    pub mean_latency_secs: Option<f64>,
    /// When the last call succeeded.
    pub last_ok_at: Option<chrono::DateTime<chrono::Utc>>,
    /// When the last call failed.
    pub last_error_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The kind of the last failure (`transient`, `rate_limited`, `quota_exhausted`, …).
    pub last_error_kind: Option<String>,
}

#[derive(Debug)]
struct Inner {
    step_duration: BTreeMap<&'static str, Histogram>,
    finished: BTreeMap<&'static str, u64>,
    llm: BTreeMap<String, LlmStats>,
    /// Jobs made, by tenant label.
    tenant_created: BTreeMap<String, u64>,
    /// Jobs finished, by tenant label and status.
    tenant_finished: BTreeMap<(String, &'static str), u64>,
    /// Every tenant label (`admin` and the configured tenants): each is rendered, zeros too.
    tenant_labels: Vec<String>,
}

/// The most running jobs whose tenants the collector remembers (past it, it forgets them all
/// and reads each again from the store when it ends).
const MAX_REMEMBERED_TENANTS: usize = 100_000;

/// What a job event counts for its tenant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TenantCount {
    /// A new job (its first status).
    Created,
    /// A job that reached this final status.
    Finished(&'static str),
}

impl TenantCount {
    fn of(event: &JobEvent) -> Option<Self> {
        match &event.kind {
            EventKind::Status { status, .. } if status.is_terminal() => {
                Some(Self::Finished(status.as_str()))
            }
            EventKind::Status { .. } if event.seq == 1 => Some(Self::Created),
            _ => None,
        }
    }
}

/// The server's metrics registry. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn error_kind_name(kind: LlmErrorKind) -> &'static str {
    match kind {
        LlmErrorKind::Transient => "transient",
        LlmErrorKind::RateLimited => "rate_limited",
        LlmErrorKind::QuotaExhausted => "quota_exhausted",
        LlmErrorKind::Permanent => "permanent",
        LlmErrorKind::ContextTooLong => "context_too_long",
        LlmErrorKind::Blocked => "blocked",
        LlmErrorKind::InvalidResponse => "invalid_response",
        LlmErrorKind::NotConfigured => "not_configured",
        _ => "other",
    }
}

impl Metrics {
    /// An empty registry.
    pub fn new() -> Self {
        Self {
            inner: Mutex::new(Inner {
                step_duration: BTreeMap::new(),
                finished: BTreeMap::new(),
                llm: BTreeMap::new(),
                tenant_created: BTreeMap::new(),
                tenant_finished: BTreeMap::new(),
                tenant_labels: vec![crate::tenants::ADMIN_LABEL.to_string()],
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the counters inconsistent enough to matter.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records one job event (step durations, finished jobs).
    pub fn record_event(&self, event: &JobEvent) {
        let mut inner = self.lock();
        match &event.kind {
            EventKind::StepFinished { result, .. } => {
                let outcome = if result.success() {
                    "succeeded"
                } else {
                    "failed"
                };
                inner
                    .step_duration
                    .entry(outcome)
                    .or_insert_with(|| Histogram::new(STEP_BUCKETS))
                    .observe(result.duration.as_secs_f64());
            }
            EventKind::Status { status, .. } if status.is_terminal() => {
                *inner.finished.entry(status.as_str()).or_insert(0) += 1;
            }
            _ => {}
        }
    }

    fn llm_entry<'a>(inner: &'a mut Inner, provider: &str) -> &'a mut LlmStats {
        inner
            .llm
            .entry(provider.to_string())
            .or_insert_with(|| LlmStats {
                latency: Histogram::new(LLM_BUCKETS),
                errors: BTreeMap::new(),
                last_ok: None,
                last_error: None,
                prompt_tokens: 0,
                completion_tokens: 0,
            })
    }

    /// Records a successful LLM call: its latency and the tokens it used.
    pub fn record_llm_ok(&self, provider: &str, seconds: f64, usage: TokenUsage) {
        let mut inner = self.lock();
        let entry = Self::llm_entry(&mut inner, provider);
        entry.latency.observe(seconds);
        entry.last_ok = Some(chrono::Utc::now());
        entry.prompt_tokens = entry.prompt_tokens.saturating_add(usage.prompt_tokens);
        entry.completion_tokens = entry
            .completion_tokens
            .saturating_add(usage.completion_tokens);
    }

    /// Records a failed LLM call.
    pub fn record_llm_error(&self, provider: &str, kind: LlmErrorKind) {
        let mut inner = self.lock();
        let entry = Self::llm_entry(&mut inner, provider);
        let kind = error_kind_name(kind);
        *entry.errors.entry(kind).or_insert(0) += 1;
        entry.last_error = Some((chrono::Utc::now(), kind));
    }

    /// What the server has seen of a provider's calls (all zeros before the first).
    pub fn llm_health(&self, provider: &str) -> LlmHealth {
        let inner = self.lock();
        let Some(stats) = inner.llm.get(provider) else {
            return LlmHealth::default();
        };
        let ok = stats.latency.count;
        LlmHealth {
            ok,
            errors: stats.errors.values().sum(),
            mean_latency_secs: (ok > 0).then(|| stats.latency.sum / ok as f64),
            last_ok_at: stats.last_ok,
            last_error_at: stats.last_error.map(|(at, _)| at),
            last_error_kind: stats.last_error.map(|(_, k)| k.to_string()),
        }
    }

    /// Counts a job event for the tenant labelled `label`.
    fn record_tenant(&self, label: &str, count: TenantCount) {
        let mut inner = self.lock();
        match count {
            TenantCount::Created => {
                *inner.tenant_created.entry(label.to_string()).or_insert(0) += 1
            }
            TenantCount::Finished(status) => {
                *inner
                    .tenant_finished
                    .entry((label.to_string(), status))
                    .or_insert(0) += 1;
            }
        }
    }

    /// Feeds every event of every job into the registry until the manager stops. A job's
    /// creation and end are also counted for its tenant (read from the store), labelled as
    /// [`Tokens::label`](crate::tenants::Tokens::label) says.
    pub fn spawn_collector(
        self: &Arc<Self>,
        manager: &JobManager,
        tokens: crate::tenants::Tokens,
    ) -> tokio::task::JoinHandle<()> {
        let mut rx = manager.subscribe_all();
        // The store, not the manager: holding the manager would keep its event channel open.
        let store = Arc::clone(manager.store());
        let metrics = Arc::clone(self);
        {
            let mut inner = self.lock();
            let mut labels = vec![crate::tenants::ADMIN_LABEL.to_string()];
            labels.extend(tokens.names().iter().cloned());
            if tokens.has_tenants() {
                labels.push(crate::tenants::OTHER_LABEL.to_string());
            }
            inner.tenant_labels = labels;
        }
        tokio::spawn(async move {
            // The tenants of the jobs running now, read once when each is created.
            let mut running: std::collections::HashMap<agent_core::JobId, Option<String>> =
                std::collections::HashMap::new();
            loop {
                match rx.recv().await {
                    Ok(event) => {
                        metrics.record_event(&event);
                        let Some(count) = TenantCount::of(&event) else {
                            continue;
                        };
                        // With no tenants configured, every job is the admin's: nothing to read.
                        let tenant = if !tokens.has_tenants() {
                            None
                        } else if let Some(known) = match count {
                            TenantCount::Finished(_) => running.remove(&event.job_id),
                            TenantCount::Created => None,
                        } {
                            known
                        } else {
                            let tenant = match store.get_job(event.job_id).await {
                                Ok(job) => job.and_then(|j| j.spec.tenant),
                                Err(e) => {
                                    tracing::debug!(error = %e, "metrics: reading a job's tenant failed");
                                    None
                                }
                            };
                            if count == TenantCount::Created {
                                // Bounded: ends missed while lagging would otherwise stay.
                                if running.len() >= MAX_REMEMBERED_TENANTS {
                                    running.clear();
                                }
                                running.insert(event.job_id, tenant.clone());
                            }
                            tenant
                        };
                        metrics.record_tenant(tokens.label(tenant.as_deref()), count);
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::debug!(skipped = n, "metrics collector lagged behind job events");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
        })
    }

    /// The registry and the manager's live state in the Prometheus text format.
    pub async fn render(&self, manager: &JobManager) -> String {
        let mut out = String::with_capacity(4096);
        let counts = manager.store().count_by_status().await;
        let stats = manager.stats();

        out.push_str("# HELP agent_jobs Jobs in the store, by status.\n# TYPE agent_jobs gauge\n");
        match counts {
            Ok(counts) => {
                let map: BTreeMap<_, _> = counts.into_iter().collect();
                for st in agent_core::JobStatus::ALL {
                    let n = map.get(&st).copied().unwrap_or(0);
                    let _ = writeln!(out, "agent_jobs{{status=\"{st}\"}} {n}");
                }
            }
            Err(e) => tracing::warn!(error = %e, "metrics: counting jobs failed"),
        }
        let _ = write!(
            out,
            "# HELP agent_queue_depth Jobs waiting for a worker.\n# TYPE agent_queue_depth gauge\nagent_queue_depth {}\n\
             # HELP agent_jobs_running Jobs running now.\n# TYPE agent_jobs_running gauge\nagent_jobs_running {}\n\
             # HELP agent_live_sandboxes Sandboxes (containers) alive now.\n# TYPE agent_live_sandboxes gauge\nagent_live_sandboxes {}\n\
             # HELP agent_log_bytes_dropped_total Bytes of step output not stored in job logs (over AGENT_MAX_LOG_BYTES).\n# TYPE agent_log_bytes_dropped_total counter\nagent_log_bytes_dropped_total {}\n",
            stats.queued, stats.running, stats.live_sandboxes, stats.log_bytes_dropped
        );
        let free = manager.free_space().map_or(-1, |(free, _)| free as i64);
        let _ = write!(
            out,
            "# HELP agent_jobs_unsettled Finished jobs whose final status could not be stored yet (a full disk); stored as failed once it can be.\n# TYPE agent_jobs_unsettled gauge\nagent_jobs_unsettled {}\n\
             # HELP agent_storage_free_bytes Free bytes on the output directory's file system (-1: unknown).\n# TYPE agent_storage_free_bytes gauge\nagent_storage_free_bytes {free}\n",
            stats.unsettled
        );
        let executor = manager.executor_status();
        let down_secs = executor
            .down_since
            .map_or(0, |t| (chrono::Utc::now() - t).num_seconds().max(0));
        let _ = write!(
            out,
            "# HELP agent_executor_up Whether the executor (the Docker engine) answers (1) or not (0).\n# TYPE agent_executor_up gauge\nagent_executor_up {}\n\
             # HELP agent_executor_down_seconds How long the executor has not answered (0 while it does).\n# TYPE agent_executor_down_seconds gauge\nagent_executor_down_seconds {down_secs}\n\
             # HELP agent_jobs_waiting_for_executor Jobs waiting for the executor to answer again.\n# TYPE agent_jobs_waiting_for_executor gauge\nagent_jobs_waiting_for_executor {}\n\
             # HELP agent_executor_outages_total Times the executor stopped answering since the server started.\n# TYPE agent_executor_outages_total counter\nagent_executor_outages_total {}\n\
             # HELP agent_reaped_sandboxes_total Sandboxes whose owner was gone, removed by the reaper since the server started.\n# TYPE agent_reaped_sandboxes_total counter\nagent_reaped_sandboxes_total {}\n",
            u8::from(executor.available),
            executor.waiting_jobs,
            executor.outages,
            executor.reaped
        );

        let inner = self.lock();
        out.push_str("# HELP agent_jobs_finished_total Jobs that reached a final status since the server started.\n# TYPE agent_jobs_finished_total counter\n");
        for st in agent_core::JobStatus::ALL
            .iter()
            .filter(|s| s.is_terminal())
        {
            let n = inner.finished.get(st.as_str()).copied().unwrap_or(0);
            let _ = writeln!(out, "agent_jobs_finished_total{{status=\"{st}\"}} {n}");
        }
        out.push_str("# HELP agent_tenant_jobs_created_total Jobs (and live sandboxes) made since the server started, by tenant (`admin`: the admin's; `other`: a tenant no longer configured).\n# TYPE agent_tenant_jobs_created_total counter\n");
        for label in &inner.tenant_labels {
            let n = inner.tenant_created.get(label).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "agent_tenant_jobs_created_total{{tenant=\"{}\"}} {n}",
                escape_label(label)
            );
        }
        out.push_str("# HELP agent_tenant_jobs_finished_total Jobs that reached a final status since the server started, by tenant and status.\n# TYPE agent_tenant_jobs_finished_total counter\n");
        for label in &inner.tenant_labels {
            for st in agent_core::JobStatus::ALL
                .iter()
                .filter(|s| s.is_terminal())
            {
                let n = inner
                    .tenant_finished
                    .get(&(label.clone(), st.as_str()))
                    .copied()
                    .unwrap_or(0);
                let _ = writeln!(
                    out,
                    "agent_tenant_jobs_finished_total{{tenant=\"{}\",status=\"{st}\"}} {n}",
                    escape_label(label)
                );
            }
        }
        out.push_str("# HELP agent_step_duration_seconds Wall time of steps, by outcome.\n# TYPE agent_step_duration_seconds histogram\n");
        for outcome in ["succeeded", "failed"] {
            let empty = Histogram::new(STEP_BUCKETS);
            let h = inner.step_duration.get(outcome).unwrap_or(&empty);
            h.render(
                &mut out,
                "agent_step_duration_seconds",
                &format!("outcome=\"{outcome}\""),
            );
        }
        out.push_str("# HELP agent_llm_request_duration_seconds Latency of successful LLM calls, by provider.\n# TYPE agent_llm_request_duration_seconds histogram\n");
        for (provider, stats) in &inner.llm {
            stats.latency.render(
                &mut out,
                "agent_llm_request_duration_seconds",
                &format!("provider=\"{}\"", escape_label(provider)),
            );
        }
        out.push_str("# HELP agent_llm_tokens_total Tokens used by LLM calls that answered, by provider and type (prompt, completion).\n# TYPE agent_llm_tokens_total counter\n");
        for (provider, stats) in &inner.llm {
            let provider = escape_label(provider);
            let _ = writeln!(
                out,
                "agent_llm_tokens_total{{provider=\"{provider}\",type=\"prompt\"}} {}",
                stats.prompt_tokens
            );
            let _ = writeln!(
                out,
                "agent_llm_tokens_total{{provider=\"{provider}\",type=\"completion\"}} {}",
                stats.completion_tokens
            );
        }
        out.push_str("# HELP agent_llm_errors_total Failed LLM calls, by provider and kind.\n# TYPE agent_llm_errors_total counter\n");
        for (provider, stats) in &inner.llm {
            for (kind, n) in &stats.errors {
                let _ = writeln!(
                    out,
                    "agent_llm_errors_total{{provider=\"{}\",kind=\"{kind}\"}} {n}",
                    escape_label(provider)
                );
            }
        }
        out
    }
}

/// An [`LlmProvider`] that records the latency and errors of the provider it wraps.
///
/// Wrap each provider *before* combining them into a fallback chain so that a primary's errors are
/// counted even when the fallback answers.
pub struct MeteredLlm<P> {
    inner: P,
    metrics: Arc<Metrics>,
}

impl<P: LlmProvider> MeteredLlm<P> {
    /// Wraps a provider.
    pub fn new(inner: P, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl<P: LlmProvider> LlmProvider for MeteredLlm<P> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, LlmError> {
        let start = Instant::now();
        match self.inner.chat(request).await {
            Ok(resp) => {
                self.metrics.record_llm_ok(
                    &resp.provider,
                    start.elapsed().as_secs_f64(),
                    resp.usage,
                );
                Ok(resp)
            }
            Err(e) => {
                self.metrics.record_llm_error(&e.provider, e.kind);
                Err(e)
            }
        }
    }

    async fn chat_stream(&self, request: &ChatRequest) -> Result<ChatStream, LlmError> {
        let start = Instant::now();
        let stream = match self.inner.chat_stream(request).await {
            Ok(s) => s,
            Err(e) => {
                self.metrics.record_llm_error(&e.provider, e.kind);
                return Err(e);
            }
        };
        let metrics = Arc::clone(&self.metrics);
        Ok(stream
            .inspect(move |item| match item {
                Ok(ChatChunk::Done {
                    provider, usage, ..
                }) => metrics.record_llm_ok(provider, start.elapsed().as_secs_f64(), *usage),
                Ok(ChatChunk::Delta(_)) => {}
                Err(e) => metrics.record_llm_error(&e.provider, e.kind),
            })
            .boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let mut h = Histogram::new(&[1.0, 2.0]);
        h.observe(0.5);
        h.observe(1.5);
        h.observe(3.0);
        let mut out = String::new();
        h.render(&mut out, "x", "a=\"b\"");
        assert!(out.contains("x_bucket{a=\"b\",le=\"1\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"2\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_count{a=\"b\"} 3\n"), "{out}");
    }

    #[test]
    fn llm_health_counts_calls_and_remembers_the_last_error() {
        let m = Metrics::new();
        assert_eq!(m.llm_health("a"), LlmHealth::default());
        m.record_llm_ok("a", 1.0, TokenUsage::default());
        m.record_llm_ok("a", 3.0, TokenUsage::default());
        m.record_llm_error("a", LlmErrorKind::RateLimited);
        let h = m.llm_health("a");
        assert_eq!((h.ok, h.errors), (2, 1));
        assert_eq!(h.mean_latency_secs, Some(2.0));
        assert_eq!(h.last_error_kind.as_deref(), Some("rate_limited"));
        assert!(h.last_ok_at.is_some() && h.last_error_at.is_some());
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
