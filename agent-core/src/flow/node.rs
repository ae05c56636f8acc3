//! The [`Node`] trait, its object-safe form [`DynNode`], and the retry loop.

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;

use super::{Action, Ctx};
use crate::{Error, Result};

/// One step of a flow: `prep` → `exec` (with retries) → `post`.
///
/// `S` is the typed shared store. `exec` never sees it, so it can be retried safely.
#[async_trait]
pub trait Node<S: Send>: Send + Sync {
    /// What `prep` hands to `exec` (and then to `post`).
    type Prep: Send + Sync;
    /// What `exec` produces for `post`.
    type Exec: Send;

    /// Reads what `exec` needs from the shared store.
    async fn prep(&self, shared: &mut S) -> Result<Self::Prep>;

    /// Does the work. Must not depend on the shared store; may be called up to
    /// [`max_retries`](Node::max_retries) times. The engine races it against cancellation.
    async fn exec(&self, prep: &Self::Prep, ctx: &Ctx) -> Result<Self::Exec>;

    /// Runs after the last failed attempt of `exec` with its error; its value is used as `exec`'s.
    /// The default returns the error.
    async fn exec_fallback(&self, prep: &Self::Prep, err: Error, ctx: &Ctx) -> Result<Self::Exec> {
        let _ = (prep, ctx);
        Err(err)
    }

    /// Writes results to the shared store and chooses the successor. The default returns
    /// [`Action::DEFAULT`] (PocketFlow's absent action).
    async fn post(&self, shared: &mut S, prep: Self::Prep, exec: Self::Exec) -> Result<Action> {
        let _ = (shared, prep, exec);
        Ok(Action::DEFAULT)
    }

    /// The total number of `exec` attempts (1 = no retry; 0 is treated as 1).
    fn max_retries(&self) -> usize {
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

    /// The whole run of the node: `prep`, `exec` with retries and fallback, `post`.
    ///
    /// Keep the default; composite nodes such as [`Flow`](super::Flow) override it (like
    /// PocketFlow's `_run`).
    async fn run(&self, shared: &mut S, ctx: &Ctx) -> Result<Action> {
        let prep = self.prep(shared).await?;
        let exec = exec_with_retries(
            self.max_retries(),
            self.wait(),
            self.interruptible(),
            ctx,
            || self.exec(&prep, ctx),
            |err| self.exec_fallback(&prep, err, ctx),
        )
        .await?;
        self.post(shared, prep, exec).await
    }
}

/// The object-safe form of [`Node`], implemented for every `Node<S>`, so a flow can hold
/// different node types (as `Arc<dyn DynNode<S>>`).
///
/// Its methods have distinct names so that they never clash with [`Node`]'s when both traits are
/// in scope.
pub trait DynNode<S>: Send + Sync {
    /// Runs the node ([`Node::run`]).
    fn run_dyn<'a>(&'a self, shared: &'a mut S, ctx: &'a Ctx) -> BoxFuture<'a, Result<Action>>;

    /// The node's name ([`Node::name`]).
    fn node_name(&self) -> &str;
}

impl<S: Send, N: Node<S>> DynNode<S> for N {
    #[inline]
    fn run_dyn<'a>(&'a self, shared: &'a mut S, ctx: &'a Ctx) -> BoxFuture<'a, Result<Action>> {
        Node::run(self, shared, ctx)
    }

    #[inline]
    fn node_name(&self) -> &str {
        Node::name(self)
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

/// PocketFlow's retry loop: up to `max_retries` attempts (at least one) with `wait` between them,
/// then `fallback` with the last error. Cancellation is checked before every attempt and raced
/// against every wait and the fallback, and against every attempt when `interruptible`; a run
/// cancelled during an attempt that failed (or was dropped) returns [`Error::Cancelled`] without
/// calling `fallback`. An attempt that is not interruptible and succeeds returns its value even
/// when the flow was cancelled meanwhile, so that `post` can record it.
pub(crate) async fn exec_with_retries<T, A, AF, F, FF>(
    max_retries: usize,
    wait: Duration,
    interruptible: bool,
    ctx: &Ctx,
    mut attempt: A,
    fallback: F,
) -> Result<T>
where
    A: FnMut() -> AF,
    AF: Future<Output = Result<T>>,
    F: FnOnce(Error) -> FF,
    FF: Future<Output = Result<T>>,
{
    let max = max_retries.max(1);
    let mut n = 1;
    loop {
        ctx.check()?;
        tracing::debug!(attempt = n, max_attempts = max, "exec");
        let result = if interruptible {
            tokio::select! {
                biased;
                r = attempt() => r,
                () = ctx.cancelled() => return Err(Error::Cancelled),
            }
        } else {
            attempt().await
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
            return tokio::select! {
                biased;
                r = fallback(err) => r,
                () = ctx.cancelled() => Err(Error::Cancelled),
            };
        }
        tracing::debug!(attempt = n, max_attempts = max, error = %err, "exec failed; retrying");
        if !wait.is_zero() {
            tokio::select! {
                biased;
                () = ctx.cancelled() => return Err(Error::Cancelled),
                () = tokio::time::sleep(wait) => {}
            }
        }
        n += 1;
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
