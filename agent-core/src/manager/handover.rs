//! A finished job's sandbox continued as a live sandbox ([`JobSpec::keep_sandbox`]).
//!
//! The job ends as any job does (its final status, its ZIP, its events); just before its final
//! status is stored, its sandbox — the same container, with its workspace files and its stateful
//! Python interpreter — and its worker permit are handed over to a new live sandbox: a job of its
//! own, with its own id ([`Job::continued_in`] on the job, [`Job::continues`] on the sandbox),
//! driven through the live-sandbox API from then on.
//!
//! A new id rather than the job's own: a job has one final status and its event stream ends
//! with it; a live sandbox has a lifecycle of its own (idle timeout, lifetime, destroy) that
//! would otherwise have to reopen a finished job.

use std::sync::Arc;

use tracing::{info, warn};

use super::run::SandboxSlot;
use super::JobManager;
use crate::error::Result;
use crate::events::EventSink;
use crate::executor::Sandbox;
use crate::job::{EventKind, Job, JobId, JobSpec, KeepSandbox, LiveSettings};

impl JobManager {
    /// Hands `job`'s sandbox (in `slot`) over to a new live sandbox and records its id on the
    /// job; when that cannot be done (the manager stops, no sandbox, the store fails) the job's
    /// log says why and the sandbox is removed as usual.
    pub(super) async fn continue_sandbox(
        &self,
        job: &mut Job,
        keep: KeepSandbox,
        slot: &mut SandboxSlot<'_>,
        events: &EventSink,
    ) {
        let refusal = if self.inner.stop.is_cancelled() || !self.accepting() {
            Some("the server is stopping".to_string())
        } else {
            match slot.take_over(&self.inner) {
                None => Some("the job has no sandbox".to_string()),
                Some((sandbox, permit, counted)) => {
                    match self
                        .hand_over(job, keep, sandbox.clone(), counted, permit)
                        .await
                    {
                        Ok(id) => {
                            events.emit(EventKind::Log {
                                message: format!(
                                    "the sandbox continues as live sandbox {id} (/sandboxes/{id})"
                                ),
                            });
                            info!(sandbox_id = %id, "sandbox handed over to a live sandbox");
                            None
                        }
                        Err(e) => {
                            warn!(error = %e, "could not hand the sandbox over");
                            Some(e.to_string())
                        }
                    }
                }
            }
        };
        if let Some(why) = refusal {
            events.emit(EventKind::Log {
                message: format!("the sandbox was not kept as a live sandbox: {why}"),
            });
        }
    }

    /// Makes a live sandbox of `sandbox`, continuing `job`, and hands it the sandbox's count;
    /// returns its id. On failure the sandbox is destroyed (counted until then).
    async fn hand_over(
        &self,
        job: &mut Job,
        keep: KeepSandbox,
        sandbox: Arc<dyn Sandbox>,
        counted: super::sandboxes::Counted,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> Result<JobId> {
        match self.live_record_for(job, keep).await {
            Ok((live, events, cancel)) => {
                let id = live.id;
                self.start_session(live, sandbox, counted, permit, events, cancel);
                job.continued_in = Some(id);
                Ok(id)
            }
            Err(e) => {
                // Counted until it is gone.
                if let Err(e) = sandbox.destroy().await {
                    warn!(error = %e, "could not destroy the sandbox");
                }
                drop(counted);
                Err(e)
            }
        }
    }

    /// Stores the record of the live sandbox that will continue `job`.
    async fn live_record_for(
        &self,
        job: &Job,
        keep: KeepSandbox,
    ) -> Result<(Job, EventSink, tokio_util::sync::CancellationToken)> {
        let from = &job.spec;
        let spec = JobSpec {
            image: from.image.clone(),
            step_timeout: from.step_timeout,
            job_timeout: keep.lifetime,
            limits: from.limits.clone(),
            network: from.network,
            env: from.env.clone(),
            max_repairs: from.max_repairs,
            live: Some(LiveSettings {
                idle_timeout: keep.idle_timeout,
            }),
            // The sandbox stays its owner's.
            tenant: from.tenant.clone(),
            ..JobSpec::default()
        };
        spec.validate()?;
        let mut live = Job::new(JobId::new(), spec);
        live.continues = Some(job.id);
        let (events, cancel) = self.open_sandbox_record(&mut live).await?;
        events.emit(EventKind::Log {
            message: format!(
                "continues job {}: its sandbox, with its workspace and Python state",
                job.id
            ),
        });
        Ok((live, events, cancel))
    }

    fn accepting(&self) -> bool {
        self.inner
            .accepting
            .load(std::sync::atomic::Ordering::Acquire)
    }
}
