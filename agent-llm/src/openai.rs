//! The OpenAI chat-completions protocol: Alchemyst and any OpenAI-compatible server (Ollama, vLLM,
//! llama.cpp server, LM Studio).

use agent_core::llm::{ChatStream, Role};
use agent_core::{ChatRequest, ChatResponse, LlmError, LlmErrorKind, LlmProvider, TokenUsage};
use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::http::{self, HttpOptions};
use crate::stream::{chat_stream, Dialect, Piece};
use agent_core::SecretString;

/// Alchemyst's default base URL (its OpenAI-compatible proxy).
pub const ALCHEMYST_DEFAULT_BASE_URL: &str =
    "https://platform-backend.getalchemystai.com/api/v1/proxy/default";
/// Alchemyst's default model.
pub const ALCHEMYST_DEFAULT_MODEL: &str = "alchemyst-ai/alchemyst-c1";
/// The model asked of a generic OpenAI-compatible server when `OPENAI_MODEL` is not set.
pub const OPENAI_DEFAULT_MODEL: &str = "gpt-4o-mini";

/// Settings of an [`OpenAiCompatible`] provider.
#[derive(Clone, Debug)]
pub struct OpenAiConfig {
    /// The name recorded in answers and errors (`"alchemyst"`, `"openai"`, …).
    pub name: String,
    /// The base URL; requests go to `{base_url}/chat/completions`.
    pub base_url: String,
    /// The key sent as `Authorization: Bearer …`; none for servers without auth.
    pub api_key: Option<SecretString>,
    /// The model name sent in each request.
    pub model: String,
    /// Timeouts.
    pub http: HttpOptions,
    /// Ask for usage in streamed answers (`stream_options.include_usage`). On by default; turn it
    /// off for a server that rejects the field.
    pub stream_usage: bool,
    /// Send a request's [`response_schema`](ChatRequest::response_schema) as
    /// `response_format: {"type":"json_schema",…}` (OpenAI, vLLM, llama.cpp server, Ollama do);
    /// when off, only `{"type":"json_object"}` is asked for. On for [`OpenAiConfig::openai`], off
    /// for [`OpenAiConfig::alchemyst`] (its proxy is not known to support it).
    pub json_schema: bool,
}

impl OpenAiConfig {
    /// A provider named `name` at `base_url`, asking for `model`, without a key.
    pub fn new(
        name: impl Into<String>,
        base_url: impl Into<String>,
        model: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            base_url: base_url.into(),
            api_key: None,
            model: model.into(),
            http: HttpOptions::default(),
            stream_usage: true,
            json_schema: true,
        }
    }

    /// Alchemyst with its default base URL and model.
    pub fn alchemyst(api_key: impl Into<SecretString>) -> Self {
        Self::new(
            "alchemyst",
            ALCHEMYST_DEFAULT_BASE_URL,
            ALCHEMYST_DEFAULT_MODEL,
        )
        .with_api_key(api_key)
        .with_json_schema(false)
    }

    /// A generic OpenAI-compatible server (name `"openai"`) at `base_url`.
    pub fn openai(base_url: impl Into<String>) -> Self {
        Self::new("openai", base_url, OPENAI_DEFAULT_MODEL)
    }

    /// Sets the key.
    pub fn with_api_key(mut self, api_key: impl Into<SecretString>) -> Self {
        self.api_key = Some(api_key.into());
        self
    }

    /// Sets the model.
    pub fn with_model(mut self, model: impl Into<String>) -> Self {
        self.model = model.into();
        self
    }

    /// Sets the base URL.
    pub fn with_base_url(mut self, base_url: impl Into<String>) -> Self {
        self.base_url = base_url.into();
        self
    }

    /// Sets the timeouts.
    pub fn with_http(mut self, http: HttpOptions) -> Self {
        self.http = http;
        self
    }

    /// Turns `stream_options.include_usage` on or off.
    pub fn with_stream_usage(mut self, on: bool) -> Self {
        self.stream_usage = on;
        self
    }

    /// Turns `response_format: json_schema` on or off (off: `json_object`).
    pub fn with_json_schema(mut self, on: bool) -> Self {
        self.json_schema = on;
        self
    }

    /// Builds the provider.
    pub fn build(self) -> Result<OpenAiCompatible, LlmError> {
        OpenAiCompatible::new(self)
    }
}

/// A provider speaking OpenAI's `POST {base}/chat/completions`, plain and streamed (SSE ending in
/// `data: [DONE]`).
#[derive(Clone, Debug)]
pub struct OpenAiCompatible {
    config: OpenAiConfig,
    client: reqwest::Client,
    url: String,
}

impl OpenAiCompatible {
    /// A provider from its settings.
    pub fn new(config: OpenAiConfig) -> Result<Self, LlmError> {
        let client = config.http.client(&config.name)?;
        let url = format!("{}/chat/completions", config.base_url.trim_end_matches('/'));
        Ok(Self {
            config,
            client,
            url,
        })
    }

    /// The settings.
    pub fn config(&self) -> &OpenAiConfig {
        &self.config
    }

    fn body(&self, request: &ChatRequest, stream: bool) -> Value {
        let mut messages = Vec::with_capacity(request.messages.len() + 1);
        if !request.system.is_empty() {
            messages.push(json!({"role": "system", "content": request.system}));
        }
        for m in &request.messages {
            let role = match m.role {
                Role::User => "user",
                Role::Assistant => "assistant",
            };
            messages.push(json!({"role": role, "content": m.content}));
        }
        let mut body = json!({
            "model": self.config.model,
            "messages": messages,
            "stream": stream,
        });
        if let Some(t) = request.temperature {
            body["temperature"] = json!(t);
        }
        if let Some(n) = request.max_tokens {
            body["max_tokens"] = json!(n);
        }
        match &request.response_schema {
            Some(schema) if self.config.json_schema => {
                body["response_format"] = json!({
                    "type": "json_schema",
                    "json_schema": {"name": "response", "schema": schema},
                });
            }
            _ if request.wants_json() => {
                body["response_format"] = json!({"type": "json_object"});
            }
            _ => {}
        }
        if stream && self.config.stream_usage {
            body["stream_options"] = json!({"include_usage": true});
        }
        body
    }

    async fn post(&self, body: &Value, stream: bool) -> Result<reqwest::Response, LlmError> {
        let name = self.config.name.as_str();
        tracing::debug!(provider = name, model = %self.config.model, url = %self.url, stream, "LLM request");
        let mut req = self.client.post(&self.url).json(body);
        if let Some(key) = &self.config.api_key {
            req = req.bearer_auth(key.expose());
        }
        let timeout = (!stream).then_some(self.config.http.timeout);
        http::send(name, self.config.api_key.as_ref(), req, timeout).await
    }

    fn parse(&self, body: &[u8]) -> Result<ChatResponse, LlmError> {
        let name = &self.config.name;
        let reply: Completion = serde_json::from_slice(body).map_err(|e| {
            http::invalid(name, format!("the answer is not a chat completion: {e}"))
        })?;
        if let Some(error) = reply.error {
            return Err(http::stream_error(
                name,
                &json!({ "error": error }).to_string(),
            ));
        }
        let choice = reply
            .choices
            .into_iter()
            .next()
            .ok_or_else(|| http::invalid(name, "the answer has no choices"))?;
        let message = choice.message.unwrap_or_default();
        let text = content_text(message.content.as_ref());
        if choice.finish_reason.as_deref() == Some("content_filter") {
            return Err(filtered(name));
        }
        if text.is_empty() {
            if let Some(refusal) = message.refusal.filter(|r| !r.is_empty()) {
                return Err(LlmError::new(
                    LlmErrorKind::Blocked,
                    name.as_str(),
                    format!("the model refused: {refusal}"),
                ));
            }
            return Err(http::invalid(name, "the answer has no content"));
        }
        Ok(ChatResponse {
            text,
            provider: name.clone(),
            model: reply
                .model
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| self.config.model.clone()),
            usage: reply.usage.map(Usage::into_usage).unwrap_or_default(),
        })
    }
}

#[async_trait]
impl LlmProvider for OpenAiCompatible {
    fn name(&self) -> &str {
        &self.config.name
    }

    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, LlmError> {
        let response = self.post(&self.body(request, false), false).await?;
        let key = self.config.api_key.as_ref();
        http::answer(&self.config.name, key, response, |body| self.parse(body)).await
    }

    async fn chat_stream(&self, request: &ChatRequest) -> Result<ChatStream, LlmError> {
        let response = self.post(&self.body(request, true), true).await?;
        Ok(chat_stream(
            OpenAiStream,
            self.config.name.clone(),
            self.config.model.clone(),
            self.config.api_key.clone(),
            response,
        ))
    }
}

/// `content` as a string, or the concatenated `text` of an array of parts.
fn content_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    }
}

#[derive(Deserialize)]
struct Completion {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    message: Option<ChoiceMessage>,
    #[serde(default)]
    delta: Option<ChoiceMessage>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize, Default)]
struct ChoiceMessage {
    #[serde(default)]
    content: Option<Value>,
    #[serde(default)]
    refusal: Option<String>,
}

#[derive(Deserialize)]
struct Usage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    total_tokens: Option<u64>,
}

impl Usage {
    fn into_usage(self) -> TokenUsage {
        http::usage(
            self.prompt_tokens,
            self.completion_tokens,
            self.total_tokens,
        )
    }
}

/// The error of an answer cut by the server's content filter.
fn filtered(provider: &str) -> LlmError {
    LlmError::new(
        LlmErrorKind::Blocked,
        provider,
        "the answer was filtered (finish_reason content_filter)",
    )
}

/// OpenAI's streamed chunks, ending in `data: [DONE]`.
struct OpenAiStream;

impl Dialect for OpenAiStream {
    type Chunk = Completion;

    fn is_end(&self, data: &str) -> bool {
        data == "[DONE]"
    }

    fn piece(&self, provider: &str, data: &str, chunk: Completion) -> Result<Piece, LlmError> {
        if chunk.error.is_some() {
            return Err(http::stream_error(provider, data));
        }
        let mut piece = Piece {
            model: chunk.model,
            usage: chunk.usage.map(Usage::into_usage),
            ..Piece::default()
        };
        if let Some(choice) = chunk.choices.into_iter().next() {
            if let Some(delta) = choice.delta {
                piece.text = content_text(delta.content.as_ref());
            }
            if choice.finish_reason.as_deref() == Some("content_filter") {
                return Err(filtered(provider));
            }
            piece.finish_reason = choice.finish_reason;
        }
        Ok(piece)
    }

    fn cut_short(&self) -> &'static str {
        "the stream ended before [DONE]"
    }

    fn no_text(&self, _finish_reason: Option<&str>) -> String {
        "the streamed answer has no content".to_owned()
    }
}
