//! The PocketFlow-style async Node/Flow engine.
//!
//! A [`Node`] runs in three phases, exactly like PocketFlow's (`prep → exec → post`):
//!
//! - [`Node::prep`] reads the typed shared store `S` and produces the input of `exec`;
//! - [`Node::exec`] does the work. It gets no access to the shared store, and it may run several
//!   times: [`Node::max_retries`] is the *total* number of attempts (1 = no retry), with
//!   [`Node::wait`] between attempts; after the last failed attempt [`Node::exec_fallback`] runs
//!   (by default it returns the error);
//! - [`Node::post`] writes results back into the store and returns an [`Action`]. A node that does
//!   not override `post` returns [`Action::DEFAULT`] (`"default"`), PocketFlow's "absent action".
//!
//! A [`Flow`] holds nodes (as `Arc<dyn DynNode<S>>`) and successors by action. It starts at its
//! start node and follows `successors[action]`; when there is no successor for an action the flow
//! ends (with a warning when the node had successors but none matched) and its result is the last
//! action. A [`Flow`] is itself a [`Node`], so flows nest. A step limit (default
//! [`Flow::DEFAULT_STEP_LIMIT`]) turns an accidental endless loop into
//! [`Error::StepLimitExceeded`](crate::Error::StepLimitExceeded).
//!
//! Every run gets a [`Ctx`] carrying a [`CancellationToken`]: the engine checks it between nodes and
//! between retry attempts, and races a running `exec` against it, returning
//! [`Error::Cancelled`](crate::Error::Cancelled). Each node run is one `tracing` span named `node`
//! with the node's name; retry attempts are logged at debug level.
//!
//! Batches: [`BatchNode`] (`prep` returns items, `exec` per item with retries, `post` gets all
//! results in input order) runs sequentially through [`Batch`] or concurrently with bounded
//! concurrency through [`ParallelBatch`]; [`BatchFlow`] runs a whole flow once per parameter set.
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
//! #[async_trait::async_trait]
//! impl Node<Shared> for Sum {
//!     type Prep = Vec<i64>;
//!     type Exec = i64;
//!
//!     async fn prep(&self, shared: &mut Shared) -> Result<Vec<i64>> {
//!         Ok(shared.numbers.clone())
//!     }
//!     async fn exec(&self, numbers: &Vec<i64>, _ctx: &Ctx) -> Result<i64> {
//!         Ok(numbers.iter().sum())
//!     }
//!     async fn post(&self, shared: &mut Shared, _prep: Vec<i64>, total: i64) -> Result<Action> {
//!         shared.total = total;
//!         Ok(if total > 10 { Action::new("big") } else { Action::DEFAULT })
//!     }
//! }
//!
//! /// Halves the total (and ends the flow: it has no successors).
//! struct Halve;
//!
//! #[async_trait::async_trait]
//! impl Node<Shared> for Halve {
//!     type Prep = i64;
//!     type Exec = i64;
//!
//!     async fn prep(&self, shared: &mut Shared) -> Result<i64> {
//!         Ok(shared.total)
//!     }
//!     async fn exec(&self, total: &i64, _ctx: &Ctx) -> Result<i64> {
//!         Ok(total / 2)
//!     }
//!     async fn post(&self, shared: &mut Shared, _prep: i64, half: i64) -> Result<Action> {
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
mod graph;
mod node;

use std::borrow::Cow;
use std::fmt;

pub use tokio_util::sync::CancellationToken;

pub use batch::{Batch, BatchFlow, BatchNode, ParallelBatch};
pub use graph::{Flow, NodeId};
pub use node::{DynNode, Node};

/// What a node's `post` returns; it selects the successor. Cheap to create from a `&'static str`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Action(Cow<'static, str>);

impl Action {
    /// The action of a node that names none: `"default"`.
    pub const DEFAULT: Action = Action(Cow::Borrowed("default"));

    /// An action from a static string (no allocation) or an owned one.
    pub fn new(name: impl Into<Cow<'static, str>>) -> Self {
        Action(name.into())
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
    fn from(name: &'static str) -> Self {
        Action(Cow::Borrowed(name))
    }
}

impl From<String> for Action {
    fn from(name: String) -> Self {
        Action(Cow::Owned(name))
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

/// The run context handed to every node: cheap to clone.
///
/// It carries the [`CancellationToken`] of the run. The engine checks it between nodes and between
/// retry attempts and races every `exec` against it; a long `exec` may also watch it itself
/// ([`Ctx::cancelled`]).
#[derive(Clone, Debug, Default)]
pub struct Ctx {
    cancel: CancellationToken,
}

impl Ctx {
    /// A context with a fresh (never cancelled unless you cancel it) token.
    pub fn new() -> Self {
        Self::default()
    }

    /// A context using `token` for cancellation.
    pub fn with_cancel(token: CancellationToken) -> Self {
        Ctx { cancel: token }
    }

    /// The cancellation token of this run.
    pub fn cancel_token(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Whether the run was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Completes when the run is cancelled.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await
    }

    /// A context whose token is a child of this one: cancelling the parent cancels the child,
    /// cancelling the child leaves the parent running.
    pub fn child(&self) -> Self {
        Ctx {
            cancel: self.cancel.child_token(),
        }
    }

    /// `Err(Error::Cancelled)` when the run was cancelled.
    pub fn check(&self) -> crate::Result<()> {
        if self.is_cancelled() {
            Err(crate::Error::Cancelled)
        } else {
            Ok(())
        }
    }
}
