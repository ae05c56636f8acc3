//! The flow engine against every behaviour of PocketFlow (REFERENCE §3).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_core::flow::{
    Action, Batch, BatchFlow, BatchNode, CancellationToken, Ctx, DynNode, Flow, Node,
    ParallelBatchFlow, Params, PostNode,
};
use agent_core::{Error, Result};
use futures::future::BoxFuture;
use tokio::time::Instant;

/// The shared store of most tests: a log of what happened, plus some inputs.
#[derive(Default)]
struct Shared {
    log: Vec<String>,
    input: i64,
    output: i64,
    branch: &'static str,
    items: Vec<u32>,
    results: Vec<u32>,
}

/// Appends `name` to the log in post and returns `action` (or nothing: default).
struct Step {
    name: &'static str,
    action: Option<&'static str>,
}

impl Step {
    fn new(name: &'static str) -> Self {
        Step { name, action: None }
    }
    fn returning(name: &'static str, action: &'static str) -> Self {
        Step {
            name,
            action: Some(action),
        }
    }
}
impl PostNode<Shared> for Step {
    async fn post(&self, shared: &mut Shared, _ctx: &Ctx) -> Result<Action> {
        shared.log.push(self.name.to_string());
        Ok(self.action.map(Action::new).into())
    }
    fn name(&self) -> &str {
        self.name
    }
}

/// Runs `flow` on its own task and cancels it once `started` is notified; returns what the run
/// returned and the shared store it left.
async fn cancel_once_started(
    flow: Flow<Shared>,
    started: &tokio::sync::Notify,
) -> (Result<Action>, Shared) {
    let ctx = Ctx::new();
    let token = ctx.cancel_token().clone();
    let run = tokio::spawn(async move {
        let mut shared = Shared::default();
        let result = flow.run(&mut shared, &ctx).await;
        (result, shared)
    });
    started.notified().await;
    token.cancel();
    run.await.unwrap()
}

/// Records the order of its phases and the data passed between them.
struct Phases {
    seen: Arc<Mutex<Vec<String>>>,
}
impl Node<Shared> for Phases {
    type Prep = i64;
    type Exec = String;

    async fn prep(&self, shared: &mut Shared, _ctx: &Ctx) -> Result<i64> {
        self.seen
            .lock()
            .unwrap()
            .push(format!("prep {}", shared.input));
        Ok(shared.input * 10)
    }
    async fn exec(&self, prep: &i64, _ctx: &Ctx) -> Result<String> {
        self.seen.lock().unwrap().push(format!("exec {prep}"));
        Ok(format!("e{}", prep + 1))
    }
    async fn post(
        &self,
        shared: &mut Shared,
        prep: i64,
        exec: String,
        _ctx: &Ctx,
    ) -> Result<Action> {
        self.seen
            .lock()
            .unwrap()
            .push(format!("post {prep} {exec}"));
        shared.output = prep + 1;
        Ok(Action::new("done"))
    }
}

#[tokio::test]
async fn prep_exec_post_run_in_order_and_pass_data() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let node = Phases { seen: seen.clone() };
    let mut shared = Shared {
        input: 4,
        ..Shared::default()
    };
    // A single node, run directly.
    let action = node.run(&mut shared, &Ctx::new()).await.unwrap();
    assert_eq!(action, "done");
    assert_eq!(shared.output, 41);
    assert_eq!(*seen.lock().unwrap(), ["prep 4", "exec 40", "post 40 e41"]);

    // The same inside a flow; the flow's result is the last action.
    seen.lock().unwrap().clear();
    let mut flow = Flow::new();
    flow.add(Phases { seen: seen.clone() });
    shared.input = 2;
    assert_eq!(flow.run(&mut shared, &Ctx::new()).await.unwrap(), "done");
    assert_eq!(shared.output, 21);
    assert_eq!(*seen.lock().unwrap(), ["prep 2", "exec 20", "post 20 e21"]);
}

#[test]
fn default_names_and_actions() {
    assert_eq!(
        Node::name(&Phases {
            seen: Arc::default()
        }),
        "Phases"
    );
    assert_eq!(Action::default(), Action::DEFAULT);
    assert_eq!(Action::from(None), "default");
    assert!(Action::from(String::from("default")).is_default());
    assert_eq!(Action::from("x").to_string(), "x");
}

/// A node that overrides nothing but prep/exec: its action is absent.
struct Silent;
impl Node<Shared> for Silent {
    type Prep = ();
    type Exec = ();
    async fn prep(&self, shared: &mut Shared, _ctx: &Ctx) -> Result<()> {
        shared.log.push("silent".into());
        Ok(())
    }
    async fn exec(&self, _prep: &(), _ctx: &Ctx) -> Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn absent_action_is_default() {
    let mut flow = Flow::new();
    let a = flow.add(Silent);
    let b = flow.add(Step::new("b"));
    let c = flow.add(Step::new("c"));
    flow.connect(a, "other", c).unwrap();
    flow.connect_default(a, b).unwrap();
    let mut shared = Shared::default();
    let last = flow.run(&mut shared, &Ctx::new()).await.unwrap();
    assert_eq!(shared.log, ["silent", "b"]);
    assert!(last.is_default());
}

/// Fails its first `failures` attempts, counting every call of exec.
struct Flaky {
    failures: usize,
    attempts: usize,
    wait: Duration,
    calls: Arc<AtomicUsize>,
    times: Arc<Mutex<Vec<Instant>>>,
    fallback: Option<&'static str>,
    fallback_saw: Arc<Mutex<Option<String>>>,
    /// `ctx.attempt()` in each exec call, then in the fallback (as `100 + attempt`).
    seen_attempts: Arc<Mutex<Vec<u32>>>,
}

impl Flaky {
    fn new(failures: usize, attempts: usize) -> Self {
        Flaky {
            failures,
            attempts,
            wait: Duration::ZERO,
            calls: Arc::default(),
            times: Arc::default(),
            fallback: None,
            fallback_saw: Arc::default(),
            seen_attempts: Arc::default(),
        }
    }
}
impl Node<Shared> for Flaky {
    type Prep = ();
    type Exec = String;

    async fn prep(&self, _shared: &mut Shared, _ctx: &Ctx) -> Result<()> {
        Ok(())
    }
    async fn exec(&self, _prep: &(), ctx: &Ctx) -> Result<String> {
        self.seen_attempts.lock().unwrap().push(ctx.attempt());
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        self.times.lock().unwrap().push(Instant::now());
        if n <= self.failures {
            Err(Error::other(format!("attempt {n} failed")))
        } else {
            Ok(format!("ok on attempt {n}"))
        }
    }
    async fn exec_fallback(&self, _prep: &(), err: Error, ctx: &Ctx) -> Result<String> {
        self.seen_attempts.lock().unwrap().push(100 + ctx.attempt());
        *self.fallback_saw.lock().unwrap() = Some(err.to_string());
        match self.fallback {
            Some(v) => Ok(v.to_string()),
            None => Err(err),
        }
    }
    async fn post(
        &self,
        shared: &mut Shared,
        _prep: (),
        exec: String,
        _ctx: &Ctx,
    ) -> Result<Action> {
        shared.log.push(exec);
        Ok(Action::DEFAULT)
    }
    fn max_attempts(&self) -> usize {
        self.attempts
    }
    fn wait(&self) -> Duration {
        self.wait
    }
}

#[tokio::test]
async fn max_retries_is_max_attempts_the_total_number_of_attempts() {
    // Fails always: exec runs exactly 3 times, then the default fallback returns the last error.
    let node = Flaky::new(usize::MAX, 3);
    let calls = node.calls.clone();
    let saw = node.fallback_saw.clone();
    let err = node
        .run(&mut Shared::default(), &Ctx::new())
        .await
        .unwrap_err();
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(err.to_string(), "attempt 3 failed");
    assert_eq!(saw.lock().unwrap().as_deref(), Some("attempt 3 failed"));

    // Succeeds on the second of three attempts: two calls, the value reaches post.
    let node = Flaky::new(1, 3);
    let calls = node.calls.clone();
    let mut shared = Shared::default();
    node.run(&mut shared, &Ctx::new()).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(shared.log, ["ok on attempt 2"]);

    // The default is one attempt (no retry).
    let node = Flaky::new(1, 1);
    let calls = node.calls.clone();
    assert!(node.run(&mut Shared::default(), &Ctx::new()).await.is_err());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(Node::max_attempts(&Silent), 1);
    assert_eq!(Node::wait(&Silent), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn wait_separates_attempts() {
    let mut node = Flaky::new(2, 3);
    node.wait = Duration::from_secs(5);
    let times = node.times.clone();
    let start = Instant::now();
    node.run(&mut Shared::default(), &Ctx::new()).await.unwrap();
    let times = times.lock().unwrap().clone();
    assert_eq!(times.len(), 3);
    // The paused clock only moves by the sleeps the engine asked for.
    assert!(times[0] - start < Duration::from_secs(1));
    for pair in times.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(gap >= Duration::from_secs(5), "gap {gap:?}");
        assert!(gap < Duration::from_secs(6), "gap {gap:?}");
    }
    // No wait after the last attempt.
    assert!(Instant::now() - times[2] < Duration::from_secs(1));
}

#[tokio::test]
async fn exec_fallback_runs_after_the_last_failure_and_its_value_is_used() {
    let mut node = Flaky::new(usize::MAX, 2);
    node.fallback = Some("fallback value");
    let calls = node.calls.clone();
    let saw = node.fallback_saw.clone();
    let mut shared = Shared::default();
    let action = node.run(&mut shared, &Ctx::new()).await.unwrap();
    assert!(action.is_default());
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(saw.lock().unwrap().as_deref(), Some("attempt 2 failed"));
    assert_eq!(shared.log, ["fallback value"]);

    // Not called when an attempt succeeds.
    let mut node = Flaky::new(1, 2);
    node.fallback = Some("fallback value");
    let saw = node.fallback_saw.clone();
    node.run(&mut Shared::default(), &Ctx::new()).await.unwrap();
    assert!(saw.lock().unwrap().is_none());
}

#[tokio::test]
async fn max_retries_zero_runs_no_attempt_and_the_fallback_decides() {
    // PocketFlow's `for self.cur_retry in range(0)`: exec never runs. Without a fallback of its
    // own the node fails with a clear error (PocketFlow would hand post `None`).
    let node = Flaky::new(0, 0);
    let calls = node.calls.clone();
    let saw = node.fallback_saw.clone();
    let mut shared = Shared::default();
    let err = node.run(&mut shared, &Ctx::new()).await.unwrap_err();
    assert!(matches!(err, Error::InvalidInput { .. }), "{err:?}");
    assert!(err.to_string().contains("0 attempts"), "{err}");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert!(saw.lock().unwrap().is_some());
    assert!(shared.log.is_empty());

    // With a fallback, its value goes to post.
    let mut node = Flaky::new(0, 0);
    node.fallback = Some("no attempt");
    let calls = node.calls.clone();
    let mut shared = Shared::default();
    node.run(&mut shared, &Ctx::new()).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert_eq!(shared.log, ["no attempt"]);

    // The same for each item of a batch node.
    let node = Doubler::new(vec![], 0);
    let attempts = node.attempts.clone();
    let mut shared = Shared {
        items: vec![1, 2],
        ..Shared::default()
    };
    Batch::new(node)
        .run(&mut shared, &Ctx::new())
        .await
        .unwrap();
    assert!(attempts.lock().unwrap().is_empty());
    assert_eq!(shared.results, [1001, 1002]);
}

#[tokio::test]
async fn cur_retry_is_visible_to_exec_as_the_attempt_number() {
    // Fails twice, succeeds on the third of four attempts.
    let node = Flaky::new(2, 4);
    let seen = node.seen_attempts.clone();
    node.run(&mut Shared::default(), &Ctx::new()).await.unwrap();
    assert_eq!(*seen.lock().unwrap(), [1, 2, 3]);

    // Always fails: the fallback sees the last attempt's number.
    let mut node = Flaky::new(usize::MAX, 3);
    node.fallback = Some("fell back");
    let seen = node.seen_attempts.clone();
    node.run(&mut Shared::default(), &Ctx::new()).await.unwrap();
    assert_eq!(*seen.lock().unwrap(), [1, 2, 3, 103]);

    // Outside exec, and on a fresh context, it is 1.
    assert_eq!(Ctx::new().attempt(), 1);
}

/// A node whose `exec` runs `inner` (a node of one attempt) with the context it was given, and
/// fails its own first attempt.
struct Nesting {
    inner: Flaky,
}
impl Node<Shared> for Nesting {
    type Prep = ();
    type Exec = ();
    async fn prep(&self, _shared: &mut Shared, _ctx: &Ctx) -> Result<()> {
        Ok(())
    }
    async fn exec(&self, _prep: &(), ctx: &Ctx) -> Result<()> {
        self.inner.run(&mut Shared::default(), ctx).await?;
        if ctx.attempt() < 2 {
            return Err(Error::other("the outer node's first attempt fails"));
        }
        Ok(())
    }
    fn max_attempts(&self) -> usize {
        2
    }
}

#[tokio::test]
async fn a_node_run_inside_another_nodes_retry_counts_its_own_attempts() {
    // The inner node always fails and falls back; it runs in both attempts of the outer node,
    // and each time its exec is attempt 1 and its fallback sees attempt 1.
    let mut inner = Flaky::new(usize::MAX, 1);
    inner.fallback = Some("fell back");
    let seen = inner.seen_attempts.clone();
    Nesting { inner }
        .run(&mut Shared::default(), &Ctx::new())
        .await
        .unwrap();
    assert_eq!(*seen.lock().unwrap(), [1, 101, 1, 101]);
}

/// Returns the action stored in `shared.branch`.
struct Branch;
impl Node<Shared> for Branch {
    type Prep = &'static str;
    type Exec = &'static str;
    async fn prep(&self, shared: &mut Shared, _ctx: &Ctx) -> Result<&'static str> {
        Ok(shared.branch)
    }
    async fn exec(&self, branch: &&'static str, _ctx: &Ctx) -> Result<&'static str> {
        Ok(branch)
    }
    async fn post(
        &self,
        shared: &mut Shared,
        _p: &'static str,
        e: &'static str,
        _ctx: &Ctx,
    ) -> Result<Action> {
        shared.log.push("branch".into());
        Ok(Action::new(e))
    }
}

fn branching_flow() -> Flow<Shared> {
    let mut flow = Flow::new();
    let branch = flow.add(Branch);
    let left = flow.add(Step::returning("left", "left_done"));
    let right = flow.add(Step::new("right"));
    let end = flow.add(Step::returning("end", "finished"));
    flow.connect(branch, "left", left).unwrap();
    flow.connect(branch, "right", right).unwrap();
    flow.connect_default(right, end).unwrap();
    flow
}

#[tokio::test]
async fn successors_follow_the_action() {
    let flow = branching_flow();
    for (branch, log, last) in [
        ("left", vec!["branch", "left"], "left_done"),
        ("right", vec!["branch", "right", "end"], "finished"),
    ] {
        let mut shared = Shared {
            branch,
            ..Shared::default()
        };
        let action = flow.run(&mut shared, &Ctx::new()).await.unwrap();
        assert_eq!(shared.log, log);
        assert_eq!(action, last);
    }
}

#[tokio::test]
async fn a_missing_successor_ends_the_flow_with_that_action() {
    let flow = branching_flow();
    let mut shared = Shared {
        branch: "nowhere",
        ..Shared::default()
    };
    let action = flow.run(&mut shared, &Ctx::new()).await.unwrap();
    assert_eq!(shared.log, ["branch"]);
    assert_eq!(action, "nowhere");
}

#[tokio::test]
async fn set_start_chooses_the_first_node() {
    let mut flow = Flow::new();
    let a = flow.add(Step::new("a"));
    let b = flow.add(Step::new("b"));
    flow.connect_default(b, a).unwrap();
    flow.set_start(b).unwrap();
    let mut shared = Shared::default();
    flow.run(&mut shared, &Ctx::new()).await.unwrap();
    assert_eq!(shared.log, ["b", "a"]);
}

#[tokio::test]
async fn flows_nest_and_the_inner_last_action_drives_the_outer() {
    let mut outer = Flow::new();
    let before = outer.add(Step::new("before"));
    let inner = outer.add(branching_flow().with_name("inner"));
    let after_left = outer.add(Step::new("after left"));
    let after_right = outer.add(Step::new("after right"));
    outer.connect_default(before, inner).unwrap();
    outer.connect(inner, "left_done", after_left).unwrap();
    outer.connect(inner, "finished", after_right).unwrap();

    let mut shared = Shared {
        branch: "left",
        ..Shared::default()
    };
    outer.run(&mut shared, &Ctx::new()).await.unwrap();
    assert_eq!(shared.log, ["before", "branch", "left", "after left"]);

    let mut shared = Shared {
        branch: "right",
        ..Shared::default()
    };
    outer.run(&mut shared, &Ctx::new()).await.unwrap();
    assert_eq!(
        shared.log,
        ["before", "branch", "right", "end", "after right"]
    );

    // Nested two deep, through the object-safe form.
    let mut outermost: Flow<Shared> = Flow::new();
    let nested: Arc<dyn DynNode<Shared>> = Arc::new(outer);
    assert_eq!(nested.node_name(), "flow");
    outermost.add_shared(nested);
    let mut shared = Shared {
        branch: "left",
        ..Shared::default()
    };
    let last = outermost.run(&mut shared, &Ctx::new()).await.unwrap();
    assert!(last.is_default()); // "after left" returns the default action
    assert_eq!(shared.log.len(), 4);
}

/// Counts its runs; with a token, cancels it on run number `cancel_at`.
struct Looper {
    runs: Arc<AtomicUsize>,
    cancel_at: Option<(usize, CancellationToken)>,
}
impl PostNode<Shared> for Looper {
    async fn post(&self, _shared: &mut Shared, _ctx: &Ctx) -> Result<Action> {
        let n = self.runs.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some((at, token)) = &self.cancel_at {
            if n == *at {
                token.cancel();
            }
        }
        Ok(Action::new("again"))
    }
}

/// Runs `flow` with one [`Looper`] looping on itself (its `cancel_at` as given, the run's
/// cancellation its token): how the run ended and how many times the node ran.
async fn run_self_loop(
    mut flow: Flow<Shared>,
    cancel_at: Option<(usize, CancellationToken)>,
) -> (Result<Action>, usize) {
    let ctx = cancel_at
        .as_ref()
        .map_or_else(Ctx::new, |(_, token)| Ctx::with_cancel(token.clone()));
    let runs = Arc::new(AtomicUsize::new(0));
    let node = flow.add(Looper {
        runs: runs.clone(),
        cancel_at,
    });
    flow.connect(node, "again", node).unwrap();
    let result = flow.run(&mut Shared::default(), &ctx).await;
    (result, runs.load(Ordering::SeqCst))
}

#[tokio::test]
async fn a_self_loop_hits_the_transition_limit() {
    let (err, runs) = run_self_loop(Flow::new().with_transition_limit(50), None).await;
    assert!(
        matches!(err, Err(Error::TransitionLimitExceeded { limit: 50 })),
        "{err:?}"
    );
    assert_eq!(runs, 50);

    // The default limit.
    let flow = Flow::new();
    assert_eq!(
        flow.transition_limit(),
        Flow::<Shared>::DEFAULT_TRANSITION_LIMIT
    );
    let (err, runs) = run_self_loop(flow, None).await;
    assert!(
        matches!(err, Err(Error::TransitionLimitExceeded { limit: 10_000 })),
        "{err:?}"
    );
    assert_eq!(runs, 10_000);
}

#[tokio::test]
async fn cancellation_stops_a_loop_between_nodes() {
    let (err, runs) = run_self_loop(Flow::new(), Some((7, CancellationToken::new()))).await;
    assert!(matches!(err, Err(Error::Cancelled)), "{err:?}");
    assert_eq!(runs, 7);
}

/// An exec that never finishes on its own (it does not watch the token).
struct Hangs {
    started: Arc<tokio::sync::Notify>,
    fell_back: Arc<AtomicUsize>,
}
impl Node<Shared> for Hangs {
    type Prep = ();
    type Exec = ();
    async fn prep(&self, _shared: &mut Shared, _ctx: &Ctx) -> Result<()> {
        Ok(())
    }
    async fn exec(&self, _prep: &(), _ctx: &Ctx) -> Result<()> {
        self.started.notify_one();
        std::future::pending::<()>().await;
        Ok(())
    }
    async fn exec_fallback(&self, _prep: &(), err: Error, _ctx: &Ctx) -> Result<()> {
        self.fell_back.fetch_add(1, Ordering::SeqCst);
        Err(err)
    }
    fn max_attempts(&self) -> usize {
        3
    }
    async fn post(&self, shared: &mut Shared, _p: (), _e: (), _ctx: &Ctx) -> Result<Action> {
        shared.log.push("hangs finished".into());
        Ok(Action::DEFAULT)
    }
}

#[tokio::test]
async fn cancellation_reaches_a_running_exec() {
    let started = Arc::new(tokio::sync::Notify::new());
    let mut flow = Flow::new();
    let first = flow.add(Step::new("first"));
    let fell_back = Arc::new(AtomicUsize::new(0));
    let hangs = flow.add(Hangs {
        started: started.clone(),
        fell_back: fell_back.clone(),
    });
    let never = flow.add(Step::new("never"));
    flow.connect_default(first, hangs).unwrap();
    flow.connect_default(hangs, never).unwrap();

    let (result, shared) = cancel_once_started(flow, &started).await;
    assert!(matches!(result, Err(Error::Cancelled)), "{result:?}");
    assert_eq!(shared.log, ["first"]);
    // A cancelled attempt is neither retried nor handed to the fallback.
    assert_eq!(fell_back.load(Ordering::SeqCst), 0);
}

/// Waits for cancellation inside `exec` and reports it: a node that cleans up after itself.
struct ReportsCancellation {
    started: Arc<tokio::sync::Notify>,
}
impl Node<Shared> for ReportsCancellation {
    type Prep = ();
    type Exec = &'static str;
    async fn prep(&self, _shared: &mut Shared, _ctx: &Ctx) -> Result<()> {
        Ok(())
    }
    async fn exec(&self, _prep: &(), ctx: &Ctx) -> Result<&'static str> {
        self.started.notify_one();
        ctx.cancelled().await;
        Ok("stopped cleanly")
    }
    async fn post(
        &self,
        shared: &mut Shared,
        _p: (),
        e: &'static str,
        _ctx: &Ctx,
    ) -> Result<Action> {
        shared.log.push(e.into());
        Ok(Action::DEFAULT)
    }
    fn interruptible(&self) -> bool {
        false
    }
}

#[tokio::test]
async fn a_non_interruptible_exec_finishes_and_is_posted_then_the_flow_stops() {
    let started = Arc::new(tokio::sync::Notify::new());
    let mut flow = Flow::new();
    let node = flow.add(ReportsCancellation {
        started: started.clone(),
    });
    let never = flow.add(Step::new("never"));
    flow.connect_default(node, never).unwrap();
    let (result, shared) = cancel_once_started(flow, &started).await;
    assert!(matches!(result, Err(Error::Cancelled)), "{result:?}");
    assert_eq!(shared.log, ["stopped cleanly"]);
}

#[tokio::test(start_paused = true)]
async fn cancellation_interrupts_the_wait_between_attempts() {
    let mut node = Flaky::new(usize::MAX, 5);
    node.wait = Duration::from_secs(3600);
    let calls = node.calls.clone();
    let ctx = Ctx::new();
    let token = ctx.cancel_token().clone();
    let run = tokio::spawn(async move { node.run(&mut Shared::default(), &ctx).await });
    while calls.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    token.cancel();
    let start = Instant::now();
    let result = run.await.unwrap();
    assert!(matches!(result, Err(Error::Cancelled)), "{result:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(Instant::now() - start < Duration::from_secs(3600));
}

#[tokio::test]
async fn a_cancelled_context_runs_nothing() {
    let ctx = Ctx::new();
    ctx.cancel_token().cancel();
    let mut flow = Flow::new();
    flow.add(Step::new("a"));
    let mut shared = Shared::default();
    let result = flow.run(&mut shared, &ctx).await;
    assert!(matches!(result, Err(Error::Cancelled)));
    assert!(shared.log.is_empty());
    // A child context follows its parent.
    assert!(ctx.child().is_cancelled());
}

/// Doubles each item; fails the first attempt of every item listed in `flaky`.
struct Doubler {
    flaky: Vec<u32>,
    attempts: Arc<Mutex<Vec<u32>>>,
    max_attempts: usize,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
}

impl Doubler {
    fn new(flaky: Vec<u32>, max_attempts: usize) -> Self {
        Doubler {
            flaky,
            attempts: Arc::default(),
            max_attempts,
            in_flight: Arc::default(),
            max_in_flight: Arc::default(),
        }
    }
}
impl BatchNode<Shared> for Doubler {
    type Item = u32;
    type Exec = u32;

    async fn prep(&self, shared: &mut Shared, _ctx: &Ctx) -> Result<Vec<u32>> {
        Ok(shared.items.clone())
    }
    async fn exec(&self, item: &u32, _ctx: &Ctx) -> Result<u32> {
        let first_attempt = {
            let mut attempts = self.attempts.lock().unwrap();
            attempts.push(*item);
            attempts.iter().filter(|i| *i == item).count() == 1
        };
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        // Later items finish sooner, so completion order differs from input order.
        tokio::time::sleep(Duration::from_millis(u64::from(100 - *item))).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        if first_attempt && self.flaky.contains(item) {
            return Err(Error::other(format!("item {item} flaked")));
        }
        Ok(item * 2)
    }
    async fn exec_fallback(&self, item: &u32, _err: Error, _ctx: &Ctx) -> Result<u32> {
        Ok(1000 + item)
    }
    async fn post(
        &self,
        shared: &mut Shared,
        items: Vec<u32>,
        results: Vec<u32>,
        _ctx: &Ctx,
    ) -> Result<Action> {
        assert_eq!(items, shared.items);
        shared.results = results;
        Ok(Action::new("batched"))
    }
    fn max_attempts(&self) -> usize {
        self.max_attempts
    }
}

#[tokio::test(start_paused = true)]
async fn batch_node_runs_exec_per_item_with_retries_in_order() {
    let node = Doubler::new(vec![2, 4], 2);
    let attempts = node.attempts.clone();
    let max_in_flight = node.max_in_flight.clone();
    let mut flow = Flow::new();
    flow.add(Batch::new(node));
    let mut shared = Shared {
        items: vec![1, 2, 3, 4, 5],
        ..Shared::default()
    };
    let action = flow.run(&mut shared, &Ctx::new()).await.unwrap();
    assert_eq!(action, "batched");
    assert_eq!(shared.results, [2, 4, 6, 8, 10]);
    // One item at a time, each flaky item retried right away.
    assert_eq!(*attempts.lock().unwrap(), [1, 2, 2, 3, 4, 4, 5]);
    assert_eq!(max_in_flight.load(Ordering::SeqCst), 1);

    // With a single attempt the fallback answers for the flaky items.
    let mut shared = Shared {
        items: vec![1, 2, 3],
        ..Shared::default()
    };
    Batch::new(Doubler::new(vec![2], 1))
        .run(&mut shared, &Ctx::new())
        .await
        .unwrap();
    assert_eq!(shared.results, [2, 1002, 6]);

    // No items: post gets empty lists.
    let mut shared = Shared::default();
    Batch::new(Doubler::new(vec![], 1))
        .run(&mut shared, &Ctx::new())
        .await
        .unwrap();
    assert!(shared.results.is_empty());
}

#[tokio::test(start_paused = true)]
async fn parallel_batch_runs_items_concurrently_within_the_bound_in_order() {
    let node = Doubler::new(vec![3, 7], 2);
    let attempts = node.attempts.clone();
    let max_in_flight = node.max_in_flight.clone();
    let node = Batch::new(node).with_concurrency(3);
    assert_eq!(node.concurrency(), 3);
    let mut shared = Shared {
        items: (1..=10).collect(),
        ..Shared::default()
    };
    node.run(&mut shared, &Ctx::new()).await.unwrap();
    assert_eq!(shared.results, (1..=10).map(|i| i * 2).collect::<Vec<_>>());
    let max = max_in_flight.load(Ordering::SeqCst);
    assert!(max > 1 && max <= 3, "max in flight {max}");
    assert_eq!(attempts.lock().unwrap().len(), 12);
}

#[tokio::test]
async fn parallel_batch_fails_when_an_item_fails_for_good() {
    struct Fails;
    impl BatchNode<Shared> for Fails {
        type Item = u32;
        type Exec = u32;
        async fn prep(&self, _shared: &mut Shared, _ctx: &Ctx) -> Result<Vec<u32>> {
            Ok(vec![1, 2, 3])
        }
        async fn exec(&self, item: &u32, _ctx: &Ctx) -> Result<u32> {
            if *item == 2 {
                Err(Error::other("two"))
            } else {
                Ok(*item)
            }
        }
    }
    let err = Batch::new(Fails)
        .with_concurrency(2)
        .run(&mut Shared::default(), &Ctx::new())
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "two");
}

/// Logs `NAME n base` from the params it runs with, checking that every phase sees the same.
struct UsesParam(&'static str);

fn param_line(name: &str, params: &Params) -> String {
    let n = params.get("n").map_or("-".to_string(), |v| v.to_string());
    let base = params.get_str("base").unwrap_or("-");
    format!("{name} {n} {base}")
}

impl Node<Shared> for UsesParam {
    type Prep = String;
    type Exec = String;
    async fn prep(&self, _shared: &mut Shared, ctx: &Ctx) -> Result<String> {
        Ok(param_line(self.0, ctx.params()))
    }
    async fn exec(&self, prep: &String, ctx: &Ctx) -> Result<String> {
        assert_eq!(*prep, param_line(self.0, ctx.params()));
        Ok(prep.clone())
    }
    async fn post(
        &self,
        shared: &mut Shared,
        prep: String,
        e: String,
        ctx: &Ctx,
    ) -> Result<Action> {
        assert_eq!(prep, param_line(self.0, ctx.params()));
        shared.log.push(e);
        Ok(Action::DEFAULT)
    }
}

fn n_sets(ns: &[u32]) -> Vec<Params> {
    ns.iter().map(|n| Params::new().with("n", *n)).collect()
}

#[tokio::test]
async fn batch_flow_runs_the_flow_once_per_parameter_set() {
    let mut inner = Flow::new();
    let a = inner.add(UsesParam("a"));
    let b = inner.add(UsesParam("b"));
    inner.connect_default(a, b).unwrap();
    let batch = BatchFlow::new(inner, |shared: &mut Shared, _ctx: &Ctx| {
        Ok(n_sets(&shared.items))
    })
    .with_name("per_item");
    assert_eq!(
        batch.flow().transition_limit(),
        Flow::<Shared>::DEFAULT_TRANSITION_LIMIT
    );

    let mut outer = Flow::new();
    let batch = outer.add(batch);
    let end = outer.add(Step::new("end"));
    outer.connect_default(batch, end).unwrap();

    let mut shared = Shared {
        items: vec![7, 8, 9],
        ..Shared::default()
    };
    outer.run(&mut shared, &Ctx::new()).await.unwrap();
    assert_eq!(
        shared.log,
        ["a 7 -", "b 7 -", "a 8 -", "b 8 -", "a 9 -", "b 9 -", "end"]
    );
}

#[tokio::test]
async fn params_are_handed_from_a_flow_to_its_nodes() {
    // PocketFlow's flow.set_params(p): every node of the flow runs with p, in every phase.
    let mut flow = Flow::new().with_params(Params::new().with("n", 1).with("base", "own"));
    let a = flow.add(UsesParam("a"));
    let b = flow.add(UsesParam("b"));
    flow.connect_default(a, b).unwrap();
    assert_eq!(flow.params().len(), 2);
    let mut shared = Shared::default();
    flow.run(&mut shared, &Ctx::new()).await.unwrap();
    assert_eq!(shared.log, ["a 1 own", "b 1 own"]);

    // Nested: the parent's params reach the inner flow's nodes, over the inner flow's own.
    let mut outer = Flow::new().with_params(Params::new().with("n", 2));
    let inner = outer.add(flow.clone());
    let c = outer.add(UsesParam("c"));
    outer.connect_default(inner, c).unwrap();
    let mut shared = Shared::default();
    outer.run(&mut shared, &Ctx::new()).await.unwrap();
    assert_eq!(shared.log, ["a 2 own", "b 2 own", "c 2 -"]);

    // A node run on its own sees the params of its context.
    let mut shared = Shared::default();
    let ctx = Ctx::new().with_params(Params::new().with("n", 3));
    UsesParam("alone").run(&mut shared, &ctx).await.unwrap();
    assert_eq!(shared.log, ["alone 3 -"]);
}

#[tokio::test]
async fn batch_flow_merges_each_parameter_set_over_the_batch_flows_params() {
    // PocketFlow: `self._orch(shared, {**self.params, **bp})` for each bp.
    let mut inner = Flow::new();
    inner.add(UsesParam("run"));
    let batch = BatchFlow::new(inner, |_shared: &mut Shared, ctx: &Ctx| {
        // The batch flow's prep sees its own params too.
        assert_eq!(ctx.params().get_str("base"), Some("outer"));
        Ok(vec![
            Params::new().with("n", 1),
            Params::new().with("n", 2).with("base", "item"),
            Params::new(),
        ])
    })
    .with_post(|shared: &mut Shared, sets: Vec<Params>, _ctx: &Ctx| {
        shared.log.push(format!("post {}", sets.len()));
        Ok(Action::new("merged"))
    });
    let mut outer = Flow::new().with_params(Params::new().with("n", 0).with("base", "outer"));
    let batch = outer.add(batch);
    let end = outer.add(UsesParam("end"));
    outer.connect(batch, "merged", end).unwrap();
    let mut shared = Shared::default();
    outer.run(&mut shared, &Ctx::new()).await.unwrap();
    assert_eq!(
        shared.log,
        [
            "run 1 outer",
            "run 2 item",
            "run 0 outer",
            "post 3",
            "end 0 outer"
        ]
    );
}

/// The child state of one run of a parallel batch flow.
#[derive(Debug, Default)]
struct Child {
    item: u32,
    log: Vec<String>,
}

/// Sleeps `100 - item` ms (later items finish first), tracking how many runs are in flight.
struct ChildWork {
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
    finished: Arc<Mutex<Vec<u32>>>,
}

impl Node<Child> for ChildWork {
    type Prep = (u32, String);
    type Exec = String;
    async fn prep(&self, child: &mut Child, ctx: &Ctx) -> Result<(u32, String)> {
        Ok((child.item, param_line("work", ctx.params())))
    }
    async fn exec(&self, prep: &(u32, String), _ctx: &Ctx) -> Result<String> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(u64::from(100 - prep.0))).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        if prep.0 == 13 {
            return Err(Error::other("item 13 failed"));
        }
        self.finished.lock().unwrap().push(prep.0);
        Ok(prep.1.clone())
    }
    async fn post(
        &self,
        child: &mut Child,
        prep: (u32, String),
        e: String,
        _: &Ctx,
    ) -> Result<Action> {
        child.log.push(e);
        Ok(if prep.0 % 2 == 0 { "even" } else { "odd" }.into())
    }
}

fn child_flow(work: ChildWork) -> Flow<Child> {
    let mut flow = Flow::new();
    let work = flow.add(work);
    let again = flow.add(UsesChildParam);
    flow.connect(work, "even", again).unwrap();
    flow
}

/// Logs the child's params a second time and returns "twice".
struct UsesChildParam;

impl Node<Child> for UsesChildParam {
    type Prep = String;
    type Exec = ();
    async fn prep(&self, _child: &mut Child, ctx: &Ctx) -> Result<String> {
        Ok(param_line("again", ctx.params()))
    }
    async fn exec(&self, _prep: &String, _ctx: &Ctx) -> Result<()> {
        Ok(())
    }
    async fn post(&self, child: &mut Child, prep: String, _e: (), _: &Ctx) -> Result<Action> {
        child.log.push(prep);
        Ok("twice".into())
    }
}

fn work() -> (ChildWork, Arc<AtomicUsize>, Arc<Mutex<Vec<u32>>>) {
    let max_in_flight = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(Mutex::new(Vec::new()));
    let node = ChildWork {
        in_flight: Arc::default(),
        max_in_flight: max_in_flight.clone(),
        finished: finished.clone(),
    };
    (node, max_in_flight, finished)
}

fn split_items(shared: &mut Shared, _ctx: &Ctx) -> Result<Vec<(Child, Params)>> {
    Ok(shared
        .items
        .iter()
        .map(|&item| {
            let child = Child {
                item,
                log: Vec::new(),
            };
            (child, Params::new().with("n", item))
        })
        .collect())
}

#[tokio::test(start_paused = true)]
async fn parallel_batch_flow_runs_the_sub_flows_concurrently_on_child_states() {
    let (node, max_in_flight, finished) = work();
    let batch = ParallelBatchFlow::new(
        child_flow(node),
        split_items,
        |shared: &mut Shared, children: Vec<(Child, Action)>, _ctx: &Ctx| {
            // Merged back in input order, each with its run's last action.
            for (child, action) in children {
                shared.results.push(child.item);
                shared
                    .log
                    .push(format!("{} {action}: {}", child.item, child.log.join(", ")));
            }
            Ok(Action::new("joined"))
        },
    )
    .with_name("fan_out");
    assert_eq!(batch.concurrency(), usize::MAX);
    assert_eq!(
        batch.flow().transition_limit(),
        Flow::<Child>::DEFAULT_TRANSITION_LIMIT
    );

    let mut outer = Flow::new().with_params(Params::new().with("base", "outer"));
    let fan_out = outer.add(batch);
    let end = outer.add(Step::new("end"));
    outer.connect(fan_out, "joined", end).unwrap();
    let mut shared = Shared {
        items: vec![1, 2, 3, 4],
        ..Shared::default()
    };
    outer.run(&mut shared, &Ctx::new()).await.unwrap();
    // All four sub-flows were in flight at once (PocketFlow's gather), and they finished in
    // another order than they started.
    assert_eq!(max_in_flight.load(Ordering::SeqCst), 4);
    assert_eq!(*finished.lock().unwrap(), [4, 3, 2, 1]);
    assert_eq!(shared.results, [1, 2, 3, 4]);
    assert_eq!(
        shared.log,
        [
            "1 odd: work 1 outer",
            "2 twice: work 2 outer, again 2 outer",
            "3 odd: work 3 outer",
            "4 twice: work 4 outer, again 4 outer",
            "end",
        ]
    );

    // Bounded: at most two at a time.
    let (node, max_in_flight, _) = work();
    let bounded = ParallelBatchFlow::new(
        child_flow(node),
        split_items,
        |shared: &mut Shared, children: Vec<(Child, Action)>, _: &Ctx| {
            shared.results = children.iter().map(|(c, _)| c.item).collect();
            Ok(Action::DEFAULT)
        },
    )
    .with_concurrency(2);
    let mut shared = Shared {
        items: (1..=9).collect(),
        ..Shared::default()
    };
    bounded.run(&mut shared, &Ctx::new()).await.unwrap();
    assert_eq!(max_in_flight.load(Ordering::SeqCst), 2);
    assert_eq!(shared.results, (1..=9).collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn parallel_batch_flow_fails_when_a_sub_flow_fails() {
    let (node, _, finished) = work();
    let merged = Arc::new(AtomicUsize::new(0));
    let merged_in_post = merged.clone();
    let batch = ParallelBatchFlow::new(
        child_flow(node),
        split_items,
        move |_: &mut Shared, _: Vec<(Child, Action)>, _: &Ctx| {
            merged_in_post.fetch_add(1, Ordering::SeqCst);
            Ok(Action::DEFAULT)
        },
    );
    // Item 13 fails after 87 ms, before items 1 and 2 (99 and 98 ms) finish: they are stopped.
    let mut shared = Shared {
        items: vec![1, 2, 13, 50],
        ..Shared::default()
    };
    let err = batch.run(&mut shared, &Ctx::new()).await.unwrap_err();
    assert_eq!(err.to_string(), "item 13 failed");
    assert_eq!(*finished.lock().unwrap(), [50]);
    assert_eq!(merged.load(Ordering::SeqCst), 0);
}

/// A composite of its own: runs its inner flow twice. Implements the object-safe node trait
/// directly, with no phases to fake.
struct Twice(Flow<Shared>);

impl DynNode<Shared> for Twice {
    fn run_dyn<'a>(
        &'a self,
        shared: &'a mut Shared,
        ctx: &'a Ctx,
    ) -> BoxFuture<'a, Result<Action>> {
        Box::pin(async move {
            self.0.run(shared, ctx).await?;
            self.0.run(shared, ctx).await
        })
    }
    fn node_name(&self) -> &str {
        "twice"
    }
}

#[tokio::test]
async fn composites_implement_the_object_safe_node_trait_directly() {
    let mut inner = Flow::new();
    inner.add(Step::returning("inner", "inner_done"));
    let mut flow = Flow::new();
    let twice = flow.add(Twice(inner));
    let after = flow.add(Step::new("after"));
    flow.connect(twice, "inner_done", after).unwrap();
    let mut shared = Shared::default();
    flow.run(&mut shared, &Ctx::new()).await.unwrap();
    assert_eq!(shared.log, ["inner", "inner", "after"]);
    assert!(format!("{flow:?}").contains("twice"));
}

#[tokio::test]
async fn a_flows_own_prep_and_post_choose_the_action_its_parent_follows() {
    // PocketFlow: Flow._run = prep → _orch → post, and post's return is the flow's action.
    let inner = branching_flow()
        .with_name("inner")
        .with_prep(|shared: &mut Shared, _ctx: &Ctx| {
            shared.log.push("inner prep".into());
            shared.branch = "right";
            Ok(())
        })
        .with_post(|shared: &mut Shared, last: Action, _ctx: &Ctx| {
            shared.log.push(format!("inner post saw {last}"));
            Ok(Action::new("from_post"))
        });
    let mut outer = Flow::new();
    let inner = outer.add(inner);
    let followed = outer.add(Step::new("followed"));
    let not_followed = outer.add(Step::new("not followed"));
    outer.connect(inner, "from_post", followed).unwrap();
    outer.connect(inner, "finished", not_followed).unwrap();
    let mut shared = Shared {
        branch: "left",
        ..Shared::default()
    };
    let last = outer.run(&mut shared, &Ctx::new()).await.unwrap();
    assert!(last.is_default());
    assert_eq!(
        shared.log,
        [
            "inner prep",
            "branch",
            "right",
            "end",
            "inner post saw finished",
            "followed"
        ]
    );

    // An error in the hook is the flow's error.
    let failing = Flow::new()
        .with_post(|_: &mut Shared, _: Action, _: &Ctx| Err(Error::other("post hook failed")));
    let mut failing = failing;
    failing.add(Step::new("a"));
    let err = failing
        .run(&mut Shared::default(), &Ctx::new())
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "post hook failed");
}

#[tokio::test]
async fn empty_action_is_default() {
    assert!(Action::new("").is_default());
    assert!(Action::from(String::new()).is_default());
    assert_eq!(Action::from(""), Action::DEFAULT);
    // A node returning "" follows the default successor, as PocketFlow's `action or "default"`.
    let mut flow = Flow::new();
    let a = flow.add(Step::returning("a", ""));
    let b = flow.add(Step::new("b"));
    let other = flow.add(Step::new("other"));
    flow.connect_default(a, b).unwrap();
    flow.connect(a, "other", other).unwrap();
    let mut shared = Shared::default();
    flow.run(&mut shared, &Ctx::new()).await.unwrap();
    assert_eq!(shared.log, ["a", "b"]);
    // And connecting on "" connects on the default action.
    let mut flow = Flow::new();
    let a = flow.add(Step::new("a"));
    let b = flow.add(Step::new("b"));
    flow.connect(a, "", b).unwrap();
    let mut shared = Shared::default();
    flow.run(&mut shared, &Ctx::new()).await.unwrap();
    assert_eq!(shared.log, ["a", "b"]);
}

#[tokio::test]
async fn bad_graphs_are_typed_errors() {
    let empty: Flow<Shared> = Flow::new();
    let err = empty.run(&mut Shared::default(), &Ctx::new()).await;
    assert!(matches!(err, Err(Error::InvalidInput { .. })), "{err:?}");

    let mut one = Flow::new();
    let a = one.add(Step::new("a"));
    let mut two: Flow<Shared> = Flow::new();
    let b = two.add(Step::new("b"));
    assert!(matches!(
        one.connect(a, "x", b),
        Err(Error::InvalidInput { .. })
    ));
    assert!(matches!(
        two.connect_default(a, b),
        Err(Error::InvalidInput { .. })
    ));
    assert!(matches!(one.set_start(b), Err(Error::InvalidInput { .. })));
}

mod spans {
    //! A minimal subscriber that records the `node` spans and the attempt events.
    use super::*;
    use std::sync::atomic::AtomicU64;
    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Metadata, Subscriber};

    #[derive(Default)]
    struct Recorder {
        next: AtomicU64,
        node_spans: Mutex<Vec<String>>,
        attempts: Mutex<Vec<u64>>,
    }

    #[derive(Default)]
    struct Fields {
        name: Option<String>,
        attempt: Option<u64>,
    }

    struct Handle(Arc<Recorder>);

    impl Visit for Fields {
        fn record_str(&mut self, field: &Field, value: &str) {
            if field.name() == "name" {
                self.name = Some(value.to_string());
            }
        }
        fn record_u64(&mut self, field: &Field, value: u64) {
            if field.name() == "attempt" {
                self.attempt = Some(value);
            }
        }
        fn record_i64(&mut self, field: &Field, value: i64) {
            if field.name() == "attempt" {
                self.attempt = u64::try_from(value).ok();
            }
        }
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            if field.name() == "name" {
                self.name = Some(format!("{value:?}"));
            }
        }
    }

    impl Subscriber for Handle {
        fn enabled(&self, _metadata: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, span: &Attributes<'_>) -> Id {
            if span.metadata().name() == "node" {
                let mut fields = Fields::default();
                span.record(&mut fields);
                self.0
                    .node_spans
                    .lock()
                    .unwrap()
                    .push(fields.name.unwrap_or_default());
            }
            Id::from_u64(self.0.next.fetch_add(1, Ordering::SeqCst) + 1)
        }
        fn record(&self, _span: &Id, _values: &Record<'_>) {}
        fn record_follows_from(&self, _span: &Id, _follows: &Id) {}
        fn event(&self, event: &Event<'_>) {
            if *event.metadata().level() == tracing::Level::DEBUG {
                let mut fields = Fields::default();
                event.record(&mut fields);
                if let Some(a) = fields.attempt {
                    self.0.attempts.lock().unwrap().push(a);
                }
            }
        }
        fn enter(&self, _span: &Id) {}
        fn exit(&self, _span: &Id) {}
    }

    #[test]
    fn one_span_per_node_run_and_attempts_at_debug() {
        let recorder = Arc::new(Recorder::default());
        let _guard = tracing::subscriber::set_default(Handle(recorder.clone()));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // Other tests in this binary hit the same callsites concurrently; a callsite whose
        // interest was being computed while this subscriber registered could keep a stale "never"
        // (a known race in tracing's interest cache). Warm up, rebuild the cache, start clean.
        runtime.block_on(async {
            let mut flow = Flow::new();
            flow.add(Flaky::new(1, 2));
            flow.run(&mut Shared::default(), &Ctx::new()).await.unwrap();
        });
        tracing::callsite::rebuild_interest_cache();
        recorder.node_spans.lock().unwrap().clear();
        recorder.attempts.lock().unwrap().clear();
        runtime.block_on(async {
            let mut flow = Flow::new();
            let a = flow.add(Step::new("a"));
            let flaky = flow.add(Flaky::new(2, 3));
            let b = flow.add(Step::new("b"));
            flow.connect_default(a, flaky).unwrap();
            flow.connect_default(flaky, b).unwrap();
            flow.run(&mut Shared::default(), &Ctx::new()).await.unwrap();
        });
        assert_eq!(*recorder.node_spans.lock().unwrap(), ["a", "Flaky", "b"]);
        let attempts = recorder.attempts.lock().unwrap().clone();
        for n in [1, 2, 3] {
            assert!(attempts.contains(&n), "{attempts:?}");
        }
    }
}

#[tokio::test]
async fn cancellation_stops_a_batch_flow_between_runs() {
    let token = CancellationToken::new();
    let mut inner = Flow::new();
    let run = inner.add(UsesParam("run"));
    // Cancels the run on its first pass; its action has no successor, so run 1 ends normally.
    let cancels = inner.add(Looper {
        runs: Arc::default(),
        cancel_at: Some((1, token.clone())),
    });
    inner.connect_default(run, cancels).unwrap();
    let batch = BatchFlow::new(inner, |_shared: &mut Shared, _ctx: &Ctx| {
        Ok(n_sets(&[1, 2, 3]))
    });
    let mut shared = Shared::default();
    let result = batch.run(&mut shared, &Ctx::with_cancel(token)).await;
    assert!(matches!(result, Err(Error::Cancelled)), "{result:?}");
    assert_eq!(shared.log, ["run 1 -"]);
}
