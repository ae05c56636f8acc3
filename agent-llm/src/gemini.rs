//! Google Gemini's native `generateContent` / `streamGenerateContent?alt=sse` API.

use agent_core::llm::{ChatStream, Role};
use agent_core::{ChatRequest, ChatResponse, LlmError, LlmErrorKind, LlmProvider, TokenUsage};
use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::http::{self, HttpOptions};
use crate::stream::{chat_stream, Dialect, Piece};
use agent_core::SecretString;

/// Gemini's default base URL.
pub const GEMINI_DEFAULT_BASE_URL: &str = "https://generativelanguage.googleapis.com";
/// Gemini's default model.
pub const GEMINI_DEFAULT_MODEL: &str = "gemini-2.5-flash";

/// Which `generationConfig` field carries a request's
/// [`response_schema`](ChatRequest::response_schema).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum GeminiSchemaField {
    /// `responseJsonSchema`: the JSON Schema as given (Gemini 2.5 and later). The default.
    #[default]
    ResponseJsonSchema,
    /// `responseSchema`: Gemini's OpenAPI-subset schema, translated from the JSON Schema by
    /// [`openapi_subset`] (for models without `responseJsonSchema`).
    ResponseSchema,
}

impl std::str::FromStr for GeminiSchemaField {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "responseJsonSchema" => Ok(Self::ResponseJsonSchema),
            "responseSchema" => Ok(Self::ResponseSchema),
            other => Err(format!(
                "expected responseJsonSchema or responseSchema, not {other:?}"
            )),
        }
    }
}

/// The keywords Gemini's `responseSchema` (its OpenAPI subset) knows; the others are dropped.
const OPENAPI_SUBSET_KEYWORDS: &[&str] = &[
    "type",
    "format",
    "description",
    "nullable",
    "enum",
    "items",
    "minItems",
    "maxItems",
    "properties",
    "required",
    "minProperties",
    "maxProperties",
    "minLength",
    "maxLength",
    "pattern",
    "minimum",
    "maximum",
    "anyOf",
    "propertyOrdering",
    "default",
];

/// Translates a JSON Schema into Gemini's OpenAPI-subset `responseSchema`: upper-case types, a
/// `["T","null"]` type as `T` with `nullable`, `const` as a one-value `enum`, and every keyword
/// the subset does not know (`additionalProperties`, `title`, `$schema`, …) left out.
pub fn openapi_subset(schema: &Value) -> Value {
    let Value::Object(map) = schema else {
        return schema.clone();
    };
    let mut out = serde_json::Map::new();
    for (key, value) in map {
        match key.as_str() {
            "type" => match value {
                Value::String(t) => {
                    out.insert("type".into(), json!(t.to_ascii_uppercase()));
                }
                Value::Array(types) => {
                    let mut nullable = false;
                    for t in types.iter().filter_map(Value::as_str) {
                        if t == "null" {
                            nullable = true;
                        } else if !out.contains_key("type") {
                            out.insert("type".into(), json!(t.to_ascii_uppercase()));
                        }
                    }
                    if nullable {
                        out.insert("nullable".into(), json!(true));
                    }
                }
                _ => {}
            },
            "const" => {
                out.insert("enum".into(), json!([value]));
            }
            "properties" => {
                let props: serde_json::Map<String, Value> = value
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), openapi_subset(v)))
                    .collect();
                out.insert(key.clone(), Value::Object(props));
            }
            "items" => {
                out.insert(key.clone(), openapi_subset(value));
            }
            "anyOf" | "oneOf" => {
                let variants: Vec<Value> = value
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(openapi_subset)
                    .collect();
                out.insert("anyOf".into(), Value::Array(variants));
            }
            k if OPENAPI_SUBSET_KEYWORDS.contains(&k) => {
                out.insert(key.clone(), value.clone());
            }
            _ => {}
        }
    }
    if out.get("type").and_then(Value::as_str) == Some("STRING") && out.contains_key("enum") {
        out.insert("format".into(), json!("enum"));
    }
    Value::Object(out)
}

/// Settings of a [`Gemini`] provider.
#[derive(Clone, Debug)]
pub struct GeminiConfig {
    /// The name recorded in answers and errors (default `"gemini"`).
    pub name: String,
    /// The base URL (default [`GEMINI_DEFAULT_BASE_URL`]).
    pub base_url: String,
    /// The key, sent as `x-goog-api-key`.
    pub api_key: SecretString,
    /// The model (default [`GEMINI_DEFAULT_MODEL`]).
    pub model: String,
    /// Timeouts.
    pub http: HttpOptions,
    /// Which field carries a request's response schema (default `responseJsonSchema`).
    pub schema_field: GeminiSchemaField,
}

impl GeminiConfig {
    /// Gemini with the default base URL and model.
    pub fn new(api_key: impl Into<SecretString>) -> Self {
        Self {
            name: "gemini".to_owned(),
            base_url: GEMINI_DEFAULT_BASE_URL.to_owned(),
            api_key: api_key.into(),
            model: GEMINI_DEFAULT_MODEL.to_owned(),
            http: HttpOptions::default(),
            schema_field: GeminiSchemaField::default(),
        }
    }

    /// Sets the base URL.
    pub fn with_base_url(mut self, base_url: impl Into<String>) -> Self {
        self.base_url = base_url.into();
        self
    }

    /// Sets the model (a leading `models/` is accepted).
    pub fn with_model(mut self, model: impl Into<String>) -> Self {
        self.model = model.into();
        self
    }

    /// Sets the timeouts.
    pub fn with_http(mut self, http: HttpOptions) -> Self {
        self.http = http;
        self
    }

    /// Sets the field a request's response schema goes in.
    pub fn with_schema_field(mut self, field: GeminiSchemaField) -> Self {
        self.schema_field = field;
        self
    }

    /// Builds the provider.
    pub fn build(self) -> Result<Gemini, LlmError> {
        Gemini::new(self)
    }
}

/// Gemini through its native REST API.
#[derive(Clone, Debug)]
pub struct Gemini {
    config: GeminiConfig,
    client: reqwest::Client,
    model: String,
}

impl Gemini {
    /// A provider from its settings.
    pub fn new(config: GeminiConfig) -> Result<Self, LlmError> {
        let client = config.http.client(&config.name)?;
        let model = config
            .model
            .strip_prefix("models/")
            .unwrap_or(&config.model)
            .to_owned();
        Ok(Self {
            config,
            client,
            model,
        })
    }

    /// The settings.
    pub fn config(&self) -> &GeminiConfig {
        &self.config
    }

    fn url(&self, stream: bool) -> String {
        let base = self.config.base_url.trim_end_matches('/');
        if stream {
            format!(
                "{base}/v1beta/models/{}:streamGenerateContent?alt=sse",
                self.model
            )
        } else {
            format!("{base}/v1beta/models/{}:generateContent", self.model)
        }
    }

    fn body(&self, request: &ChatRequest) -> Value {
        let contents: Vec<Value> = request
            .messages
            .iter()
            .map(|m| {
                let role = match m.role {
                    Role::User => "user",
                    Role::Assistant => "model",
                };
                json!({"role": role, "parts": [{"text": m.content}]})
            })
            .collect();
        let mut body = json!({ "contents": contents });
        if !request.system.is_empty() {
            body["systemInstruction"] = json!({"parts": [{"text": request.system}]});
        }
        let mut config = serde_json::Map::new();
        if let Some(t) = request.temperature {
            config.insert("temperature".into(), json!(t));
        }
        if let Some(n) = request.max_tokens {
            config.insert("maxOutputTokens".into(), json!(n));
        }
        if request.wants_json() {
            config.insert("responseMimeType".into(), json!("application/json"));
        }
        if let Some(schema) = &request.response_schema {
            let (field, schema) = match self.config.schema_field {
                GeminiSchemaField::ResponseJsonSchema => ("responseJsonSchema", schema.clone()),
                GeminiSchemaField::ResponseSchema => ("responseSchema", openapi_subset(schema)),
            };
            config.insert(field.into(), schema);
        }
        if !config.is_empty() {
            body["generationConfig"] = Value::Object(config);
        }
        body
    }

    async fn post(
        &self,
        request: &ChatRequest,
        stream: bool,
    ) -> Result<reqwest::Response, LlmError> {
        let name = self.config.name.as_str();
        let url = self.url(stream);
        tracing::debug!(provider = name, model = %self.model, url = %url, stream, "LLM request");
        let req = self
            .client
            .post(&url)
            .header("x-goog-api-key", self.config.api_key.expose())
            .json(&self.body(request));
        let timeout = (!stream).then_some(self.config.http.timeout);
        http::send(name, Some(&self.config.api_key), req, timeout).await
    }

    fn parse(&self, body: &[u8]) -> Result<ChatResponse, LlmError> {
        let name = self.config.name.as_str();
        let reply: GenerateContentResponse = serde_json::from_slice(body).map_err(|e| {
            http::invalid(
                name,
                format!("the answer is not a GenerateContentResponse: {e}"),
            )
        })?;
        if let Some(error) = &reply.error {
            return Err(http::stream_error(
                name,
                &json!({ "error": error }).to_string(),
            ));
        }
        check_prompt_feedback(name, &reply)?;
        let candidate = reply
            .candidates
            .first()
            .ok_or_else(|| http::invalid(name, "the answer has no candidates"))?;
        let text = candidate_text(candidate);
        check_finish_reason(name, candidate.finish_reason.as_deref())?;
        if text.is_empty() {
            let reason = candidate.finish_reason.as_deref().unwrap_or("none");
            return Err(http::invalid(
                name,
                format!("the answer has no text (finishReason {reason})"),
            ));
        }
        Ok(ChatResponse {
            text,
            provider: name.to_owned(),
            model: reply
                .model_version
                .clone()
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| self.model.clone()),
            usage: reply
                .usage_metadata
                .map(UsageMetadata::into_usage)
                .unwrap_or_default(),
        })
    }
}

#[async_trait]
impl LlmProvider for Gemini {
    fn name(&self) -> &str {
        &self.config.name
    }

    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, LlmError> {
        let response = self.post(request, false).await?;
        let key = Some(&self.config.api_key);
        http::answer(&self.config.name, key, response, |body| self.parse(body)).await
    }

    async fn chat_stream(&self, request: &ChatRequest) -> Result<ChatStream, LlmError> {
        let response = self.post(request, true).await?;
        Ok(chat_stream(
            GeminiStream,
            self.config.name.clone(),
            self.model.clone(),
            Some(self.config.api_key.clone()),
            response,
        ))
    }
}

/// The finish reasons that mean the answer was blocked.
const BLOCKED_FINISH_REASONS: &[&str] = &[
    "SAFETY",
    "RECITATION",
    "BLOCKLIST",
    "PROHIBITED_CONTENT",
    "SPII",
    "IMAGE_SAFETY",
];

fn check_prompt_feedback(name: &str, reply: &GenerateContentResponse) -> Result<(), LlmError> {
    let Some(feedback) = &reply.prompt_feedback else {
        return Ok(());
    };
    let Some(reason) = &feedback.block_reason else {
        return Ok(());
    };
    let mut message = format!("the prompt was blocked ({reason})");
    if let Some(detail) = feedback
        .block_reason_message
        .as_deref()
        .filter(|m| !m.is_empty())
    {
        message.push_str(": ");
        message.push_str(detail);
    }
    Err(LlmError::new(LlmErrorKind::Blocked, name, message))
}

fn check_finish_reason(name: &str, reason: Option<&str>) -> Result<(), LlmError> {
    match reason {
        Some(r) if BLOCKED_FINISH_REASONS.contains(&r) => Err(LlmError::new(
            LlmErrorKind::Blocked,
            name,
            format!("the answer was blocked (finishReason {r})"),
        )),
        _ => Ok(()),
    }
}

/// The text of a candidate, without thought parts.
fn candidate_text(candidate: &Candidate) -> String {
    candidate
        .content
        .iter()
        .flat_map(|c| c.parts.iter())
        .filter(|p| !p.thought.unwrap_or(false))
        .filter_map(|p| p.text.as_deref())
        .collect()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GenerateContentResponse {
    #[serde(default)]
    candidates: Vec<Candidate>,
    #[serde(default)]
    prompt_feedback: Option<PromptFeedback>,
    #[serde(default)]
    usage_metadata: Option<UsageMetadata>,
    #[serde(default)]
    model_version: Option<String>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Candidate {
    #[serde(default)]
    content: Option<Content>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Content {
    #[serde(default)]
    parts: Vec<Part>,
}

#[derive(Deserialize)]
struct Part {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    thought: Option<bool>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromptFeedback {
    #[serde(default)]
    block_reason: Option<String>,
    #[serde(default)]
    block_reason_message: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UsageMetadata {
    prompt_token_count: Option<u64>,
    candidates_token_count: Option<u64>,
    thoughts_token_count: Option<u64>,
    total_token_count: Option<u64>,
}

impl UsageMetadata {
    /// Completion tokens count the thinking tokens too (they are billed as output).
    fn into_usage(self) -> TokenUsage {
        let completion = match (self.candidates_token_count, self.thoughts_token_count) {
            (None, None) => None,
            (c, t) => Some(c.unwrap_or(0).saturating_add(t.unwrap_or(0))),
        };
        http::usage(self.prompt_token_count, completion, self.total_token_count)
    }
}

/// Gemini's streamed `GenerateContentResponse`s; no end marker: the end of the body ends the
/// answer.
struct GeminiStream;

impl Dialect for GeminiStream {
    type Chunk = GenerateContentResponse;

    fn is_end(&self, _data: &str) -> bool {
        false
    }

    fn piece(
        &self,
        provider: &str,
        data: &str,
        chunk: GenerateContentResponse,
    ) -> Result<Piece, LlmError> {
        if chunk.error.is_some() {
            return Err(http::stream_error(provider, data));
        }
        check_prompt_feedback(provider, &chunk)?;
        let mut piece = Piece {
            model: chunk.model_version,
            usage: chunk.usage_metadata.map(UsageMetadata::into_usage),
            ..Piece::default()
        };
        if let Some(candidate) = chunk.candidates.first() {
            check_finish_reason(provider, candidate.finish_reason.as_deref())?;
            piece.text = candidate_text(candidate);
            piece.finish_reason.clone_from(&candidate.finish_reason);
        }
        Ok(piece)
    }

    fn cut_short(&self) -> &'static str {
        "the stream ended without a finishReason"
    }

    fn no_text(&self, finish_reason: Option<&str>) -> String {
        let reason = finish_reason.unwrap_or("none");
        format!("the streamed answer has no text (finishReason {reason})")
    }
}
