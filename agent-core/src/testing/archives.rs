//! Reading the archives tests get back: byte streams (exports, stored ZIPs) and ZIP entries.
#![allow(clippy::expect_used)]

use std::collections::BTreeMap;
use std::fmt::Display;
use std::io::{Read, Seek};
use std::path::Component;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use zip::ZipArchive;

/// Every byte of `stream` (an export's tar, a stored ZIP), in order; panics on a stream error.
pub async fn collect_bytes<E: Display>(stream: impl Stream<Item = Result<Bytes, E>>) -> Vec<u8> {
    let mut stream = std::pin::pin!(stream);
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap_or_else(|e| panic!("reading the stream: {e}"));
        bytes.extend_from_slice(&chunk);
    }
    bytes
}

/// The content of the entry `name` of `zip`; panics when it is missing or unreadable.
pub fn zip_entry<R: Read + Seek>(zip: &mut ZipArchive<R>, name: &str) -> Vec<u8> {
    let mut entry = zip
        .by_name(name)
        .unwrap_or_else(|e| panic!("no entry {name:?} in the ZIP: {e}"));
    let mut out = Vec::new();
    entry
        .read_to_end(&mut out)
        .unwrap_or_else(|e| panic!("reading {name:?} from the ZIP: {e}"));
    out
}

/// The entry `name` of `zip` as UTF-8 text; panics when it is missing, unreadable or not UTF-8.
pub fn zip_text<R: Read + Seek>(zip: &mut ZipArchive<R>, name: &str) -> String {
    String::from_utf8(zip_entry(zip, name))
        .unwrap_or_else(|e| panic!("{name:?} in the ZIP is not UTF-8: {e}"))
}

/// One entry of a tar, as [`tar_entries`] reads it.
#[derive(Debug)]
pub struct TarEntry {
    /// File, directory, symlink…
    pub kind: tar::EntryType,
    /// The content of a regular file (empty for the others).
    pub content: Vec<u8>,
    /// A link's target.
    pub link: Option<String>,
}

/// The entries of a tar by path (without a leading `./` or a trailing `/`); panics when it is
/// not a tar, or when an entry's path is absolute or has a `..` (an export must have neither).
pub fn tar_entries(tar: &[u8]) -> BTreeMap<String, TarEntry> {
    let mut archive = tar::Archive::new(tar);
    let mut found = BTreeMap::new();
    for entry in archive.entries().expect("not a tar archive") {
        let mut entry = entry.expect("a bad tar entry");
        let path = entry.path().expect("a bad tar path").into_owned();
        let name = path.to_string_lossy().into_owned();
        assert!(
            !path.is_absolute(),
            "tar entry with an absolute path: {name:?}"
        );
        assert!(
            !path.components().any(|c| matches!(c, Component::ParentDir)),
            "tar entry with '..': {name:?}"
        );
        let kind = entry.header().entry_type();
        let mut content = Vec::new();
        if kind.is_file() {
            entry
                .read_to_end(&mut content)
                .unwrap_or_else(|e| panic!("reading {name:?} from the tar: {e}"));
        }
        let link = entry
            .link_name()
            .ok()
            .flatten()
            .map(|l| l.to_string_lossy().into_owned());
        let name = name
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_owned();
        found.insert(
            name,
            TarEntry {
                kind,
                content,
                link,
            },
        );
    }
    found
}
