//! Files given to a job or a live sandbox: the one validating unpacker.
//!
//! Whatever the files arrive as — single files (a multipart upload), a tar, a gzipped tar or a
//! ZIP — they go through one [`Unpacker`], which refuses, naming the entry:
//! - names that are empty, absolute, contain `..`, backslashes, NUL, control or bidirectional
//!   characters, a component over 255 bytes, or that are given twice (or as a file and a
//!   directory at once);
//! - symbolic links, hard links, device nodes, FIFOs and sparse files (only regular files and
//!   directories are taken);
//! - a file over [`InputLimits::max_file_bytes`], more than [`InputLimits::max_total_bytes`] in
//!   all, more than [`InputLimits::max_entries`] entries.
//!
//! What it accepts is written into a *staged* tar of its own ([`StagedInputs`]): normalised
//! relative names, regular files and directories only. A job keeps that file until it ends (so a
//! queued job's inputs survive a restart) and [`place`] writes it into the sandbox's workspace
//! before the first step; a live sandbox's upload is placed at once. Files are written through
//! [`Sandbox::put_file`], which confines every path to the workspace (links included), so
//! nothing is ever written outside it.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::executor::{Sandbox, SandboxError, SandboxErrorKind};

/// The longest name component (a file system's own limit).
const MAX_COMPONENT_BYTES: usize = 255;
/// The longest whole name.
const MAX_NAME_BYTES: usize = 4096;

/// How much an upload may hold. Defaults: 16 MiB a file, 64 MiB in all, 1000 entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputLimits {
    /// The largest file (at most 16 MiB: what [`Sandbox::put_file`] takes in one piece).
    pub max_file_bytes: u64,
    /// The most bytes of all files together.
    pub max_total_bytes: u64,
    /// The most entries (files and directories).
    pub max_entries: usize,
}

impl Default for InputLimits {
    fn default() -> Self {
        Self {
            max_file_bytes: MAX_INPUT_FILE_BYTES,
            max_total_bytes: 64 << 20,
            max_entries: 1000,
        }
    }
}

/// The largest file an upload may hold whatever the limits say: 16 MiB.
pub const MAX_INPUT_FILE_BYTES: u64 = 16 << 20;

/// A file given to a job: what the planner is told exists.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputFile {
    /// Its path under `/workspace` (relative, `/`-separated).
    pub path: String,
    /// Its size.
    pub size_bytes: u64,
}

/// The kinds of archive an upload may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArchiveFormat {
    /// A POSIX or GNU tar.
    Tar,
    /// A gzip-compressed tar.
    TarGz,
    /// A ZIP.
    Zip,
}

impl ArchiveFormat {
    /// The format the first bytes show (ZIP's `PK`, gzip's `1f 8b`, tar's `ustar` at 257).
    pub fn sniff(head: &[u8]) -> Option<Self> {
        if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
            Some(Self::Zip)
        } else if head.starts_with(&[0x1f, 0x8b]) {
            Some(Self::TarGz)
        } else if head.get(257..262) == Some(b"ustar") {
            Some(Self::Tar)
        } else {
            None
        }
    }

    /// The format a media type names (`application/zip`, `application/x-tar`,
    /// `application/gzip`, …), any parameters ignored.
    pub fn from_media_type(value: &str) -> Option<Self> {
        let essence = value.split(';').next().unwrap_or("").trim();
        match essence.to_ascii_lowercase().as_str() {
            "application/zip" | "application/x-zip-compressed" => Some(Self::Zip),
            "application/x-tar" | "application/tar" => Some(Self::Tar),
            "application/gzip"
            | "application/x-gzip"
            | "application/x-compressed-tar"
            | "application/x-tgz" => Some(Self::TarGz),
            _ => None,
        }
    }

    /// The format of a file: its first bytes, else `media_type`.
    pub fn detect(file: &mut File, media_type: Option<&str>) -> Result<Option<Self>> {
        let mut head = [0u8; 512];
        let mut n = 0;
        let io_err = |e| Error::io("reading the archive", e);
        file.seek(SeekFrom::Start(0)).map_err(io_err)?;
        while n < head.len() {
            match file.read(&mut head[n..]).map_err(io_err)? {
                0 => break,
                k => n += k,
            }
        }
        file.seek(SeekFrom::Start(0)).map_err(io_err)?;
        Ok(Self::sniff(&head[..n]).or_else(|| media_type.and_then(Self::from_media_type)))
    }
}

/// Uploaded entries, validated and written into a tar of their own (a temporary file until
/// kept). Nothing in it is a link, a device or a name that leaves its root.
pub struct StagedInputs {
    tar: tar::Builder<File>,
    path: tempfile::TempPath,
    field: String,
    limits: InputLimits,
    files: Vec<InputFile>,
    dirs: HashSet<String>,
    total: u64,
    names: HashSet<String>,
    parents: HashSet<String>,
}

impl std::fmt::Debug for StagedInputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StagedInputs")
            .field("field", &self.field)
            .field("files", &self.files.len())
            .field("total", &self.total)
            .finish_non_exhaustive()
    }
}

impl StagedInputs {
    /// An empty set staged in `dir` (the same file system as where it will be kept). Errors
    /// name `field` (the request part the entries came from).
    pub fn new(dir: &Path, field: impl Into<String>, limits: InputLimits) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("creating the inputs directory", e))?;
        let (file, path) = tempfile::Builder::new()
            .prefix(".staging-")
            .suffix(".tar")
            .tempfile_in(dir)
            .map_err(|e| Error::io("creating a file for the inputs", e))?
            .into_parts();
        Ok(Self {
            tar: tar::Builder::new(file),
            path,
            field: field.into(),
            limits: InputLimits {
                max_file_bytes: limits.max_file_bytes.min(MAX_INPUT_FILE_BYTES),
                ..limits
            },
            files: Vec::new(),
            dirs: HashSet::new(),
            total: 0,
            names: HashSet::new(),
            parents: HashSet::new(),
        })
    }

    /// Sets the field later errors name.
    pub fn set_field(&mut self, field: impl Into<String>) {
        self.field = field.into();
    }

    /// The files so far, in the order given.
    pub fn files(&self) -> &[InputFile] {
        &self.files
    }

    /// How many entries (files and directories) were taken.
    pub fn entries(&self) -> usize {
        self.files.len() + self.dirs.len()
    }

    /// Whether nothing was taken.
    pub fn is_empty(&self) -> bool {
        self.entries() == 0
    }

    fn refuse(&self, entry: &str, why: impl std::fmt::Display) -> Error {
        Error::invalid(
            self.field.clone(),
            format!("entry {entry:?} refused: {why}"),
        )
    }

    fn too_large(&self, message: String) -> Error {
        SandboxError::new(
            SandboxErrorKind::TooLarge,
            format!("{}: {message}", self.field),
        )
        .into()
    }

    /// Checks and counts one more entry named `raw`; returns its normalised name, or `None`
    /// for a directory already there.
    fn admit(&mut self, raw: &str, dir: bool) -> Result<Option<String>> {
        let name = check_name(raw).map_err(|why| self.refuse(raw, why))?;
        if dir && self.dirs.contains(&name) {
            return Ok(None);
        }
        if self.names.contains(&name) || (!dir && self.parents.contains(&name)) {
            return Err(self.refuse(raw, "given twice (or as both a file and a directory)"));
        }
        if self.entries() >= self.limits.max_entries {
            return Err(self.too_large(format!(
                "more than {} entries (at {raw:?})",
                self.limits.max_entries
            )));
        }
        let mut parent = name.as_str();
        while let Some((up, _)) = parent.rsplit_once('/') {
            if self.names.contains(up) && !self.dirs.contains(up) {
                return Err(self.refuse(raw, format!("{up:?} is a file, not a directory")));
            }
            self.parents.insert(up.to_string());
            parent = up;
        }
        self.names.insert(name.clone());
        Ok(Some(name))
    }

    /// Adds a directory. (After an error the set is not meant to be used further.)
    pub fn add_dir(&mut self, raw: &str) -> Result<()> {
        let Some(name) = self.admit(raw, true)? else {
            return Ok(());
        };
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(0o755);
        header.set_size(0);
        self.tar
            .append_data(&mut header, &name, io::empty())
            .map_err(|e| Error::io("staging the inputs", e))?;
        self.dirs.insert(name);
        Ok(())
    }

    /// Adds a file read from `content` (its size checked as it is read, whatever any header
    /// claimed). `mode` keeps the executable bit.
    pub fn add_file(&mut self, raw: &str, content: impl Read, mode: u32) -> Result<()> {
        let Some(name) = self.admit(raw, false)? else {
            return Err(self.refuse(raw, "given twice"));
        };
        let cap = self.limits.max_file_bytes;
        let mut data = Vec::new();
        content
            .take(cap + 1)
            .read_to_end(&mut data)
            .map_err(|e| self.refuse(raw, format!("could not be read: {e}")))?;
        let size = data.len() as u64;
        if size > cap {
            return Err(self.too_large(format!("{raw:?} is larger than {cap} bytes")));
        }
        if self.total + size > self.limits.max_total_bytes {
            return Err(self.too_large(format!(
                "the files are larger than {} bytes in all (at {raw:?})",
                self.limits.max_total_bytes
            )));
        }
        self.total += size;
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(if mode & 0o111 != 0 { 0o755 } else { 0o644 });
        header.set_size(size);
        self.tar
            .append_data(&mut header, &name, &data[..])
            .map_err(|e| Error::io("staging the inputs", e))?;
        self.files.push(InputFile {
            path: name,
            size_bytes: size,
        });
        Ok(())
    }

    /// Adds every entry of an archive.
    pub fn add_archive(&mut self, file: File, format: ArchiveFormat) -> Result<()> {
        match format {
            ArchiveFormat::Zip => self.add_zip(file),
            ArchiveFormat::Tar => self.add_tar(BufReader::new(file)),
            ArchiveFormat::TarGz => {
                self.add_tar(flate2::read::GzDecoder::new(BufReader::new(file)))
            }
        }
    }

    fn add_tar(&mut self, data: impl Read) -> Result<()> {
        let field = self.field.clone();
        let bad = |e: io::Error| Error::invalid(field.clone(), format!("not a readable tar: {e}"));
        let mut archive = tar::Archive::new(data);
        let entries = archive.entries().map_err(bad)?;
        for entry in entries {
            let entry = entry.map_err(bad)?;
            let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let kind = entry.header().entry_type();
            let mode = entry.header().mode().unwrap_or(0o644);
            match kind {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    self.add_file(&raw, entry, mode)?
                }
                tar::EntryType::Directory if is_root(&raw) => {}
                tar::EntryType::Directory => self.add_dir(&raw)?,
                // Metadata of the entries themselves (the tar crate applies per-file ones).
                tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => {}
                other => return Err(self.refuse(&raw, kind_name(other))),
            }
        }
        Ok(())
    }

    fn add_zip(&mut self, file: File) -> Result<()> {
        let field = self.field.clone();
        let bad = |e: zip::result::ZipError| {
            Error::invalid(field.clone(), format!("not a readable ZIP: {e}"))
        };
        let mut archive = zip::ZipArchive::new(BufReader::new(file)).map_err(bad)?;
        if archive.len() > self.limits.max_entries {
            return Err(self.too_large(format!(
                "more than {} entries ({} in the ZIP)",
                self.limits.max_entries,
                archive.len()
            )));
        }
        for i in 0..archive.len() {
            let entry = archive.by_index(i).map_err(bad)?;
            let raw = entry.name().to_string();
            let mode = entry.unix_mode().unwrap_or(0o644);
            let kind = mode & 0o170_000;
            if entry.is_dir() && !(kind != 0 && kind != 0o040_000) {
                if !is_root(&raw) {
                    self.add_dir(&raw)?;
                }
            } else if kind == 0 || kind == 0o100_000 {
                self.add_file(&raw, entry, mode)?;
            } else {
                let what = match kind {
                    0o120_000 => "a symbolic link",
                    0o020_000 => "a character device",
                    0o060_000 => "a block device",
                    0o010_000 => "a FIFO",
                    0o140_000 => "a socket",
                    _ => "not a regular file or directory",
                };
                return Err(self.refuse(&raw, what));
            }
        }
        Ok(())
    }

    /// Finishes the staged tar and keeps it at `dest` (renamed: same file system).
    pub fn keep(self, dest: &Path) -> Result<Vec<InputFile>> {
        let Self {
            tar, path, files, ..
        } = self;
        let file = tar
            .into_inner()
            .map_err(|e| Error::io("staging the inputs", e))?;
        file.sync_all()
            .map_err(|e| Error::io("storing the inputs", e))?;
        path.persist(dest)
            .map_err(|e| Error::io("storing the inputs", e.error))?;
        Ok(files)
    }

    /// Finishes the staged tar; it is removed when the returned path is dropped.
    pub fn finish(self) -> Result<(tempfile::TempPath, Vec<InputFile>)> {
        let Self {
            tar, path, files, ..
        } = self;
        let mut file = tar
            .into_inner()
            .map_err(|e| Error::io("staging the inputs", e))?;
        file.flush()
            .map_err(|e| Error::io("staging the inputs", e))?;
        Ok((path, files))
    }
}

/// What [`place`] wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Placed {
    /// Files written.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// Writes the staged inputs at `staged` into `sandbox`'s workspace under `root` (`""`: the
/// workspace itself), file by file through [`Sandbox::put_file`] (which creates parents and
/// confines paths). Directories come with their files; an empty one is not created.
pub async fn place(sandbox: &dyn Sandbox, staged: &Path, root: &str) -> Result<Placed> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<(String, Bytes)>>(2);
    let staged = staged.to_path_buf();
    let reader = tokio::task::spawn_blocking(move || {
        let read = || -> Result<()> {
            let file = File::open(&staged).map_err(|e| Error::io("opening the inputs", e))?;
            let mut archive = tar::Archive::new(BufReader::new(file));
            let io_err = |e| Error::io("reading the inputs", e);
            for entry in archive.entries().map_err(io_err)? {
                let mut entry = entry.map_err(io_err)?;
                if !entry.header().entry_type().is_file() {
                    continue;
                }
                let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
                let name = check_name(&raw)
                    .map_err(|why| Error::other(format!("staged entry {raw:?}: {why}")))?;
                let mut data = Vec::new();
                entry.read_to_end(&mut data).map_err(io_err)?;
                if tx.blocking_send(Ok((name, Bytes::from(data)))).is_err() {
                    break;
                }
            }
            Ok(())
        };
        if let Err(e) = read() {
            let _ = tx.blocking_send(Err(e));
        }
    });
    let mut placed = Placed::default();
    while let Some(item) = rx.recv().await {
        let (name, data) = item?;
        let path = if root.is_empty() {
            name
        } else {
            format!("{root}/{name}")
        };
        placed.bytes += data.len() as u64;
        sandbox.put_file(&path, data).await?;
        placed.files += 1;
    }
    reader
        .await
        .map_err(|e| Error::other(format!("reading the inputs failed: {e}")))?;
    Ok(placed)
}

/// The regular files of a tar (such as [`crate::archive::subtree`] writes): the first `max`,
/// and how many there are in all.
pub fn list_files(tar: &Path, max: usize) -> Result<(Vec<InputFile>, usize)> {
    let io_err = |e| Error::io("reading the archive", e);
    let file = File::open(tar).map_err(io_err)?;
    let mut archive = tar::Archive::new(BufReader::new(file));
    let mut files = Vec::new();
    let mut total = 0;
    for entry in archive.entries().map_err(io_err)? {
        let entry = entry.map_err(io_err)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        total += 1;
        if files.len() < max {
            files.push(InputFile {
                path: String::from_utf8_lossy(&entry.path_bytes()).into_owned(),
                size_bytes: entry.size(),
            });
        }
    }
    Ok((files, total))
}

/// What kind of tar entry is refused, for the error.
fn kind_name(kind: tar::EntryType) -> &'static str {
    match kind {
        tar::EntryType::Symlink => "a symbolic link",
        tar::EntryType::Link => "a hard link",
        tar::EntryType::Char => "a character device",
        tar::EntryType::Block => "a block device",
        tar::EntryType::Fifo => "a FIFO",
        tar::EntryType::GNUSparse => "a sparse file",
        _ => "not a regular file or directory",
    }
}

/// Whether a name is the archive's root (`.`, `./`).
fn is_root(raw: &str) -> bool {
    !raw.is_empty() && raw.split('/').all(|p| p.is_empty() || p == ".")
}

/// The normalised relative name of an entry (`./a//b/` → `a/b`), or why it is refused.
pub fn check_name(raw: &str) -> std::result::Result<String, &'static str> {
    if raw.len() > MAX_NAME_BYTES {
        return Err("the name is too long");
    }
    if raw.starts_with('/') {
        return Err("an absolute path");
    }
    if let Some(c) = raw.chars().find(|&c| crate::archive::misleading(c)) {
        return Err(match c {
            '\\' => "contains a backslash",
            '\0' => "contains a NUL byte",
            c if c.is_control() => "contains a control character",
            _ => "contains a bidirectional control character",
        });
    }
    let mut parts = Vec::new();
    for part in raw.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err("contains '..'"),
            p if p.len() > MAX_COMPONENT_BYTES => return Err("a name component is too long"),
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Err("names no file");
    }
    Ok(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn staged(limits: InputLimits) -> (tempfile::TempDir, StagedInputs) {
        let dir = tempfile::tempdir().unwrap();
        let s = StagedInputs::new(dir.path(), "archive", limits).unwrap();
        (dir, s)
    }

    fn header(kind: tar::EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o644);
        h
    }

    /// A tar with one entry whose raw name is written as is (`set_path` refuses `..`).
    fn raw_tar(name: &[u8], kind: tar::EntryType, body: &[u8], link: Option<&str>) -> Vec<u8> {
        let mut h = header(kind, body.len() as u64);
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        if let Some(l) = link {
            h.set_link_name(l).unwrap();
        }
        h.set_cksum();
        let mut b = tar::Builder::new(Vec::new());
        b.append(&h, body).unwrap();
        b.into_inner().unwrap()
    }

    fn file_of(bytes: &[u8]) -> File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        f
    }

    fn zip_of(build: impl FnOnce(&mut zip::ZipWriter<File>)) -> File {
        let mut z = zip::ZipWriter::new(tempfile::tempfile().unwrap());
        build(&mut z);
        let mut f = z.finish().unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        f
    }

    fn message(e: &Error) -> String {
        e.to_string()
    }

    #[test]
    fn names_are_normalised_or_refused() {
        assert_eq!(check_name("./a//b/").unwrap(), "a/b");
        assert_eq!(
            check_name("dir/ünïcødé ✓.txt").unwrap(),
            "dir/ünïcødé ✓.txt"
        );
        for (bad, why) in [
            ("../x", "'..'"),
            ("a/../../x", "'..'"),
            ("/abs", "absolute"),
            ("a\\b", "backslash"),
            ("a\0b", "NUL"),
            ("a\nb", "control"),
            ("evil\u{202e}txt", "bidirectional"),
            ("", "names no file"),
            ("./", "names no file"),
        ] {
            let err = check_name(bad).unwrap_err();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
        assert!(check_name(&"x".repeat(256)).is_err());
        assert!(check_name(&"x".repeat(255)).is_ok());
    }

    #[test]
    fn formats_are_sniffed_then_named() {
        let tar = raw_tar(b"a", tar::EntryType::Regular, b"x", None);
        assert_eq!(ArchiveFormat::sniff(&tar), Some(ArchiveFormat::Tar));
        assert_eq!(
            ArchiveFormat::sniff(b"PK\x03\x04rest"),
            Some(ArchiveFormat::Zip)
        );
        assert_eq!(
            ArchiveFormat::sniff(&[0x1f, 0x8b, 8]),
            Some(ArchiveFormat::TarGz)
        );
        assert_eq!(ArchiveFormat::sniff(b"hello"), None);
        assert_eq!(
            ArchiveFormat::from_media_type("application/x-tar; q=1"),
            Some(ArchiveFormat::Tar)
        );
        assert_eq!(ArchiveFormat::from_media_type("text/plain"), None);
    }

    #[test]
    fn files_tar_zip_and_gzip_are_staged_and_read_back() {
        let (dir, mut s) = staged(InputLimits::default());
        s.add_file("top.bin", &[0u8, 255, 1][..], 0o644).unwrap();
        let mut b = tar::Builder::new(Vec::new());
        b.append_data(
            &mut header(tar::EntryType::Regular, 2),
            "./t/a.txt",
            &b"ta"[..],
        )
        .unwrap();
        b.append_data(
            &mut header(tar::EntryType::Directory, 0),
            "t/empty/",
            io::empty(),
        )
        .unwrap();
        let tar = b.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let tgz = gz.finish().unwrap();
        s.add_archive(file_of(&tar), ArchiveFormat::Tar).unwrap();
        let zip = zip_of(|z| {
            let o = zip::write::SimpleFileOptions::default();
            z.add_directory("z/", o).unwrap();
            z.start_file("z/b.txt", o).unwrap();
            z.write_all(b"zip").unwrap();
        });
        s.add_archive(zip, ArchiveFormat::Zip).unwrap();
        let mut g = StagedInputs::new(dir.path(), "archive", InputLimits::default()).unwrap();
        g.add_archive(file_of(&tgz), ArchiveFormat::TarGz).unwrap();
        assert_eq!(g.files().len(), 1);
        let paths: Vec<_> = s.files().iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["top.bin", "t/a.txt", "z/b.txt"]);
        assert_eq!(s.entries(), 5);
        let dest = dir.path().join("kept.tar");
        s.keep(&dest).unwrap();
        let mut names = Vec::new();
        let mut archive = tar::Archive::new(File::open(&dest).unwrap());
        for e in archive.entries().unwrap() {
            let mut e = e.unwrap();
            let mut body = Vec::new();
            e.read_to_end(&mut body).unwrap();
            names.push((String::from_utf8_lossy(&e.path_bytes()).into_owned(), body));
        }
        assert_eq!(names[0], ("top.bin".to_string(), vec![0, 255, 1]));
        assert!(names.iter().any(|(n, _)| n == "t/empty"), "{names:?}");
    }

    #[test]
    fn links_devices_and_unsafe_names_in_tars_are_refused_by_name() {
        for (name, kind, link, why) in [
            (&b"../x"[..], tar::EntryType::Regular, None, "'..'"),
            (b"/abs", tar::EntryType::Regular, None, "absolute"),
            (
                b"ln",
                tar::EntryType::Symlink,
                Some("/etc/passwd"),
                "symbolic link",
            ),
            (b"hard", tar::EntryType::Link, Some("other"), "hard link"),
            (b"dev", tar::EntryType::Char, None, "character device"),
            (b"fifo", tar::EntryType::Fifo, None, "FIFO"),
        ] {
            let (_dir, mut s) = staged(InputLimits::default());
            let tar = raw_tar(name, kind, b"", link);
            let err = s
                .add_archive(file_of(&tar), ArchiveFormat::Tar)
                .unwrap_err();
            let text = message(&err);
            let shown = String::from_utf8_lossy(name);
            assert!(text.contains(why) && text.contains(&*shown), "{text}");
            assert!(matches!(err, Error::InvalidInput { ref field, .. } if field == "archive"));
        }
    }

    #[test]
    fn links_and_unsafe_names_in_zips_are_refused_by_name() {
        let o = zip::write::SimpleFileOptions::default();
        let link = zip_of(|z| z.add_symlink("ln", "/etc/passwd", o).unwrap());
        // The zip crate writes only permissions: make the entry a device by hand.
        let mut dev = zip_of(|z| z.start_file("dev", o.unix_permissions(0o644)).unwrap());
        let mut bytes = Vec::new();
        dev.read_to_end(&mut bytes).unwrap();
        let central = bytes.windows(4).position(|w| w == b"PK\x01\x02").unwrap();
        bytes[central + 38..central + 42].copy_from_slice(&(0o020_644u32 << 16).to_le_bytes());
        let dev = file_of(&bytes);
        let up = zip_of(|z| z.start_file("../up.txt", o).unwrap());
        let abs = zip_of(|z| z.start_file("/abs.txt", o).unwrap());
        for (zip, entry, why) in [
            (link, "ln", "symbolic link"),
            (dev, "dev", "character device"),
            (up, "../up.txt", "'..'"),
            (abs, "/abs.txt", "absolute"),
        ] {
            let (_dir, mut s) = staged(InputLimits::default());
            let text = message(&s.add_archive(zip, ArchiveFormat::Zip).unwrap_err());
            assert!(text.contains(why) && text.contains(entry), "{text}");
        }
    }

    #[test]
    fn caps_are_enforced() {
        let limits = InputLimits {
            max_file_bytes: 4,
            max_total_bytes: 6,
            max_entries: 3,
        };
        let (_dir, mut s) = staged(limits);
        let err = s.add_file("big", &b"12345"[..], 0).unwrap_err();
        assert!(matches!(&err, Error::Sandbox(e) if e.kind == SandboxErrorKind::TooLarge));
        assert!(message(&err).contains("\"big\" is larger than 4"), "{err}");
        s.add_file("a", &b"1234"[..], 0).unwrap();
        let err = s.add_file("b", &b"123"[..], 0).unwrap_err();
        assert!(message(&err).contains("6 bytes in all"), "{err}");
        s.add_file("c", &b"12"[..], 0).unwrap();
        s.add_dir("d").unwrap();
        let err = s.add_dir("e").unwrap_err();
        assert!(message(&err).contains("more than 3 entries"), "{err}");
        // A ZIP whose header lies about a size is measured as it is read.
        let (_dir, mut s) = staged(limits);
        let zip = zip_of(|z| {
            z.start_file("z", zip::write::SimpleFileOptions::default())
                .unwrap();
            z.write_all(&[7u8; 64]).unwrap();
        });
        let err = s.add_archive(zip, ArchiveFormat::Zip).unwrap_err();
        assert!(message(&err).contains("larger than 4"), "{err}");
    }

    #[test]
    fn duplicates_and_file_directory_clashes_are_refused() {
        let (_dir, mut s) = staged(InputLimits::default());
        s.add_file("a/b", &b"1"[..], 0).unwrap();
        assert!(message(&s.add_file("./a//b", &b"2"[..], 0).unwrap_err()).contains("twice"));
        assert!(message(&s.add_file("a", &b"2"[..], 0).unwrap_err()).contains("twice"));
        // The directory of a file given before is no clash.
        s.add_dir("a").unwrap();
        assert!(message(&s.add_file("a/b/c", &b"2"[..], 0).unwrap_err()).contains("is a file"));
        assert!(s.add_file("not-tar", &b""[..], 0).is_ok());
        let bad = s
            .add_archive(file_of(b"garbage"), ArchiveFormat::Zip)
            .unwrap_err();
        assert!(message(&bad).contains("not a readable ZIP"), "{bad}");
    }

    #[tokio::test]
    async fn placed_files_read_back_byte_exact_under_a_root() {
        use crate::executor::{Executor, SandboxSpec};
        let (_dir, mut s) = staged(InputLimits::default());
        let binary: Vec<u8> = (0..=255u8).collect();
        s.add_file("bin/all.bytes", &binary[..], 0o755).unwrap();
        s.add_file("ünï.txt", &b""[..], 0o644).unwrap();
        let (path, files) = s.finish().unwrap();
        assert_eq!(files.len(), 2);
        let executor = crate::testing::FakeExecutor::new();
        let sandbox = executor.create(&SandboxSpec::new()).await.unwrap();
        let (listed, total) = list_files(&path, 1).unwrap();
        assert_eq!(
            (listed[0].path.as_str(), listed[0].size_bytes, total),
            ("bin/all.bytes", 256, 2)
        );
        let placed = place(&*sandbox, &path, "in").await.unwrap();
        assert_eq!((placed.files, placed.bytes), (2, 256));
        assert_eq!(sandbox.get_file("in/bin/all.bytes").await.unwrap(), binary);
        assert!(sandbox.get_file("in/ünï.txt").await.unwrap().is_empty());
        sandbox.destroy().await.unwrap();
    }
}
