//! The artifact store: the local backend for real (files on disk), an in-memory object store as
//! a second backend, the same checks for both; URL parsing and feature errors; a job's ZIP
//! through the manager into a non-local store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use agent_core::archive::{package, HostFile};
use agent_core::artifacts::ArtifactStore;
use agent_core::executor::TarStream;
use agent_core::manager::{JobManager, JobManagerConfig};
use agent_core::store::memory::MemoryStore;
use agent_core::testing::{collect_bytes, zip_entry, FakeExecutor};
use agent_core::{Error, JobSpec, JobStatus, Step};
use bytes::Bytes;
use futures::StreamExt;
use object_store::memory::InMemory;

fn tar_of(files: &[(&str, &[u8])]) -> TarStream {
    let mut b = tar::Builder::new(Vec::new());
    for (name, content) in files {
        let mut h = tar::Header::new_gnu();
        h.set_path(name).unwrap();
        h.set_size(content.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        b.append(&h, *content).unwrap();
    }
    let data = b.into_inner().unwrap();
    let chunks: Vec<_> = data
        .chunks(700)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    futures::stream::iter(chunks).boxed()
}

async fn read_all(store: &ArtifactStore, key: &str) -> Option<Vec<u8>> {
    let reader = store.open(key).await.unwrap()?;
    let bytes = collect_bytes(reader.stream).await;
    assert_eq!(
        bytes.len() as u64,
        reader.size,
        "the size told is the size read"
    );
    Some(bytes)
}

/// What every backend must do: store a packaged ZIP, stream it back, copy it out, delete it once.
async fn store_suite(store: &ArtifactStore) {
    let big = vec![7u8; 3 << 20];
    let result = HostFile {
        name: "result.json".into(),
        content: Bytes::from_static(b"{}"),
    };
    let summary = package(
        tar_of(&[("a.txt", b"alpha"), ("big.bin", &big)]),
        &[result],
        store,
        "job-1.zip",
        1 << 30,
    )
    .await
    .unwrap();
    assert_eq!(summary.files, 3);

    let bytes = read_all(store, "job-1.zip").await.expect("stored");
    assert_eq!(bytes.len() as u64, summary.zip_bytes);
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
    let mut names: Vec<_> = zip.file_names().map(str::to_string).collect();
    names.sort();
    assert_eq!(names, ["a.txt", "big.bin", "result.json"]);
    assert_eq!(zip_entry(&mut zip, "big.bin"), big);

    let dest = tempfile::tempdir().unwrap();
    let copy = dest.path().join("copy.zip");
    let copied = store.download_to("job-1.zip", &copy).await.unwrap();
    assert_eq!(copied, Some(summary.zip_bytes));
    assert_eq!(std::fs::metadata(&copy).unwrap().len(), summary.zip_bytes);

    assert!(read_all(store, "missing.zip").await.is_none());
    assert_eq!(store.download_to("missing.zip", &copy).await.unwrap(), None);
    for bad in ["../escape.zip", "a/../../b.zip", "", "/"] {
        assert!(
            matches!(store.open(bad).await, Err(Error::InvalidInput { .. })),
            "{bad:?} is refused"
        );
    }

    assert!(store.delete("job-1.zip").await.unwrap());
    assert!(!store.delete("job-1.zip").await.unwrap(), "gone already");
    assert!(read_all(store, "job-1.zip").await.is_none());

    // A failed packaging stores nothing.
    let failing: TarStream = futures::stream::iter([Err(agent_core::SandboxError::new(
        agent_core::SandboxErrorKind::Unavailable,
        "engine gone",
    ))])
    .boxed();
    assert!(package(failing, &[], store, "job-2.zip", 1 << 20)
        .await
        .is_err());
    assert!(read_all(store, "job-2.zip").await.is_none());
    // Nothing is left in the staging directory either.
    let staged: Vec<_> = std::fs::read_dir(store.staging_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with(".partial-"))
        .collect();
    assert!(staged.is_empty(), "{staged:?}");
}

#[tokio::test]
async fn the_local_store_keeps_zips_as_files_in_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("artifacts");
    let store = ArtifactStore::local(&root).unwrap();
    assert_eq!(store.local_dir(), Some(root.as_path()));
    store_suite(&store).await;

    // The file is where an operator expects it, and an older record's absolute path resolves.
    package(tar_of(&[("x", b"x")]), &[], &store, "old.zip", 1 << 20)
        .await
        .unwrap();
    assert!(root.join("old.zip").is_file());
    let absolute = root.join("old.zip").to_string_lossy().into_owned();
    assert!(read_all(&store, &absolute).await.is_some());
    let elsewhere = dir.path().join("elsewhere.zip");
    std::fs::write(&elsewhere, b"not ours").unwrap();
    assert!(matches!(
        store.open(&elsewhere.to_string_lossy()).await,
        Err(Error::InvalidInput { .. })
    ));
}

#[tokio::test]
async fn an_in_memory_object_store_passes_the_same_checks() {
    let scratch = tempfile::tempdir().unwrap();
    let store =
        ArtifactStore::from_object_store(Arc::new(InMemory::new()), "team/zips", scratch.path())
            .unwrap();
    assert_eq!(store.local_dir(), None);
    store_suite(&store).await;
}

#[test]
fn artifact_urls_are_checked_at_the_door() {
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("from-url");
    let store =
        ArtifactStore::from_url(&format!("file://{}", local.display()), dir.path()).unwrap();
    assert!(local.is_dir(), "the local directory is created");
    assert!(store.url().starts_with("file://"));

    let refused = |url: &str| match ArtifactStore::from_url(url, dir.path()) {
        Err(Error::InvalidInput { field, message }) => {
            assert_eq!(field, "artifacts");
            message
        }
        other => panic!("{url}: {other:?}"),
    };
    assert!(refused("s3://key:secret@bucket/p").contains("credentials"));
    let with_query = refused("s3://bucket/p?access_key=x");
    assert!(with_query.contains("query"), "{with_query}");
    assert!(
        !with_query.contains("access_key=x"),
        "the query is not echoed"
    );
    assert!(refused("memory:///x").contains("lose"));
    assert!(refused("ftp://host/x").contains("unsupported"));
    assert!(refused("not a url").contains("not a URL"));
    #[cfg(not(feature = "s3"))]
    assert!(refused("s3://bucket/prefix").contains("`s3` cargo feature"));
    #[cfg(not(feature = "gcs"))]
    assert!(refused("gs://bucket/prefix").contains("`gcs` cargo feature"));
    #[cfg(not(feature = "azure"))]
    assert!(refused("az://container/prefix").contains("`azure` cargo feature"));
}

#[tokio::test]
async fn jobs_package_into_a_non_local_store_and_retention_deletes_there() {
    let dir = tempfile::tempdir().unwrap();
    let objects = Arc::new(InMemory::new());
    let store =
        ArtifactStore::from_object_store(objects.clone(), "zips", dir.path().join("scratch"))
            .unwrap();
    let manager = JobManager::builder(Arc::new(FakeExecutor::new()), Arc::new(MemoryStore::new()))
        .config(JobManagerConfig {
            artifact_dir: dir.path().join("scratch"),
            artifacts: Some(store.clone()),
            retention: None,
            ..JobManagerConfig::default()
        })
        .start()
        .await
        .unwrap();
    let id = manager
        .submit(JobSpec::from_steps(vec![Step::shell("echo hi > hi.txt")]))
        .await
        .unwrap();
    let job = manager.wait(id).await.unwrap();
    assert_eq!(job.status, JobStatus::Succeeded, "{:?}", job.error);
    let artifact = job.artifact.clone().unwrap();
    assert_eq!(
        artifact.path,
        ArtifactStore::key_for(id),
        "a key, not a local path"
    );
    let listed: Vec<_> = object_store::ObjectStore::list(objects.as_ref(), None)
        .map(|m| m.unwrap().location.to_string())
        .collect()
        .await;
    assert_eq!(listed, [format!("zips/{id}.zip")]);
    let bytes = read_all(manager.artifacts(), &artifact.path).await.unwrap();
    assert_eq!(bytes.len() as u64, artifact.size_bytes);

    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(manager.sweep(Duration::from_millis(1)).await.unwrap(), 1);
    assert!(
        read_all(&store, &artifact.path).await.is_none(),
        "swept from the store"
    );
    manager.shutdown(Duration::from_secs(5)).await.unwrap();
}
