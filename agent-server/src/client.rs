//! A small client of the REST API (used by the `agent` CLI; usable from any Rust program).

use std::path::Path;
use std::time::Duration;

use futures::{Stream, StreamExt};
use reqwest::{RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;
use tokio::io::AsyncWriteExt;

use agent_core::{JobEvent, JobId};

use crate::api::{
    CancelResponse, HealthResponse, JobsResponse, ScheduleRequest, ScheduleResponse, StatusResponse,
};
use crate::error::{ErrorBody, ErrorDetail};
use agent_core::SecretString;

/// What can go wrong talking to the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server could not be reached.
    #[error("cannot reach the server at {url}: {message}")]
    Unreachable {
        /// The URL tried.
        url: String,
        /// Why.
        message: String,
    },
    /// The server answered with an error.
    #[error("server answered {status}: {} ({})", .error.message, .error.code)]
    Api {
        /// The HTTP status.
        status: u16,
        /// The error body.
        error: ErrorDetail,
    },
    /// The answer could not be understood.
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
    /// Writing a local file failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A client for one server.
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<SecretString>,
}

/// The error of a request that reached no server at `url`.
fn unreachable(url: &str, e: &reqwest::Error) -> ClientError {
    ClientError::Unreachable {
        url: url.to_string(),
        message: error_chain(e),
    }
}

impl Client {
    /// A client of the server at `base_url` (e.g. `http://127.0.0.1:8000`), sending `token` as a
    /// bearer token when given.
    pub fn new(base_url: &str, token: Option<SecretString>) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| ClientError::Protocol(format!("building the HTTP client: {e}")))?;
        Ok(Self {
            http,
            base: base_url.trim_end_matches('/').to_string(),
            token: token.filter(|t| !t.expose().is_empty()),
        })
    }

    /// The server's base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn auth(&self, rb: RequestBuilder) -> RequestBuilder {
        match &self.token {
            Some(t) => rb.bearer_auth(t.expose()),
            None => rb,
        }
    }

    async fn send(&self, rb: RequestBuilder, url: &str) -> Result<Response, ClientError> {
        let resp = self
            .auth(rb)
            .send()
            .await
            .map_err(|e| unreachable(url, &e))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let text = error_text(resp).await;
        let error = serde_json::from_str::<ErrorBody>(&text)
            .map(|b| b.error)
            .unwrap_or_else(|_| ErrorDetail {
                code: status
                    .canonical_reason()
                    .unwrap_or("error")
                    .to_ascii_lowercase()
                    .replace(' ', "_"),
                message: text.chars().take(500).collect(),
                field: None,
                status: None,
            });
        Err(ClientError::Api {
            status: status.as_u16(),
            error,
        })
    }

    async fn json<T: DeserializeOwned>(resp: Response) -> Result<T, ClientError> {
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| ClientError::Protocol(error_chain(&e)))?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// `GET /`. A 503 "degraded" answer (Docker does not answer) is returned too, not an error.
    pub async fn health(&self) -> Result<HealthResponse, ClientError> {
        let url = self.url("/");
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| unreachable(&url, &e))?;
        if resp.status().is_success() || resp.status() == StatusCode::SERVICE_UNAVAILABLE {
            return Self::json(resp).await;
        }
        Err(ClientError::Protocol(format!(
            "GET / answered {}",
            resp.status()
        )))
    }

    /// `POST /schedule`.
    pub async fn schedule(&self, req: &ScheduleRequest) -> Result<ScheduleResponse, ClientError> {
        let url = self.url("/schedule");
        Self::json(self.send(self.http.post(&url).json(req), &url).await?).await
    }

    /// `GET /status/{id}`.
    pub async fn status(&self, id: JobId) -> Result<StatusResponse, ClientError> {
        let url = self.url(&format!("/status/{id}"));
        Self::json(self.send(self.http.get(&url), &url).await?).await
    }

    /// `GET /jobs`.
    pub async fn jobs(
        &self,
        status: Option<&str>,
        limit: usize,
        offset: usize,
    ) -> Result<JobsResponse, ClientError> {
        let url = self.url("/jobs");
        let mut query = vec![("limit", limit.to_string()), ("offset", offset.to_string())];
        if let Some(s) = status {
            query.push(("status", s.to_string()));
        }
        Self::json(self.send(self.http.get(&url).query(&query), &url).await?).await
    }

    /// `POST /cancel/{id}`.
    pub async fn cancel(&self, id: JobId) -> Result<CancelResponse, ClientError> {
        let url = self.url(&format!("/cancel/{id}"));
        Self::json(self.send(self.http.post(&url), &url).await?).await
    }

    /// `POST /access/{id}`: a signed URL of a job's desktop or Jupyter Lab.
    pub async fn access(
        &self,
        id: JobId,
        req: &crate::live::AccessRequest,
    ) -> Result<crate::live::AccessResponse, ClientError> {
        let url = self.url(&format!("/access/{id}"));
        Self::json(self.send(self.http.post(&url).json(req), &url).await?).await
    }

    /// `POST /release/{id}`: ends a finished job's kept sandbox.
    pub async fn release(&self, id: JobId) -> Result<crate::live::ReleaseResponse, ClientError> {
        let url = self.url(&format!("/release/{id}"));
        Self::json(self.send(self.http.post(&url), &url).await?).await
    }

    /// `GET /logs/{id}`: the whole log as text, in memory (see [`Client::logs_to`] for a long one).
    pub async fn logs(&self, id: JobId) -> Result<String, ClientError> {
        let mut buf = Vec::new();
        self.logs_to(id, &mut buf).await?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    /// `GET /logs/{id}`, streamed into `out` as it arrives. Returns the number of bytes written.
    pub async fn logs_to<W>(&self, id: JobId, out: &mut W) -> Result<u64, ClientError>
    where
        W: tokio::io::AsyncWrite + Unpin,
    {
        let url = self.url(&format!("/logs/{id}"));
        let resp = self.send(self.http.get(&url), &url).await?;
        copy_body(resp, out, "writing the log").await
    }

    /// `GET /logs/{id}/stream`: events with `seq > after`, live, until the final status.
    pub async fn follow(
        &self,
        id: JobId,
        after: u64,
    ) -> Result<impl Stream<Item = Result<JobEvent, ClientError>>, ClientError> {
        use eventsource_stream::Eventsource;
        let url = self.url(&format!("/logs/{id}/stream"));
        let mut rb = self.http.get(&url).header("accept", "text/event-stream");
        if after > 0 {
            rb = rb.header("last-event-id", after.to_string());
        }
        let resp = self.send(rb, &url).await?;
        let events = resp.bytes_stream().eventsource();
        Ok(events.filter_map(|item| async move {
            match item {
                Ok(ev) if ev.event == "error" => Some(Err(ClientError::Protocol(ev.data))),
                Ok(ev) if ev.data.is_empty() => None,
                Ok(ev) => Some(
                    serde_json::from_str::<JobEvent>(&ev.data)
                        .map_err(|e| ClientError::Protocol(format!("bad event: {e}"))),
                ),
                Err(e) => Some(Err(ClientError::Protocol(e.to_string()))),
            }
        }))
    }

    /// `GET /download/{id}`, streamed into `path`. Returns the number of bytes written.
    pub async fn download(&self, id: JobId, path: &Path) -> Result<u64, ClientError> {
        let url = self.url(&format!("/download/{id}"));
        let resp = self.send(self.http.get(&url), &url).await?;
        if resp.status() != StatusCode::OK {
            return Err(ClientError::Protocol(format!(
                "unexpected status {}",
                resp.status()
            )));
        }
        let io = |context: String| move |source| ClientError::Io { context, source };
        let tmp = path.with_extension("zip.part");
        let mut file = tokio::fs::File::create(&tmp)
            .await
            .map_err(io(format!("creating {}", tmp.display())))?;
        let written = copy_body(resp, &mut file, &format!("writing {}", tmp.display())).await?;
        drop(file);
        tokio::fs::rename(&tmp, path)
            .await
            .map_err(io(format!("renaming to {}", path.display())))?;
        Ok(written)
    }

    /// `POST /sandboxes`: creates a live sandbox (ready when this returns).
    pub async fn create_sandbox(
        &self,
        req: &crate::sandboxes::CreateSandboxRequest,
    ) -> Result<crate::sandboxes::SandboxView, ClientError> {
        let url = self.url("/sandboxes");
        Self::json(self.send(self.http.post(&url).json(req), &url).await?).await
    }

    /// `GET /sandboxes`: the live sandboxes.
    pub async fn sandboxes(&self) -> Result<crate::sandboxes::SandboxList, ClientError> {
        let url = self.url("/sandboxes");
        Self::json(self.send(self.http.get(&url), &url).await?).await
    }

    /// `DELETE /sandboxes/{id}`: destroys a live sandbox.
    pub async fn destroy_sandbox(
        &self,
        id: JobId,
    ) -> Result<crate::sandboxes::SandboxView, ClientError> {
        let url = self.url(&format!("/sandboxes/{id}"));
        Self::json(self.send(self.http.delete(&url), &url).await?).await
    }

    /// `POST /sandboxes/{id}/steps` with `Accept: application/x-ndjson`: runs a step, handing
    /// its output to `output` as it comes (`true` for stderr), and returns its result.
    pub async fn run_sandbox_step(
        &self,
        id: JobId,
        req: &crate::sandboxes::RunStepRequest,
        mut output: impl FnMut(bool, &str),
    ) -> Result<crate::sandboxes::StepRunView, ClientError> {
        let url = self.url(&format!("/sandboxes/{id}/steps"));
        let rb = self
            .http
            .post(&url)
            .header("accept", "application/x-ndjson")
            .json(req);
        let resp = self.send(rb, &url).await?;
        let mut body = resp.bytes_stream();
        let mut pending: Vec<u8> = Vec::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| ClientError::Protocol(error_chain(&e)))?;
            pending.extend_from_slice(&chunk);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let item: serde_json::Value = serde_json::from_slice(&line)
                    .map_err(|e| ClientError::Protocol(format!("bad step stream line: {e}")))?;
                match item["type"].as_str() {
                    Some("output") => output(
                        item["stream"] == "stderr",
                        item["text"].as_str().unwrap_or_default(),
                    ),
                    Some("result") => {
                        return serde_json::from_value(item)
                            .map_err(|e| ClientError::Protocol(e.to_string()))
                    }
                    Some("error") => {
                        let error: ErrorDetail = serde_json::from_value(item)
                            .map_err(|e| ClientError::Protocol(e.to_string()))?;
                        return Err(ClientError::Api { status: 409, error });
                    }
                    _ => {}
                }
            }
        }
        Err(ClientError::Protocol(
            "the step's stream ended without a result".into(),
        ))
    }

    /// `PUT /sandboxes/{id}/files?path=…`: writes one file.
    pub async fn put_sandbox_file(
        &self,
        id: JobId,
        path: &str,
        content: Vec<u8>,
    ) -> Result<crate::sandboxes::PutFileResponse, ClientError> {
        let url = self.url(&format!("/sandboxes/{id}/files"));
        let rb = self
            .http
            .put(&url)
            .query(&[("path", path)])
            .header("content-type", "application/octet-stream")
            .body(content);
        Self::json(self.send(rb, &url).await?).await
    }

    /// `GET /sandboxes/{id}/files?path=…`: reads one file.
    pub async fn get_sandbox_file(&self, id: JobId, path: &str) -> Result<Vec<u8>, ClientError> {
        let url = self.url(&format!("/sandboxes/{id}/files"));
        let resp = self
            .send(self.http.get(&url).query(&[("path", path)]), &url)
            .await?;
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| ClientError::Protocol(error_chain(&e)))?;
        Ok(bytes.to_vec())
    }

    /// `PUT /sandboxes/{id}/archive?path=…`: unpacks the tar (or ZIP) in the file at `archive`
    /// into a directory, streamed from the file.
    pub async fn put_sandbox_archive(
        &self,
        id: JobId,
        path: &str,
        archive: &Path,
        media_type: &str,
    ) -> Result<crate::sandbox_archive::PutArchiveResponse, ClientError> {
        let url = self.url(&format!("/sandboxes/{id}/archive"));
        let file = tokio::fs::File::open(archive)
            .await
            .map_err(|source| ClientError::Io {
                context: format!("opening {}", archive.display()),
                source,
            })?;
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
        let rb = self
            .http
            .put(&url)
            .query(&[("path", path)])
            .header("content-type", media_type)
            .body(body);
        Self::json(self.send(rb, &url).await?).await
    }

    /// `GET /sandboxes/{id}/archive?path=…&format=…` (`tar` or `zip`), streamed into `out`;
    /// returns its size.
    pub async fn get_sandbox_archive<W>(
        &self,
        id: JobId,
        path: &str,
        format: &str,
        out: &mut W,
    ) -> Result<u64, ClientError>
    where
        W: tokio::io::AsyncWrite + Unpin,
    {
        let url = self.url(&format!("/sandboxes/{id}/archive"));
        let rb = self
            .http
            .get(&url)
            .query(&[("path", path), ("format", format)]);
        let resp = self.send(rb, &url).await?;
        copy_body(resp, out, "writing the archive").await
    }
}

/// Streams a response body into `out` and flushes it; returns the number of bytes written.
async fn copy_body<W>(resp: Response, out: &mut W, context: &str) -> Result<u64, ClientError>
where
    W: tokio::io::AsyncWrite + Unpin,
{
    let io = |source| ClientError::Io {
        context: context.to_string(),
        source,
    };
    let mut body = resp.bytes_stream();
    let mut written = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| ClientError::Protocol(error_chain(&e)))?;
        out.write_all(&chunk).await.map_err(io)?;
        written += chunk.len() as u64;
    }
    out.flush().await.map_err(io)?;
    Ok(written)
}

/// The most bytes of an error answer read (the server's error bodies are small JSON documents).
const MAX_ERROR_BODY_BYTES: usize = 64 << 10;

/// The start of an error answer's body, as text (empty if it cannot be read).
async fn error_text(mut resp: Response) -> String {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        let room = MAX_ERROR_BODY_BYTES.saturating_sub(body.len());
        body.extend_from_slice(chunk.get(..room).unwrap_or(&chunk));
        if body.len() >= MAX_ERROR_BODY_BYTES {
            break;
        }
    }
    String::from_utf8_lossy(&body).into_owned()
}

/// An error and its sources on one line (reqwest hides the useful part in the sources).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
