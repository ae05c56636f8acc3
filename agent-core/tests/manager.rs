//! The job manager and the agent flow, end to end against the fake executor, a mockall LLM and
//! both stores.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_core::llm::MockLlm;
use agent_core::manager::{JobManager, JobManagerConfig};
use agent_core::store::memory::MemoryStore;
use agent_core::testing::{collect_bytes, FakeExecutor};
use agent_core::{
    ChatRequest, ChatResponse, Error, EventKind, Job, JobEvent, JobFilter, JobId, JobSpec,
    JobStatus, JobStore, LlmError, LlmErrorKind, Step, StepStatus, Termination, TokenUsage,
};
use futures::StreamExt;

struct Harness {
    manager: JobManager,
    store: Arc<dyn JobStore>,
    _dir: tempfile::TempDir,
    requests: Arc<Mutex<Vec<ChatRequest>>>,
}

fn config(dir: &tempfile::TempDir) -> JobManagerConfig {
    JobManagerConfig {
        max_concurrent_jobs: 2,
        ..JobManagerConfig::in_dir(dir.path())
    }
}

/// A mockall LLM that answers with `replies` in order (the last one repeats) and records requests.
fn scripted_llm(
    replies: Vec<Result<String, LlmErrorKind>>,
) -> (MockLlm, Arc<Mutex<Vec<ChatRequest>>>) {
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = requests.clone();
    let mut llm = MockLlm::new();
    llm.expect_name().return_const("mock".to_string());
    llm.expect_chat().returning(move |req| {
        let mut seen = seen.lock().unwrap();
        seen.push(req.clone());
        let n = seen.len();
        match &replies[(n - 1).min(replies.len() - 1)] {
            Ok(text) => Ok(ChatResponse {
                text: text.clone(),
                provider: "mock".into(),
                model: "mock-1".into(),
                usage: TokenUsage {
                    prompt_tokens: 10,
                    completion_tokens: 5,
                    total_tokens: 15,
                },
            }),
            Err(kind) => Err(LlmError::new(*kind, "mock", "scripted failure")),
        }
    });
    (llm, requests)
}

async fn harness_with(
    store: Arc<dyn JobStore>,
    replies: Option<Vec<Result<String, LlmErrorKind>>>,
    tweak: impl FnOnce(&mut JobManagerConfig),
) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&dir);
    tweak(&mut cfg);
    let mut builder = JobManager::builder(Arc::new(FakeExecutor::new()), store.clone()).config(cfg);
    let mut requests = Arc::new(Mutex::new(Vec::new()));
    if let Some(replies) = replies {
        let (llm, reqs) = scripted_llm(replies);
        requests = reqs;
        builder = builder.llm(Arc::new(llm));
    }
    Harness {
        manager: builder.start().await.unwrap(),
        store,
        _dir: dir,
        requests,
    }
}

impl Harness {
    /// Submits `spec`; the job's id.
    async fn submit(&self, spec: JobSpec) -> JobId {
        self.manager.submit(spec).await.unwrap()
    }

    /// Job `id`'s events after `after`, followed until the job ends.
    async fn follow(&self, id: JobId, after: u64) -> Vec<JobEvent> {
        let events = self.manager.subscribe(id, after).await.unwrap();
        events.map(|e| e.unwrap()).collect().await
    }

    /// Submits `spec` and waits for its job to end.
    async fn run(&self, spec: JobSpec) -> Job {
        run_job(&self.manager, spec).await
    }
}

async fn harness(replies: Option<Vec<Result<String, LlmErrorKind>>>) -> Harness {
    harness_with(Arc::new(MemoryStore::new()), replies, |_| {}).await
}

/// A job's ZIP, read back through the manager's artifact store.
async fn zip_of(h: &Harness, job: &Job) -> zip::ZipArchive<std::io::Cursor<Vec<u8>>> {
    let path = &job.artifact.as_ref().expect("the job has an artifact").path;
    let reader = h
        .manager
        .artifacts()
        .open(path)
        .await
        .unwrap()
        .expect("stored");
    let bytes = collect_bytes(reader.stream).await;
    assert_eq!(bytes.len() as u64, reader.size);
    zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap()
}

async fn zip_names(h: &Harness, job: &Job) -> Vec<String> {
    let zip = zip_of(h, job).await;
    let mut names: Vec<String> = zip.file_names().map(str::to_string).collect();
    names.sort();
    names
}

async fn zip_file(h: &Harness, job: &Job, name: &str) -> String {
    let mut zip = zip_of(h, job).await;
    let mut s = String::new();
    zip.by_name(name).unwrap().read_to_string(&mut s).unwrap();
    s
}

/// Checks that `job` ended with `status` and an error that says `saying`.
fn assert_ended(job: &Job, status: JobStatus, saying: &str) {
    assert_eq!(job.status, status, "{:?}", job.error);
    let error = job.error.as_deref().unwrap_or_default();
    assert!(error.contains(saying), "{error:?} should say {saying:?}");
}

fn plan(steps: serde_json::Value) -> String {
    serde_json::json!({"steps": steps, "summary": "test plan"}).to_string()
}

#[tokio::test]
async fn explicit_steps_run_in_order_without_an_llm() {
    let h = harness(None).await;
    let job = h
        .run(JobSpec::from_steps(vec![
            Step::write_file("notes/a.txt", "first\n"),
            Step::shell("echo second >> notes/a.txt"),
            Step::python("open('notes/a.txt','a').write('third\\n')"),
            Step::shell("cat notes/a.txt"),
        ]))
        .await;
    assert_eq!(job.status, JobStatus::Succeeded, "{:?}", job.error);
    assert_eq!(job.steps.len(), 4);
    assert!(job.steps.iter().all(|s| s.status == StepStatus::Succeeded));
    assert_eq!(
        job.steps[3].result.as_ref().unwrap().stdout_tail,
        "first\nsecond\nthird\n"
    );
    assert!(h.requests.lock().unwrap().is_empty());
    let names = zip_names(&h, &job).await;
    assert!(names.contains(&"notes/a.txt".to_string()), "{names:?}");
    assert!(names.contains(&"result.json".to_string()), "{names:?}");
    assert!(!names.iter().any(|n| n.ends_with(".zip")), "{names:?}");
    assert!(
        !names.iter().any(|n| n.starts_with(".agent")),
        "the python step's script is the agent's, not the job's: {names:?}"
    );
    let result: serde_json::Value =
        serde_json::from_str(&zip_file(&h, &job, "result.json").await).unwrap();
    assert_eq!(result["status"], "succeeded");
    assert_eq!(result["steps"].as_array().unwrap().len(), 4);
    assert_eq!(result["steps"][1]["result"]["exit_code"], 0);
}

#[tokio::test]
async fn a_prompt_is_planned_streamed_and_recorded() {
    let reply = format!(
        "Here is the plan:\n```json\n{}\n```\nGood luck!",
        plan(serde_json::json!([
            {"type": "write_file", "path": "fib.py", "content": "print(55)\n", "description": "script"},
            {"type": "shell", "command": "python3 fib.py > out.txt"}
        ]))
    );
    let h = harness(Some(vec![Ok(reply)])).await;
    let job = h
        .run(JobSpec::from_prompt(
            "Create a Python script that prints fib(10)",
        ))
        .await;
    assert_eq!(job.status, JobStatus::Succeeded, "{:?}", job.error);
    assert_eq!(job.provider.as_deref(), Some("mock"));
    assert_eq!(job.usage.total_tokens, 15);
    assert_eq!(job.plan.as_ref().unwrap().summary, "test plan");
    assert_eq!(zip_file(&h, &job, "out.txt").await, "55\n");
    let reqs = h.requests.lock().unwrap().clone();
    assert_eq!(reqs.len(), 1);
    assert!(reqs[0].json_mode);
    assert!(reqs[0].system.contains("\"steps\""));
    assert!(reqs[0].messages[0].content.contains("fib(10)"));
    let events = h.manager.events(job.id, 0, 1000).await.unwrap();
    assert!(events.iter().any(
        |e| matches!(&e.kind, EventKind::Planning { text } if text.contains("Here is the plan"))
    ));
    assert!(events.windows(2).all(|w| w[0].seq < w[1].seq));
}

#[tokio::test]
async fn a_failed_step_is_repaired_with_its_stderr() {
    let first = plan(serde_json::json!([
        {"type": "shell", "command": "echo made > a.txt"},
        {"type": "shell", "command": "echo 'ModuleNotFoundError: no module named zorp' >&2; exit 3"},
        {"type": "shell", "command": "echo never"}
    ]));
    let fixed = plan(serde_json::json!([
        {"type": "shell", "command": "echo repaired > b.txt"}
    ]));
    let h = harness(Some(vec![Ok(first), Ok(fixed)])).await;
    let job = h.run(JobSpec::from_prompt("make files")).await;
    assert_eq!(job.status, JobStatus::Succeeded, "{:?}", job.error);
    let reqs = h.requests.lock().unwrap().clone();
    assert_eq!(reqs.len(), 2, "one plan, one repair");
    let repair = &reqs[1].messages.last().unwrap().content;
    assert!(
        repair.contains("ModuleNotFoundError: no module named zorp"),
        "{repair}"
    );
    assert!(repair.contains("Exit code: 3"), "{repair}");
    assert!(
        repair.contains("echo never"),
        "the remaining steps are listed: {repair}"
    );
    let statuses: Vec<_> = job.steps.iter().map(|s| s.status).collect();
    assert_eq!(
        statuses,
        vec![
            StepStatus::Succeeded,
            StepStatus::Failed,
            StepStatus::Succeeded
        ]
    );
    assert_eq!(job.steps[2].attempt, 1);
    let names = zip_names(&h, &job).await;
    assert!(names.contains(&"a.txt".into()) && names.contains(&"b.txt".into()));
}

#[tokio::test]
async fn a_refused_write_is_a_failed_step_that_can_be_repaired() {
    // The plan parser refuses `..` paths outright, so escape through a symlink instead.
    let first = plan(serde_json::json!([
        {"type": "shell", "command": "ln -s /etc out"},
        {"type": "write_file", "path": "out/evil.txt", "content": "x"}
    ]));
    let fixed = plan(serde_json::json!([
        {"type": "write_file", "path": "good.txt", "content": "ok"}
    ]));
    let h = harness(Some(vec![Ok(first), Ok(fixed)])).await;
    let job = h.run(JobSpec::from_prompt("write")).await;
    assert_eq!(job.status, JobStatus::Succeeded, "{:?}", job.error);
    let refused = job.steps[1].result.as_ref().unwrap();
    assert_eq!(refused.exit_code, -1);
    assert!(
        refused.stderr_tail.contains("refused"),
        "{}",
        refused.stderr_tail
    );
    let reqs = h.requests.lock().unwrap().clone();
    assert!(reqs[1].messages[0].content.contains("refused"));
    assert!(zip_names(&h, &job).await.contains(&"good.txt".into()));
}

#[tokio::test]
async fn repairs_are_bounded() {
    let failing = plan(serde_json::json!([{"type": "shell", "command": "exit 7"}]));
    let h = harness(Some(vec![Ok(failing)])).await;
    let job = h
        .run(JobSpec::from_prompt("fail").with_max_repairs(2))
        .await;
    assert_ended(&job, JobStatus::Failed, "exited with code 7");
    assert_ended(&job, JobStatus::Failed, "after 2 repair attempts");
    assert_eq!(h.requests.lock().unwrap().len(), 3, "plan + 2 repairs");
    // Partial results are still packaged.
    assert!(zip_names(&h, &job).await.contains(&"result.json".into()));
}

#[tokio::test]
async fn an_unparseable_plan_gets_one_retry_with_the_error() {
    let good = plan(serde_json::json!([{"type": "shell", "command": "true"}]));
    let h = harness(Some(vec![Ok("Sorry, I can't do JSON.".into()), Ok(good)])).await;
    let job = h.run(JobSpec::from_prompt("x")).await;
    assert_eq!(job.status, JobStatus::Succeeded, "{:?}", job.error);
    let reqs = h.requests.lock().unwrap().clone();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[1].messages.len(), 3);
    assert!(reqs[1].messages[2].content.contains("no JSON object"));

    let h = harness(Some(vec![Ok(r#"{"steps":[{"type":"teleport"}]}"#.into())])).await;
    let job = h.run(JobSpec::from_prompt("x")).await;
    assert_ended(&job, JobStatus::Failed, "unknown type \"teleport\"");
    assert_eq!(h.requests.lock().unwrap().len(), 2);
    // Tokens spent are tokens spent: both answers count though neither became a plan.
    assert_eq!(job.usage.total_tokens, 30);
    assert_eq!(job.provider.as_deref(), Some("mock"));
    let result: serde_json::Value =
        serde_json::from_str(&zip_file(&h, &job, "result.json").await).unwrap();
    assert_eq!(result["usage"]["total_tokens"], 30);
    assert_eq!(result["provider"], "mock");
}

#[tokio::test]
async fn an_llm_failure_fails_the_job_with_its_message() {
    let h = harness(Some(vec![Err(LlmErrorKind::Permanent)])).await;
    let job = h.run(JobSpec::from_prompt("x")).await;
    assert_ended(&job, JobStatus::Failed, "scripted failure");
}

#[tokio::test]
async fn cancel_stops_a_running_job_and_keeps_partial_output() {
    let h = harness(None).await;
    let id = h
        .manager
        .submit(JobSpec::from_steps(vec![
            Step::shell("echo partial > early.txt"),
            Step::shell("echo started; sleep 100"),
            Step::shell("echo never > late.txt"),
        ]))
        .await
        .unwrap();
    wait_for_output(&h.manager, id, "started").await;
    let job = h.manager.cancel(id).await.unwrap();
    assert_eq!(job.status, JobStatus::Cancelled);
    assert_eq!(
        job.steps[1].result.as_ref().unwrap().termination,
        Termination::Cancelled
    );
    let names = zip_names(&h, &job).await;
    assert!(names.contains(&"early.txt".into()) && !names.contains(&"late.txt".into()));
    assert!(sandboxes_gone(&h.manager).await, "{:?}", h.manager.stats());
    // A finished job cannot be cancelled again.
    assert!(matches!(
        h.manager.cancel(id).await,
        Err(Error::AlreadyFinished {
            status: JobStatus::Cancelled,
            ..
        })
    ));
}

#[tokio::test]
async fn cancel_withdraws_a_queued_job() {
    let h = harness_with(Arc::new(MemoryStore::new()), None, |c| {
        c.max_concurrent_jobs = 1
    })
    .await;
    let blocker = start_blocker(&h.manager).await;
    let queued = h.submit(shell_job("echo hi")).await;
    assert_eq!(h.manager.stats().queued, 1);
    let job = h.manager.cancel(queued).await.unwrap();
    assert_eq!(job.status, JobStatus::Cancelled);
    assert!(job.started_at.is_none());
    h.manager.cancel(blocker).await.unwrap();
}

#[tokio::test]
async fn a_job_past_its_timeout_is_timed_out_with_partial_output() {
    let h = harness(None).await;
    let spec = JobSpec::from_steps(vec![
        Step::shell("echo before > before.txt"),
        Step::shell("sleep 100"),
    ]);
    let job = h.run(spec.with_job_timeout(Duration::from_secs(1))).await;
    assert_ended(&job, JobStatus::TimedOut, "1s timeout");
    assert_eq!(
        job.steps[1].result.as_ref().unwrap().termination,
        Termination::TimedOut,
        "the step killed by the job's timeout says so"
    );
    assert!(zip_names(&h, &job).await.contains(&"before.txt".into()));
}

#[tokio::test]
async fn a_step_timeout_fails_the_step() {
    let h = harness(None).await;
    let job = h
        .run(JobSpec::from_steps(vec![
            Step::shell("sleep 100").with_timeout(Duration::from_secs(1))
        ]))
        .await;
    assert_ended(&job, JobStatus::Failed, "timed out");
}

#[tokio::test]
async fn subscribe_replays_then_follows_and_resumes() {
    let h = harness(None).await;
    let id = h
        .submit(shell_job("for i in 1 2 3; do echo line$i; sleep 0.2; done"))
        .await;
    let events = h.follow(id, 0).await;
    assert!(
        events.last().unwrap().is_final(),
        "the stream ends with the final status"
    );
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    let text: String = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Output { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(text, "line1\nline2\nline3\n");
    // Resume after the third event: exactly the rest.
    let rest: Vec<u64> = h.follow(id, 3).await.iter().map(|e| e.seq).collect();
    assert_eq!(rest, seqs[3..].to_vec());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_subscribers_each_get_every_event_in_order_and_a_slow_one_holds_nobody_back() {
    let h = harness(None).await;
    let printing = Step::python("for i in range(20000):\n    print(i, flush=True)");
    let id = h.submit(JobSpec::from_steps(vec![printing])).await;
    // 200 subscribers reading as events come; one that reads nothing until the job is over; one
    // that stops after 50 events and resumes from the last it saw (as Last-Event-ID does).
    let mut readers = Vec::new();
    for _ in 0..200 {
        let stream = h.manager.subscribe(id, 0).await.unwrap();
        readers.push(tokio::spawn(
            stream.map(|e| e.unwrap().seq).collect::<Vec<u64>>(),
        ));
    }
    let slow = h.manager.subscribe(id, 0).await.unwrap();
    let resumed = tokio::spawn({
        let manager = h.manager.clone();
        async move {
            let first: Vec<u64> = manager
                .subscribe(id, 0)
                .await
                .unwrap()
                .take(50)
                .map(|e| e.unwrap().seq)
                .collect()
                .await;
            let last = *first.last().unwrap();
            let rest: Vec<u64> = manager
                .subscribe(id, last)
                .await
                .unwrap()
                .map(|e| e.unwrap().seq)
                .collect()
                .await;
            [first, rest].concat()
        }
    });
    // The job ends although one subscriber has not read a thing.
    let job = tokio::time::timeout(Duration::from_secs(120), h.manager.wait(id))
        .await
        .expect("the job is not held back by a subscriber that does not read")
        .unwrap();
    assert_eq!(job.status, JobStatus::Succeeded, "{:?}", job.error);
    let stored: Vec<u64> = h
        .store
        .events(id, 0, 1_000_000)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(stored, (1..=stored.len() as u64).collect::<Vec<_>>());
    for (i, reader) in readers.into_iter().enumerate() {
        let seqs = reader.await.unwrap();
        assert_eq!(
            seqs, stored,
            "subscriber {i} got every event once, in order"
        );
    }
    let late: Vec<u64> = slow.map(|e| e.unwrap().seq).collect().await;
    assert_eq!(late, stored, "the slow subscriber catches up without a gap");
    assert_eq!(
        resumed.await.unwrap(),
        stored,
        "a resumed subscriber misses nothing"
    );
}

#[tokio::test]
async fn bad_input_is_a_typed_error() {
    let h = harness(None).await;
    assert!(matches!(
        h.manager.submit(JobSpec::from_prompt("needs an llm")).await,
        Err(Error::NoLlm)
    ));
    assert!(matches!(
        h.manager.submit(JobSpec::default()).await,
        Err(Error::InvalidInput { .. })
    ));
    assert!(matches!(
        h.manager.get(JobId::new()).await,
        Err(Error::JobNotFound(_))
    ));
    assert!(matches!(
        h.manager.cancel(JobId::new()).await,
        Err(Error::JobNotFound(_))
    ));
    assert!(h
        .manager
        .list(&JobFilter::default().page(1_000_000, 0))
        .await
        .is_err());
}

#[tokio::test]
async fn retention_removes_old_jobs_events_and_artifacts_periodically() {
    let h = harness_with(Arc::new(MemoryStore::new()), None, |c| {
        c.retention = Some(Duration::from_millis(300));
        c.sweep_interval = Duration::from_millis(100);
    })
    .await;
    let job = h.run(shell_job("echo x > x.txt")).await;
    let id = job.id;
    let zip = job.artifact.unwrap().path;
    assert!(h.manager.artifacts().open(&zip).await.unwrap().is_some());
    // The sweeper runs on its own (not only at start-up).
    for _ in 0..100 {
        if h.store.get_job(id).await.unwrap().is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(h.store.get_job(id).await.unwrap().is_none(), "job swept");
    assert!(
        h.store.events(id, 0, 10).await.unwrap().is_empty(),
        "events swept"
    );
    assert!(
        h.manager.artifacts().open(&zip).await.unwrap().is_none(),
        "artifact swept"
    );
}

#[tokio::test]
async fn a_sweep_removes_a_backlog_larger_than_one_batch_and_spares_recent_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn JobStore> = Arc::new(
        agent_core::store::sqlite::SqliteStore::open(dir.path().join("agent.db")).unwrap(),
    );
    let h = harness_with(store.clone(), None, |c| c.retention = None).await;
    let old = chrono::Utc::now() - chrono::Duration::hours(2);
    for i in 0..1201 {
        let mut job = Job::new(JobId::new(), shell_job("true"));
        job.transition(JobStatus::Running).unwrap();
        job.transition(JobStatus::Succeeded).unwrap();
        if i > 0 {
            job.finished_at = Some(old);
        }
        store.insert_job(&job).await.unwrap();
    }
    let removed = h.manager.sweep(Duration::from_secs(3600)).await.unwrap();
    assert_eq!(removed, 1200, "every expired job, over several batches");
    let left = store.list_summaries(&JobFilter::default()).await.unwrap();
    assert_eq!(left.total, 1, "the recent job stays");
}

#[tokio::test]
async fn restart_recovery_requeues_queued_and_interrupts_running() {
    let store: Arc<dyn JobStore> = Arc::new(MemoryStore::new());
    let mut running = Job::new(JobId::new(), shell_job("true"));
    running.transition(JobStatus::Running).unwrap();
    store.insert_job(&running).await.unwrap();
    let queued = Job::new(
        JobId::new(),
        JobSpec::from_steps(vec![Step::shell("echo hi")]),
    );
    store.insert_job(&queued).await.unwrap();

    let h = harness_with(store, None, |_| {}).await;
    let job = h.manager.wait(queued.id).await.unwrap();
    assert_eq!(job.status, JobStatus::Succeeded);
    let job = h.manager.get(running.id).await.unwrap();
    assert_eq!(job.status, JobStatus::Interrupted);
    assert!(job.error.unwrap().contains("stopped"));
    let events = h.manager.events(running.id, 0, 10).await.unwrap();
    assert!(events.last().unwrap().is_final());
}

#[tokio::test]
async fn shutdown_interrupts_running_jobs_and_keeps_queued_ones() {
    let store: Arc<dyn JobStore> = Arc::new(MemoryStore::new());
    let h = harness_with(store.clone(), None, |c| c.max_concurrent_jobs = 1).await;
    let running = start_blocker(&h.manager).await;
    let queued = h.submit(shell_job("true")).await;
    h.manager
        .shutdown(Duration::from_millis(200))
        .await
        .unwrap();
    assert_eq!(
        store.get_job(running).await.unwrap().unwrap().status,
        JobStatus::Interrupted
    );
    assert_eq!(
        store.get_job(queued).await.unwrap().unwrap().status,
        JobStatus::Queued
    );
    assert!(matches!(
        h.manager.submit(shell_job("true")).await,
        Err(Error::ShuttingDown)
    ));
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn jobs_run_on_the_sqlite_store_and_survive_a_restart() {
    use agent_core::store::sqlite::SqliteStore;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("agent.db");
    let id = {
        let store: Arc<dyn JobStore> = Arc::new(SqliteStore::open(&db).unwrap());
        let h = harness_with(store, None, |_| {}).await;
        let job = h.run(shell_job("echo persisted")).await;
        assert_eq!(job.status, JobStatus::Succeeded);
        h.manager.shutdown(Duration::from_secs(1)).await.unwrap();
        job.id
    };
    let store: Arc<dyn JobStore> = Arc::new(SqliteStore::open(&db).unwrap());
    let job = store.get_job(id).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Succeeded);
    let events = store.events(id, 0, 1000).await.unwrap();
    assert!(events
        .iter()
        .any(|e| matches!(&e.kind, EventKind::Output { text, .. } if text == "persisted\n")));
}

/// Submits a job that runs until cancelled and waits until it is running: with one worker, it
/// keeps every later job queued.
async fn start_blocker(manager: &JobManager) -> JobId {
    let id = manager
        .submit(JobSpec::from_steps(vec![Step::shell(
            "echo started; sleep 100",
        )]))
        .await
        .unwrap();
    wait_for_output(manager, id, "started").await;
    id
}

async fn wait_for_output(manager: &JobManager, id: JobId, needle: &str) {
    let mut events = manager.subscribe(id, 0).await.unwrap();
    while let Some(event) = events.next().await {
        if let EventKind::Output { text, .. } = &event.unwrap().kind {
            if text.contains(needle) {
                return;
            }
        }
    }
    panic!("job {id} ended without printing {needle:?}");
}

#[tokio::test]
async fn timeouts_too_large_for_an_instant_do_not_overflow() {
    let h = harness(None).await;
    let huge = Duration::from_secs(u64::MAX);
    let spec = shell_job("echo ok")
        .with_job_timeout(huge)
        .with_step_timeout(huge);
    let job = h.run(spec).await;
    assert_eq!(job.status, JobStatus::Succeeded, "{:?}", job.error);
}

/// Waits (a bounded number of times) until the manager counts no live sandbox: a sandbox is
/// removed after its job's final status is published.
async fn sandboxes_gone(manager: &JobManager) -> bool {
    for _ in 0..1000 {
        if manager.stats().live_sandboxes == 0 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// Submits `spec` and waits for its job to end (at most a minute: a guard against a hang only).
async fn run_job(manager: &JobManager, spec: JobSpec) -> Job {
    let id = manager.submit(spec).await.unwrap();
    tokio::time::timeout(Duration::from_secs(60), manager.wait(id))
        .await
        .expect("the job ends")
        .unwrap()
}

/// A job of one shell step.
fn shell_job(command: &str) -> JobSpec {
    JobSpec::from_steps(vec![Step::shell(command)])
}

/// Submits a one-step shell job and waits for it to end.
async fn run_one(manager: &JobManager, command: &str) -> Job {
    run_job(manager, shell_job(command)).await
}

/// How a [`Quirky`] executor's sandboxes differ from the fake executor's.
#[derive(Clone)]
enum Quirk {
    /// Steps panic (a bug in a backend).
    PanicOnExec,
    /// The workspace export never ends (a wedged backend).
    HangingExport,
    /// `destroy` waits for a permit of this semaphore (a slow container removal); each call
    /// is counted in `destroys`.
    GatedDestroy {
        gate: Arc<tokio::sync::Semaphore>,
        destroys: Arc<std::sync::atomic::AtomicUsize>,
    },
}

/// The fake executor with one [`Quirk`]; everything else is forwarded.
struct Quirky(FakeExecutor, Quirk);

struct QuirkySandbox(Box<dyn agent_core::Sandbox>, Quirk);

#[async_trait::async_trait]
#[deny(clippy::missing_trait_methods)]
impl agent_core::Executor for Quirky {
    fn name(&self) -> &str {
        "quirky"
    }
    fn capabilities(&self) -> agent_core::executor::Capabilities {
        self.0.capabilities()
    }
    async fn create(
        &self,
        spec: &agent_core::SandboxSpec,
    ) -> Result<Box<dyn agent_core::Sandbox>, agent_core::SandboxError> {
        Ok(Box::new(QuirkySandbox(
            self.0.create(spec).await?,
            self.1.clone(),
        )))
    }
    async fn reap(
        &self,
        live: &std::collections::HashSet<JobId>,
    ) -> Result<usize, agent_core::SandboxError> {
        self.0.reap(live).await
    }
    async fn reap_jobs(
        &self,
        jobs: &std::collections::HashSet<JobId>,
    ) -> Result<usize, agent_core::SandboxError> {
        self.0.reap_jobs(jobs).await
    }
    async fn sandbox_jobs(
        &self,
    ) -> Result<std::collections::HashSet<JobId>, agent_core::SandboxError> {
        self.0.sandbox_jobs().await
    }
    async fn ping(&self) -> Result<(), agent_core::SandboxError> {
        self.0.ping().await
    }
    async fn shutdown(&self) -> Result<(), agent_core::SandboxError> {
        self.0.shutdown().await
    }
}

#[async_trait::async_trait]
#[deny(clippy::missing_trait_methods)]
impl agent_core::Sandbox for QuirkySandbox {
    fn id(&self) -> &str {
        self.0.id()
    }
    async fn exec(
        &self,
        request: agent_core::ExecRequest,
        output: agent_core::OutputSink,
    ) -> Result<agent_core::StepResult, agent_core::SandboxError> {
        if matches!(self.1, Quirk::PanicOnExec) {
            panic!("backend bug")
        }
        self.0.exec(request, output).await
    }
    async fn put_file(
        &self,
        path: &str,
        content: bytes::Bytes,
    ) -> Result<(), agent_core::SandboxError> {
        self.0.put_file(path, content).await
    }
    async fn get_file(&self, path: &str) -> Result<bytes::Bytes, agent_core::SandboxError> {
        self.0.get_file(path).await
    }
    async fn export(&self) -> Result<agent_core::executor::TarStream, agent_core::SandboxError> {
        if matches!(self.1, Quirk::HangingExport) {
            return Ok(futures::stream::pending().boxed());
        }
        self.0.export().await
    }
    async fn list_files(
        &self,
        dir: &str,
        max: usize,
    ) -> Result<agent_core::executor::FileListing, agent_core::SandboxError> {
        self.0.list_files(dir, max).await
    }
    async fn connect(
        &self,
        port: u16,
    ) -> Result<agent_core::executor::SandboxStream, agent_core::SandboxError> {
        self.0.connect(port).await
    }
    fn service(&self, service: agent_core::Service) -> Option<agent_core::ServiceEndpoint> {
        self.0.service(service)
    }
    async fn destroy(&self) -> Result<(), agent_core::SandboxError> {
        if let Quirk::GatedDestroy { gate, destroys } = &self.1 {
            destroys.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _permit = gate.acquire().await;
        }
        self.0.destroy().await
    }
}

#[tokio::test]
async fn a_panic_while_running_fails_the_job_instead_of_leaving_it_running() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn JobStore> = Arc::new(MemoryStore::new());
    let manager = JobManager::builder(
        Arc::new(Quirky(FakeExecutor::new(), Quirk::PanicOnExec)),
        store.clone(),
    )
    .config(config(&dir))
    .start()
    .await
    .unwrap();
    let job = run_one(&manager, "true").await;
    let id = job.id;
    assert_ended(&job, JobStatus::Failed, "backend bug");
    let events = store.events(id, 0, 1000).await.unwrap();
    assert!(
        events.last().unwrap().is_final(),
        "the final status is logged"
    );
    assert_eq!(manager.stats().running, 0);
    assert!(sandboxes_gone(&manager).await, "{:?}", manager.stats());
    // The job is no longer live: a new one still runs.
    assert_eq!(run_one(&manager, "true").await.status, JobStatus::Failed);
}

#[tokio::test]
async fn a_wedged_export_cannot_hold_a_job_past_its_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let manager = JobManager::builder(
        Arc::new(Quirky(FakeExecutor::new(), Quirk::HangingExport)),
        Arc::new(MemoryStore::new()),
    )
    .config(JobManagerConfig {
        packaging_timeout: Duration::from_millis(200),
        ..config(&dir)
    })
    .start()
    .await
    .unwrap();
    // The job ends although its export never does.
    let spec = shell_job("true");
    let job = run_job(&manager, spec.with_job_timeout(Duration::from_secs(1))).await;
    assert_eq!(job.status, JobStatus::TimedOut);
    assert!(job.artifact.is_none());
    let events = manager.events(job.id, 0, 1000).await.unwrap();
    assert!(events.iter().any(
        |e| matches!(&e.kind, EventKind::Log { message } if message.contains("could not package"))
    ));
}

#[tokio::test]
async fn a_full_queue_refuses_new_jobs_until_it_drains() {
    let h = harness_with(Arc::new(MemoryStore::new()), None, |c| {
        c.max_concurrent_jobs = 1;
        c.max_queued_jobs = 2;
    })
    .await;
    let blocker = start_blocker(&h.manager).await;
    let spec = shell_job("true");
    let queued = [
        h.manager.submit(spec.clone()).await.unwrap(),
        h.manager.submit(spec.clone()).await.unwrap(),
    ];
    let err = h.manager.submit(spec.clone()).await.unwrap_err();
    assert!(matches!(err, Error::QueueFull { limit: 2 }), "{err}");
    assert!(err.is_retryable());
    h.manager.cancel(blocker).await.unwrap();
    for id in queued {
        assert_eq!(
            h.manager.wait(id).await.unwrap().status,
            JobStatus::Succeeded
        );
    }
    h.manager.submit(spec).await.unwrap();
}

#[tokio::test]
async fn an_impossible_worker_count_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let err = JobManager::builder(Arc::new(FakeExecutor::new()), Arc::new(MemoryStore::new()))
        .config(JobManagerConfig {
            max_concurrent_jobs: usize::MAX,
            ..config(&dir)
        })
        .start()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput { ref field, .. } if field == "max_concurrent_jobs"));
}

/// A manager on a [`Quirk::GatedDestroy`] executor with one worker and the gate closed, after
/// one job (`command`) finished: its sandbox's removal has begun and cannot end.
struct Gated {
    manager: JobManager,
    gate: Arc<tokio::sync::Semaphore>,
    job: Job,
}

async fn gated_job(dir: &tempfile::TempDir, command: &str) -> Gated {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let destroys = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let quirk = Quirk::GatedDestroy {
        gate: gate.clone(),
        destroys: destroys.clone(),
    };
    let manager = JobManager::builder(
        Arc::new(Quirky(FakeExecutor::new(), quirk)),
        Arc::new(MemoryStore::new()),
    )
    .config(JobManagerConfig {
        max_concurrent_jobs: 1,
        ..config(dir)
    })
    .start()
    .await
    .unwrap();
    let job = run_one(&manager, command).await;
    assert_eq!(job.status, JobStatus::Succeeded, "{:?}", job.error);
    let mut called = false;
    for _ in 0..1000 {
        called = destroys.load(std::sync::atomic::Ordering::SeqCst) == 1;
        if called {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(called, "destroy is called once");
    Gated { manager, gate, job }
}

#[tokio::test]
async fn the_final_status_is_published_before_the_sandbox_is_removed_which_still_counts() {
    let dir = tempfile::tempdir().unwrap();
    let Gated { manager, gate, job } = gated_job(&dir, "echo kept > out.txt").await;
    // The removal cannot finish (the gate is closed), yet the job is finished, stored with its
    // ZIP, and its final event is stored.
    let artifact = job.artifact.as_ref().expect("the ZIP is stored");
    assert!(manager
        .artifacts()
        .open(&artifact.path)
        .await
        .unwrap()
        .is_some());
    let events = manager.events(job.id, 0, 1000).await.unwrap();
    assert!(events.last().unwrap().is_final(), "{events:?}");
    // The sandbox is still there: counted, and holding the only worker.
    let stats = manager.stats();
    assert_eq!((stats.running, stats.live_sandboxes), (0, 1), "{stats:?}");
    let next = manager.submit(shell_job("true")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        manager.get(next).await.unwrap().status,
        JobStatus::Queued,
        "a job started while the previous sandbox was not yet removed"
    );
    assert_eq!(manager.stats().queued, 1);
    // Once the removal finishes, the worker is free and the count drops.
    gate.add_permits(100);
    let next = tokio::time::timeout(Duration::from_secs(60), manager.wait(next))
        .await
        .expect("the next job runs once the sandbox is removed")
        .unwrap();
    assert_eq!(next.status, JobStatus::Succeeded, "{:?}", next.error);
    assert!(sandboxes_gone(&manager).await, "{:?}", manager.stats());
    manager.shutdown(Duration::from_secs(10)).await.unwrap();
}

#[tokio::test]
async fn shutdown_waits_until_finished_jobs_sandboxes_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let Gated { manager, gate, .. } = gated_job(&dir, "true").await;
    let stopping = tokio::spawn({
        let manager = manager.clone();
        async move { manager.shutdown(Duration::from_secs(30)).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !stopping.is_finished(),
        "shutdown returned while a sandbox was still being removed"
    );
    assert_eq!(manager.stats().live_sandboxes, 1);
    gate.add_permits(100);
    tokio::time::timeout(Duration::from_secs(60), stopping)
        .await
        .expect("shutdown ends once the sandbox is removed")
        .unwrap()
        .unwrap();
    assert_eq!(manager.stats().live_sandboxes, 0);
}
