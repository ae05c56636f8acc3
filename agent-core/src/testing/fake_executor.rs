//! [`FakeExecutor`]: steps as local processes in a temporary directory. **Not a sandbox.**

use std::collections::{HashMap, HashSet};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use crate::executor::{
    normalize_workspace_path, Capabilities, ExecRequest, Executor, OutputSink, Sandbox,
    SandboxError, SandboxErrorKind, SandboxSpec, TarStream, MAX_GET_FILE_BYTES,
};
use crate::job::{OutputStream, StepResult, Termination};

/// Host environment variables passed through to steps (everything else is cleared).
const PASSTHROUGH_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "PYENV_ROOT",
    "PYENV_VERSION",
];

/// How long to wait for a step's output pipes to close after its process group was killed
/// (a process that left the group may hold them open).
const PIPE_DRAIN_GRACE: Duration = Duration::from_secs(2);

/// An empty tar archive: two zero blocks.
static EMPTY_TAR: [u8; 1024] = [0; 1024];

/// An executor for tests that runs each step as a plain local process. **It is not a sandbox.**
///
/// Each sandbox is a fresh temporary directory. Processes run in that directory, as the current
/// user, with full access to the host (files, network, processes). Nothing is isolated and no
/// resource limit is enforced ([`Capabilities::NONE`]); only the host environment variables
/// needed to find programs (`PATH`, `HOME`, locale, pyenv) are passed on, plus the sandbox's and
/// the request's `env`.
///
/// What it does implement faithfully, so the job manager and agent flow can be tested against
/// it: streamed output, exact exit codes (128+N for signal N), per-step timeouts, cancellation and
/// output caps (the step's whole process group is killed), output tails, workspace path
/// confinement for file operations (`..`, absolute paths and symlinks leading out are refused),
/// tar export (links stored as links) and idempotent destroy.
///
/// [`FakeExecutor::noop`] builds a variant that runs nothing: every step "succeeds" at once, for
/// benchmarks of the job manager.
///
/// Use it in tests only, never for untrusted code.
#[derive(Clone, Debug, Default)]
pub struct FakeExecutor {
    root: Option<PathBuf>,
    noop: bool,
}

impl FakeExecutor {
    /// A fake executor whose sandboxes are directories under the system temporary directory.
    pub fn new() -> Self {
        Self::default()
    }

    /// A fake executor whose sandboxes are directories under `root` (which must exist).
    pub fn with_root(root: impl Into<PathBuf>) -> Self {
        Self {
            root: Some(root.into()),
            noop: false,
        }
    }

    /// A no-op executor for benchmarks: creating a sandbox touches no disk, every step succeeds
    /// at once with exit code 0 and no output (no process is started), files put are kept in
    /// memory, and the workspace export is an empty tar archive.
    pub fn noop() -> Self {
        Self {
            root: None,
            noop: true,
        }
    }

    /// Whether this is the [no-op](FakeExecutor::noop) variant.
    pub fn is_noop(&self) -> bool {
        self.noop
    }
}

#[async_trait]
impl Executor for FakeExecutor {
    fn name(&self) -> &str {
        "fake"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::NONE
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<Box<dyn Sandbox>, SandboxError> {
        self.capabilities()
            .check(spec)
            .map_err(|e| SandboxError::new(SandboxErrorKind::Invalid, e.to_string()))?;
        let job_id = spec.job_id.unwrap_or_default();
        if self.noop {
            return Ok(Box::new(NoopSandbox {
                id: format!("noop-{job_id}"),
                files: Mutex::new(HashMap::new()),
                destroyed: AtomicBool::new(false),
            }));
        }
        let parent = self.root.clone().unwrap_or_else(std::env::temp_dir);
        let prefix = format!("agent-fake-{job_id}-");
        let dir = blocking(move || {
            let dir = tempfile::Builder::new()
                .prefix(&prefix)
                .tempdir_in(&parent)
                .map_err(|e| io_error("create the sandbox directory", e))?;
            let root = dir
                .path()
                .canonicalize()
                .map_err(|e| io_error("resolve the sandbox directory", e))?;
            Ok((dir, root))
        })
        .await?;
        let (dir, root) = dir;
        Ok(Box::new(ProcessSandbox {
            id: root.display().to_string(),
            root,
            dir: Mutex::new(Some(dir)),
            destroyed: AtomicBool::new(false),
            env: spec
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            running: Arc::new(Mutex::new(HashSet::new())),
        }))
    }
}

/// A sandbox of the no-op executor.
struct NoopSandbox {
    id: String,
    files: Mutex<HashMap<String, Bytes>>,
    destroyed: AtomicBool,
}

impl NoopSandbox {
    fn check_alive(&self) -> Result<(), SandboxError> {
        alive(&self.destroyed)
    }
}

#[async_trait]
impl Sandbox for NoopSandbox {
    fn id(&self) -> &str {
        &self.id
    }

    async fn exec(
        &self,
        _request: ExecRequest,
        _output: OutputSink,
    ) -> Result<StepResult, SandboxError> {
        self.check_alive()?;
        Ok(exited(0, Tail::default(), Tail::default(), Duration::ZERO))
    }

    async fn put_file(&self, path: &str, content: Bytes) -> Result<(), SandboxError> {
        self.check_alive()?;
        let rel = normalize_workspace_path(path)?;
        lock(&self.files).insert(rel, content);
        Ok(())
    }

    async fn get_file(&self, path: &str) -> Result<Bytes, SandboxError> {
        self.check_alive()?;
        let rel = normalize_workspace_path(path)?;
        lock(&self.files)
            .get(&rel)
            .cloned()
            .ok_or_else(|| not_found(path))
    }

    async fn export(&self) -> Result<TarStream, SandboxError> {
        self.check_alive()?;
        Ok(futures::stream::once(async { Ok(Bytes::from_static(&EMPTY_TAR)) }).boxed())
    }

    async fn destroy(&self) -> Result<(), SandboxError> {
        self.destroyed.store(true, Ordering::Release);
        lock(&self.files).clear();
        Ok(())
    }
}

/// A sandbox of the fake executor: a temporary directory.
struct ProcessSandbox {
    id: String,
    /// The canonical path of the workspace directory.
    root: PathBuf,
    /// Owns the directory; `None` once destroyed.
    dir: Mutex<Option<tempfile::TempDir>>,
    destroyed: AtomicBool,
    /// The job's environment variables.
    env: Vec<(String, String)>,
    /// Process groups of the steps running now.
    running: Arc<Mutex<HashSet<u32>>>,
}

impl ProcessSandbox {
    fn check_alive(&self) -> Result<(), SandboxError> {
        alive(&self.destroyed)
    }

    async fn write(&self, path: &str, content: Bytes) -> Result<(), SandboxError> {
        self.check_alive()?;
        let root = self.root.clone();
        let path = path.to_string();
        blocking(move || write_confined(&root, &path, &content)).await
    }

    async fn run_process(
        &self,
        mut cmd: Command,
        request: &ExecRequest,
        output: OutputSink,
        started: Instant,
    ) -> Result<StepResult, SandboxError> {
        if request.cancel.is_cancelled() {
            return Ok(StepResult::cancelled(started.elapsed()));
        }
        let cwd = match request.cwd.as_deref() {
            None | Some("") | Some(".") => self.root.clone(),
            Some(dir) => {
                let rel = normalize_workspace_path(dir)?;
                resolve_inside(&self.root, dir, &self.root.join(rel))?
            }
        };
        cmd.current_dir(&cwd)
            .env_clear()
            .envs(
                PASSTHROUGH_ENV
                    .iter()
                    .filter_map(|k| Some((*k, std::env::var_os(k)?))),
            )
            .env("PWD", &cwd)
            .env("PYTHONUNBUFFERED", "1")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .envs(request.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = match cmd.spawn() {
            Ok(child) => child,
            // Like a shell (and the supervisor): a program that cannot run is exit 127/126.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
                ) =>
            {
                let code = if e.kind() == std::io::ErrorKind::NotFound {
                    127
                } else {
                    126
                };
                let message = format!("cannot run {}: {e}\n", request.argv[0]);
                output(
                    OutputStream::Stderr,
                    Bytes::from(message.clone().into_bytes()),
                );
                let stderr = Tail {
                    bytes: message.into_bytes(),
                    truncated: false,
                };
                return Ok(exited(code, Tail::default(), stderr, started.elapsed()));
            }
            Err(e) => return Err(io_error("start the process", e)),
        };
        let pgid = child.id().ok_or_else(|| {
            SandboxError::new(
                SandboxErrorKind::Backend,
                "the step exited before it started",
            )
        })?;
        // Kills the group whatever happens, also when this future is dropped.
        let group = GroupGuard::new(pgid, self.running.clone());

        let state = Arc::new(OutputState {
            written: AtomicU64::new(0),
            cap: request.max_output_bytes,
            cap_hit: CancellationToken::new(),
        });
        let readers = [
            child.stdout.take().map(|r| {
                tokio::spawn(pump(
                    r,
                    OutputStream::Stdout,
                    output.clone(),
                    state.clone(),
                    request.tail_bytes,
                ))
            }),
            child.stderr.take().map(|r| {
                tokio::spawn(pump(
                    r,
                    OutputStream::Stderr,
                    output.clone(),
                    state.clone(),
                    request.tail_bytes,
                ))
            }),
        ];

        let (mut termination, status) = tokio::select! {
            biased;
            status = child.wait() => (Termination::Exited, Some(status)),
            _ = state.cap_hit.cancelled() => (Termination::OutputLimit, None),
            _ = request.cancel.cancelled() => (Termination::Cancelled, None),
            _ = tokio::time::sleep(request.timeout) => (Termination::TimedOut, None),
        };
        // End every process of the step, stragglers of a clean exit included.
        group.kill();
        let status = match status {
            Some(status) => status,
            None => child.wait().await,
        }
        .map_err(|e| io_error("wait for the step's process", e))?;

        let [out, err] = readers;
        let stdout = join_reader(out).await;
        let stderr = join_reader(err).await;
        if termination == Termination::Exited && state.cap_hit.is_cancelled() {
            termination = Termination::OutputLimit;
        }
        let exit_code = status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
        let mut result = exited(exit_code, stdout, stderr, started.elapsed());
        result.termination = termination;
        Ok(result)
    }
}

#[async_trait]
impl Sandbox for ProcessSandbox {
    fn id(&self) -> &str {
        &self.id
    }

    async fn exec(
        &self,
        request: ExecRequest,
        output: OutputSink,
    ) -> Result<StepResult, SandboxError> {
        self.check_alive()?;
        let started = Instant::now();
        let Some(program) = request.argv.first() else {
            return Err(SandboxError::new(
                SandboxErrorKind::Invalid,
                "exec: an empty command",
            ));
        };
        let mut cmd = Command::new(program);
        cmd.args(&request.argv[1..]);
        self.run_process(cmd, &request, output, started).await
    }

    async fn put_file(&self, path: &str, content: Bytes) -> Result<(), SandboxError> {
        self.write(path, content).await
    }

    async fn get_file(&self, path: &str) -> Result<Bytes, SandboxError> {
        self.check_alive()?;
        let root = self.root.clone();
        let path = path.to_string();
        blocking(move || read_confined(&root, &path)).await
    }

    async fn export(&self) -> Result<TarStream, SandboxError> {
        self.check_alive()?;
        let root = self.root.clone();
        let file = blocking(move || tar_workspace(&root)).await?;
        let stream = tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(file))
            .map(|chunk| chunk.map_err(|e| io_error("read the workspace archive", e)));
        Ok(stream.boxed())
    }

    async fn destroy(&self) -> Result<(), SandboxError> {
        self.destroyed.store(true, Ordering::Release);
        let groups: Vec<u32> = lock(&self.running).iter().copied().collect();
        for pgid in groups {
            kill_group(pgid);
        }
        let dir = lock(&self.dir).take();
        if let Some(dir) = dir {
            blocking(move || {
                dir.close()
                    .map_err(|e| io_error("remove the sandbox directory", e))
            })
            .await?;
        }
        Ok(())
    }
}

impl Drop for ProcessSandbox {
    fn drop(&mut self) {
        for pgid in lock(&self.running).iter() {
            kill_group(*pgid);
        }
        // The TempDir removes the directory when dropped.
    }
}

/// Counts a step's output against its cap.
struct OutputState {
    written: AtomicU64,
    cap: u64,
    cap_hit: CancellationToken,
}

/// The end of one output stream.
#[derive(Default)]
struct Tail {
    bytes: Vec<u8>,
    truncated: bool,
}

impl Tail {
    fn into_text(self) -> String {
        let mut bytes = &self.bytes[..];
        if self.truncated {
            // Do not start in the middle of a UTF-8 sequence.
            let skip = bytes
                .iter()
                .take(3)
                .take_while(|b| (**b & 0xC0) == 0x80)
                .count();
            bytes = &bytes[skip..];
        }
        String::from_utf8_lossy(bytes).into_owned()
    }
}

/// Reads one stream to its end: forwards chunks to the sink until the cap, keeps the tail.
async fn pump(
    mut reader: impl AsyncRead + Unpin,
    stream: OutputStream,
    sink: OutputSink,
    state: Arc<OutputState>,
    tail_bytes: usize,
) -> Tail {
    let mut buf = vec![0u8; 16 << 10];
    let mut tail: Vec<u8> = Vec::new();
    let mut kept: u64 = 0;
    let mut cut = false;
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let before = state.written.fetch_add(n as u64, Ordering::AcqRel);
        let allowed = state.cap.saturating_sub(before).min(n as u64) as usize;
        if allowed < n {
            cut = true;
            state.cap_hit.cancel();
        }
        if allowed == 0 {
            continue; // drain until the process group is killed
        }
        let chunk = &buf[..allowed];
        sink(stream, Bytes::copy_from_slice(chunk));
        kept += allowed as u64;
        tail.extend_from_slice(chunk);
        if tail.len() > tail_bytes.saturating_mul(2).max(64 << 10) {
            tail.drain(..tail.len() - tail_bytes);
        }
    }
    if tail.len() > tail_bytes {
        tail.drain(..tail.len() - tail_bytes);
    }
    Tail {
        bytes: tail,
        truncated: cut || kept > tail_bytes as u64,
    }
}

async fn join_reader(handle: Option<tokio::task::JoinHandle<Tail>>) -> Tail {
    let Some(mut handle) = handle else {
        return Tail::default();
    };
    match tokio::time::timeout(PIPE_DRAIN_GRACE, &mut handle).await {
        Ok(Ok(tail)) => tail,
        Ok(Err(_)) => Tail::default(),
        Err(_) => {
            handle.abort();
            Tail::default()
        }
    }
}

fn exited(exit_code: i32, stdout: Tail, stderr: Tail, duration: Duration) -> StepResult {
    StepResult {
        exit_code,
        termination: Termination::Exited,
        stdout_truncated: stdout.truncated,
        stderr_truncated: stderr.truncated,
        stdout_tail: stdout.into_text(),
        stderr_tail: stderr.into_text(),
        duration,
        python: None,
    }
}

/// Kills a step's process group when dropped and tracks it while it runs.
struct GroupGuard {
    pgid: u32,
    running: Arc<Mutex<HashSet<u32>>>,
}

impl GroupGuard {
    fn new(pgid: u32, running: Arc<Mutex<HashSet<u32>>>) -> Self {
        lock(&running).insert(pgid);
        Self { pgid, running }
    }

    /// Kills the group (once).
    fn kill(&self) {
        if lock(&self.running).remove(&self.pgid) {
            kill_group(self.pgid);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends SIGKILL to a process group (no `unsafe` here: the `kill` program does it).
fn kill_group(pgid: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Writes a file under `root`, creating parent directories, refusing any path or link leading
/// out of it.
fn write_confined(root: &Path, path: &str, content: &[u8]) -> Result<(), SandboxError> {
    let rel = normalize_workspace_path(path)?;
    let mut dir = root.to_path_buf();
    let mut parts: Vec<&str> = rel.split('/').collect();
    let name = parts.pop().unwrap_or_default();
    for part in parts {
        let next = dir.join(part);
        match std::fs::symlink_metadata(&next) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir(&next).map_err(|e| io_error("create a directory", e))?;
                dir = next;
            }
            Err(e) => return Err(io_error("inspect a directory", e)),
            Ok(meta) if meta.file_type().is_symlink() => {
                dir = resolve_inside(root, path, &next)?;
                if !dir.is_dir() {
                    return Err(not_a_directory(path));
                }
            }
            Ok(meta) if meta.is_dir() => dir = next,
            Ok(_) => return Err(not_a_directory(path)),
        }
    }
    let target = dir.join(name);
    if let Ok(meta) = std::fs::symlink_metadata(&target) {
        if meta.file_type().is_symlink() {
            resolve_inside(root, path, &target)?;
        } else if meta.is_dir() {
            return Err(SandboxError::new(
                SandboxErrorKind::Invalid,
                format!("{path:?} is a directory"),
            ));
        }
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&target)
        .map_err(|e| io_error("open the file for writing", e))?;
    file.write_all(content)
        .map_err(|e| io_error("write the file", e))
}

/// Reads a file under `root`, refusing any path or link leading out of it.
fn read_confined(root: &Path, path: &str) -> Result<Bytes, SandboxError> {
    let rel = normalize_workspace_path(path)?;
    let target = resolve_inside(root, path, &root.join(rel))?;
    let meta = std::fs::metadata(&target).map_err(|e| fs_error(path, e))?;
    if !meta.is_file() {
        return Err(SandboxError::new(
            SandboxErrorKind::Invalid,
            format!("{path:?} is not a regular file"),
        ));
    }
    if meta.len() > MAX_GET_FILE_BYTES {
        return Err(SandboxError::new(
            SandboxErrorKind::TooLarge,
            format!(
                "{path:?} has {} bytes, more than the {MAX_GET_FILE_BYTES} allowed",
                meta.len()
            ),
        ));
    }
    let file = std::fs::File::open(&target).map_err(|e| fs_error(path, e))?;
    let mut content = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_GET_FILE_BYTES + 1)
        .read_to_end(&mut content)
        .map_err(|e| io_error("read the file", e))?;
    if content.len() as u64 > MAX_GET_FILE_BYTES {
        return Err(SandboxError::new(
            SandboxErrorKind::TooLarge,
            format!("{path:?} is larger than {MAX_GET_FILE_BYTES} bytes"),
        ));
    }
    Ok(Bytes::from(content))
}

/// Resolves every link of `full` and checks the result is inside `root`. The parent is checked
/// first, so a link leading out is refused even when its target does not exist.
fn resolve_inside(root: &Path, path: &str, full: &Path) -> Result<PathBuf, SandboxError> {
    if let Some(parent) = full.parent() {
        match parent.canonicalize() {
            Ok(p) if !p.starts_with(root) => {
                return Err(SandboxError::path_refused(
                    path,
                    "a link leads out of the workspace",
                ))
            }
            _ => {}
        }
    }
    let resolved = match full.canonicalize() {
        Ok(resolved) => resolved,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if std::fs::symlink_metadata(full).is_ok() {
                return Err(SandboxError::path_refused(path, "a dangling link"));
            }
            return Err(not_found(path));
        }
        Err(e) => return Err(fs_error(path, e)),
    };
    if resolved.starts_with(root) {
        Ok(resolved)
    } else {
        Err(SandboxError::path_refused(
            path,
            "a link leads out of the workspace",
        ))
    }
}

/// Tars the workspace into an anonymous temporary file, rewound, ready to stream.
fn tar_workspace(root: &Path) -> Result<std::fs::File, SandboxError> {
    let file = tempfile::tempfile().map_err(|e| io_error("create a temporary archive", e))?;
    let mut builder = tar::Builder::new(file);
    builder.follow_symlinks(false);
    let mut stack = vec![PathBuf::new()];
    while let Some(rel_dir) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(root.join(&rel_dir))
            .map_err(|e| io_error("list the workspace", e))?
            .filter_map(|entry| entry.ok())
            .collect();
        entries.sort_by_key(|entry| entry.file_name());
        for entry in entries {
            let rel = rel_dir.join(entry.file_name());
            let kind = entry
                .file_type()
                .map_err(|e| io_error("inspect the workspace", e))?;
            if !(kind.is_file() || kind.is_dir() || kind.is_symlink()) {
                continue; // sockets, fifos, devices
            }
            builder
                .append_path_with_name(entry.path(), &rel)
                .map_err(|e| io_error("archive the workspace", e))?;
            if kind.is_dir() {
                stack.push(rel);
            }
        }
    }
    let mut file = builder
        .into_inner()
        .map_err(|e| io_error("finish the workspace archive", e))?;
    file.flush()
        .and_then(|_| file.seek(SeekFrom::Start(0)))
        .map_err(|e| io_error("rewind the workspace archive", e))?;
    Ok(file)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SandboxError> + Send + 'static,
) -> Result<T, SandboxError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        SandboxError::new(SandboxErrorKind::Backend, "a file task failed").with_source(e)
    })?
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn io_error(what: &str, e: std::io::Error) -> SandboxError {
    SandboxError::new(
        SandboxErrorKind::Backend,
        format!("fake executor: cannot {what}: {e}"),
    )
    .with_source(e)
}

fn fs_error(path: &str, e: std::io::Error) -> SandboxError {
    if e.kind() == std::io::ErrorKind::NotFound {
        not_found(path)
    } else {
        io_error("access the file", e)
    }
}

fn not_found(path: &str) -> SandboxError {
    SandboxError::new(
        SandboxErrorKind::NotFound,
        format!("{path:?} does not exist"),
    )
}

fn not_a_directory(path: &str) -> SandboxError {
    SandboxError::new(
        SandboxErrorKind::Invalid,
        format!("a parent of {path:?} is not a directory"),
    )
}

/// `Ok` until the sandbox whose flag this is was destroyed.
fn alive(destroyed: &AtomicBool) -> Result<(), SandboxError> {
    if destroyed.load(Ordering::Acquire) {
        Err(gone())
    } else {
        Ok(())
    }
}

fn gone() -> SandboxError {
    SandboxError::new(SandboxErrorKind::Gone, "the sandbox was destroyed")
}
