//! The [`Node`] trait (and [`PostNode`], a node that only posts), the object-safe [`DynNode`]
//! that flows hold, and the retry loop.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures::future::BoxFuture;

use super::{Action, Ctx};
use crate::{Error, Result};

/// One step of a flow: `prep` → `exec` (with retries) → `post`.
///
/// `S` is the typed shared store. `exec` never sees it, so it can be retried safely. Every phase
/// gets the run's [`Ctx`] (its params, its cancellation, in `exec` the attempt number).
///
/// Implement the phases with `async fn` (no `#[async_trait]`): the engine runs a node without
/// boxing its phases, one allocation per node run (two for a node that retries or is not
/// interruptible: its retry loop is boxed).
pub trait Node<S: Send>: Send + Sync {
    /// What `prep` hands to `exec` (and then to `post`).
    type Prep: Send + Sync;
    /// What `exec` produces for `post`.
    type Exec: Send;

    /// Reads what `exec` needs from the shared store (and the params, `ctx.params()`).
    fn prep(&self, shared: &mut S, ctx: &Ctx) -> impl Future<Output = Result<Self::Prep>> + Send;

    /// Does the work. Must not depend on the shared store; may be called up to
    /// [`max_attempts`](Node::max_attempts) times (`ctx.attempt()` says which). The engine races
    /// it against cancellation.
    fn exec(&self, prep: &Self::Prep, ctx: &Ctx)
        -> impl Future<Output = Result<Self::Exec>> + Send;

    /// Runs after the last failed attempt of `exec` with its error (or at once, without any
    /// attempt, when [`max_attempts`](Node::max_attempts) is 0); its value is used as `exec`'s.
    /// The default returns the error.
    fn exec_fallback(
        &self,
        prep: &Self::Prep,
        err: Error,
        ctx: &Ctx,
    ) -> impl Future<Output = Result<Self::Exec>> + Send {
        let _ = (prep, ctx);
        async move { Err(err) }
    }

    /// Writes results to the shared store and chooses the successor. The default returns
    /// [`Action::DEFAULT`] (PocketFlow's absent action).
    fn post(
        &self,
        shared: &mut S,
        prep: Self::Prep,
        exec: Self::Exec,
        ctx: &Ctx,
    ) -> impl Future<Output = Result<Action>> + Send {
        let _ = (shared, prep, exec, ctx);
        async { Ok(Action::DEFAULT) }
    }

    /// The total number of `exec` attempts — PocketFlow's `max_retries`, which counts attempts,
    /// not retries (1 = no retry, the default).
    ///
    /// 0 runs no attempt, like PocketFlow's `max_retries=0`: `exec` is skipped and
    /// [`exec_fallback`](Node::exec_fallback) decides the value at once (PocketFlow hands `post`
    /// `None`; the default fallback here fails with [`Error::InvalidInput`]).
    fn max_attempts(&self) -> usize {
        1
    }

    /// The pause between two attempts of `exec`.
    fn wait(&self) -> Duration {
        Duration::ZERO
    }

    /// Whether the engine may abandon a running `exec` when the flow is cancelled (default
    /// `true`: the attempt is raced against cancellation and dropped).
    ///
    /// A node whose `exec` reacts to cancellation itself and whose result must still be recorded
    /// (a process it kills and reports, say) returns `false`: the engine then lets `exec` finish
    /// and runs `post`, and the flow stops before the next node.
    fn interruptible(&self) -> bool {
        true
    }

    /// The node's name in traces (default: the type's name without its module path).
    fn name(&self) -> &str {
        short_type_name(std::any::type_name::<Self>())
    }

    /// Runs the node on its own: `prep`, `exec` with retries and fallback, `post`. A flow runs
    /// its nodes the same way.
    fn run(&self, shared: &mut S, ctx: &Ctx) -> impl Future<Output = Result<Action>> + Send
    where
        Self: Sized,
    {
        async move {
            ctx.check()?;
            run_phases(self, shared, ctx).await
        }
    }
}

/// A node with nothing to prepare or execute: it only writes to the shared store and chooses
/// the successor. A flow runs it as a [`Node`] whose `prep` and `exec` do nothing, with one
/// attempt ([`IntoNode`]).
pub trait PostNode<S: Send>: Send + Sync {
    /// Writes to the shared store and chooses the successor ([`Node::post`]).
    fn post(&self, shared: &mut S, ctx: &Ctx) -> impl Future<Output = Result<Action>> + Send;

    /// The node's name in traces (default: the type's name without its module path).
    fn name(&self) -> &str {
        short_type_name(std::any::type_name::<Self>())
    }
}

/// A [`PostNode`] as a [`Node`].
struct PostOnly<N>(N);

impl<S: Send, N: PostNode<S>> Node<S> for PostOnly<N> {
    type Prep = ();
    type Exec = ();

    async fn prep(&self, _: &mut S, _: &Ctx) -> Result<()> {
        Ok(())
    }

    async fn exec(&self, _: &(), _: &Ctx) -> Result<()> {
        Ok(())
    }

    fn post(
        &self,
        shared: &mut S,
        _: (),
        _: (),
        ctx: &Ctx,
    ) -> impl Future<Output = Result<Action>> + Send {
        self.0.post(shared, ctx)
    }

    fn name(&self) -> &str {
        self.0.name()
    }
}

/// A node as a flow holds it: object-safe, one boxed future per run.
///
/// Every [`Node`] becomes one when added to a flow ([`IntoNode`]). Composite nodes — [`Flow`],
/// [`BatchFlow`], [`ParallelBatchFlow`] — implement it directly: they have no phases of their own
/// to run, only a run.
///
/// [`Flow`]: super::Flow
/// [`BatchFlow`]: super::BatchFlow
/// [`ParallelBatchFlow`]: super::ParallelBatchFlow
pub trait DynNode<S>: Send + Sync {
    /// Runs the node and returns its action.
    fn run_dyn<'a>(&'a self, shared: &'a mut S, ctx: &'a Ctx) -> BoxFuture<'a, Result<Action>>;

    /// The node's name in traces.
    fn node_name(&self) -> &str;
}

impl<S, D: DynNode<S> + ?Sized> DynNode<S> for Arc<D> {
    #[inline]
    fn run_dyn<'a>(&'a self, shared: &'a mut S, ctx: &'a Ctx) -> BoxFuture<'a, Result<Action>> {
        (**self).run_dyn(shared, ctx)
    }

    #[inline]
    fn node_name(&self) -> &str {
        (**self).node_name()
    }
}

/// A [`Node`] as a [`DynNode`].
struct Phases<N>(N);

impl<S: Send, N: Node<S>> DynNode<S> for Phases<N> {
    /// The flow checked the cancellation just before: the phases run at once.
    #[inline]
    fn run_dyn<'a>(&'a self, shared: &'a mut S, ctx: &'a Ctx) -> BoxFuture<'a, Result<Action>> {
        Box::pin(run_phases(&self.0, shared, ctx))
    }

    #[inline]
    fn node_name(&self) -> &str {
        Node::name(&self.0)
    }
}

/// What [`Flow::add`](super::Flow::add) accepts: any [`Node`], any [`PostNode`] and any
/// [`DynNode`] (a nested flow, a batch flow). `M` is [`AsNode`], [`AsPostNode`] or
/// [`AsDynNode`]; the compiler picks it.
pub trait IntoNode<S, M> {
    /// The node as a flow holds it.
    fn into_node(self) -> Arc<dyn DynNode<S>>;
}

/// The [`IntoNode`] marker of [`Node`]s.
#[derive(Debug)]
pub enum AsNode {}

/// The [`IntoNode`] marker of [`PostNode`]s.
#[derive(Debug)]
pub enum AsPostNode {}

/// The [`IntoNode`] marker of [`DynNode`]s.
#[derive(Debug)]
pub enum AsDynNode {}

impl<S: Send, N: Node<S> + 'static> IntoNode<S, AsNode> for N {
    fn into_node(self) -> Arc<dyn DynNode<S>> {
        Arc::new(Phases(self))
    }
}

impl<S: Send, N: PostNode<S> + 'static> IntoNode<S, AsPostNode> for N {
    fn into_node(self) -> Arc<dyn DynNode<S>> {
        Arc::new(Phases(PostOnly(self)))
    }
}

impl<S, D: DynNode<S> + 'static> IntoNode<S, AsDynNode> for D {
    fn into_node(self) -> Arc<dyn DynNode<S>> {
        Arc::new(self)
    }
}

/// `path::to::Type<generic::Args>` → `Type<generic::Args>`.
pub(crate) fn short_type_name(full: &'static str) -> &'static str {
    let head_end = full.find('<').unwrap_or(full.len());
    match full[..head_end].rfind("::") {
        Some(i) => &full[i + 2..],
        None => full,
    }
}

/// `prep`, `exec` with retries, `post`; the caller has just checked the cancellation.
async fn run_phases<S: Send, N: Node<S>>(node: &N, shared: &mut S, ctx: &Ctx) -> Result<Action> {
    // A prep that completes without suspending ran in the same instant as the caller's check:
    // the first attempt needs no check of its own. One that waited does.
    let (prep, suspended) = {
        let mut prep = pin!(node.prep(shared, ctx));
        match futures::poll!(prep.as_mut()) {
            Poll::Ready(p) => (p?, false),
            Poll::Pending => (prep.await?, true),
        }
    };
    let exec = if node.max_attempts() == 1 && node.interruptible() {
        // The usual node: one interruptible attempt. The same as `exec_with_retries` does with
        // one attempt, without its retry loop in every node run's future.
        if suspended {
            ctx.check()?;
        }
        tracing::debug!(attempt = 1usize, max_attempts = 1usize, "exec");
        // Attempt 1, also when this node runs inside another node's later attempt (borrowed in
        // the usual case).
        let attempt_ctx = ctx.for_retry(0);
        let attempt_ctx = &*attempt_ctx;
        let result = {
            // Polled here first: an `exec` that is ready at once costs a poll, nothing more.
            // Dropped before the fallback runs.
            let mut exec = pin!(node.exec(&prep, attempt_ctx));
            match futures::poll!(exec.as_mut()) {
                Poll::Ready(result) => result,
                Poll::Pending => race(exec, ctx).await?,
            }
        };
        match result {
            Ok(v) => v,
            Err(_) if ctx.is_cancelled() => return Err(Error::Cancelled),
            Err(err) => or_cancelled(node.exec_fallback(&prep, err, attempt_ctx), ctx).await??,
        }
    } else {
        let attempts = NodeAttempts {
            node,
            prep: &prep,
            _shared: PhantomData,
        };
        // Boxed: only nodes that retry (or must not be interrupted) pay for the retry loop.
        Box::pin(exec_with_retries(&attempts, ctx, suspended)).await?
    };
    node.post(shared, prep, exec, ctx).await
}

/// What the retry loop retries: a node's `exec` on its prep, a batch node's on one item.
pub(crate) trait Attempts: Sync {
    /// The value of a successful attempt.
    type Output: Send;

    /// The total number of attempts.
    fn max_attempts(&self) -> usize;
    /// The pause between attempts.
    fn wait(&self) -> Duration;
    /// Whether an attempt may be dropped on cancellation.
    fn interruptible(&self) -> bool;
    /// One attempt.
    fn attempt(&self, ctx: &Ctx) -> impl Future<Output = Result<Self::Output>> + Send;
    /// The fallback after the last failed attempt.
    fn fallback(&self, err: Error, ctx: &Ctx) -> impl Future<Output = Result<Self::Output>> + Send;
}

struct NodeAttempts<'a, S: Send, N: Node<S>> {
    node: &'a N,
    prep: &'a N::Prep,
    _shared: PhantomData<fn(&mut S)>,
}

impl<S: Send, N: Node<S>> Attempts for NodeAttempts<'_, S, N> {
    type Output = N::Exec;

    fn max_attempts(&self) -> usize {
        self.node.max_attempts()
    }
    fn wait(&self) -> Duration {
        self.node.wait()
    }
    fn interruptible(&self) -> bool {
        self.node.interruptible()
    }
    fn attempt(&self, ctx: &Ctx) -> impl Future<Output = Result<N::Exec>> + Send {
        self.node.exec(self.prep, ctx)
    }
    fn fallback(&self, err: Error, ctx: &Ctx) -> impl Future<Output = Result<N::Exec>> + Send {
        self.node.exec_fallback(self.prep, err, ctx)
    }
}

/// `future`'s output, or [`Error::Cancelled`] when `ctx` is cancelled first. The future is polled
/// once before the cancellation is watched at all: a future that is ready at once costs no more
/// than a poll.
async fn or_cancelled<F: Future>(future: F, ctx: &Ctx) -> Result<F::Output> {
    let mut future = pin!(future);
    if let Poll::Ready(v) = futures::poll!(future.as_mut()) {
        return Ok(v);
    }
    race(future, ctx).await
}

/// `future`'s output, or [`Error::Cancelled`] when `ctx` is cancelled first; for a future that
/// was polled already and is pinned where it is.
async fn race<F: Future>(future: std::pin::Pin<&mut F>, ctx: &Ctx) -> Result<F::Output> {
    // Boxed: the waiter is only needed by a future that waits anyway, and inline it would
    // grow every node run's future.
    let cancelled = Box::pin(ctx.cancelled());
    tokio::select! {
        biased;
        v = future => Ok(v),
        () = cancelled => Err(Error::Cancelled),
    }
}

/// PocketFlow's retry loop: up to `max_attempts` attempts with `wait` between them, then the
/// fallback with the last error (0 attempts: the fallback at once). Each attempt gets `ctx` with
/// its number ([`Ctx::attempt`]).
///
/// Cancellation is checked before every attempt and raced against every wait and the fallback,
/// and against every attempt when it is interruptible; a run cancelled during an attempt that
/// failed (or was dropped) returns [`Error::Cancelled`] without calling the fallback. An attempt
/// that is not interruptible and succeeds returns its value even when the flow was cancelled
/// meanwhile, so that `post` can record it.
///
/// `check_first: false` skips the check before the first attempt when the caller has just made it.
pub(crate) async fn exec_with_retries<A: Attempts>(
    a: &A,
    ctx: &Ctx,
    check_first: bool,
) -> Result<A::Output> {
    let max = a.max_attempts();
    if max == 0 {
        let err = Error::invalid(
            "max_attempts",
            "the node allows 0 attempts, so exec was not run",
        );
        tracing::debug!(max_attempts = 0, "exec skipped; fallback");
        return or_cancelled(a.fallback(err, ctx), ctx).await?;
    }
    let mut retry: u32 = 0;
    loop {
        if retry > 0 || check_first {
            ctx.check()?;
        }
        let n = retry as usize + 1;
        tracing::debug!(attempt = n, max_attempts = max, "exec");
        let attempt_ctx = ctx.for_retry(retry);
        let attempt_ctx = &*attempt_ctx;
        let result = if a.interruptible() {
            or_cancelled(a.attempt(attempt_ctx), ctx).await?
        } else {
            a.attempt(attempt_ctx).await
        };
        let err = match result {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        if ctx.is_cancelled() {
            return Err(Error::Cancelled);
        }
        if n >= max {
            if max > 1 {
                tracing::debug!(attempts = n, error = %err, "exec failed on its last attempt; fallback");
            }
            return or_cancelled(a.fallback(err, attempt_ctx), ctx).await?;
        }
        tracing::debug!(attempt = n, max_attempts = max, error = %err, "exec failed; retrying");
        let wait = a.wait();
        if !wait.is_zero() {
            // Boxed like the waiter in `or_cancelled`: only retries pay for it.
            let sleep = Box::pin(tokio::time::sleep(wait));
            or_cancelled(sleep, ctx).await?;
        }
        retry = retry.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::short_type_name;

    #[test]
    fn short_names() {
        assert_eq!(short_type_name("a::b::Node"), "Node");
        assert_eq!(short_type_name("Node"), "Node");
        assert_eq!(short_type_name("a::Batch<b::C>"), "Batch<b::C>");
    }
}
