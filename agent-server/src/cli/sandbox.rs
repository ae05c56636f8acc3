//! `agent sandbox …`: live sandboxes on a server — create one, run commands in it, copy files in
//! and out, an interactive line-by-line shell, destroy it.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;

use agent_core::{JobId, Step};

use super::{fail, print_json, reported, Exit};
use crate::client::{Client, ClientError};
use crate::sandboxes::{CreateSandboxRequest, RunStepRequest, SandboxView, StepRunView};

/// `agent sandbox create`: prints the new sandbox's id (or, with `--json`, the sandbox).
pub(super) async fn create(
    client: &Client,
    req: &CreateSandboxRequest,
    json: bool,
) -> Result<Exit, Exit> {
    let view = reported(client.create_sandbox(req).await)?;
    if json {
        print_json(&view);
    } else {
        println!("{}", view.sandbox_id);
    }
    Ok(Exit::Ok)
}

/// `agent sandbox ls`: the live sandboxes, one a line (or, with `--json`, the list).
pub(super) async fn list(client: &Client, json: bool) -> Result<Exit, Exit> {
    let list = reported(client.sandboxes().await)?;
    if json {
        print_json(&list);
    } else {
        for s in &list.sandboxes {
            println!("{}", line(s));
        }
    }
    Ok(Exit::Ok)
}

fn line(s: &SandboxView) -> String {
    format!(
        "{}  {}  {} steps  expires {}",
        s.sandbox_id,
        s.status,
        s.steps,
        s.expires_at
            .map_or_else(|| "-".to_string(), |t| t.to_rfc3339())
    )
}

/// `agent sandbox rm`: destroys a sandbox.
pub(super) async fn remove(client: &Client, id: JobId, json: bool) -> Result<Exit, Exit> {
    let view = reported(client.destroy_sandbox(id).await)?;
    if json {
        print_json(&view);
    } else {
        println!("{id} destroyed");
    }
    Ok(Exit::Ok)
}

/// Runs one step, its output printed as it comes; returns its record.
async fn run(client: &Client, id: JobId, step: Step) -> Result<StepRunView, Exit> {
    let req = RunStepRequest {
        step,
        max_output_bytes: None,
    };
    reported(
        client
            .run_sandbox_step(id, &req, |stderr, text| {
                if stderr {
                    eprint!("{text}");
                    let _ = std::io::stderr().flush();
                } else {
                    print!("{text}");
                    let _ = std::io::stdout().flush();
                }
            })
            .await,
    )
}

fn exit_code(record: &StepRunView) -> i32 {
    record.result.as_ref().map_or(-1, |r| r.exit_code)
}

/// `agent sandbox exec`: runs one command (or Python) and exits 0 when it succeeded, 1 when not.
pub(super) async fn exec(client: &Client, id: JobId, step: Step, json: bool) -> Result<Exit, Exit> {
    let record = run(client, id, step).await?;
    if json {
        print_json(&record);
    } else if let Some(value) = record.result.as_ref().and_then(|r| r.python.as_ref()) {
        if let Some(v) = &value.value {
            println!("{v}");
        }
    }
    let code = exit_code(&record);
    Ok(if record.status == agent_core::StepStatus::Succeeded {
        Exit::Ok
    } else {
        eprintln!("exit code {code}");
        Exit::JobFailed
    })
}

/// `agent sandbox shell`: reads lines from stdin and runs each as a shell step, printing its
/// output and then `[exit N]` on stderr. A prompt is shown when stdin is a terminal. Ends at
/// the end of input (or `exit`); exits 0, or 3 when the sandbox can no longer be reached.
pub(super) async fn shell(client: &Client, id: JobId) -> Result<Exit, Exit> {
    let interactive = std::io::stdin().is_terminal();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(1);
    // Stdin is read on a thread of its own (a blocking read cannot be cancelled).
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            let Ok(line) = line else { break };
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    loop {
        if interactive {
            eprint!("{id}> ");
            let _ = std::io::stderr().flush();
        }
        let Some(line) = rx.recv().await else {
            break;
        };
        let command = line.trim();
        if command.is_empty() {
            continue;
        }
        if command == "exit" {
            break;
        }
        let record = run(client, id, Step::shell(command)).await?;
        eprintln!("[exit {}]", exit_code(&record));
    }
    Ok(Exit::Ok)
}

/// Where `agent sandbox cp` copies: a local path, or `ID:PATH` in a sandbox.
fn remote(spec: &str) -> Option<(JobId, &str)> {
    let (id, path) = spec.split_once(':')?;
    Some((id.parse().ok()?, path))
}

/// `agent sandbox cp SRC DST`: one side `ID:PATH` (a file or directory in the sandbox's
/// workspace), the other a local path. A directory is copied whole (as a tar): a local one into
/// `ID:PATH` (created), a sandbox's into the local `DST` (created; its contents, not the
/// directory itself).
pub(super) async fn copy(client: &Client, src: &str, dst: &str, json: bool) -> Result<Exit, Exit> {
    match (remote(src), remote(dst)) {
        (None, Some((id, path))) if Path::new(src).is_dir() => {
            let tar = pack(Path::new(src)).await?;
            let put = reported(
                client
                    .put_sandbox_archive(id, path, tar.path(), "application/x-tar")
                    .await,
            )?;
            if json {
                print_json(&put);
            } else {
                println!("{}/ ({} files, {} bytes)", put.path, put.files, put.bytes);
            }
            Ok(Exit::Ok)
        }
        (None, Some((id, path))) => {
            let content = std::fs::read(src)
                .map_err(|e| fail(Exit::Usage, format!("cannot read {src}: {e}")))?;
            let put = reported(client.put_sandbox_file(id, path, content).await)?;
            if json {
                print_json(&put);
            } else {
                println!("{} ({} bytes)", put.path, put.size_bytes);
            }
            Ok(Exit::Ok)
        }
        (Some((id, path)), None) => match client.get_sandbox_file(id, path).await {
            Err(ClientError::Api { status: 422, error }) if error.code == "invalid_path" => {
                copy_dir_out(client, id, path, Path::new(dst), json).await
            }
            content => {
                let content = reported(content)?;
                write_local(Path::new(dst), &content)?;
                if !json {
                    println!("{dst} ({} bytes)", content.len());
                }
                Ok(Exit::Ok)
            }
        },
        _ => Err(fail(
            Exit::Usage,
            "one of SRC and DST must be SANDBOX_ID:PATH and the other a local path",
        )),
    }
}

/// A local directory as a tar in a temporary file (links stored as links, which the server
/// refuses by name).
async fn pack(dir: &Path) -> Result<tempfile::NamedTempFile, Exit> {
    let dir = dir.to_path_buf();
    let packed = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
        let file = tempfile::NamedTempFile::new()?;
        let mut builder = tar::Builder::new(file.reopen()?);
        builder.follow_symlinks(false);
        builder.append_dir_all(".", &dir)?;
        builder.into_inner()?.sync_all()?;
        Ok(file)
    })
    .await
    .map_err(|e| fail(Exit::Internal, format!("packing the directory failed: {e}")))?;
    packed.map_err(|e| fail(Exit::Usage, format!("cannot pack the directory: {e}")))
}

/// Copies a sandbox's directory into the local `dst` (created).
async fn copy_dir_out(
    client: &Client,
    id: JobId,
    path: &str,
    dst: &Path,
    json: bool,
) -> Result<Exit, Exit> {
    let tar = tempfile::NamedTempFile::new().map_err(|e| {
        fail(
            Exit::Internal,
            format!("cannot create a temporary file: {e}"),
        )
    })?;
    let mut out = tokio::fs::File::from_std(
        tar.reopen()
            .map_err(|e| fail(Exit::Internal, format!("cannot open a temporary file: {e}")))?,
    );
    let size = reported(client.get_sandbox_archive(id, path, "tar", &mut out).await)?;
    let dest = dst.to_path_buf();
    let unpacked = tokio::task::spawn_blocking(move || -> std::io::Result<u64> {
        std::fs::create_dir_all(&dest)?;
        let mut archive = tar::Archive::new(std::io::BufReader::new(tar.reopen()?));
        let mut files = 0;
        for entry in archive.entries()? {
            let mut entry = entry?;
            files += u64::from(entry.header().entry_type().is_file());
            // Refuses names that would leave `dest`.
            entry.unpack_in(&dest)?;
        }
        Ok(files)
    })
    .await
    .map_err(|e| fail(Exit::Internal, format!("unpacking failed: {e}")))?;
    let files = unpacked.map_err(|e| {
        fail(
            Exit::Usage,
            format!("cannot unpack into {}: {e}", dst.display()),
        )
    })?;
    if json {
        print_json(&serde_json::json!({
            "path": dst.display().to_string(),
            "files": files,
            "archive_bytes": size,
        }));
    } else {
        println!("{}/ ({files} files)", dst.display());
    }
    Ok(Exit::Ok)
}

fn write_local(path: &Path, content: &[u8]) -> Result<(), Exit> {
    std::fs::write(path, content)
        .map_err(|e| fail(Exit::Usage, format!("cannot write {}: {e}", path.display())))
}
