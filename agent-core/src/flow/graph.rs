//! [`Flow`]: nodes, successors by action, and the run loop.

use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::future::BoxFuture;
use tracing::Instrument;

use super::{Action, Ctx, DynNode, IntoNode, Params};
use crate::{Error, Result};

/// A node's handle inside the [`Flow`] that returned it from [`Flow::add`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NodeId {
    flow: u64,
    index: usize,
}

static NEXT_FLOW_ID: AtomicU64 = AtomicU64::new(1);

struct Entry<S> {
    node: Arc<dyn DynNode<S>>,
    /// The node's name, asked once (a default name is derived from the type's name).
    name: Arc<str>,
    /// Successors by action: a handful per node, so a linear scan beats hashing.
    successors: Vec<(Action, usize)>,
}

impl<S> Clone for Entry<S> {
    fn clone(&self) -> Self {
        Entry {
            node: Arc::clone(&self.node),
            name: Arc::clone(&self.name),
            successors: self.successors.clone(),
        }
    }
}

type PrepHook<S> = dyn Fn(&mut S, &Ctx) -> Result<()> + Send + Sync;
type PostHook<S> = dyn Fn(&mut S, Action, &Ctx) -> Result<Action> + Send + Sync;

/// A graph of nodes run from a start node, following successors by action.
///
/// Build it with [`add`](Flow::add) (the first node added is the start node unless
/// [`set_start`](Flow::set_start) says otherwise) and [`connect`](Flow::connect), then
/// [`run`](Flow::run) it. A flow is itself a node ([`DynNode`]), so it can be added to another
/// flow; its result (by default the last action of its last node, or what its
/// [`post`](Flow::with_post) hook returns) then drives the outer flow. Cloning a flow is cheap
/// (its nodes are shared `Arc`s).
pub struct Flow<S> {
    id: u64,
    name: Cow<'static, str>,
    nodes: Vec<Entry<S>>,
    start: Option<usize>,
    transition_limit: usize,
    params: Params,
    prep: Option<Arc<PrepHook<S>>>,
    post: Option<Arc<PostHook<S>>>,
}

impl<S> Clone for Flow<S> {
    fn clone(&self) -> Self {
        Flow {
            id: self.id,
            name: self.name.clone(),
            nodes: self.nodes.clone(),
            start: self.start,
            transition_limit: self.transition_limit,
            params: self.params.clone(),
            prep: self.prep.clone(),
            post: self.post.clone(),
        }
    }
}

impl<S> fmt::Debug for Flow<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nodes: Vec<_> = self
            .nodes
            .iter()
            .map(|e| {
                let succ: Vec<_> = e
                    .successors
                    .iter()
                    .map(|(a, i)| (a.as_str(), &*self.nodes[*i].name))
                    .collect();
                (&*e.name, succ)
            })
            .collect();
        f.debug_struct("Flow")
            .field("name", &self.name)
            .field("start", &self.start.map(|i| &*self.nodes[i].name))
            .field("transition_limit", &self.transition_limit)
            .field("params", &self.params)
            .field("prep", &self.prep.is_some())
            .field("post", &self.post.is_some())
            .field("nodes", &nodes)
            .finish()
    }
}

impl<S> Default for Flow<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Flow<S> {
    /// The default maximum number of node transitions (node runs) in one run of a flow.
    pub const DEFAULT_TRANSITION_LIMIT: usize = 10_000;

    /// An empty flow named `"flow"`.
    pub fn new() -> Self {
        Flow {
            id: NEXT_FLOW_ID.fetch_add(1, Ordering::Relaxed),
            name: Cow::Borrowed("flow"),
            nodes: Vec::new(),
            start: None,
            transition_limit: Self::DEFAULT_TRANSITION_LIMIT,
            params: Params::new(),
            prep: None,
            post: None,
        }
    }

    /// Names the flow (its span name when nested in another flow).
    pub fn with_name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets the maximum number of node transitions (node runs) in one run of this flow — a
    /// guard against an endless loop, unrelated to a job's steps. A nested flow counts as one
    /// transition here and has its own limit. Past it the run fails with
    /// [`Error::TransitionLimitExceeded`]. 0 is treated as 1.
    pub fn with_transition_limit(mut self, limit: usize) -> Self {
        self.transition_limit = limit.max(1);
        self
    }

    /// The transition limit.
    pub fn transition_limit(&self) -> usize {
        self.transition_limit
    }

    /// The flow's own params (PocketFlow's `flow.set_params`). The flow's nodes run with the
    /// params the flow is run with merged over these (`{**own, **given}`): a parent flow's or a
    /// batch item's params win. (PocketFlow replaces a nested flow's own params with its
    /// parent's; here the keys only the nested flow has are kept.)
    pub fn with_params(mut self, params: Params) -> Self {
        self.params = params;
        self
    }

    /// The flow's own params.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// The flow's own `prep` (PocketFlow's `Flow.prep`): runs on the shared store before the
    /// start node.
    pub fn with_prep(
        mut self,
        prep: impl Fn(&mut S, &Ctx) -> Result<()> + Send + Sync + 'static,
    ) -> Self {
        self.prep = Some(Arc::new(prep));
        self
    }

    /// The flow's own `post` (PocketFlow's `Flow.post`): gets the last node's action after the
    /// last node; what it returns is the flow's result — the action a parent flow follows.
    /// Without it the flow returns the last action.
    pub fn with_post(
        mut self,
        post: impl Fn(&mut S, Action, &Ctx) -> Result<Action> + Send + Sync + 'static,
    ) -> Self {
        self.post = Some(Arc::new(post));
        self
    }

    /// Adds a node — any [`Node`](super::Node), or a [`DynNode`] such as another flow; the
    /// first node added becomes the start node.
    pub fn add<M, N: IntoNode<S, M>>(&mut self, node: N) -> NodeId {
        self.add_shared(node.into_node())
    }

    /// Adds a node that is shared with other flows.
    pub fn add_shared(&mut self, node: Arc<dyn DynNode<S>>) -> NodeId {
        let index = self.nodes.len();
        let name = Arc::from(node.node_name());
        self.nodes.push(Entry {
            node,
            name,
            successors: Vec::new(),
        });
        if self.start.is_none() {
            self.start = Some(index);
        }
        NodeId {
            flow: self.id,
            index,
        }
    }

    fn index(&self, id: NodeId, field: &str) -> Result<usize> {
        if id.flow != self.id || id.index >= self.nodes.len() {
            return Err(Error::invalid(field, "the node id belongs to another flow"));
        }
        Ok(id.index)
    }

    /// Makes `node` the start node.
    pub fn set_start(&mut self, node: NodeId) -> Result<()> {
        self.start = Some(self.index(node, "start")?);
        Ok(())
    }

    /// After `from` returns `action`, run `to`. Replacing an existing successor logs a warning
    /// (like PocketFlow). Fails when an id comes from another flow. An empty action is
    /// [`Action::DEFAULT`].
    pub fn connect(&mut self, from: NodeId, action: impl Into<Action>, to: NodeId) -> Result<()> {
        let from = self.index(from, "from")?;
        let to = self.index(to, "to")?;
        let action = action.into();
        let entry = &mut self.nodes[from];
        if let Some(slot) = entry.successors.iter_mut().find(|(a, _)| *a == action) {
            tracing::warn!(action = %action, node = &*entry.name, "overwriting successor");
            slot.1 = to;
        } else {
            entry.successors.push((action, to));
        }
        Ok(())
    }

    /// After `from` returns [`Action::DEFAULT`], run `to`.
    pub fn connect_default(&mut self, from: NodeId, to: NodeId) -> Result<()> {
        self.connect(from, Action::DEFAULT, to)
    }

    /// Runs the flow: its `prep` hook, the nodes from the start node, its `post` hook. Returns
    /// the `post` hook's action, or without one the last node's action.
    ///
    /// The nodes run with `ctx`'s params merged over the flow's own ([`Flow::with_params`]).
    ///
    /// Errors: the first error of a node or hook; [`Error::Cancelled`] when `ctx` is cancelled;
    /// [`Error::TransitionLimitExceeded`] past the transition limit; [`Error::InvalidInput`] for
    /// an empty flow.
    pub async fn run(&self, shared: &mut S, ctx: &Ctx) -> Result<Action> {
        let Some(start) = self.start else {
            return Err(Error::invalid("flow", "the flow has no nodes"));
        };
        let merged;
        let ctx = if self.params.is_empty() {
            ctx
        } else {
            merged = ctx.clone().with_params(self.params.merged(ctx.params()));
            &merged
        };
        if let Some(prep) = &self.prep {
            ctx.check()?;
            prep(shared, ctx)?;
        }
        // PocketFlow's `_orch`: follow the successors from the start node until an action has
        // none. (Inline: a nested future of its own costs every run.)
        let mut current = start;
        let mut transitions = 0usize;
        let last = loop {
            ctx.check()?;
            transitions += 1;
            if transitions > self.transition_limit {
                return Err(Error::TransitionLimitExceeded {
                    limit: self.transition_limit,
                });
            }
            let entry = &self.nodes[current];
            let run = entry.node.run_dyn(shared, ctx);
            // Without any tracing subscriber no span can be enabled: none is made (with
            // tracing's `log` feature a disabled span still records its fields for `log`, which
            // would cost more than the rest of the transition), and a disabled one is not
            // entered at every poll.
            let action = if tracing::dispatcher::has_been_set() {
                let span = tracing::info_span!("node", name = &*entry.name);
                if span.is_disabled() {
                    run.await?
                } else {
                    run.instrument(span).await?
                }
            } else {
                run.await?
            };
            match entry.successors.iter().find(|(a, _)| *a == action) {
                Some(&(_, next)) => current = next,
                None => {
                    if !entry.successors.is_empty() {
                        tracing::warn!(
                            action = %action,
                            node = &*entry.name,
                            successors = ?entry.successors.iter().map(|(a, _)| a.as_str()).collect::<Vec<_>>(),
                            "flow ends: no successor for the action",
                        );
                    }
                    break action;
                }
            }
        };
        match &self.post {
            Some(post) => post(shared, last, ctx),
            None => Ok(last),
        }
    }
}

/// A flow is a node of its parent flow: its run is [`Flow::run`].
impl<S: Send> DynNode<S> for Flow<S> {
    fn run_dyn<'a>(&'a self, shared: &'a mut S, ctx: &'a Ctx) -> BoxFuture<'a, Result<Action>> {
        Box::pin(self.run(shared, ctx))
    }

    fn node_name(&self) -> &str {
        &self.name
    }
}
