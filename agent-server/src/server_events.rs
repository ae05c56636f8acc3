//! `GET /events`: every job's status changes, live, as one Server-Sent Events stream (what a job
//! list needs to stay current without polling each job).

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;
use utoipa::ToSchema;

use agent_core::{EventKind, JobEvent, JobId, JobStatus};

use crate::error::ErrorBody;
use crate::routes::AppState;
use crate::tenants::Caller;
use agent_core::JobStore;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// One `status` event of `GET /events`: a job changed status (`queued` is a new job).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JobStatusEvent {
    /// The job.
    #[schema(value_type = String, format = Uuid)]
    pub job_id: JobId,
    /// Its new status.
    #[schema(value_type = String, example = "running")]
    pub status: JobStatus,
    /// Why it failed, for failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The event's sequence number within the job (its `GET /logs/{id}/stream` id).
    pub seq: u64,
    /// When it happened.
    pub at: DateTime<Utc>,
}

impl JobStatusEvent {
    /// The status change an event carries, if it is one.
    pub fn from_event(event: &JobEvent) -> Option<Self> {
        match &event.kind {
            EventKind::Status { status, error } => Some(Self {
                job_id: event.job_id,
                status: *status,
                error: error.clone(),
                seq: event.seq,
                at: event.at,
            }),
            _ => None,
        }
    }
}

/// Whose jobs' events a stream of `GET /events` carries: a tenant's own (each job's owner read
/// from the store once and remembered), the admin's every job's.
#[derive(Clone)]
struct Visible {
    caller: Caller,
    store: Arc<dyn JobStore>,
    known: Arc<Mutex<HashMap<JobId, bool>>>,
}

/// Jobs whose owner a stream remembers; past it, it forgets them all and reads again.
const MAX_KNOWN_JOBS: usize = 10_000;

impl Visible {
    fn new(caller: Caller, store: Arc<dyn JobStore>) -> Self {
        Self {
            caller,
            store,
            known: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, bool>> {
        self.known.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn allows(&self, event: &JobEvent) -> bool {
        if self.caller.is_admin() {
            return true;
        }
        let id = event.job_id;
        if let Some(&seen) = self.known().get(&id) {
            return seen;
        }
        let seen = match self.store.get_job(id).await {
            Ok(Some(job)) => self.caller.sees(&job),
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(job_id = %id, error = %e, "events: reading a job's owner failed");
                return false;
            }
        };
        let mut known = self.known();
        if known.len() >= MAX_KNOWN_JOBS {
            known.clear();
        }
        known.insert(id, seen);
        seen
    }
}

fn to_sse(item: Result<JobEvent, BroadcastStreamRecvError>) -> Option<Event> {
    match item {
        Ok(event) => {
            let change = JobStatusEvent::from_event(&event)?;
            let data = serde_json::to_string(&change).ok()?;
            Some(Event::default().event("status").data(data))
        }
        Err(BroadcastStreamRecvError::Lagged(n)) => Some(
            Event::default()
                .event("lagged")
                .data(format!("{{\"skipped\":{n}}}")),
        ),
    }
}

/// Every job's status changes (a tenant's: its own jobs'), live, as Server-Sent Events: `status` events
/// (`{"job_id","status","error"?,"seq","at"}`) as they happen, and a `lagged` event
/// (`{"skipped":N}`) when this client fell behind and missed some (re-read `GET /jobs` then).
/// Nothing is replayed: read `GET /jobs` after connecting. The stream ends when the server
/// shuts down.
#[utoipa::path(get, path = "/events", tag = "logs",
    responses((status = 200, description = "An SSE stream of `status` (JobStatusEvent) and `lagged` events",
               content_type = "text/event-stream", body = String),
              (status = 401, description = "Missing or wrong token", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn events(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let rx = state.manager().subscribe_all();
    let visible = Visible::new(caller, Arc::clone(state.manager().store()));
    let stream = BroadcastStream::new(rx)
        .filter_map(move |item| {
            let visible = visible.clone();
            async move {
                if let Ok(event) = &item {
                    if JobStatusEvent::from_event(event).is_some() && !visible.allows(event).await {
                        return None;
                    }
                }
                to_sse(item).map(Ok::<_, Infallible>)
            }
        })
        .take_until(state.shutdown_token().clone().cancelled_owned());
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_status_changes_are_sent() {
        let id = JobId::new();
        let status = JobEvent {
            job_id: id,
            seq: 3,
            at: Utc::now(),
            kind: EventKind::Status {
                status: JobStatus::Failed,
                error: Some("boom".into()),
            },
        };
        let change = JobStatusEvent::from_event(&status).unwrap();
        assert_eq!(change.status, JobStatus::Failed);
        assert_eq!(change.seq, 3);
        assert_eq!(change.error.as_deref(), Some("boom"));
        let log = JobEvent {
            kind: EventKind::Log {
                message: "hi".into(),
            },
            ..status
        };
        assert!(JobStatusEvent::from_event(&log).is_none());
        assert!(to_sse(Ok(log)).is_none());
        assert!(to_sse(Err(BroadcastStreamRecvError::Lagged(2))).is_some());
    }
}
