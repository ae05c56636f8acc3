//! Batches: [`BatchNode`] run by [`Batch`] (in order, or concurrently);
//! [`BatchFlow`] (a whole flow once per parameter set, in order) and [`ParallelBatchFlow`] (the
//! runs concurrently, each on its own child state).

use std::borrow::Cow;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::{FuturesOrdered, FuturesUnordered, StreamExt};
use tracing::Instrument;

use super::node::{exec_with_retries, short_type_name, Attempts};
use super::{Action, Ctx, DynNode, Flow, Node, Params};
use crate::{Error, Result};

/// A node over a list of items: `prep` returns the items, `exec` runs once per item (with its own
/// retries and fallback), `post` gets the items and all results in input order.
///
/// Add it to a flow wrapped in [`Batch`] (items one after another, or concurrently). Implement
/// the phases with `async fn`.
pub trait BatchNode<S: Send>: Send + Sync {
    /// One item.
    type Item: Send + Sync;
    /// The result of one item.
    type Exec: Send;

    /// Reads the items from the shared store.
    fn prep(
        &self,
        shared: &mut S,
        ctx: &Ctx,
    ) -> impl Future<Output = Result<Vec<Self::Item>>> + Send;

    /// Processes one item; up to [`max_attempts`](BatchNode::max_attempts) attempts
    /// (`ctx.attempt()` says which).
    fn exec(&self, item: &Self::Item, ctx: &Ctx)
        -> impl Future<Output = Result<Self::Exec>> + Send;

    /// Runs after the last failed attempt for an item; the default returns the error.
    fn exec_fallback(
        &self,
        item: &Self::Item,
        err: Error,
        ctx: &Ctx,
    ) -> impl Future<Output = Result<Self::Exec>> + Send {
        let _ = (item, ctx);
        async move { Err(err) }
    }

    /// Gets the items and their results (in the items' order); chooses the successor.
    fn post(
        &self,
        shared: &mut S,
        items: Vec<Self::Item>,
        results: Vec<Self::Exec>,
        ctx: &Ctx,
    ) -> impl Future<Output = Result<Action>> + Send {
        let _ = (shared, items, results, ctx);
        async { Ok(Action::DEFAULT) }
    }

    /// Total attempts per item, like [`Node::max_attempts`] (1 = no retry; 0 = only the
    /// fallback).
    fn max_attempts(&self) -> usize {
        1
    }

    /// The pause between two attempts for an item.
    fn wait(&self) -> Duration {
        Duration::ZERO
    }

    /// The node's name in traces.
    fn name(&self) -> &str {
        short_type_name(std::any::type_name::<Self>())
    }
}

struct ItemAttempts<'a, S: Send, B: BatchNode<S>> {
    node: &'a B,
    item: &'a B::Item,
    _shared: PhantomData<fn(&mut S)>,
}

impl<S: Send, B: BatchNode<S>> Attempts for ItemAttempts<'_, S, B> {
    type Output = B::Exec;

    fn max_attempts(&self) -> usize {
        self.node.max_attempts()
    }
    fn wait(&self) -> Duration {
        self.node.wait()
    }
    fn interruptible(&self) -> bool {
        true
    }
    fn attempt(&self, ctx: &Ctx) -> impl Future<Output = Result<B::Exec>> + Send {
        self.node.exec(self.item, ctx)
    }
    fn fallback(&self, err: Error, ctx: &Ctx) -> impl Future<Output = Result<B::Exec>> + Send {
        self.node.exec_fallback(self.item, err, ctx)
    }
}

async fn exec_item<S: Send, B: BatchNode<S>>(
    node: &B,
    item: &B::Item,
    ctx: &Ctx,
) -> Result<B::Exec> {
    let attempts = ItemAttempts {
        node,
        item,
        _shared: PhantomData,
    };
    exec_with_retries(&attempts, ctx, true).await
}

/// Runs a [`BatchNode`]'s items: one after another (PocketFlow's `BatchNode`), or concurrently,
/// at most [`concurrency`](Batch::with_concurrency) at a time, keeping the results in input order
/// (PocketFlow's `AsyncParallelBatchNode`, bounded). Concurrent items run interleaved on the
/// flow's task (no spawning). The first item that fails for good fails the node and stops the
/// others.
#[derive(Clone, Debug)]
pub struct Batch<B> {
    inner: B,
    concurrency: usize,
}

impl<B> Batch<B> {
    /// Wraps `node`, running its items one after another.
    pub fn new(node: B) -> Self {
        Batch {
            inner: node,
            concurrency: 1,
        }
    }

    /// Runs up to `concurrency` items at a time (0 is treated as 1).
    pub fn with_concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// The concurrency bound (1: one item after another).
    pub fn concurrency(&self) -> usize {
        self.concurrency
    }
}

impl<S: Send, B: BatchNode<S>> Node<S> for Batch<B> {
    type Prep = Vec<B::Item>;
    type Exec = Vec<B::Exec>;

    async fn prep(&self, shared: &mut S, ctx: &Ctx) -> Result<Vec<B::Item>> {
        self.inner.prep(shared, ctx).await
    }

    async fn exec(&self, items: &Vec<B::Item>, ctx: &Ctx) -> Result<Vec<B::Exec>> {
        // A hand-rolled `buffered(concurrency)`: a closure here would trip the compiler's
        // higher-ranked lifetime inference for `Send` futures.
        let mut pending = items.iter();
        let mut in_flight = FuturesOrdered::new();
        for item in pending.by_ref().take(self.concurrency) {
            in_flight.push_back(exec_item(&self.inner, item, ctx));
        }
        let mut results = Vec::with_capacity(items.len());
        while let Some(result) = in_flight.next().await {
            results.push(result?);
            if let Some(item) = pending.next() {
                in_flight.push_back(exec_item(&self.inner, item, ctx));
            }
        }
        Ok(results)
    }

    async fn post(
        &self,
        shared: &mut S,
        items: Vec<B::Item>,
        results: Vec<B::Exec>,
        ctx: &Ctx,
    ) -> Result<Action> {
        self.inner.post(shared, items, results, ctx).await
    }

    fn name(&self) -> &str {
        self.inner.name()
    }
}

type ParamsPrep<S> = dyn Fn(&mut S, &Ctx) -> Result<Vec<Params>> + Send + Sync;
type ParamsPost<S> = dyn Fn(&mut S, Vec<Params>, &Ctx) -> Result<Action> + Send + Sync;

/// Runs a whole [`Flow`] once per parameter set, in order (PocketFlow's `BatchFlow`).
///
/// `prep` reads the parameter sets from the shared store (and the batch flow's own params,
/// `ctx.params()`); each run of the inner flow gets that set merged over the batch flow's params
/// (`{**self.params, **bp}`), which its nodes read from [`Ctx::params`]. All runs share the
/// store. Then the optional `post` ([`with_post`](BatchFlow::with_post)) gets the parameter
/// sets and chooses the batch flow's action; without it the action is [`Action::DEFAULT`].
pub struct BatchFlow<S> {
    flow: Flow<S>,
    prep: Arc<ParamsPrep<S>>,
    post: Option<Arc<ParamsPost<S>>>,
    name: Cow<'static, str>,
}

impl<S> Clone for BatchFlow<S> {
    fn clone(&self) -> Self {
        BatchFlow {
            flow: self.flow.clone(),
            prep: self.prep.clone(),
            post: self.post.clone(),
            name: self.name.clone(),
        }
    }
}

impl<S> BatchFlow<S> {
    /// A batch flow over `flow`, named `"batch_flow"`.
    pub fn new(
        flow: Flow<S>,
        prep: impl Fn(&mut S, &Ctx) -> Result<Vec<Params>> + Send + Sync + 'static,
    ) -> Self {
        BatchFlow {
            flow,
            prep: Arc::new(prep),
            post: None,
            name: Cow::Borrowed("batch_flow"),
        }
    }

    /// The batch flow's `post`: gets the parameter sets after the last run; returns the action.
    pub fn with_post(
        mut self,
        post: impl Fn(&mut S, Vec<Params>, &Ctx) -> Result<Action> + Send + Sync + 'static,
    ) -> Self {
        self.post = Some(Arc::new(post));
        self
    }

    /// Names the batch flow (its span name when nested in another flow).
    pub fn with_name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = name.into();
        self
    }

    /// The inner flow.
    pub fn flow(&self) -> &Flow<S> {
        &self.flow
    }
}

impl<S: Send> BatchFlow<S> {
    /// Runs the inner flow once per parameter set; see [`BatchFlow`].
    pub async fn run(&self, shared: &mut S, ctx: &Ctx) -> Result<Action> {
        ctx.check()?;
        let sets = (self.prep)(shared, ctx)?;
        for (i, set) in sets.iter().enumerate() {
            ctx.check()?;
            let run_ctx = ctx.clone().with_params(ctx.params().merged(set));
            let span = tracing::debug_span!("batch_run", index = i);
            self.flow.run(shared, &run_ctx).instrument(span).await?;
        }
        match &self.post {
            Some(post) => post(shared, sets, ctx),
            None => Ok(Action::DEFAULT),
        }
    }
}

impl<S: Send> DynNode<S> for BatchFlow<S> {
    fn run_dyn<'a>(&'a self, shared: &'a mut S, ctx: &'a Ctx) -> BoxFuture<'a, Result<Action>> {
        Box::pin(self.run(shared, ctx))
    }

    fn node_name(&self) -> &str {
        &self.name
    }
}

type ForkPrep<S, C> = dyn Fn(&mut S, &Ctx) -> Result<Vec<(C, Params)>> + Send + Sync;
type JoinPost<S, C> = dyn Fn(&mut S, Vec<(C, Action)>, &Ctx) -> Result<Action> + Send + Sync;

/// Runs a whole [`Flow`] once per item, the runs concurrently (PocketFlow's
/// `AsyncParallelBatchFlow`).
///
/// Concurrent runs cannot share one `&mut S`, so each run gets a child state of its own, typed
/// `C`: `prep` reads the store and returns one `(child state, params)` pair per run; the inner
/// `Flow<C>` runs on each child with its params merged over the batch flow's (`{**self.params,
/// **bp}`), at most [`concurrency`](ParallelBatchFlow::with_concurrency) at a time (default: all
/// at once, like PocketFlow's `gather`), interleaved on the flow's task (no spawning); then `post`
/// merges the children back into the store — in input order, each with its run's last action —
/// and chooses the batch flow's action. The first run that fails fails the batch flow and stops
/// the others.
pub struct ParallelBatchFlow<S, C> {
    flow: Flow<C>,
    prep: Arc<ForkPrep<S, C>>,
    post: Arc<JoinPost<S, C>>,
    concurrency: usize,
    name: Cow<'static, str>,
}

impl<S, C> Clone for ParallelBatchFlow<S, C> {
    fn clone(&self) -> Self {
        ParallelBatchFlow {
            flow: self.flow.clone(),
            prep: self.prep.clone(),
            post: self.post.clone(),
            concurrency: self.concurrency,
            name: self.name.clone(),
        }
    }
}

impl<S, C> ParallelBatchFlow<S, C> {
    /// A parallel batch flow over `flow`, named `"parallel_batch_flow"`: `prep` splits the store
    /// into child states, `post` merges them back.
    pub fn new(
        flow: Flow<C>,
        prep: impl Fn(&mut S, &Ctx) -> Result<Vec<(C, Params)>> + Send + Sync + 'static,
        post: impl Fn(&mut S, Vec<(C, Action)>, &Ctx) -> Result<Action> + Send + Sync + 'static,
    ) -> Self {
        ParallelBatchFlow {
            flow,
            prep: Arc::new(prep),
            post: Arc::new(post),
            concurrency: usize::MAX,
            name: Cow::Borrowed("parallel_batch_flow"),
        }
    }

    /// Runs at most `concurrency` runs at a time (0 is treated as 1).
    pub fn with_concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// The concurrency bound.
    pub fn concurrency(&self) -> usize {
        self.concurrency
    }

    /// Names the batch flow (its span name when nested in another flow).
    pub fn with_name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = name.into();
        self
    }

    /// The inner flow.
    pub fn flow(&self) -> &Flow<C> {
        &self.flow
    }
}

async fn run_child<C: Send>(
    flow: &Flow<C>,
    index: usize,
    child: &mut C,
    ctx: Ctx,
) -> Result<(usize, Action)> {
    let span = tracing::debug_span!("batch_run", index);
    let action = flow.run(child, &ctx).instrument(span).await?;
    Ok((index, action))
}

impl<S: Send, C: Send> ParallelBatchFlow<S, C> {
    /// Runs the inner flow once per child state, concurrently; see [`ParallelBatchFlow`].
    pub async fn run(&self, shared: &mut S, ctx: &Ctx) -> Result<Action> {
        ctx.check()?;
        let (mut children, sets): (Vec<C>, Vec<Params>) =
            (self.prep)(shared, ctx)?.into_iter().unzip();
        let mut actions = vec![Action::DEFAULT; children.len()];
        {
            let mut pending = children.iter_mut().zip(&sets).enumerate();
            let mut in_flight = FuturesUnordered::new();
            let child_ctx = |set: &Params| ctx.clone().with_params(ctx.params().merged(set));
            for (i, (child, set)) in pending.by_ref().take(self.concurrency) {
                in_flight.push(run_child(&self.flow, i, child, child_ctx(set)));
            }
            while let Some(done) = in_flight.next().await {
                let (i, action) = done?;
                actions[i] = action;
                if let Some((i, (child, set))) = pending.next() {
                    in_flight.push(run_child(&self.flow, i, child, child_ctx(set)));
                }
            }
        }
        (self.post)(shared, children.into_iter().zip(actions).collect(), ctx)
    }
}

impl<S: Send, C: Send> DynNode<S> for ParallelBatchFlow<S, C> {
    fn run_dyn<'a>(&'a self, shared: &'a mut S, ctx: &'a Ctx) -> BoxFuture<'a, Result<Action>> {
        Box::pin(self.run(shared, ctx))
    }

    fn node_name(&self) -> &str {
        &self.name
    }
}
