//! The content-addressed blob store on a real directory: streaming puts that
//! commit only with the right digest, and leave nothing behind otherwise.

use std::time::Duration;

use bytes::Bytes;
use coordinator::blobs::{BlobError, BlobStore, PART_SIZE};
use futures::TryStreamExt as _;
use rand::{RngCore as _, SeedableRng as _, rngs::StdRng};
use tributary_ledger::Sha256Digest;

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// Every regular file under `dir`, relative paths.
fn files_under(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

async fn write_chunks(
    store: &BlobStore,
    data: &[u8],
    chunk: usize,
) -> coordinator::blobs::BlobWriter {
    let mut w = store.writer().await.unwrap();
    for c in data.chunks(chunk) {
        w.write(c).await.unwrap();
    }
    w
}

#[tokio::test]
async fn streamed_put_commits_under_its_digest_and_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open_local(dir.path()).unwrap();
    // Several multipart parts, chunk size unrelated to the part size.
    let data = random_bytes(2 * PART_SIZE + 12_345, 1);
    let digest = Sha256Digest::of(&data);
    let w = write_chunks(&store, &data, 100_003).await;
    assert_eq!(w.len(), data.len() as u64);
    assert_eq!(w.digest_so_far(), digest);
    assert_eq!(w.commit(&digest).await.unwrap(), data.len() as u64);

    assert!(store.exists(&digest).await.unwrap());
    assert_eq!(store.size(&digest).await.unwrap(), Some(data.len() as u64));
    assert_eq!(store.list().await.unwrap(), vec![digest]);
    assert!(store.staging_objects().await.unwrap().is_empty());
    assert_eq!(files_under(dir.path()), vec![format!("sha256/{digest}")]);

    let chunks: Vec<Bytes> = store
        .get(&digest)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(chunks.concat(), data);
    let range = 1_000_000u64..9_000_001;
    let got = store.get_range(&digest, range.clone()).await.unwrap();
    assert_eq!(&got[..], &data[1_000_000..9_000_001]);
    let streamed: Vec<Bytes> = store
        .get_range_stream(&digest, range)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(streamed.concat(), &data[1_000_000..9_000_001]);
}

#[tokio::test]
async fn wrong_digest_commits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open_local(dir.path()).unwrap();
    let data = random_bytes(PART_SIZE + 10, 2);
    let wrong = Sha256Digest::of(b"something else");
    let w = write_chunks(&store, &data, 65_536).await;
    match w.commit(&wrong).await {
        Err(BlobError::DigestMismatch { expected, actual }) => {
            assert_eq!(expected, wrong);
            assert_eq!(actual, Sha256Digest::of(&data));
        }
        other => panic!("expected a digest mismatch, got {other:?}"),
    }
    assert!(!store.exists(&Sha256Digest::of(&data)).await.unwrap());
    assert!(!store.exists(&wrong).await.unwrap());
    assert!(store.staging_objects().await.unwrap().is_empty());
    assert_eq!(files_under(dir.path()), Vec::<String>::new());
}

#[tokio::test]
async fn abort_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open_local(dir.path()).unwrap();
    let data = random_bytes(PART_SIZE + 77, 3);
    let w = write_chunks(&store, &data, 1 << 20).await;
    w.abort().await.unwrap();
    assert!(store.list().await.unwrap().is_empty());
    assert_eq!(files_under(dir.path()), Vec::<String>::new());
}

#[tokio::test]
async fn dropping_an_uncommitted_writer_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open_local(dir.path()).unwrap();
    let data = random_bytes(PART_SIZE + 5, 4);
    let w = write_chunks(&store, &data, 1 << 20).await;
    // Something was written to disk before the drop.
    assert!(!files_under(dir.path()).is_empty());
    drop(w);
    // The clean-up runs on the runtime; give it a few seconds at most.
    let mut left = files_under(dir.path());
    for _ in 0..100 {
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        left = files_under(dir.path());
    }
    assert_eq!(left, Vec::<String>::new());
    assert!(store.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn committing_the_same_content_twice_keeps_one_blob() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open_local(dir.path()).unwrap();
    let data = random_bytes(50_000, 5);
    let digest = Sha256Digest::of(&data);
    for _ in 0..2 {
        let w = write_chunks(&store, &data, 999).await;
        w.commit(&digest).await.unwrap();
    }
    assert_eq!(
        store.put_bytes(Bytes::from(data.clone())).await.unwrap(),
        digest
    );
    assert_eq!(files_under(dir.path()), vec![format!("sha256/{digest}")]);
}

#[tokio::test]
async fn delete_and_missing_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open_local(dir.path()).unwrap();
    let digest = store.put_bytes(Bytes::from_static(b"hello")).await.unwrap();
    assert_eq!(digest, Sha256Digest::of(b"hello"));
    assert!(store.delete(&digest).await.unwrap());
    assert!(!store.delete(&digest).await.unwrap());
    assert!(!store.exists(&digest).await.unwrap());
    assert_eq!(store.size(&digest).await.unwrap(), None);
    assert!(matches!(store.get(&digest).await, Err(BlobError::NotFound(d)) if d == digest));
    assert!(matches!(
        store.get_range(&digest, 0..2).await,
        Err(BlobError::NotFound(d)) if d == digest
    ));
}

#[tokio::test]
async fn from_url_opens_local_and_memory_stores_and_refuses_nonsense() {
    let dir = tempfile::tempdir().unwrap();
    let url = url::Url::from_directory_path(dir.path().join("blobs")).unwrap();
    let store = BlobStore::from_url(url.as_str(), Vec::<(String, String)>::new()).unwrap();
    let digest = store.put_bytes(Bytes::from_static(b"local")).await.unwrap();
    assert!(
        dir.path()
            .join("blobs/sha256")
            .join(digest.to_string())
            .is_file()
    );

    let memory = BlobStore::from_url("memory:///", Vec::<(String, String)>::new()).unwrap();
    let w = write_chunks(&memory, b"in memory", 2).await;
    w.commit(&Sha256Digest::of(b"in memory")).await.unwrap();
    assert_eq!(
        memory.list().await.unwrap(),
        vec![Sha256Digest::of(b"in memory")]
    );

    assert!(matches!(
        BlobStore::from_url("not a url", Vec::<(String, String)>::new()),
        Err(BlobError::Url { .. })
    ));
    assert!(matches!(
        BlobStore::from_url("nosuchscheme://x/y", Vec::<(String, String)>::new()),
        Err(BlobError::Url { .. })
    ));
}

#[tokio::test]
async fn sweep_removes_what_a_crash_left_in_staging() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open_local(dir.path()).unwrap();
    let kept = store.put_bytes(Bytes::from_static(b"kept")).await.unwrap();
    std::fs::create_dir_all(dir.path().join("staging")).unwrap();
    std::fs::write(dir.path().join("staging/0123abcd"), b"half an upload").unwrap();
    assert_eq!(store.staging_objects().await.unwrap().len(), 1);
    // Too young to be swept with a one-hour grace period.
    assert_eq!(
        store
            .sweep_staging(Duration::from_secs(3600))
            .await
            .unwrap(),
        0
    );
    assert_eq!(store.sweep_staging(Duration::ZERO).await.unwrap(), 1);
    assert!(store.staging_objects().await.unwrap().is_empty());
    assert_eq!(store.list().await.unwrap(), vec![kept]);
}
