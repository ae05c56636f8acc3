//! Turns an exported workspace (a tar stream) into the job's ZIP, safely and without holding it
//! in memory.
//!
//! The tar is spooled (in memory while small, else to an anonymous temporary file next to the
//! destination), then converted entry by entry.
//! Only regular files and directories are kept: absolute paths, `..` components, symlinks,
//! hardlinks and device nodes are skipped and counted, so the ZIP can never point outside the
//! workspace. A failed conversion leaves no file behind. The ZIP lives outside the workspace, so
//! it never contains itself.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Component, Path, PathBuf};

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use zip::write::SimpleFileOptions;

use crate::error::{Error, Result};
use crate::executor::TarStream;

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

/// Exports up to this size are spooled in memory; larger ones go to a temporary file.
const SPOOL_IN_MEMORY: usize = 1 << 20;

/// The spooled tar: in memory while small, then in a temporary file.
enum Spool {
    Memory(Vec<u8>),
    File(File),
}

/// Writes the tar `stream` as a ZIP at `dest`. On failure nothing is left at `dest`.
///
/// `max_bytes` caps the spooled tar size; past it the export fails rather than filling the disk.
pub async fn tar_stream_to_zip(
    mut stream: TarStream,
    dest: &Path,
    max_bytes: u64,
) -> Result<ArchiveSummary> {
    let dir = dest
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let mut memory = Vec::new();
    let mut file: Option<tokio::fs::File> = None;
    let mut total = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        total += chunk.len() as u64;
        if total > max_bytes {
            return Err(Error::other(format!(
                "the workspace export is larger than the {max_bytes}-byte limit"
            )));
        }
        if file.is_none() && memory.len() + chunk.len() > SPOOL_IN_MEMORY {
            // An anonymous temporary file next to the ZIP: removed by the OS when closed.
            tokio::fs::create_dir_all(&dir)
                .await
                .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
            let spill = tempfile::tempfile_in(&dir)
                .map_err(|e| Error::io("creating a temporary file for the workspace export", e))?;
            let mut spill = tokio::fs::File::from_std(spill);
            spill
                .write_all(&memory)
                .await
                .map_err(|e| Error::io("spooling the workspace export", e))?;
            memory = Vec::new();
            file = Some(spill);
        }
        match &mut file {
            Some(f) => f
                .write_all(&chunk)
                .await
                .map_err(|e| Error::io("spooling the workspace export", e))?,
            None => memory.extend_from_slice(&chunk),
        }
    }
    let spool = match file {
        Some(mut f) => {
            f.flush()
                .await
                .map_err(|e| Error::io("spooling the workspace export", e))?;
            Spool::File(f.into_std().await)
        }
        None => Spool::Memory(memory),
    };
    let dest = dest.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let result = match spool {
            Spool::Memory(bytes) => convert(io::Cursor::new(bytes), &dest),
            Spool::File(mut f) => f
                .seek(SeekFrom::Start(0))
                .map_err(|e| Error::io("rewinding the workspace export", e))
                .and_then(|_| convert(BufReader::new(f), &dest)),
        };
        if result.is_err() {
            let _ = std::fs::remove_file(&dest);
        }
        result
    })
    .await
    .map_err(|e| Error::other(format!("the archive task failed: {e}")))?
}

fn convert(tar_data: impl Read, dest: &Path) -> Result<ArchiveSummary> {
    let io_err = |what: &str| {
        let what = what.to_string();
        move |e: io::Error| Error::io(what, e)
    };
    let out = match File::create(dest) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(dir) = dest.parent() {
                std::fs::create_dir_all(dir).map_err(io_err("creating the artifact directory"))?;
            }
            File::create(dest)
        }
        other => other,
    }
    .map_err(io_err("creating the ZIP"))?;
    let mut zip = zip::ZipWriter::new(BufWriter::new(out));
    let mut summary = ArchiveSummary::default();
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
            if !is_root(&raw_path) {
                summary.skipped += 1;
            }
            continue;
        };
        let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
        let modified = zip_time(entry.header().mtime().unwrap_or(0));
        if kind.is_dir() {
            zip.add_directory(
                format!("{name}/"),
                SimpleFileOptions::default()
                    .unix_permissions(mode | 0o700)
                    .last_modified_time(modified),
            )
            .map_err(|e| Error::other(format!("writing the ZIP: {e}")))?;
        } else if kind.is_file() {
            let options = SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Deflated)
                .unix_permissions(mode)
                .last_modified_time(modified)
                .large_file(entry.size() >= u32::MAX as u64);
            zip.start_file(name, options)
                .map_err(|e| Error::other(format!("writing the ZIP: {e}")))?;
            summary.bytes += io::copy(&mut entry, &mut zip).map_err(io_err("writing the ZIP"))?;
            summary.files += 1;
        } else {
            summary.skipped += 1;
        }
    }
    let mut writer = zip
        .finish()
        .map_err(|e| Error::other(format!("finishing the ZIP: {e}")))?;
    writer.flush().map_err(io_err("writing the ZIP"))?;
    let out = writer
        .into_inner()
        .map_err(|e| Error::io("writing the ZIP", e.into_error()))?;
    summary.zip_bytes = out.metadata().map_err(io_err("writing the ZIP"))?.len();
    Ok(summary)
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

fn is_root(path: &Path) -> bool {
    path.components().all(|c| matches!(c, Component::CurDir))
}

/// A relative, `/`-separated name with no `..`, or `None`.
fn safe_name(path: &Path) -> Option<String> {
    let mut parts = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => parts.push(p.to_str()?.to_string()),
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
    use bytes::Bytes;
    use std::io::Read;

    fn tar_bytes(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().unwrap()
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
        let chunks: Vec<_> = data
            .chunks(100)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.zip");
        let summary = tar_stream_to_zip(futures::stream::iter(chunks).boxed(), &dest, 1 << 20)
            .await
            .unwrap();
        assert_eq!(summary.files, 1);
        assert_eq!(summary.skipped, 2);
        let mut zip = zip::ZipArchive::new(File::open(&dest).unwrap()).unwrap();
        let names: Vec<_> = zip.file_names().map(str::to_string).collect();
        assert_eq!(names, vec!["a/hello.txt".to_string()]);
        let mut s = String::new();
        zip.by_name("a/hello.txt")
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "hello");
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
    async fn a_large_export_is_spooled_to_disk_and_converted() {
        let big = vec![b'x'; SPOOL_IN_MEMORY * 3];
        let data = tar_bytes(|b| {
            b.append(&file_header("big.bin", big.len()), &big[..])
                .unwrap();
        });
        let chunks: Vec<_> = data
            .chunks(64 << 10)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("nested").join("out.zip");
        let summary = tar_stream_to_zip(futures::stream::iter(chunks).boxed(), &dest, 1 << 30)
            .await
            .unwrap();
        assert_eq!((summary.files, summary.bytes), (1, big.len() as u64));
        let mut zip = zip::ZipArchive::new(File::open(&dest).unwrap()).unwrap();
        let mut out = Vec::new();
        zip.by_name("big.bin")
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, big);
    }

    #[tokio::test]
    async fn refuses_an_export_over_the_limit() {
        let data = tar_bytes(|b| {
            b.append(&file_header("big", 4096), &[0u8; 4096][..])
                .unwrap();
        });
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.zip");
        let stream = futures::stream::iter([Ok(Bytes::from(data))]).boxed();
        assert!(tar_stream_to_zip(stream, &dest, 1024).await.is_err());
        assert!(!dest.exists());
    }
}
