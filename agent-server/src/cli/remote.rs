//! The subcommands that talk to a server: `health`, `submit`, `status`, `jobs`, `logs`,
//! `cancel`, `download`.

use std::io::Write;
use std::path::{Path, PathBuf};

use futures::StreamExt;

use agent_core::{EventKind, JobId, JobStatus};

use super::{client_fail, fail, print_json, reported, Exit};
use crate::api::{ScheduleRequest, StatusResponse};
use crate::client::Client;
use crate::logs::LogFormatter;

/// `agent health`.
pub(super) async fn health(client: &Client, json: bool) -> Result<Exit, Exit> {
    let h = reported(client.health().await)?;
    if json {
        print_json(&h);
    } else {
        let llm = if h.llm_providers.is_empty() {
            "none".to_string()
        } else {
            h.llm_providers.join(" -> ")
        };
        println!(
            "{} {} (version {}): {} {}, LLM: {llm}, {} queued, {} running",
            h.service,
            h.status,
            h.version,
            h.executor.name,
            if h.executor.ok { "ok" } else { "NOT answering" },
            h.queued,
            h.running
        );
        if let Some(e) = &h.executor.error {
            println!("  {e}");
        }
    }
    Ok(if h.executor.ok {
        Exit::Ok
    } else {
        Exit::Unreachable
    })
}

/// `agent submit [--wait]`.
pub(super) async fn submit(
    client: &Client,
    req: &ScheduleRequest,
    wait: bool,
    json: bool,
) -> Result<Exit, Exit> {
    let resp = reported(client.schedule(req).await)?;
    if !wait {
        if json {
            print_json(&resp);
        } else {
            println!("{}", resp.job_id);
        }
        return Ok(Exit::Ok);
    }
    if !json {
        eprintln!("job {} queued", resp.job_id);
    }
    Ok(follow_remote(client, resp.job_id, json, !json, false).await)
}

/// `agent status`.
pub(super) async fn status(client: &Client, id: JobId, json: bool) -> Result<Exit, Exit> {
    let status = reported(client.status(id).await)?;
    if json {
        print_json(&status);
    } else {
        print_status(&status, client.base_url());
    }
    Ok(Exit::Ok)
}

/// `agent jobs`.
pub(super) async fn jobs(
    client: &Client,
    status: Option<&str>,
    limit: usize,
    offset: usize,
    json: bool,
) -> Result<Exit, Exit> {
    let page = reported(client.jobs(status, limit, offset).await)?;
    if json {
        print_json(&page);
    } else {
        println!(
            "{:<36}  {:<11}  {:<20}  {:>5}  PROMPT",
            "JOB", "STATUS", "CREATED", "STEPS"
        );
        for j in &page.jobs {
            let prompt: String = j.prompt.chars().take(60).collect();
            println!(
                "{:<36}  {:<11}  {:<20}  {:>5}  {}",
                j.job_id,
                j.status,
                j.created_at.format("%Y-%m-%d %H:%M:%S"),
                j.steps,
                prompt.replace('\n', " ")
            );
        }
        println!("({} of {} jobs)", page.jobs.len(), page.total);
    }
    Ok(Exit::Ok)
}

/// `agent logs [--follow]`.
pub(super) async fn logs(
    client: &Client,
    id: JobId,
    follow: bool,
    json: bool,
    raw: bool,
) -> Result<Exit, Exit> {
    if follow {
        Ok(follow_remote(client, id, json, true, raw).await)
    } else {
        let mut out = Terminal::new(raw);
        reported(client.logs_to(id, &mut out).await)?;
        Ok(Exit::Ok)
    }
}

/// Job output on its way to the terminal: escape sequences removed (`strip_ansi_escapes`) unless
/// `raw`. Writes block; the CLI has nothing else to do meanwhile.
struct Terminal(Box<dyn Write + Send>);

impl Terminal {
    fn new(raw: bool) -> Self {
        let stdout = std::io::stdout();
        Self(if raw {
            Box::new(stdout)
        } else {
            Box::new(strip_ansi_escapes::Writer::new(stdout))
        })
    }
}

impl Write for Terminal {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl tokio::io::AsyncWrite for Terminal {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::task::Poll::Ready(self.get_mut().0.write_all(buf).map(|()| buf.len()))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(self.get_mut().0.flush())
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.poll_flush(cx)
    }
}

/// `agent cancel`.
pub(super) async fn cancel(client: &Client, id: JobId, json: bool) -> Result<Exit, Exit> {
    let r = reported(client.cancel(id).await)?;
    if json {
        print_json(&r);
    } else {
        println!("job {} {}", r.job_id, r.status);
    }
    Ok(Exit::Ok)
}

/// `agent download`.
pub(super) async fn download(
    client: &Client,
    id: JobId,
    out: Option<&Path>,
    json: bool,
) -> Result<Exit, Exit> {
    let path = out
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(format!("job-{id}.zip")));
    let bytes = reported(client.download(id, &path).await)?;
    if json {
        print_json(&serde_json::json!({"job_id": id, "path": path, "bytes": bytes}));
    } else {
        println!("{} ({bytes} bytes)", path.display());
    }
    Ok(Exit::Ok)
}

async fn follow_remote(
    client: &Client,
    id: JobId,
    json: bool,
    print_text: bool,
    raw: bool,
) -> Exit {
    let mut events = match client.follow(id, 0).await {
        Ok(s) => Box::pin(s),
        Err(e) => return client_fail(&e),
    };
    let mut fmt = LogFormatter::new();
    let mut last_status = None;
    let mut stdout = Terminal::new(raw || json);
    while let Some(item) = events.next().await {
        match item {
            Ok(ev) => {
                if let EventKind::Status { status, error } = &ev.kind {
                    last_status = Some((*status, error.clone()));
                }
                if json {
                    if let Ok(line) = serde_json::to_string(&ev) {
                        let _ = writeln!(stdout, "{line}");
                    }
                } else if print_text {
                    let _ = write!(stdout, "{}", fmt.format(&ev));
                    let _ = stdout.flush();
                }
                if ev.is_final() {
                    break;
                }
            }
            Err(e) => return client_fail(&e),
        }
    }
    match last_status {
        Some((st, error)) if st.is_terminal() => finished(id, st, error.as_deref(), json),
        // The stream ended early (server shutting down): report the status as it is now.
        _ => match client.status(id).await {
            Ok(s) if s.status.is_terminal() => finished(id, s.status, s.error.as_deref(), json),
            Ok(s) => fail(
                Exit::Unreachable,
                format!("the log stream ended while the job is {}", s.status),
            ),
            Err(e) => client_fail(&e),
        },
    }
}

/// The exit code of a followed job that ended; in text mode a job that did not succeed gets a
/// last line on stderr saying why (the log said it too, but that went to stdout).
fn finished(id: JobId, status: JobStatus, error: Option<&str>, json: bool) -> Exit {
    if !json && status != JobStatus::Succeeded {
        match error {
            Some(e) => eprintln!("job {id} {status}: {e}"),
            None => eprintln!("job {id} {status}"),
        }
    }
    Exit::for_status(status)
}

fn print_status(s: &StatusResponse, base: &str) {
    let provider = s
        .provider
        .as_deref()
        .map(|p| format!("  (planned by {p})"))
        .unwrap_or_default();
    println!("job {}  {}{provider}", s.job_id, s.status);
    if !s.prompt.is_empty() {
        println!("prompt: {}", s.prompt.lines().next().unwrap_or(""));
    }
    let fmt_t = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_else(|| "-".into())
    };
    println!(
        "created {}  started {}  finished {}",
        fmt_t(Some(s.created_at)),
        fmt_t(s.started_at),
        fmt_t(s.finished_at)
    );
    if let Some(err) = &s.error {
        println!("error: {err}");
    }
    if s.usage.total_tokens > 0 {
        println!(
            "tokens: {} prompt + {} completion = {} total",
            s.usage.prompt_tokens, s.usage.completion_tokens, s.usage.total_tokens
        );
    }
    for st in &s.steps {
        println!(
            "  {:>3}  {:<10}  {:<9}  exit {:>4}  {:>8}  {}",
            st.index,
            st.kind,
            format!("{:?}", st.status).to_lowercase(),
            st.exit_code
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into()),
            st.duration_ms
                .map(|d| format!("{d} ms"))
                .unwrap_or_else(|| "-".into()),
            st.description.as_deref().unwrap_or("")
        );
    }
    if let Some(link) = &s.download_link {
        println!("download: {base}{link}");
    }
    println!("logs: {base}{}", s.logs_link);
}
