//! The PocketFlow-style async Node/Flow engine (PocketFlow's whole semantics; see the tests in
//! `agent-core/tests/flow.rs`, one per behaviour).
//!
//! A [`Node`] runs in three phases, exactly like PocketFlow's (`prep → exec → post`):
//!
//! - [`Node::prep`] reads the typed shared store `S` and produces the input of `exec`;
//! - [`Node::exec`] does the work. It gets no access to the shared store, and it may run several
//!   times: [`Node::max_attempts`] (PocketFlow's `max_retries`) is the *total* number of
//!   attempts (1 = no retry; 0 = none, the fallback answers), with [`Node::wait`] between
//!   attempts, and [`Ctx::attempt`] (PocketFlow's `cur_retry`) says which attempt is running;
//!   after the last failed attempt [`Node::exec_fallback`] runs (by default it returns the error);
//! - [`Node::post`] writes results back into the store and returns an [`Action`]. A node that does
//!   not override `post` returns [`Action::DEFAULT`] (`"default"`), PocketFlow's "absent action";
//!   an empty action is the default action too.
//!
//! Every phase gets a [`Ctx`]: the run's [`CancellationToken`] (the engine checks it between nodes
//! and between retry attempts, and races a running `exec` against it, returning
//! [`Error::Cancelled`](crate::Error::Cancelled)) and the [`Params`] the node runs with
//! (PocketFlow's `node.params`, handed down by the flow).
//!
//! A [`Flow`] holds nodes (as `Arc<dyn DynNode<S>>`) and successors by action. It runs its own
//! prep hook ([`Flow::with_prep`]), then starts at its start node and follows
//! `successors[action]`; when there is no successor for an action the flow ends (with a warning
//! when the node had successors but none matched); its result is what its post hook
//! ([`Flow::with_post`]) makes of the last action, by default the last action itself. A flow is
//! itself a node ([`DynNode`], which composites implement directly), so flows nest, and a nested
//! flow's result is the action its parent follows. A transition limit (default
//! [`Flow::DEFAULT_TRANSITION_LIMIT`] node runs) turns an accidental endless loop into
//! [`Error::TransitionLimitExceeded`](crate::Error::TransitionLimitExceeded). Each node run is
//! one `tracing` span named `node` with the node's name; retry attempts are logged at debug level.
//!
//! Batches: [`BatchNode`] (`prep` returns items, `exec` per item with retries, `post` gets all
//! results in input order) runs through [`Batch`], sequentially or with bounded concurrency
//! ([`Batch::with_concurrency`]); [`BatchFlow`] runs a whole flow once per parameter set,
//! in order, on the shared store; [`ParallelBatchFlow`] runs the flow once per item concurrently,
//! each run on a typed child state that its `post` merges back into the store.
//!
//! Nodes implement the phases with plain `async fn`s (no `#[async_trait]`): a node run costs one
//! allocation (two for a node that retries), and a transition under 100 ns (`benches/flow.rs`).
//!
//! # Example
//!
//! ```
//! use agent_core::flow::{Action, Ctx, Flow, Node};
//! use agent_core::Result;
//!
//! #[derive(Default)]
//! struct Shared {
//!     numbers: Vec<i64>,
//!     total: i64,
//! }
//!
//! /// Sums the numbers; says "big" when the total exceeds 10.
//! struct Sum;
//!
//! impl Node<Shared> for Sum {
//!     type Prep = Vec<i64>;
//!     type Exec = i64;
//!
//!     async fn prep(&self, shared: &mut Shared, _ctx: &Ctx) -> Result<Vec<i64>> {
//!         Ok(shared.numbers.clone())
//!     }
//!     async fn exec(&self, numbers: &Vec<i64>, _ctx: &Ctx) -> Result<i64> {
//!         Ok(numbers.iter().sum())
//!     }
//!     async fn post(&self, shared: &mut Shared, _: Vec<i64>, total: i64, _: &Ctx) -> Result<Action> {
//!         shared.total = total;
//!         Ok(if total > 10 { Action::new("big") } else { Action::DEFAULT })
//!     }
//! }
//!
//! /// Halves the total (and ends the flow: it has no successors).
//! struct Halve;
//!
//! impl Node<Shared> for Halve {
//!     type Prep = i64;
//!     type Exec = i64;
//!
//!     async fn prep(&self, shared: &mut Shared, _ctx: &Ctx) -> Result<i64> {
//!         Ok(shared.total)
//!     }
//!     async fn exec(&self, total: &i64, _ctx: &Ctx) -> Result<i64> {
//!         Ok(total / 2)
//!     }
//!     async fn post(&self, shared: &mut Shared, _: i64, half: i64, _: &Ctx) -> Result<Action> {
//!         shared.total = half;
//!         Ok(Action::new("halved"))
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<()> {
//! let mut flow = Flow::new();
//! let sum = flow.add(Sum); // the first node added is the start node
//! let halve = flow.add(Halve);
//! flow.connect(sum, "big", halve)?;
//!
//! let mut shared = Shared { numbers: vec![4, 5, 6], total: 0 };
//! let last = flow.run(&mut shared, &Ctx::new()).await?;
//! assert_eq!(last, "halved");
//! assert_eq!(shared.total, 7);
//! # Ok(())
//! # }
//! ```

mod batch;
mod ctx;
mod graph;
mod node;

use std::borrow::Cow;
use std::fmt;

pub use tokio_util::sync::CancellationToken;

pub use batch::{Batch, BatchFlow, BatchNode, ParallelBatchFlow};
pub use ctx::{Ctx, Params};
pub use graph::{Flow, NodeId};
pub use node::{AsDynNode, AsNode, AsPostNode, DynNode, IntoNode, Node, PostNode};

/// What a node's `post` returns; it selects the successor. Cheap to create from a `&'static str`.
#[derive(Clone, Eq, PartialOrd, Ord)]
pub struct Action(Cow<'static, str>);

impl std::hash::Hash for Action {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

impl PartialEq for Action {
    #[inline]
    fn eq(&self, other: &Action) -> bool {
        let (a, b) = (self.as_str(), other.as_str());
        // The same static string (the usual case: constants) compares without reading it.
        (a.as_ptr() == b.as_ptr() && a.len() == b.len()) || a == b
    }
}

impl Action {
    /// The action of a node that names none: `"default"`.
    pub const DEFAULT: Action = Action(Cow::Borrowed("default"));

    /// An action from a static string (no allocation) or an owned one. An empty name is
    /// [`Action::DEFAULT`], like PocketFlow's `action or "default"`.
    pub fn new(name: impl Into<Cow<'static, str>>) -> Self {
        let name = name.into();
        if name.is_empty() {
            Action::DEFAULT
        } else {
            Action(name)
        }
    }

    /// The action's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is [`Action::DEFAULT`].
    pub fn is_default(&self) -> bool {
        self.as_str() == "default"
    }
}

impl Default for Action {
    fn default() -> Self {
        Action::DEFAULT
    }
}

impl fmt::Debug for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&'static str> for Action {
    /// See [`Action::new`] (`""` is the default action).
    fn from(name: &'static str) -> Self {
        Action::new(name)
    }
}

impl From<String> for Action {
    /// See [`Action::new`] (`""` is the default action).
    fn from(name: String) -> Self {
        Action::new(name)
    }
}

impl From<Option<Action>> for Action {
    /// `None` (an absent action) is [`Action::DEFAULT`].
    fn from(action: Option<Action>) -> Self {
        action.unwrap_or_default()
    }
}

impl AsRef<str> for Action {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq<str> for Action {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Action {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}
