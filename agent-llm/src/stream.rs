//! The loop both protocols share to turn a streamed (SSE) answer into a [`ChatStream`]: each
//! provider says only how it reads one event ([`Dialect`]).

use agent_core::llm::ChatStream;
use agent_core::{ChatChunk, LlmError, LlmErrorKind, SecretString, TokenUsage};
use eventsource_stream::Event;
use futures::stream::{self, BoxStream, StreamExt};
use serde::de::DeserializeOwned;

use crate::http;

/// What one streamed event carries.
#[derive(Default)]
pub(crate) struct Piece {
    /// Answer text (empty: none in this event).
    pub text: String,
    /// The model that answered, when the event names it.
    pub model: Option<String>,
    /// The usage so far, when the event reports it.
    pub usage: Option<TokenUsage>,
    /// Why the answer ended, in the event that ends it.
    pub finish_reason: Option<String>,
}

/// How a provider's streamed answer reads.
pub(crate) trait Dialect: Send + 'static {
    /// The JSON of one event.
    type Chunk: DeserializeOwned;
    /// Whether `data` is the end-of-answer marker (OpenAI's `[DONE]`).
    fn is_end(&self, data: &str) -> bool;
    /// What an event says; an error (an `error` object, a blocked answer) ends the stream.
    /// `data` is the event's raw JSON.
    fn piece(&self, provider: &str, data: &str, chunk: Self::Chunk) -> Result<Piece, LlmError>;
    /// The message of the error when the body ends before any finish reason.
    fn cut_short(&self) -> &'static str;
    /// The message of the error when the answer ended without text.
    fn no_text(&self, finish_reason: Option<&str>) -> String;
}

/// The streamed answer in `response`: text deltas, then one [`ChatChunk::Done`]. `model` is the
/// name reported until an event names the model that answered.
pub(crate) fn chat_stream<D: Dialect>(
    dialect: D,
    provider: String,
    model: String,
    key: Option<SecretString>,
    response: reqwest::Response,
) -> ChatStream {
    let state = StreamState {
        events: http::sse_events(provider.clone(), key.clone(), response),
        dialect,
        provider,
        model,
        usage: TokenUsage::default(),
        finish_reason: None,
        saw_text: false,
        done: false,
        key,
    };
    stream::unfold(state, |mut st| async move {
        let item = st.next_chunk().await?;
        Some((item, st))
    })
    .boxed()
}

struct StreamState<D> {
    events: BoxStream<'static, Result<Event, LlmError>>,
    dialect: D,
    provider: String,
    model: String,
    usage: TokenUsage,
    finish_reason: Option<String>,
    saw_text: bool,
    done: bool,
    key: Option<SecretString>,
}

impl<D: Dialect> StreamState<D> {
    fn finish(&mut self) -> Option<Result<ChatChunk, LlmError>> {
        if !self.saw_text {
            let message = self.dialect.no_text(self.finish_reason.as_deref());
            return self.fail(http::invalid(&self.provider, message));
        }
        self.done = true;
        Some(Ok(ChatChunk::Done {
            provider: self.provider.clone(),
            model: self.model.clone(),
            usage: self.usage,
        }))
    }

    fn fail(&mut self, err: LlmError) -> Option<Result<ChatChunk, LlmError>> {
        self.done = true;
        Some(Err(http::scrub(err, self.key.as_ref())))
    }

    async fn next_chunk(&mut self) -> Option<Result<ChatChunk, LlmError>> {
        loop {
            if self.done {
                return None;
            }
            let event = match self.events.next().await {
                Some(Ok(event)) => event,
                Some(Err(e)) => return self.fail(e),
                // A body that ends after the finishing event ends the answer (Gemini has no end
                // marker; some OpenAI-compatible servers omit `[DONE]`); one cut before any
                // finish reason is a broken connection.
                None if self.finish_reason.is_some() => return self.finish(),
                None => {
                    let err = LlmError::new(
                        LlmErrorKind::Transient,
                        self.provider.as_str(),
                        self.dialect.cut_short(),
                    );
                    return self.fail(err);
                }
            };
            let data = event.data.trim();
            if data.is_empty() {
                continue;
            }
            if self.dialect.is_end(data) {
                return self.finish();
            }
            let piece = serde_json::from_str(data)
                .map_err(|e| http::invalid(&self.provider, format!("malformed stream chunk: {e}")))
                .and_then(|chunk| self.dialect.piece(&self.provider, data, chunk));
            let piece = match piece {
                Ok(piece) => piece,
                Err(e) => return self.fail(e),
            };
            if let Some(model) = piece.model.filter(|m| !m.is_empty()) {
                self.model = model;
            }
            if let Some(usage) = piece.usage {
                self.usage = usage;
            }
            if piece.finish_reason.is_some() {
                self.finish_reason = piece.finish_reason;
            }
            if !piece.text.is_empty() {
                self.saw_text = true;
                return Some(Ok(ChatChunk::Delta(piece.text)));
            }
        }
    }
}
