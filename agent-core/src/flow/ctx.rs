//! [`Ctx`], the run context every node phase gets, and [`Params`], PocketFlow's node params.

use std::fmt;
use std::sync::Arc;

use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use crate::{Error, Result};

/// The params a flow hands to its nodes: PocketFlow's `node.params`, a map from names to JSON
/// values. Cheap to clone (shared); empty params allocate nothing.
///
/// A flow runs its nodes with the params it was run with merged over its own
/// ([`Flow::with_params`](super::Flow::with_params)); a batch flow runs its flow once per
/// parameter set, each merged over the batch flow's params (`{**self.params, **bp}`). Nodes read
/// them from [`Ctx::params`] in any phase.
#[derive(Clone, Default, PartialEq)]
pub struct Params(Option<Arc<Map<String, Value>>>);

impl Params {
    /// No params.
    pub fn new() -> Self {
        Params(None)
    }

    /// These params with `key` set to `value` (replacing an existing value).
    pub fn with(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.insert(key, value);
        self
    }

    /// Sets `key` to `value`, replacing an existing value.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<Value>) {
        let map = Arc::make_mut(self.0.get_or_insert_with(Arc::default));
        map.insert(key.into(), value.into());
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.as_ref().and_then(|m| m.get(key))
    }

    /// The value of `key` when it is a string.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }

    /// Whether there are no params.
    pub fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|m| m.is_empty())
    }

    /// The number of params.
    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |m| m.len())
    }

    /// The params, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.0
            .iter()
            .flat_map(|m| m.iter().map(|(k, v)| (k.as_str(), v)))
    }

    /// `{**self, **over}`: these params with every param of `over` set over them. Shares instead
    /// of copying when either side is empty.
    pub fn merged(&self, over: &Params) -> Params {
        match (&self.0, &over.0) {
            (_, None) => self.clone(),
            (None, Some(_)) => over.clone(),
            (Some(_), Some(o)) if o.is_empty() => self.clone(),
            (Some(base), Some(o)) => {
                let mut map = Map::clone(base);
                for (k, v) in o.iter() {
                    map.insert(k.clone(), v.clone());
                }
                Params(Some(Arc::new(map)))
            }
        }
    }
}

impl fmt::Debug for Params {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl From<Map<String, Value>> for Params {
    fn from(map: Map<String, Value>) -> Self {
        Params((!map.is_empty()).then(|| Arc::new(map)))
    }
}

impl TryFrom<Value> for Params {
    type Error = Error;

    /// A JSON object becomes params; anything else is [`Error::InvalidInput`].
    fn try_from(value: Value) -> Result<Self> {
        match value {
            Value::Object(map) => Ok(map.into()),
            other => Err(Error::invalid(
                "params",
                format!("params must be a JSON object, not {other}"),
            )),
        }
    }
}

impl<K: Into<String>, V: Into<Value>> FromIterator<(K, V)> for Params {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let map: Map<String, Value> = iter
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        map.into()
    }
}

/// The run context handed to every node phase: cheap to clone.
///
/// It carries the [`CancellationToken`] of the run, the [`Params`] the node runs with, and — in
/// `exec` — the number of the attempt. The engine checks the token between nodes and between
/// retry attempts and races every `exec` against it; a long `exec` may also watch it itself
/// ([`Ctx::cancelled`]).
#[derive(Clone, Debug, Default)]
pub struct Ctx {
    cancel: CancellationToken,
    params: Params,
    /// 0-based, like PocketFlow's `cur_retry`.
    retry: u32,
}

impl Ctx {
    /// A context with a fresh (never cancelled unless you cancel it) token and no params.
    pub fn new() -> Self {
        Self::default()
    }

    /// A context using `token` for cancellation.
    pub fn with_cancel(token: CancellationToken) -> Self {
        Ctx {
            cancel: token,
            ..Ctx::default()
        }
    }

    /// This context with `params` instead of its own.
    pub fn with_params(mut self, params: Params) -> Self {
        self.params = params;
        self
    }

    /// The params the node runs with.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// The number of the current attempt of `exec`, from 1 to the node's
    /// [`max_attempts`](super::Node::max_attempts) (PocketFlow's `cur_retry + 1`); 1 outside `exec`.
    #[doc(alias = "cur_retry")]
    pub fn attempt(&self) -> u32 {
        self.retry.saturating_add(1)
    }

    /// This context for attempt `retry + 1`; borrowed when it already is.
    pub(crate) fn for_retry(&self, retry: u32) -> std::borrow::Cow<'_, Ctx> {
        if self.retry == retry {
            std::borrow::Cow::Borrowed(self)
        } else {
            std::borrow::Cow::Owned(Ctx {
                retry,
                ..self.clone()
            })
        }
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

    /// A context whose token is a child of this one (cancelling the parent cancels the child,
    /// cancelling the child leaves the parent running), with the same params.
    pub fn child(&self) -> Self {
        Ctx {
            cancel: self.cancel.child_token(),
            params: self.params.clone(),
            retry: 0,
        }
    }

    /// `Err(Error::Cancelled)` when the run was cancelled.
    pub fn check(&self) -> Result<()> {
        if self.is_cancelled() {
            Err(Error::Cancelled)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn params_merge_like_a_dict_update() {
        let base = Params::new().with("a", 1).with("b", "x");
        let over = Params::new().with("b", "y").with("c", true);
        let merged = base.merged(&over);
        assert_eq!(merged.get("a"), Some(&json!(1)));
        assert_eq!(merged.get_str("b"), Some("y"));
        assert_eq!(merged.get("c"), Some(&json!(true)));
        assert_eq!(merged.len(), 3);
        // The inputs are unchanged.
        assert_eq!(base.get_str("b"), Some("x"));
        assert!(Params::new().merged(&Params::new()).is_empty());
        assert_eq!(Params::new().merged(&over), over);
        assert_eq!(base.merged(&Params::new()), base);
    }

    #[test]
    fn params_from_json() {
        let p = Params::try_from(json!({"file": "a.txt"})).unwrap();
        assert_eq!(p.get_str("file"), Some("a.txt"));
        assert!(Params::try_from(json!([1])).is_err());
        assert!(Params::try_from(json!({})).unwrap().is_empty());
        let p: Params = [("k", 1)].into_iter().collect();
        assert_eq!(format!("{p:?}"), r#"{"k": Number(1)}"#);
    }
}
