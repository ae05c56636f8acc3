//! A job's input files: kept beside its record from submit until it ends (so a queued job keeps
//! them across a restart), placed into its workspace before the first step.

use std::collections::HashSet;
use std::path::PathBuf;

use tracing::{info, warn};

use super::JobManager;
use crate::error::{Error, Result};
use crate::events::EventSink;
use crate::executor::Sandbox;
use crate::inputs::{place, StagedInputs};
use crate::job::{EventKind, Job, JobId, JobSpec};

impl JobManager {
    /// Where input files are staged and kept: `<artifact_dir>/inputs` (a local directory even
    /// when ZIPs go to a bucket).
    pub fn inputs_dir(&self) -> PathBuf {
        self.inner.config.artifact_dir.join("inputs")
    }

    fn inputs_file(&self, id: JobId) -> PathBuf {
        self.inputs_dir().join(format!("{id}.tar"))
    }

    /// Validates and queues a job with input files (staged in [`JobManager::inputs_dir`]),
    /// placed under `/workspace` before its first step; the planner is told which exist
    /// ([`JobSpec::inputs`]).
    pub async fn submit_with_inputs(
        &self,
        mut spec: JobSpec,
        inputs: StagedInputs,
    ) -> Result<JobId> {
        spec.inputs = inputs.files().to_vec();
        let id = JobId::new();
        // Refused before the files are written and synced, not after.
        self.admit(id, &spec)?;
        let dest = self.inputs_file(id);
        // Kept before the job is stored: a crash in between leaves a file that start-up
        // recovery removes, never a queued job without its files.
        let keep = {
            let dest = dest.clone();
            tokio::task::spawn_blocking(move || inputs.keep(&dest))
        };
        keep.await
            .map_err(|e| Error::other(format!("storing the inputs failed: {e}")))??;
        let submitted = self.submit_as(id, spec).await;
        if submitted.is_err() {
            self.drop_inputs(id);
        }
        submitted
    }

    /// Writes a job's input files into its sandbox, if it has any.
    pub(super) async fn place_inputs(
        &self,
        job: &Job,
        sandbox: &dyn Sandbox,
        events: &EventSink,
    ) -> Result<()> {
        if job.spec.inputs.is_empty() {
            return Ok(());
        }
        let file = self.inputs_file(job.id);
        if !file.exists() {
            return Err(Error::other(format!(
                "its input files are gone ({} missing)",
                file.display()
            )));
        }
        let placed = place(sandbox, &file, "").await?;
        events.emit(EventKind::Log {
            message: format!(
                "placed {} input files ({} bytes) under /workspace",
                placed.files, placed.bytes
            ),
        });
        Ok(())
    }

    /// Removes a finished job's input files (nothing when it had none).
    pub(super) fn drop_inputs(&self, id: JobId) {
        let file = self.inputs_file(id);
        match std::fs::remove_file(&file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => warn!(job_id = %id, error = %e, "could not remove the job's input files"),
        }
    }

    /// Removes input files no queued job owns (left by a crash, or by a job that ended while
    /// its removal failed), and staging files.
    pub(super) fn sweep_inputs(&self, queued: &HashSet<JobId>) {
        let Ok(dir) = std::fs::read_dir(self.inputs_dir()) else {
            return;
        };
        for entry in dir.flatten() {
            let name = entry.file_name();
            let owner = name
                .to_str()
                .and_then(|n| n.strip_suffix(".tar"))
                .and_then(|n| n.parse::<JobId>().ok());
            if owner.is_some_and(|id| queued.contains(&id)) {
                continue;
            }
            info!(file = ?name, "removing input files no queued job owns");
            if let Err(e) = std::fs::remove_file(entry.path()) {
                warn!(file = ?name, error = %e, "could not remove input files");
            }
        }
    }
}
