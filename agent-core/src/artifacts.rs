//! The artifact store: where result ZIPs are kept. Packaging writes to it, the retention sweep
//! deletes from it, the server's download route and the CLI read from it; nothing else touches
//! an archive.
//!
//! It is an [`object_store`] behind one small type: the local file system by default (a
//! directory such as `$AGENT_OUTPUT_DIR/artifacts`), or a bucket named by URL for deployments
//! where several servers share their archives:
//!
//! | URL | backend | cargo feature |
//! |-----|---------|---------------|
//! | `file:///var/lib/agent/artifacts` | local directory | (always) |
//! | `s3://bucket/prefix` | Amazon S3 or S3-compatible | `s3` |
//! | `gs://bucket/prefix` | Google Cloud Storage | `gcs` |
//! | `az://container/prefix` | Azure Blob Storage | `azure` |
//!
//! Credentials come from each backend's usual environment variables (`AWS_ACCESS_KEY_ID`,
//! `GOOGLE_SERVICE_ACCOUNT`, `AZURE_STORAGE_ACCOUNT_KEY`, …), never from the URL: a URL with a
//! user, a password or a query string is refused.
//!
//! Archives stream in and out; none is ever held whole in memory. A ZIP is built in a temporary
//! file — next to its final place for the local store, so committing it is a rename; in a scratch
//! directory for a bucket, from which it is uploaded in parts — and a failed build leaves nothing
//! behind.
//!
//! ```
//! # async fn demo() -> agent_core::Result<()> {
//! use agent_core::artifacts::ArtifactStore;
//!
//! let dir = tempfile::tempdir().map_err(|e| agent_core::Error::io("tempdir", e))?;
//! let store = ArtifactStore::from_url(&format!("file://{}", dir.path().display()), dir.path())?;
//! assert!(store.local_dir().is_some());
//! assert!(ArtifactStore::from_url("s3://user:secret@bucket/x", dir.path()).is_err());
//! # Ok(()) }
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use object_store::buffered::BufWriter;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, ObjectStoreScheme};
use tempfile::NamedTempFile;
use tokio::io::AsyncWriteExt;

use crate::error::{Error, Result};
use crate::job::JobId;

/// Where result ZIPs are kept. Cheap to clone; clones share one backend.
#[derive(Clone)]
pub struct ArtifactStore {
    inner: Arc<Backend>,
}

struct Backend {
    objects: Arc<dyn ObjectStore>,
    /// Prepended to every key (empty for the local store, whose root is its directory).
    prefix: ObjectPath,
    /// The directory of a local store, as given and canonical.
    local: Option<(PathBuf, PathBuf)>,
    /// Where a ZIP is built before it is uploaded (bucket stores).
    scratch: PathBuf,
    /// The store as a URL, for logs and errors (never with credentials).
    url: String,
}

impl fmt::Debug for ArtifactStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ArtifactStore")
            .field(&self.inner.url)
            .finish()
    }
}

/// An archive opened for reading: its size and its bytes, streamed.
pub struct ArtifactReader {
    /// Size in bytes.
    pub size: u64,
    /// The bytes, in order.
    pub stream: BoxStream<'static, Result<Bytes>>,
}

impl fmt::Debug for ArtifactReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArtifactReader")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// A stored archive as a local file (see [`ArtifactStore::local_file`]).
#[derive(Debug)]
pub enum LocalArtifact {
    /// The archive's own file (local store).
    InPlace(PathBuf),
    /// A temporary copy, removed when dropped.
    Copy(tempfile::TempPath),
}

impl LocalArtifact {
    /// Where the file is.
    pub fn path(&self) -> &Path {
        match self {
            LocalArtifact::InPlace(p) => p,
            LocalArtifact::Copy(p) => p,
        }
    }
}

impl ArtifactStore {
    /// The local store: archives are files in `dir` (created if missing).
    pub fn local(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let canonical = std::fs::canonicalize(dir)
            .map_err(|e| Error::io(format!("resolving {}", dir.display()), e))?;
        let objects = LocalFileSystem::new_with_prefix(&canonical)
            .map_err(|e| store_error(format!("opening {}", dir.display()), e))?;
        Ok(Self {
            inner: Arc::new(Backend {
                objects: Arc::new(objects),
                prefix: ObjectPath::default(),
                url: format!("file://{}", canonical.display()),
                scratch: canonical.clone(),
                local: Some((dir.to_path_buf(), canonical)),
            }),
        })
    }

    /// Any [`ObjectStore`] (an in-memory one in tests, a custom backend), with keys under
    /// `prefix`; ZIPs are built in `scratch_dir` (created if missing) before they are uploaded.
    pub fn from_object_store(
        objects: Arc<dyn ObjectStore>,
        prefix: &str,
        scratch_dir: impl AsRef<Path>,
    ) -> Result<Self> {
        let scratch = scratch_dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&scratch)
            .map_err(|e| Error::io(format!("creating {}", scratch.display()), e))?;
        let prefix = ObjectPath::parse(prefix)
            .map_err(|e| Error::invalid("artifacts", format!("invalid prefix {prefix:?}: {e}")))?;
        Ok(Self {
            inner: Arc::new(Backend {
                url: format!("{objects}/{prefix}"),
                objects,
                prefix,
                local: None,
                scratch,
            }),
        })
    }

    /// The store a URL names (see the [module docs](self) for the schemes). Bucket stores build
    /// their ZIPs in `scratch_dir`.
    pub fn from_url(url: &str, scratch_dir: impl AsRef<Path>) -> Result<Self> {
        let invalid = |message: String| Error::invalid("artifacts", message);
        let parsed = url::Url::parse(url).map_err(|e| {
            invalid(format!(
                "not a URL ({e}); e.g. file:///var/lib/agent/artifacts or s3://bucket/prefix"
            ))
        })?;
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(invalid(
                "credentials do not belong in the URL; set the backend's environment variables \
                 (e.g. AWS_ACCESS_KEY_ID) instead"
                    .into(),
            ));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(invalid(
                "the URL may not have a query or fragment (settings and credentials go in the \
                 backend's environment variables)"
                    .into(),
            ));
        }
        let (scheme, prefix) = ObjectStoreScheme::parse(&parsed)
            .map_err(|e| invalid(format!("unsupported URL {url}: {e}")))?;
        match scheme {
            ObjectStoreScheme::Local => {
                let dir = parsed
                    .to_file_path()
                    .map_err(|()| invalid(format!("{url} does not name a local directory")))?;
                Self::local(dir)
            }
            ObjectStoreScheme::Memory => Err(invalid(
                "memory:// would lose every archive when the process stops; use a directory or \
                 a bucket"
                    .into(),
            )),
            ObjectStoreScheme::AmazonS3
            | ObjectStoreScheme::GoogleCloudStorage
            | ObjectStoreScheme::MicrosoftAzure => {
                let objects = cloud_store(&scheme, &parsed)?;
                Self::from_object_store(objects, prefix.as_ref(), scratch_dir)
            }
            _ => Err(invalid(format!(
                "unsupported artifact store {url}: use file://, s3://, gs:// or az://"
            ))),
        }
    }

    /// The store as a URL (no credentials), for logs.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// The directory of a local store; `None` for a bucket.
    pub fn local_dir(&self) -> Option<&Path> {
        self.inner.local.as_ref().map(|(given, _)| given.as_path())
    }

    /// The directory where archives are built before they are committed (the local store's own
    /// directory, or the scratch directory of a bucket store).
    pub fn staging_dir(&self) -> &Path {
        &self.inner.scratch
    }

    /// The key of a job's archive.
    pub fn key_for(job_id: JobId) -> String {
        format!("{job_id}.zip")
    }

    /// Where a stored artifact path (a key such as `<id>.zip`, or the absolute file path that
    /// older records of a local store hold) lives in the store.
    fn locate(&self, stored: &str) -> Result<ObjectPath> {
        let not_here = || {
            Error::invalid(
                "artifact",
                format!("{stored:?} is not in the artifact store {}", self.inner.url),
            )
        };
        let relative = if Path::new(stored).is_absolute() {
            let (given, canonical) = self.inner.local.as_ref().ok_or_else(not_here)?;
            let path = Path::new(stored);
            let rest = path
                .strip_prefix(given)
                .or_else(|_| path.strip_prefix(canonical))
                .map_err(|_| not_here())?;
            rest.to_str().ok_or_else(not_here)?.to_string()
        } else {
            stored.to_string()
        };
        let mut location = self.inner.prefix.clone();
        let mut parts = 0;
        for part in relative.split('/') {
            match part {
                "" | "." => continue,
                ".." => return Err(not_here()),
                p => {
                    location = location.join(p);
                    parts += 1;
                }
            }
        }
        if parts == 0 {
            return Err(not_here());
        }
        Ok(location)
    }

    /// A temporary file to build an archive in (removed when dropped).
    pub(crate) fn staging_file(&self) -> Result<NamedTempFile> {
        tempfile::Builder::new()
            .prefix(".partial-")
            .suffix(".zip")
            .tempfile_in(&self.inner.scratch)
            .map_err(|e| Error::io("creating a temporary file for the ZIP", e))
    }

    /// Stores a finished archive under `key`: renamed into place (local), or uploaded in parts
    /// (bucket). The temporary file is gone afterwards either way.
    pub(crate) async fn commit(&self, key: &str, file: NamedTempFile) -> Result<()> {
        let location = self.locate(key)?;
        if let Some((_, dir)) = &self.inner.local {
            let dest = location
                .parts()
                .fold(dir.clone(), |p, part| p.join(part.as_ref()));
            return tokio::task::spawn_blocking(move || {
                if let Some(parent) = dest.parent() {
                    std::fs::create_dir_all(parent)
                        .map_err(|e| Error::io("creating the artifact directory", e))?;
                }
                file.persist(&dest)
                    .map(drop)
                    .map_err(|e| Error::io(format!("storing {}", dest.display()), e.error))
            })
            .await
            .map_err(|e| Error::other(format!("the artifact task failed: {e}")))?;
        }
        let mut source = tokio::fs::File::from_std(
            file.reopen()
                .map_err(|e| Error::io("reopening the ZIP", e))?,
        );
        let mut upload = BufWriter::new(self.inner.objects.clone(), location);
        let copied = async {
            tokio::io::copy(&mut source, &mut upload).await?;
            upload.shutdown().await
        }
        .await;
        if let Err(e) = copied {
            let _ = upload.abort().await;
            return Err(Error::io(
                format!("uploading {key} to {}", self.inner.url),
                e,
            ));
        }
        Ok(())
    }

    /// Opens a stored archive for reading; `None` when it is not there (never written, or
    /// removed by retention).
    pub async fn open(&self, stored: &str) -> Result<Option<ArtifactReader>> {
        let location = self.locate(stored)?;
        match self.inner.objects.get(&location).await {
            Ok(got) => {
                let size = got.meta.size;
                let url = self.inner.url.clone();
                let stream = got
                    .into_stream()
                    .map_err(move |e| store_error(format!("reading from {url}"), e))
                    .boxed();
                Ok(Some(ArtifactReader { size, stream }))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(store_error(format!("opening {stored}"), e)),
        }
    }

    /// A stored archive as a local file, for readers that need to seek (listing a ZIP's
    /// entries): the file itself in a local store, else a streamed copy in the staging directory
    /// that is removed when the returned value is dropped. `None` when it is not there.
    pub async fn local_file(&self, stored: &str) -> Result<Option<LocalArtifact>> {
        let location = self.locate(stored)?;
        if let Some((_, dir)) = &self.inner.local {
            let path = location
                .parts()
                .fold(dir.clone(), |p, part| p.join(part.as_ref()));
            return match tokio::fs::metadata(&path).await {
                Ok(_) => Ok(Some(LocalArtifact::InPlace(path))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(Error::io(format!("opening {}", path.display()), e)),
            };
        }
        let copy = self.staging_file()?.into_temp_path();
        Ok(self
            .download_to(stored, &copy)
            .await?
            .map(|_| LocalArtifact::Copy(copy)))
    }

    /// Copies a stored archive to a local file, streamed; `None` when it is not there.
    pub async fn download_to(&self, stored: &str, dest: &Path) -> Result<Option<u64>> {
        let Some(mut reader) = self.open(stored).await? else {
            return Ok(None);
        };
        let io_err = |e| Error::io(format!("writing {}", dest.display()), e);
        let mut out = tokio::fs::File::create(dest).await.map_err(io_err)?;
        let mut written = 0u64;
        while let Some(chunk) = reader.stream.next().await {
            let chunk = chunk?;
            out.write_all(&chunk).await.map_err(io_err)?;
            written += chunk.len() as u64;
        }
        out.flush().await.map_err(io_err)?;
        Ok(Some(written))
    }

    /// Removes a stored archive. Returns whether it was there.
    pub async fn delete(&self, stored: &str) -> Result<bool> {
        let location = self.locate(stored)?;
        // A delete of a missing object succeeds on some backends; ask first so the answer is
        // the same everywhere.
        match self.inner.objects.head(&location).await {
            Ok(_) => {}
            Err(object_store::Error::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(store_error(format!("looking up {stored}"), e)),
        }
        match self.inner.objects.delete(&location).await {
            Ok(()) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(store_error(format!("removing {stored}"), e)),
        }
    }
}

fn store_error(context: String, source: object_store::Error) -> Error {
    Error::Artifact { context, source }
}

/// The object store of an `s3://`, `gs://` or `az://` URL, configured from the backend's
/// environment variables; in a build without the backend's cargo feature, an error naming it.
#[cfg_attr(
    not(any(feature = "s3", feature = "gcs", feature = "azure")),
    allow(unused_variables)
)]
fn cloud_store(scheme: &ObjectStoreScheme, url: &url::Url) -> Result<Arc<dyn ObjectStore>> {
    type Built = std::result::Result<Arc<dyn ObjectStore>, object_store::Error>;
    let (prefix, feature) = match scheme {
        ObjectStoreScheme::AmazonS3 => ("s3", "s3"),
        ObjectStoreScheme::GoogleCloudStorage => ("gs", "gcs"),
        _ => ("az", "azure"),
    };
    let built: Option<Built> = match scheme {
        #[cfg(feature = "s3")]
        ObjectStoreScheme::AmazonS3 => Some(
            object_store::aws::AmazonS3Builder::from_env()
                .with_url(url.as_str())
                .build()
                .map(|s| Arc::new(s) as _),
        ),
        #[cfg(feature = "gcs")]
        ObjectStoreScheme::GoogleCloudStorage => Some(
            object_store::gcp::GoogleCloudStorageBuilder::from_env()
                .with_url(url.as_str())
                .build()
                .map(|s| Arc::new(s) as _),
        ),
        #[cfg(feature = "azure")]
        ObjectStoreScheme::MicrosoftAzure => Some(
            object_store::azure::MicrosoftAzureBuilder::from_env()
                .with_url(url.as_str())
                .build()
                .map(|s| Arc::new(s) as _),
        ),
        _ => None,
    };
    built
        .ok_or_else(|| {
            Error::invalid(
                "artifacts",
                format!(
                    "{prefix}:// artifact stores need the `{feature}` cargo feature (build with \
                     --features {feature})"
                ),
            )
        })?
        .map_err(|e| Error::invalid("artifacts", e.to_string()))
}
