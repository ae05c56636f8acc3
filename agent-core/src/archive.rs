//! Turns an exported workspace (a tar stream) into the job's ZIP in the artifact store, safely
//! and without holding it in memory.
//!
//! The tar is read as it arrives and converted entry by entry into a temporary file that the
//! [`ArtifactStore`] then commits; files made on the host (the job's `result.json`) are added
//! first, so they need no space in the sandbox, and a workspace file of the same name is left out.
//! Only regular files and directories are kept: absolute paths, `..` components, symlinks,
//! hardlinks and device nodes are skipped and counted, so the ZIP can never point outside the
//! workspace. The agent's own scratch directory ([`SCRATCH_DIR`]: the scripts and answers of
//! Python steps) is left out too: the plan already holds that code. A failed conversion leaves
//! nothing behind. The ZIP lives outside the workspace, so
//! it never contains itself.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Component, Path};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use zip::write::SimpleFileOptions;

use crate::artifacts::ArtifactStore;
use crate::error::{Error, Result};
use crate::executor::TarStream;

/// The workspace directory where the agent keeps its own files (a Python step's script and a
/// stateful step's answer); never packaged.
pub const SCRATCH_DIR: &str = ".agent";

/// What went into a ZIP.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveSummary {
    /// Regular files written.
    pub files: u64,
    /// Their total uncompressed size.
    pub bytes: u64,
    /// Entries left out (links, devices, unsafe paths).
    pub skipped: u64,
    /// Size of the ZIP file.
    pub zip_bytes: u64,
}

/// A file made on the host and added to the ZIP beside the workspace's files.
#[derive(Clone, Debug)]
pub struct HostFile {
    /// Its name in the ZIP (relative, `/`-separated).
    pub name: String,
    /// Its content.
    pub content: Bytes,
}

/// Converts the tar `stream` (plus `host_files`, written first) into a ZIP stored under `key` in
/// `store`. On failure nothing is stored.
///
/// `max_bytes` caps the tar size read; past it the export fails rather than filling the disk.
pub async fn package(
    stream: TarStream,
    host_files: &[HostFile],
    store: &ArtifactStore,
    key: &str,
    max_bytes: u64,
) -> Result<ArchiveSummary> {
    let staging = store.staging_file()?;
    let (file, path) = staging.into_parts();
    let host_files = host_files.to_vec();
    let (summary, file) = read_export(stream, max_bytes, move |tar| {
        convert(tar, &host_files, "", file).map(|(summary, _, file)| (summary, file))
    })
    .await?;
    store
        .commit(key, tempfile::NamedTempFile::from_parts(file, path))
        .await?;
    Ok(summary)
}

/// What [`subtree`] writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubtreeFormat {
    /// A tar (regular files and directories).
    Tar,
    /// A ZIP.
    Zip,
}

/// Writes the part of a workspace export (the tar `stream`) under the directory `root`
/// (relative; `""`: all of it) into a temporary file in `dir`, as a tar or a ZIP whose names are
/// relative to `root`; only regular files and directories, unsafe names left out, as for a job's
/// ZIP. `None` when the export has no directory `root`. `max_bytes` caps the export read.
pub async fn subtree(
    stream: TarStream,
    root: &str,
    format: SubtreeFormat,
    dir: &Path,
    max_bytes: u64,
) -> Result<Option<(tempfile::NamedTempFile, ArchiveSummary)>> {
    let staging = tempfile::Builder::new()
        .prefix(".subtree-")
        .tempfile_in(dir)
        .map_err(|e| Error::io("creating a temporary file for the archive", e))?;
    let (file, path) = staging.into_parts();
    let root = root.to_string();
    let (summary, found, file) = read_export(stream, max_bytes, move |tar| match format {
        SubtreeFormat::Zip => convert(tar, &[], &root, file),
        SubtreeFormat::Tar => retar(tar, &root, file),
    })
    .await?;
    Ok(found.then(|| (tempfile::NamedTempFile::from_parts(file, path), summary)))
}

/// Feeds the export `stream` (at most `max_bytes`) to `convert`, run on a blocking thread
/// that reads it through a small channel: if this future is dropped (a packaging deadline),
/// the channel closes and the thread ends.
async fn read_export<T: Send + 'static>(
    stream: TarStream,
    max_bytes: u64,
    convert: impl FnOnce(BufReader<Capped<ChannelReader>>) -> Result<T> + Send + 'static,
) -> Result<T> {
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let converting = tokio::task::spawn_blocking(move || {
        convert(BufReader::with_capacity(
            64 << 10,
            Capped::new(ChannelReader::new(rx), max_bytes),
        ))
    });
    let pump = async move {
        let mut stream = stream;
        while let Some(item) = stream.next().await {
            if tx.send(item.map_err(io::Error::other)).await.is_err() {
                break;
            }
        }
    };
    let ((), converted) = tokio::join!(pump, converting);
    let converted = converted.map_err(|e| Error::other(format!("the archive task failed: {e}")))?;
    converted.map_err(|e| match e {
        Error::Io { source, .. } if source.get_ref().is_some_and(|e| e.is::<TooLarge>()) => {
            Error::other(format!(
                "the workspace export is larger than the {max_bytes}-byte limit"
            ))
        }
        other => other,
    })
}

/// Copies the regular files and directories under `root` of a workspace export into a tar of
/// their own, named relative to `root` (the agent's scratch directory left out, as from a ZIP).
fn retar(tar_data: impl Read, root: &str, out: File) -> Result<(ArchiveSummary, bool, File)> {
    let io_err = |what: &'static str| move |e: io::Error| Error::io(what, e);
    let mut summary = ArchiveSummary::default();
    let mut found = root.is_empty();
    let mut builder = tar::Builder::new(BufWriter::new(out));
    let mut archive = tar::Archive::new(tar_data);
    for entry in archive
        .entries()
        .map_err(io_err("reading the workspace export"))?
    {
        let mut entry = entry.map_err(io_err("reading the workspace export"))?;
        let raw_path = entry
            .path()
            .map_err(io_err("reading an entry path"))?
            .into_owned();
        let Some(name) = safe_name(&raw_path).filter(|n| !is_scratch(n)) else {
            continue;
        };
        let kind = entry.header().entry_type();
        let Some(rel) = under(&name, root) else {
            continue;
        };
        if rel.is_empty() {
            found |= kind.is_dir();
            continue;
        }
        if !(kind.is_dir() || kind.is_file()) {
            summary.skipped += 1;
            continue;
        }
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(entry.header().mode().unwrap_or(0o644) & 0o777);
        header.set_mtime(entry.header().mtime().unwrap_or(0));
        header.set_size(if kind.is_file() { entry.size() } else { 0 });
        builder
            .append_data(&mut header, rel, &mut entry)
            .map_err(io_err("writing the archive"))?;
        if kind.is_file() {
            summary.files += 1;
            summary.bytes += entry.size();
        }
    }
    let mut out = builder
        .into_inner()
        .map_err(io_err("writing the archive"))?
        .into_inner()
        .map_err(|e| Error::io("writing the archive", e.into_error()))?;
    out.flush().map_err(io_err("writing the archive"))?;
    summary.zip_bytes = out.metadata().map_err(io_err("writing the archive"))?.len();
    Ok((summary, found, out))
}

/// `name` relative to the directory `root` (`""` for the directory itself), or `None` outside
/// it.
fn under<'a>(name: &'a str, root: &str) -> Option<&'a str> {
    if root.is_empty() {
        return Some(name);
    }
    let rest = name.strip_prefix(root)?;
    if rest.is_empty() {
        Some("")
    } else {
        rest.strip_prefix('/')
    }
}

/// Reads the chunks of an export sent from the async side; ends when the sender is gone.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<io::Result<Bytes>>,
    chunk: Bytes,
}

impl ChannelReader {
    fn new(rx: tokio::sync::mpsc::Receiver<io::Result<Bytes>>) -> Self {
        Self {
            rx,
            chunk: Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.chunk = chunk,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

/// The error a [`Capped`] reader gives past its limit.
#[derive(Debug)]
struct TooLarge;

impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the workspace export is over its size limit")
    }
}

impl std::error::Error for TooLarge {}

/// A reader that fails once more than `left` bytes came through.
struct Capped<R> {
    inner: R,
    left: u64,
}

impl<R> Capped<R> {
    fn new(inner: R, limit: u64) -> Self {
        Self { inner, left: limit }
    }
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.left = self
            .left
            .checked_sub(n as u64)
            .ok_or_else(|| io::Error::other(TooLarge))?;
        Ok(n)
    }
}

/// Writes the ZIP into `out`. The ZIP writer never prints: on any failure its writes are
/// swallowed (the zip crate's `Drop` would otherwise finish the archive and print the error of
/// that second attempt to stderr), and the failure is returned.
fn convert(
    tar_data: impl Read,
    host_files: &[HostFile],
    root: &str,
    out: File,
) -> Result<(ArchiveSummary, bool, File)> {
    let swallow = Arc::new(AtomicBool::new(false));
    let mut zip = zip::ZipWriter::new(BufWriter::new(Quiet {
        inner: out,
        swallow: swallow.clone(),
    }));
    let (mut summary, found) = match write_entries(&mut zip, tar_data, host_files, root) {
        Ok(done) => done,
        Err(e) => {
            swallow.store(true, Ordering::Relaxed);
            return Err(e);
        }
    };
    let writer = zip
        .finish()
        .map_err(|e| Error::other(format!("finishing the ZIP: {e}")))?;
    let quiet = writer
        .into_inner()
        .map_err(|e| Error::io("writing the ZIP", e.into_error()))?;
    if quiet.swallow.load(Ordering::Relaxed) {
        return Err(Error::other("writing the ZIP failed"));
    }
    let out = quiet.inner;
    summary.zip_bytes = out
        .metadata()
        .map_err(|e| Error::io("writing the ZIP", e))?
        .len();
    Ok((summary, found, out))
}

/// A file whose writes, after the first failure (or once told to), succeed without writing.
struct Quiet {
    inner: File,
    swallow: Arc<AtomicBool>,
}

impl Write for Quiet {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.swallow.load(Ordering::Relaxed) {
            return Ok(buf.len());
        }
        self.inner.write(buf).inspect_err(|_| {
            self.swallow.store(true, Ordering::Relaxed);
        })
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.swallow.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.inner.flush()
    }
}

impl Seek for Quiet {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.inner.seek(pos)
    }
}

/// Writes the host files, then the export's entries under `root` (named relative to it);
/// returns whether `root` was found.
fn write_entries<W: Write + Seek>(
    zip: &mut zip::ZipWriter<W>,
    tar_data: impl Read,
    host_files: &[HostFile],
    root: &str,
) -> Result<(ArchiveSummary, bool)> {
    let io_err = |what: &str| {
        let what = what.to_string();
        move |e: io::Error| Error::io(what, e)
    };
    let zip_err = |e: zip::result::ZipError| Error::other(format!("writing the ZIP: {e}"));
    let mut summary = ArchiveSummary::default();
    let now = zip_time(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    );
    for host in host_files {
        let options = SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .unix_permissions(0o644)
            .last_modified_time(now);
        zip.start_file(host.name.as_str(), options)
            .map_err(zip_err)?;
        zip.write_all(&host.content)
            .map_err(io_err("writing the ZIP"))?;
        summary.files += 1;
        summary.bytes += host.content.len() as u64;
    }
    let replaced = |name: &str| {
        host_files.iter().any(|h| {
            name == h.name
                || name
                    .strip_prefix(h.name.as_str())
                    .is_some_and(|rest| rest.starts_with('/'))
        })
    };
    // Names already in the ZIP: a second entry whose cleaned name is taken is skipped (a ZIP
    // must not hold two entries of one name).
    let mut taken = std::collections::HashSet::new();
    let mut found = root.is_empty();
    let mut archive = tar::Archive::new(tar_data);
    let entries = archive
        .entries()
        .map_err(io_err("reading the workspace export"))?;
    for entry in entries {
        let mut entry = entry.map_err(io_err("reading the workspace export"))?;
        let kind = entry.header().entry_type();
        let raw_path = entry
            .path()
            .map_err(io_err("reading an entry path"))?
            .into_owned();
        let Some(name) = safe_name(&raw_path) else {
            if !is_root(&raw_path) && root.is_empty() {
                summary.skipped += 1;
            }
            continue;
        };
        if replaced(&name) || is_scratch(&name) {
            continue;
        }
        let name = match under(&name, root) {
            None => continue,
            Some("") => {
                found |= kind.is_dir();
                continue;
            }
            Some(rel) => rel.to_string(),
        };
        let key = if kind.is_dir() {
            format!("{name}/")
        } else {
            name.clone()
        };
        if !taken.insert(key) {
            summary.skipped += 1;
            continue;
        }
        let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
        let modified = zip_time(entry.header().mtime().unwrap_or(0));
        if kind.is_dir() {
            zip.add_directory(
                format!("{name}/"),
                SimpleFileOptions::default()
                    .unix_permissions(mode | 0o700)
                    .last_modified_time(modified),
            )
            .map_err(zip_err)?;
        } else if kind.is_file() {
            let options = SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Deflated)
                .unix_permissions(mode)
                .last_modified_time(modified)
                .large_file(entry.size() >= u32::MAX as u64);
            zip.start_file(name, options).map_err(zip_err)?;
            summary.bytes += io::copy(&mut entry, zip).map_err(io_err("writing the ZIP"))?;
            summary.files += 1;
        } else {
            summary.skipped += 1;
        }
    }
    Ok((summary, found))
}

/// Whether a cleaned entry name is the agent's scratch directory or inside it.
fn is_scratch(name: &str) -> bool {
    name.strip_prefix(SCRATCH_DIR)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// A tar mtime (Unix seconds, UTC) as a ZIP time; out-of-range times (before 1980 or after 2107)
/// become ZIP's earliest time.
fn zip_time(unix_secs: u64) -> zip::DateTime {
    use chrono::{Datelike, Timelike};
    let Some(t) = i64::try_from(unix_secs)
        .ok()
        .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
    else {
        return zip::DateTime::default();
    };
    let part = |v: u32| u8::try_from(v).unwrap_or(0);
    u16::try_from(t.year())
        .ok()
        .and_then(|year| {
            zip::DateTime::from_date_and_time(
                year,
                part(t.month()),
                part(t.day()),
                part(t.hour()),
                part(t.minute()),
                part(t.second()),
            )
            .ok()
        })
        .unwrap_or_default()
}

/// A character an entry name must not carry (see [`safe_name`]).
pub(crate) fn misleading(c: char) -> bool {
    c == '\\'
        || c.is_control()
        || matches!(
            c,
            '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
        )
}

fn is_root(path: &Path) -> bool {
    path.components().all(|c| matches!(c, Component::CurDir))
}

/// A relative, `/`-separated name with no `..`, or `None`. What would mislead an unzip tool or
/// a person reading the listing becomes `_`: backslashes (a separator to Windows tools),
/// control characters (terminal escapes, newlines) and bidirectional controls (which make
/// `evil\u{202e}txt.exe` show as `evilexe.txt`).
fn safe_name(path: &Path) -> Option<String> {
    let mut parts = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => parts.push(
                p.to_str()?
                    .chars()
                    .map(|c| if misleading(c) { '_' } else { c })
                    .collect::<String>(),
            ),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    if parts.is_empty() {
        None
    } else {
        Some(parts.join("/"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{zip_entry, zip_text};
    use bytes::Bytes;

    fn tar_bytes(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().unwrap()
    }

    fn chunked(data: &[u8], size: usize) -> TarStream {
        let chunks: Vec<_> = data
            .chunks(size)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        futures::stream::iter(chunks).boxed()
    }

    fn open_zip(dir: &Path, key: &str) -> zip::ZipArchive<File> {
        zip::ZipArchive::new(File::open(dir.join(key)).unwrap()).unwrap()
    }

    fn file_header(path: &str, len: usize) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_path(path).unwrap();
        h.set_size(len as u64);
        h.set_mode(0o644);
        h.set_mtime(1_790_000_000); // 2026-09-21 14:13:20 UTC
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        h
    }

    #[tokio::test]
    async fn converts_files_and_skips_unsafe_entries() {
        let data = tar_bytes(|b| {
            let mut d = tar::Header::new_gnu();
            d.set_path("./").unwrap();
            d.set_entry_type(tar::EntryType::Directory);
            d.set_mode(0o755);
            d.set_size(0);
            d.set_cksum();
            b.append(&d, io::empty()).unwrap();
            b.append(&file_header("./a/hello.txt", 5), &b"hello"[..])
                .unwrap();
            // The agent's scratch directory is left out; a look-alike name is not.
            b.append(&file_header("./.agent/step-0.py", 3), &b"x=1"[..])
                .unwrap();
            b.append(&file_header(".agents", 2), &b"ok"[..]).unwrap();
            let mut link = tar::Header::new_gnu();
            link.set_path("evil").unwrap();
            link.set_link_name("/etc/passwd").unwrap();
            link.set_entry_type(tar::EntryType::Symlink);
            link.set_size(0);
            link.set_cksum();
            b.append(&link, io::empty()).unwrap();
            // `set_path` refuses `..`, so write the raw name.
            let mut bad = file_header("placeholder", 3);
            bad.as_old_mut().name[..8].copy_from_slice(b"../x.txt");
            bad.as_old_mut().name[8] = 0;
            bad.set_cksum();
            b.append(&bad, &b"bad"[..]).unwrap();
        });
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::local(dir.path()).unwrap();
        let summary = package(chunked(&data, 100), &[], &store, "out.zip", 1 << 20)
            .await
            .unwrap();
        assert_eq!(summary.files, 2);
        assert_eq!(summary.skipped, 2);
        let mut zip = open_zip(dir.path(), "out.zip");
        let names: Vec<_> = zip.file_names().map(str::to_string).collect();
        assert_eq!(
            names,
            vec!["a/hello.txt".to_string(), ".agents".to_string()]
        );
        assert_eq!(zip_text(&mut zip, "a/hello.txt"), "hello");
        let modified = zip.by_name("a/hello.txt").unwrap().last_modified().unwrap();
        assert_eq!(
            (
                modified.year(),
                modified.month(),
                modified.day(),
                modified.hour()
            ),
            (2026, 9, 21, 14),
            "the file's time is kept"
        );
        // Nothing but the ZIP is in the directory.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[tokio::test]
    async fn misleading_names_are_cleaned_and_a_taken_name_is_skipped() {
        let data = tar_bytes(|b| {
            for name in [
                "dir\\sub.txt",
                "evil\u{202e}txt.exe",
                "bell\u{7}\u{1b}[2J.txt",
                "iso\u{2067}late.txt",
                "dir_sub.txt",
                "plain.txt",
            ] {
                b.append(&file_header(name, 2), &b"ok"[..]).unwrap();
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::local(dir.path()).unwrap();
        let summary = package(chunked(&data, 64), &[], &store, "n.zip", 1 << 20)
            .await
            .unwrap();
        let zip = open_zip(dir.path(), "n.zip");
        let names: Vec<_> = zip.file_names().map(str::to_string).collect();
        assert_eq!(
            names,
            [
                "dir_sub.txt",
                "evil_txt.exe",
                "bell__[2J.txt",
                "iso_late.txt",
                "plain.txt"
            ]
        );
        assert_eq!((summary.files, summary.skipped), (5, 1));
    }

    #[tokio::test]
    async fn a_large_export_is_streamed_and_converted() {
        let big = vec![b'x'; 3 << 20];
        let data = tar_bytes(|b| {
            b.append(&file_header("big.bin", big.len()), &big[..])
                .unwrap();
        });
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::local(dir.path()).unwrap();
        let summary = package(
            chunked(&data, 64 << 10),
            &[],
            &store,
            "nested/out.zip",
            1 << 30,
        )
        .await
        .unwrap();
        assert_eq!((summary.files, summary.bytes), (1, big.len() as u64));
        let mut zip = open_zip(dir.path(), "nested/out.zip");
        assert_eq!(zip_entry(&mut zip, "big.bin"), big);
    }

    #[tokio::test]
    async fn refuses_an_export_over_the_limit() {
        let data = tar_bytes(|b| {
            b.append(&file_header("big", 4096), &[0u8; 4096][..])
                .unwrap();
        });
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::local(dir.path()).unwrap();
        let err = package(chunked(&data, 512), &[], &store, "out.zip", 1024)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("1024-byte limit"), "{err}");
        // Nothing is left: neither the ZIP nor its temporary file.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn host_files_come_first_and_replace_a_workspace_file_of_the_same_name() {
        let data = tar_bytes(|b| {
            b.append(&file_header("result.json", 4), &b"fake"[..])
                .unwrap();
            b.append(&file_header("out.txt", 2), &b"ok"[..]).unwrap();
        });
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::local(dir.path()).unwrap();
        let host = HostFile {
            name: "result.json".into(),
            content: Bytes::from_static(b"{\"real\":true}"),
        };
        let summary = package(chunked(&data, 1000), &[host], &store, "j.zip", 1 << 20)
            .await
            .unwrap();
        assert_eq!((summary.files, summary.skipped), (2, 0));
        let mut zip = open_zip(dir.path(), "j.zip");
        let names: Vec<_> = zip.file_names().map(str::to_string).collect();
        assert_eq!(names, ["result.json", "out.txt"]);
        assert_eq!(zip_text(&mut zip, "result.json"), "{\"real\":true}");
    }

    #[tokio::test]
    async fn a_failing_export_stores_nothing() {
        let data = tar_bytes(|b| {
            b.append(&file_header("a.txt", 2048), &[b'a'; 2048][..])
                .unwrap();
        });
        let mut items: Vec<std::result::Result<Bytes, crate::SandboxError>> =
            vec![Ok(Bytes::copy_from_slice(&data[..1024]))];
        items.push(Err(crate::SandboxError::new(
            crate::SandboxErrorKind::Unavailable,
            "the sandbox went away",
        )));
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::local(dir.path()).unwrap();
        let err = package(
            futures::stream::iter(items).boxed(),
            &[],
            &store,
            "x.zip",
            1 << 20,
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("went away"), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn a_subtree_is_exported_as_tar_or_zip_relative_to_its_root() {
        let data = tar_bytes(|b| {
            let mut d = file_header("a", 0);
            d.set_entry_type(tar::EntryType::Directory);
            d.set_cksum();
            b.append(&d, io::empty()).unwrap();
            b.append(&file_header("a/x", 1), &b"x"[..]).unwrap();
            b.append(&file_header("a/b/y", 2), &[0u8, 255][..]).unwrap();
            b.append(&file_header("ab", 1), &b"n"[..]).unwrap();
            let mut link = tar::Header::new_gnu();
            link.set_path("a/ln").unwrap();
            link.set_link_name("/etc/passwd").unwrap();
            link.set_entry_type(tar::EntryType::Symlink);
            link.set_size(0);
            link.set_cksum();
            b.append(&link, io::empty()).unwrap();
        });
        let dir = tempfile::tempdir().unwrap();
        let (file, summary) = subtree(
            chunked(&data, 100),
            "a",
            SubtreeFormat::Tar,
            dir.path(),
            1 << 20,
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!((summary.files, summary.bytes, summary.skipped), (2, 3, 1));
        let mut names = Vec::new();
        for e in tar::Archive::new(File::open(file.path()).unwrap())
            .entries()
            .unwrap()
        {
            let mut e = e.unwrap();
            let mut body = Vec::new();
            e.read_to_end(&mut body).unwrap();
            names.push((e.path().unwrap().display().to_string(), body));
        }
        assert_eq!(
            names,
            [
                ("x".to_string(), b"x".to_vec()),
                ("b/y".to_string(), vec![0, 255])
            ]
        );
        let (file, _) = subtree(
            chunked(&data, 100),
            "a",
            SubtreeFormat::Zip,
            dir.path(),
            1 << 20,
        )
        .await
        .unwrap()
        .unwrap();
        let mut zip = zip::ZipArchive::new(File::open(file.path()).unwrap()).unwrap();
        assert_eq!(zip_entry(&mut zip, "b/y"), vec![0, 255]);
        assert_eq!(zip.len(), 2);
        let missing = subtree(
            chunked(&data, 100),
            "a/x",
            SubtreeFormat::Tar,
            dir.path(),
            1 << 20,
        )
        .await
        .unwrap();
        assert!(missing.is_none(), "a file is not a directory");
    }
}
