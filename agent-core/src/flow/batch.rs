//! Batches: [`BatchNode`] run by [`Batch`] (in order) or [`ParallelBatch`] (concurrently), and
//! [`BatchFlow`] (a whole flow once per parameter set).

use std::borrow::Cow;
use std::marker::PhantomData;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::{FuturesOrdered, StreamExt};

use super::node::{exec_with_retries, short_type_name};
use super::{Action, Ctx, Flow, Node};
use crate::{Error, Result};

/// A node over a list of items: `prep` returns the items, `exec` runs once per item (with its own
/// retries and fallback), `post` gets the items and all results in input order.
///
/// Add it to a flow wrapped in [`Batch`] (items one after another) or [`ParallelBatch`] (items
/// concurrently).
#[async_trait]
pub trait BatchNode<S: Send>: Send + Sync {
    /// One item.
    type Item: Send + Sync;
    /// The result of one item.
    type Exec: Send;

    /// Reads the items from the shared store.
    async fn prep(&self, shared: &mut S) -> Result<Vec<Self::Item>>;

    /// Processes one item; retried up to [`max_retries`](BatchNode::max_retries) attempts.
    async fn exec(&self, item: &Self::Item, ctx: &Ctx) -> Result<Self::Exec>;

    /// Runs after the last failed attempt for an item; the default returns the error.
    async fn exec_fallback(&self, item: &Self::Item, err: Error, ctx: &Ctx) -> Result<Self::Exec> {
        let _ = (item, ctx);
        Err(err)
    }

    /// Gets the items and their results (in the items' order); chooses the successor.
    async fn post(
        &self,
        shared: &mut S,
        items: Vec<Self::Item>,
        results: Vec<Self::Exec>,
    ) -> Result<Action> {
        let _ = (shared, items, results);
        Ok(Action::DEFAULT)
    }

    /// Total attempts per item (1 = no retry).
    fn max_retries(&self) -> usize {
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

async fn exec_item<S: Send, B: BatchNode<S>>(
    node: &B,
    item: &B::Item,
    ctx: &Ctx,
) -> Result<B::Exec> {
    exec_with_retries(
        node.max_retries(),
        node.wait(),
        true,
        ctx,
        || node.exec(item, ctx),
        |err| node.exec_fallback(item, err, ctx),
    )
    .await
}

/// Runs a [`BatchNode`]'s items one after another (PocketFlow's `BatchNode`).
#[derive(Clone, Debug)]
pub struct Batch<B>(pub B);

#[async_trait]
impl<S: Send, B: BatchNode<S>> Node<S> for Batch<B> {
    type Prep = Vec<B::Item>;
    type Exec = Vec<B::Exec>;

    async fn prep(&self, shared: &mut S) -> Result<Vec<B::Item>> {
        self.0.prep(shared).await
    }

    async fn exec(&self, items: &Vec<B::Item>, ctx: &Ctx) -> Result<Vec<B::Exec>> {
        let mut results = Vec::with_capacity(items.len());
        for item in items {
            results.push(exec_item(&self.0, item, ctx).await?);
        }
        Ok(results)
    }

    async fn post(
        &self,
        shared: &mut S,
        items: Vec<B::Item>,
        results: Vec<B::Exec>,
    ) -> Result<Action> {
        self.0.post(shared, items, results).await
    }

    fn name(&self) -> &str {
        self.0.name()
    }
}

/// Runs a [`BatchNode`]'s items concurrently, at most `concurrency` at a time, keeping the results
/// in input order (PocketFlow's `AsyncParallelBatchNode`, bounded). The items run interleaved on
/// the flow's task (no spawning). The first item that fails for good fails the node and stops
/// the others.
#[derive(Clone, Debug)]
pub struct ParallelBatch<B> {
    inner: B,
    concurrency: usize,
}

impl<B> ParallelBatch<B> {
    /// Wraps `node`, running up to `concurrency` items at a time (0 is treated as 1).
    pub fn new(node: B, concurrency: usize) -> Self {
        ParallelBatch {
            inner: node,
            concurrency: concurrency.max(1),
        }
    }

    /// The concurrency bound.
    pub fn concurrency(&self) -> usize {
        self.concurrency
    }
}

#[async_trait]
impl<S: Send, B: BatchNode<S>> Node<S> for ParallelBatch<B> {
    type Prep = Vec<B::Item>;
    type Exec = Vec<B::Exec>;

    async fn prep(&self, shared: &mut S) -> Result<Vec<B::Item>> {
        self.inner.prep(shared).await
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
    ) -> Result<Action> {
        self.inner.post(shared, items, results).await
    }

    fn name(&self) -> &str {
        self.inner.name()
    }
}

type PrepFn<S, P> = dyn Fn(&mut S) -> Result<Vec<P>> + Send + Sync;
type InstallFn<S, P> = dyn Fn(&mut S, P) -> Result<()> + Send + Sync;

/// Runs a whole [`Flow`] once per parameter set (PocketFlow's `BatchFlow`).
///
/// `prep` reads the parameter sets from the shared store; before each run of the inner flow,
/// `install` puts that run's parameters into the shared store (where PocketFlow merges them into
/// the nodes' `params`). Runs are sequential, in order. The batch flow's action is
/// [`Action::DEFAULT`].
pub struct BatchFlow<S, P> {
    flow: Flow<S>,
    prep: Box<PrepFn<S, P>>,
    install: Box<InstallFn<S, P>>,
    name: Cow<'static, str>,
    _params: PhantomData<fn() -> P>,
}

impl<S, P> BatchFlow<S, P> {
    /// A batch flow over `flow`, named `"batch_flow"`.
    pub fn new(
        flow: Flow<S>,
        prep: impl Fn(&mut S) -> Result<Vec<P>> + Send + Sync + 'static,
        install: impl Fn(&mut S, P) -> Result<()> + Send + Sync + 'static,
    ) -> Self {
        BatchFlow {
            flow,
            prep: Box::new(prep),
            install: Box::new(install),
            name: Cow::Borrowed("batch_flow"),
            _params: PhantomData,
        }
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

#[async_trait]
impl<S: Send, P: Send> Node<S> for BatchFlow<S, P> {
    type Prep = ();
    type Exec = ();

    async fn prep(&self, _shared: &mut S) -> Result<()> {
        Ok(())
    }

    async fn exec(&self, _prep: &(), _ctx: &Ctx) -> Result<()> {
        Ok(())
    }

    fn name(&self) -> &str {
        &self.name
    }

    async fn run(&self, shared: &mut S, ctx: &Ctx) -> Result<Action> {
        let params = (self.prep)(shared)?;
        for (i, p) in params.into_iter().enumerate() {
            ctx.check()?;
            (self.install)(shared, p)?;
            let span = tracing::debug_span!("batch_run", index = i);
            tracing::Instrument::instrument(self.flow.run(shared, ctx), span).await?;
        }
        Ok(Action::DEFAULT)
    }
}
