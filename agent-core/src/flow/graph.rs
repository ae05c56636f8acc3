//! [`Flow`]: nodes, successors by action, and the run loop.

use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use tracing::Instrument;

use super::{Action, Ctx, DynNode, Node};
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
    /// Successors by action: a handful per node, so a linear scan beats hashing.
    successors: Vec<(Action, usize)>,
}

impl<S> Clone for Entry<S> {
    fn clone(&self) -> Self {
        Entry {
            node: Arc::clone(&self.node),
            successors: self.successors.clone(),
        }
    }
}

/// A graph of nodes run from a start node, following successors by action.
///
/// Build it with [`add`](Flow::add) (the first node added is the start node unless
/// [`set_start`](Flow::set_start) says otherwise) and [`connect`](Flow::connect), then
/// [`run`](Flow::run) it. A flow is itself a [`Node`], so it can be added to another flow; its
/// result (the last action of its last node) then drives the outer flow. Cloning a flow is cheap
/// (its nodes are shared `Arc`s).
pub struct Flow<S> {
    id: u64,
    name: Cow<'static, str>,
    nodes: Vec<Entry<S>>,
    start: Option<usize>,
    step_limit: usize,
}

impl<S> Clone for Flow<S> {
    fn clone(&self) -> Self {
        Flow {
            id: self.id,
            name: self.name.clone(),
            nodes: self.nodes.clone(),
            start: self.start,
            step_limit: self.step_limit,
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
                    .map(|(a, i)| (a.as_str(), self.nodes[*i].node.node_name()))
                    .collect();
                (e.node.node_name(), succ)
            })
            .collect();
        f.debug_struct("Flow")
            .field("name", &self.name)
            .field("start", &self.start.map(|i| self.nodes[i].node.node_name()))
            .field("step_limit", &self.step_limit)
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
    /// The default maximum number of node runs in one run of a flow.
    pub const DEFAULT_STEP_LIMIT: usize = 10_000;

    /// An empty flow named `"flow"`.
    pub fn new() -> Self {
        Flow {
            id: NEXT_FLOW_ID.fetch_add(1, Ordering::Relaxed),
            name: Cow::Borrowed("flow"),
            nodes: Vec::new(),
            start: None,
            step_limit: Self::DEFAULT_STEP_LIMIT,
        }
    }

    /// Names the flow (its span name when nested in another flow).
    pub fn with_name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets the maximum number of node runs in one run of this flow (nested flows count as one
    /// run here and have their own limit); past it the run fails with
    /// [`Error::StepLimitExceeded`]. 0 is treated as 1.
    pub fn with_step_limit(mut self, limit: usize) -> Self {
        self.step_limit = limit.max(1);
        self
    }

    /// The step limit.
    pub fn step_limit(&self) -> usize {
        self.step_limit
    }

    /// Adds a node (any [`Node`], including another flow); the first node added becomes the start
    /// node.
    pub fn add<N: DynNode<S> + 'static>(&mut self, node: N) -> NodeId {
        self.add_shared(Arc::new(node))
    }

    /// Adds a node that is shared with other flows.
    pub fn add_shared(&mut self, node: Arc<dyn DynNode<S>>) -> NodeId {
        let index = self.nodes.len();
        self.nodes.push(Entry {
            node,
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
    /// (like PocketFlow). Fails when an id comes from another flow.
    pub fn connect(&mut self, from: NodeId, action: impl Into<Action>, to: NodeId) -> Result<()> {
        let from = self.index(from, "from")?;
        let to = self.index(to, "to")?;
        let action = action.into();
        let entry = &mut self.nodes[from];
        if let Some(slot) = entry.successors.iter_mut().find(|(a, _)| *a == action) {
            tracing::warn!(action = %action, node = entry.node.node_name(), "overwriting successor");
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

    /// Runs the flow from its start node; returns the last node's action.
    ///
    /// Errors: the first error of a node; [`Error::Cancelled`] when `ctx` is cancelled;
    /// [`Error::StepLimitExceeded`] past the step limit; [`Error::InvalidInput`] for an empty flow.
    pub async fn run(&self, shared: &mut S, ctx: &Ctx) -> Result<Action> {
        let Some(mut current) = self.start else {
            return Err(Error::invalid("flow", "the flow has no nodes"));
        };
        let mut steps = 0usize;
        loop {
            ctx.check()?;
            steps += 1;
            if steps > self.step_limit {
                return Err(Error::StepLimitExceeded {
                    limit: self.step_limit,
                });
            }
            let entry = &self.nodes[current];
            let span = tracing::info_span!("node", name = entry.node.node_name());
            let action = entry.node.run_dyn(shared, ctx).instrument(span).await?;
            match entry
                .successors
                .iter()
                .find(|(a, _)| a.as_str() == action.as_str())
            {
                Some(&(_, next)) => current = next,
                None => {
                    if !entry.successors.is_empty() {
                        tracing::warn!(
                            action = %action,
                            node = entry.node.node_name(),
                            successors = ?entry.successors.iter().map(|(a, _)| a.as_str()).collect::<Vec<_>>(),
                            "flow ends: no successor for the action",
                        );
                    }
                    return Ok(action);
                }
            }
        }
    }
}

/// A flow is a node: `prep`, `exec` and `post` are no-ops and [`Node::run`] runs the flow.
#[async_trait]
impl<S: Send> Node<S> for Flow<S> {
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
        Flow::run(self, shared, ctx).await
    }
}
