//! The queue and the bounded worker pool: each queued job waits for a permit, then runs.

use std::panic::AssertUnwindSafe;

use futures::FutureExt;
use tracing::{info_span, warn, Instrument};

use super::availability::Wait;
use super::run::SandboxSlot;
use super::JobManager;
use crate::events::EventSink;
use crate::job::Job;

impl JobManager {
    /// Queues a stored job: it runs when a worker is free, unless cancelled or shut down first.
    pub(super) fn enqueue(&self, job: &Job, events: EventSink) {
        let id = job.id;
        let cancel = self.track(id, events.clone());
        let manager = self.clone();
        let tenant = job.spec.tenant.as_deref().unwrap_or_default();
        let span = info_span!("job", job_id = %id, tenant);
        self.inner.tasks.spawn(
            async move {
                let permit = tokio::select! {
                    biased;
                    // Withdrawn by cancel(), which settles the job itself.
                    () = cancel.cancelled() => return,
                    // Shutting down: the job stays queued for the next start.
                    () = manager.inner.stop.cancelled() => {
                        events.flush().await;
                        manager.forget(id);
                        return;
                    }
                    p = manager.inner.permits.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => return,
                    },
                };
                // An executor that stopped answering: the job waits, still queued.
                match manager.wait_for_executor(&cancel).await {
                    Wait::Ready => {}
                    // Withdrawn by cancel(), which settles the job itself.
                    Wait::Stopped if cancel.is_cancelled() => return,
                    // Shutting down: the job stays queued for the next start.
                    Wait::Stopped => {
                        events.flush().await;
                        manager.forget(id);
                        return;
                    }
                    Wait::GaveUp(message) => {
                        if manager.mark_running(id) {
                            warn!(error = %message, "job not started");
                            if manager.settle_failed(id, message, &events).await {
                                manager.forget(id);
                            }
                        }
                        return;
                    }
                }
                if !manager.mark_running(id) {
                    return;
                }
                // A failure or a panic outside the flow must still end the job: otherwise it
                // would stay `running` in the store and its waiters would never wake.
                let mut sandbox = SandboxSlot::new(&manager.inner.live_sandboxes, permit);
                let outcome =
                    AssertUnwindSafe(manager.run(id, cancel, events.clone(), &mut sandbox))
                        .catch_unwind()
                        .await;
                let error = match outcome {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(e.to_string()),
                    Err(panic) => Some(format!("internal error: {}", panic_message(&*panic))),
                };
                let settled = match error {
                    Some(error) => {
                        warn!(error = %error, "job failed to run");
                        manager.settle_failed(id, error, &events).await
                    }
                    None => true,
                };
                // The final status is stored and published: waiters wake now. The sandbox is
                // removed after that, off the job's critical path, but still holds the worker
                // permit and counts as live until it is gone; shutdown waits for this task.
                let keep = manager.keep_for(id);
                // An unsettled job is forgotten by the watchdog once it is stored.
                if settled {
                    manager.forget(id);
                }
                let mut ended = None;
                if let Some(keep) = keep {
                    // A kept sandbox gives its worker back while it waits.
                    sandbox.release_permit();
                    ended = manager.keep_sandbox(id, keep).await;
                }
                manager.unregister_sandbox(id);
                if let Some(reason) = ended {
                    manager.record_sandbox_end(id, reason).await;
                }
                // (Nothing to remove when the sandbox was handed over to a live sandbox.)
                sandbox.remove().await;
            }
            .instrument(span),
        );
    }
}

/// The text of a panic payload (`&str` or `String`), or a placeholder.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic")
}
