//! The store contract the distributed runtime rests on, checked against every backend pspace
//! accepts: a local folder and a real S3 server with create-only writes (SeaweedFS's
//! `weed mini` on loopback). Exclusive commits (a second create fails; of 16 racing creates
//! exactly one wins and its bytes stay), multipart uploads and ranged reads, the start-up probe,
//! create-only manifests, and the HEAD-only check that sees a rewritten output. And the other
//! side: s3s-fs, which checks for a key and then writes, is refused by the probe with a message
//! that names it.

use object_store::prefix::PrefixStore;
use pspace_actors::store::{CommitOutcome, Created, Manifest, Store, StoreError};
use pspace_tests::seaweedfs::SeaweedFs;
use std::sync::Arc;
use std::time::Instant;

const MIB: usize = 1 << 20;

/// Bytes that differ at every offset modulo a prime, so a misplaced part or range shows.
fn pattern(len: usize, salt: u8) -> Vec<u8> {
    (0..len).map(|i| ((i % 251) as u8).wrapping_add(salt)).collect()
}

/// Every clause of the contract, on `store`, each timed.
async fn conforms(store: &Store) {
    let began = Instant::now();
    timed(store, "second create", a_second_create_fails(store)).await;
    timed(store, "16 racing creates", racing_creates_have_one_winner(store)).await;
    timed(
        store,
        "multipart and ranges",
        large_objects_go_up_in_parts_and_come_back_by_range(store),
    )
    .await;
    let probe = async {
        store
            .check_conditional_writes()
            .await
            .expect("the create-only probe passes")
    };
    timed(store, "create-only probe", probe).await;
    timed(store, "commit twice", a_second_commit_loses(store)).await;
    timed(
        store,
        "rewrite seen by HEAD",
        a_rewritten_output_is_seen_without_downloading(store),
    )
    .await;
    eprintln!("{}: contract checked in {:?}", store.describe(), began.elapsed());
}

async fn timed(store: &Store, clause: &str, check: impl std::future::Future<Output = ()>) {
    let began = Instant::now();
    check.await;
    eprintln!("{}: {clause}: {:?}", store.describe(), began.elapsed());
}

async fn a_second_create_fails(store: &Store) {
    assert_eq!(
        store.create("once/key", b"first".to_vec()).await.unwrap(),
        Created::Yes
    );
    assert_eq!(
        store.create("once/key", b"second".to_vec()).await.unwrap(),
        Created::AlreadyExists
    );
    assert_eq!(&store.get("once/key").await.unwrap()[..], b"first");
}

async fn racing_creates_have_one_winner(store: &Store) {
    let racers: Vec<_> = (0..16)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.create("race/key", format!("racer {i}").into_bytes()).await })
        })
        .collect();
    let mut winners = Vec::new();
    for (i, racer) in racers.into_iter().enumerate() {
        if racer.await.unwrap().unwrap() == Created::Yes {
            winners.push(i);
        }
    }
    assert_eq!(winners.len(), 1, "winners of 16 racing creates: {winners:?}");
    let kept = store.get("race/key").await.unwrap();
    assert_eq!(
        kept,
        format!("racer {}", winners[0]).as_bytes(),
        "the key holds the winner's bytes"
    );
}

async fn large_objects_go_up_in_parts_and_come_back_by_range(store: &Store) {
    let bytes = pattern(10 * MIB + 12_345, 0);
    let up = store.put_output("big/adapter.bin", bytes.clone()).await.unwrap();
    assert_eq!(up.size, bytes.len() as u64);
    let (size, e_tag) = store
        .head("big/adapter.bin")
        .await
        .unwrap()
        .expect("the object exists");
    assert_eq!((size, e_tag), (bytes.len() as u64, up.e_tag.clone()));
    // Across the 8 MiB part boundary.
    let range = (8 * MIB - 3) as u64..(8 * MIB + 5) as u64;
    let got = store.get_range("big/adapter.bin", range.clone()).await.unwrap();
    assert_eq!(&got[..], &bytes[range.start as usize..range.end as usize]);
    let tail = store.get_range("big/adapter.bin", size - 10..size).await.unwrap();
    assert_eq!(&tail[..], &bytes[bytes.len() - 10..]);
    assert_eq!(
        &store.get_verified("big/adapter.bin", &up.sha256).await.unwrap()[..],
        &bytes[..]
    );

    // A file streams up in parts and streams down verified.
    let dir = tempfile::tempdir().unwrap();
    let shard = pattern(11 * MIB + 7, 3);
    std::fs::write(dir.path().join("shard.bin"), &shard).unwrap();
    let up = store
        .put_file("big/shard.bin", &dir.path().join("shard.bin"))
        .await
        .unwrap();
    assert_eq!(
        store.head("big/shard.bin").await.unwrap().map(|h| h.0),
        Some(shard.len() as u64)
    );
    let copy = dir.path().join("copy.bin");
    store
        .download_to("big/shard.bin", &copy, &up.sha256)
        .await
        .unwrap();
    assert_eq!(std::fs::read(&copy).unwrap(), shard);
    assert_eq!(
        store.list("big").await.unwrap(),
        ["big/adapter.bin", "big/shard.bin"]
    );
}

fn manifest(attempt: &str) -> Manifest {
    Manifest {
        task_id: "t1".into(),
        kind: "train_em".into(),
        label: "em".into(),
        spec: serde_json::json!({"seed": 42}),
        pspace_version: "test".into(),
        attempt: attempt.into(),
        ..Manifest::default()
    }
}

async fn a_second_commit_loses(store: &Store) {
    let first = manifest("attempt-1");
    let second = manifest("attempt-2");
    assert_eq!(
        store.commit_create("commit/t1", &first).await.unwrap(),
        CommitOutcome::Committed
    );
    assert_eq!(
        store.commit_create("commit/t1", &second).await.unwrap(),
        CommitOutcome::Lost(first.clone())
    );
}

/// Same size, other bytes: the entity tag must change, so the HEAD-only check re-runs the task.
async fn a_rewritten_output_is_seen_without_downloading(store: &Store) {
    let task = "verify/t1";
    let mut m = manifest("attempt-1");
    let key = m.output_key(task, "adapter.safetensors");
    let up = store.put_output(&key, b"weights-1".to_vec()).await.unwrap();
    assert!(up.e_tag.is_some(), "{} reports no entity tag", store.describe());
    m.record_output("adapter.safetensors", &up);
    assert_eq!(
        store.commit_create(task, &m).await.unwrap(),
        CommitOutcome::Committed
    );
    assert_eq!(store.committed_manifest(task).await.unwrap(), Some(m.clone()));

    store.put(&key, b"weights-2".to_vec()).await.unwrap();
    let (size, e_tag) = store.head(&key).await.unwrap().unwrap();
    assert_eq!(size, up.size);
    assert_ne!(
        e_tag, up.e_tag,
        "a rewrite with other bytes must change the entity tag"
    );
    assert_eq!(store.committed_manifest(task).await.unwrap(), None);
    assert_eq!(store.verified_manifest(task).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_local_folder_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    conforms(&Store::local(dir.path()).unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seaweedfs_keeps_the_contract() {
    let s3 = tokio::task::spawn_blocking(SeaweedFs::start).await.unwrap();
    eprintln!(
        "SeaweedFS ready (first successful PUT) {:?} after spawn",
        s3.startup()
    );
    let url = s3.url("conformance");
    let store = Store::from_object_store(Arc::new(PrefixStore::new(s3.client(), "conformance")), &url);
    conforms(&store).await;
}

mod s3s_fs_server {
    //! s3s-fs (the S3 protocol over HTTP, objects kept as files) in this test process.
    use std::path::Path;

    pub const ACCESS_KEY: &str = "pspace-test";
    pub const SECRET_KEY: &str = "pspace-test-secret";

    /// Serves the S3 API for the buckets (folders) under `root` on 127.0.0.1; returns the port.
    pub fn start(root: &Path) -> u16 {
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        let root = root.to_path_buf();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("a tokio runtime for the S3 server");
            runtime.block_on(async move {
                let fs = s3s_fs::FileSystem::new(&root).expect("s3s-fs over the temporary folder");
                let mut builder = s3s::service::S3ServiceBuilder::new(fs);
                builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
                let service = builder.build();
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("a free port");
                port_tx
                    .send(listener.local_addr().expect("bound").port())
                    .expect("the test waits");
                let http = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
                loop {
                    let Ok((socket, _)) = listener.accept().await else {
                        continue;
                    };
                    let connection = http
                        .serve_connection(hyper_util::rt::TokioIo::new(socket), service.clone())
                        .into_owned();
                    tokio::spawn(async move {
                        let _ = connection.await;
                    });
                }
            });
        });
        port_rx.recv().expect("the S3 server started")
    }
}

/// s3s-fs answers a second sequential create with 412, but checks for the key and then writes,
/// so racing creates both win: the probe must refuse it, by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_that_checks_then_writes_is_refused() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("lab")).unwrap();
    let port = s3s_fs_server::start(root.path());
    let client = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(format!("http://127.0.0.1:{port}"))
        .with_access_key_id(s3s_fs_server::ACCESS_KEY)
        .with_secret_access_key(s3s_fs_server::SECRET_KEY)
        .with_region("us-east-1")
        .with_bucket_name("lab")
        .with_allow_http(true)
        .build()
        .unwrap();
    let store = Store::from_object_store(Arc::new(client), "s3://lab (s3s-fs)");
    assert_eq!(store.create("k", b"1".to_vec()).await.unwrap(), Created::Yes);
    assert_eq!(
        store.create("k", b"2".to_vec()).await.unwrap(),
        Created::AlreadyExists,
        "s3s-fs refuses a sequential second create"
    );
    let err = store.check_conditional_writes().await.unwrap_err();
    assert!(matches!(err, StoreError::NoCreateOnly { .. }), "{err}");
    let text = err.to_string();
    eprintln!("{text}");
    for needle in [
        "s3://lab (s3s-fs)",
        "racing create-only writes",
        "refuses",
        "s3s-fs",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from: {text}");
    }
    let probes = store.list("_pspace/probe").await.unwrap();
    assert_eq!(probes, Vec::<String>::new(), "the probe cleans up after itself");
}
