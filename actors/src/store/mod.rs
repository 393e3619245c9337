//! The artifact store: where task outputs live, and the manifest that commits them.
//!
//! Backed by the `object_store` crate: a local folder by default, any S3-compatible server for
//! clusters. A task writes its outputs first (under its attempt's prefix inside the task folder)
//! and its `manifest.json` LAST, with a create-only write: of two attempts that both finish,
//! exactly one commits and the other is told it lost. The manifest lists every output with its
//! sha256, size and the store's entity tag, so a committed task is recognised from `HEAD`
//! requests alone (no output downloaded), and an output is hashed in full when it is read for
//! use. That one rule gives resume, caching and idempotent retry.
//!
//! The parts: this file (locations, errors, plain reads and writes), [`transfer`] (multipart
//! uploads, verified and streaming downloads), [`conditional`] (create-only writes and the
//! start-up probe that refuses a store without them), [`manifest`] (the commit record).

pub mod conditional;
pub mod manifest;
pub mod transfer;

pub use conditional::Created;
pub use manifest::{attempt_name, is_attempt_name, CommitOutcome, Manifest};
pub use transfer::Uploaded;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::{local::LocalFileSystem, path::Path as StorePath, ObjectStore, PutPayload};
use sha2::{Digest, Sha256};
use std::ops::Range;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store location {location:?}: {message}")]
    Config { location: String, message: String },
    /// `cause` is kept out of the error chain on purpose: object_store's errors repeat their
    /// inner errors in their own text, so the chain would print the same failure four times.
    #[error("store {location}: cannot {op} {key}: {}", describe(cause))]
    Io {
        location: String,
        op: &'static str,
        key: String,
        cause: Box<object_store::Error>,
    },
    /// `cause` is said in the text and not returned as `source()` (said once in a chain).
    #[error("manifest {key} is not valid JSON: {cause}")]
    BadManifest { key: String, cause: serde_json::Error },
    /// An object read for use does not hash to what its manifest recorded.
    #[error(
        "store {location}: {key} has sha256 {found}, expected {expected} (the object was damaged \
         or rewritten after its task committed)"
    )]
    HashMismatch {
        location: String,
        key: String,
        expected: String,
        found: String,
    },
    /// A local file that an upload reads or a download writes.
    #[error("cannot {op} local file {}: {cause}", path.display())]
    LocalFile {
        op: &'static str,
        path: std::path::PathBuf,
        cause: std::io::Error,
    },
    /// The start-up probe found that create-only writes do not hold on this store.
    #[error(
        "store {location} {found}, so two attempts of one task could both commit: pspace refuses \
         it. Servers that overwrite silently or check-then-write include `rclone serve s3` and \
         s3s-fs; AWS S3, MinIO, SeaweedFS, Ceph RGW and a local folder honour create-only writes"
    )]
    NoCreateOnly { location: String, found: String },
}

/// What went wrong, once: the innermost cause (the outer levels repeat it with context we give
/// ourselves), with a hint when the server refused the credentials.
fn describe(error: &object_store::Error) -> String {
    let mut innermost: &dyn std::error::Error = error;
    while let Some(next) = innermost.source() {
        innermost = next;
    }
    let hint = match error {
        object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. } => {
            " (the server refused the request: check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
        }
        _ => "",
    };
    format!("{innermost}{hint}")
}

/// An object store plus a key prefix.
#[derive(Clone)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    description: String,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.description)
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// An entity tag as compared: S3 servers quote it (`"9a0364b9..."`) and may mark it weak
/// (`W/"..."`); the local store does neither. Two tags are the same object version when their
/// normalised forms are equal.
pub fn normalize_e_tag(e_tag: &str) -> &str {
    e_tag.trim().trim_start_matches("W/").trim_matches('"')
}

/// Where a store lives, parsed from a location string: `s3://bucket[/prefix]` or a folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Local(std::path::PathBuf),
    S3 { bucket: String, prefix: String },
}

impl Location {
    /// Errors: an `s3://` location without a bucket, and anything that looks like a URL of
    /// another form (`S3://`, `s3:/`, `http://`, `gs://`), which would otherwise become a local
    /// folder of that name.
    pub fn parse(location: &str) -> Result<Location, StoreError> {
        let Some(rest) = location.strip_prefix("s3://") else {
            let lower = location.to_ascii_lowercase();
            if lower.contains("://") || lower.starts_with("s3:") {
                return Err(StoreError::Config {
                    location: location.to_string(),
                    message: "expected s3://BUCKET[/PREFIX] (lower case) or a folder, found another URL form"
                        .into(),
                });
            }
            return Ok(Location::Local(location.into()));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(StoreError::Config {
                location: location.to_string(),
                message: "expected s3://BUCKET[/PREFIX], found no bucket name".into(),
            });
        }
        Ok(Location::S3 {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
        })
    }
}

impl Store {
    /// The store at `location`: a local folder, or `s3://bucket[/prefix]` on any S3-compatible
    /// server. For S3 the connection comes from the standard environment: AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY, AWS_REGION (default us-east-1), AWS_ENDPOINT for a server that is
    /// not AWS (MinIO, Ceph, ...) and AWS_ALLOW_HTTP=true for a plain-http endpoint.
    pub fn open(location: &str) -> Result<Store, StoreError> {
        match Location::parse(location)? {
            Location::Local(root) => Store::local(&root),
            Location::S3 { bucket, prefix } => {
                let config = |message: String| StoreError::Config {
                    location: location.to_string(),
                    message,
                };
                let mut builder = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(&bucket);
                if std::env::var_os("AWS_REGION").is_none()
                    && std::env::var_os("AWS_DEFAULT_REGION").is_none()
                {
                    builder = builder.with_region("us-east-1");
                }
                let s3 = builder.build().map_err(|e| config(e.to_string()))?;
                let inner: Arc<dyn ObjectStore> = if prefix.is_empty() {
                    Arc::new(s3)
                } else {
                    Arc::new(object_store::prefix::PrefixStore::new(s3, prefix.as_str()))
                };
                Ok(Store {
                    inner,
                    description: location.to_string(),
                })
            }
        }
    }

    /// A store rooted at a local folder (created if absent).
    pub fn local(root: &std::path::Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(root).map_err(|e| StoreError::Config {
            location: root.display().to_string(),
            message: format!("cannot create the folder: {e}"),
        })?;
        let fs = LocalFileSystem::new_with_prefix(root).map_err(|e| StoreError::Config {
            location: root.display().to_string(),
            message: e.to_string(),
        })?;
        Ok(Store {
            inner: Arc::new(fs),
            description: root.display().to_string(),
        })
    }

    pub fn from_object_store(inner: Arc<dyn ObjectStore>, description: &str) -> Store {
        Store {
            inner,
            description: description.to_string(),
        }
    }

    pub fn describe(&self) -> &str {
        &self.description
    }

    /// The error for `op` on `key`, naming this store.
    fn io(&self, op: &'static str, key: &str) -> impl FnOnce(object_store::Error) -> StoreError + '_ {
        let key = key.to_string();
        move |cause| StoreError::Io {
            location: self.description.clone(),
            op,
            key,
            cause: Box::new(cause),
        }
    }

    /// Writes (overwrites) `key` with one PUT; returns the bytes' sha256 hex.
    pub async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<String, StoreError> {
        let hash = sha256_hex(&bytes);
        self.inner
            .put(&StorePath::from(key), PutPayload::from(Bytes::from(bytes)))
            .await
            .map_err(self.io("put", key))?;
        Ok(hash)
    }

    /// The whole object at `key`. Errors when it does not exist (see [`Store::get_opt`]).
    pub async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        let got = self
            .inner
            .get(&StorePath::from(key))
            .await
            .map_err(self.io("get", key))?;
        got.bytes().await.map_err(self.io("read", key))
    }

    /// Some(bytes) if the object exists, None if it does not.
    pub async fn get_opt(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        match self.get(key).await {
            Ok(b) => Ok(Some(b)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Bytes `range.start..range.end` (end exclusive) of the object at `key`: one ranged GET.
    /// The range must lie inside the object (see [`Store::head`] for its size); an empty or
    /// out-of-bounds range is an error.
    pub async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        self.inner
            .get_range(&StorePath::from(key), range)
            .await
            .map_err(self.io("read a range of", key))
    }

    /// (size in bytes, entity tag) of the object at `key` from one HEAD request, None if it does
    /// not exist. The entity tag is as the store reports it (see [`normalize_e_tag`]); a store
    /// may report none.
    pub async fn head(&self, key: &str) -> Result<Option<(u64, Option<String>)>, StoreError> {
        match self.inner.head(&StorePath::from(key)).await {
            Ok(meta) => Ok(Some((meta.size, meta.e_tag))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(cause) => Err(self.io("head", key)(cause)),
        }
    }

    /// Every key under `prefix` (whole path segments: `a/b` lists `a/b/c`, not `a/bc`), sorted.
    /// An empty prefix lists the whole store; a prefix with nothing under it gives an empty list.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let prefix_path = StorePath::from(prefix);
        let root = if prefix.trim_matches('/').is_empty() {
            None
        } else {
            Some(&prefix_path)
        };
        let mut keys: Vec<String> = self
            .inner
            .list(root)
            .map_ok(|meta| meta.location.to_string())
            .try_collect()
            .await
            .map_err(self.io("list", prefix))?;
        keys.sort();
        Ok(keys)
    }

    /// The names directly under the store's root, sorted: folders (key prefixes) with a trailing
    /// `/`, then objects. One listing request, not a walk of everything below, so `pspace status`
    /// can say what a folder that is not the spec's store holds, however large it is.
    pub async fn top_level(&self) -> Result<Vec<String>, StoreError> {
        let listed = self
            .inner
            .list_with_delimiter(None)
            .await
            .map_err(self.io("list", ""))?;
        let name = |p: &StorePath| p.filename().unwrap_or_default().to_string();
        let mut folders: Vec<String> = listed
            .common_prefixes
            .iter()
            .map(|p| format!("{}/", name(p)))
            .collect();
        let mut objects: Vec<String> = listed.objects.iter().map(|o| name(&o.location)).collect();
        folders.sort();
        objects.sort();
        folders.extend(objects);
        Ok(folders)
    }

    /// Deletes the object at `key`; deleting an absent key is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match self.inner.delete(&StorePath::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(cause) => Err(self.io("delete", key)(cause)),
        }
    }
}

fn is_not_found(error: &StoreError) -> bool {
    matches!(error, StoreError::Io { cause, .. } if matches!(**cause, object_store::Error::NotFound { .. }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn top_level_names_folders_then_objects_without_walking_below() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("demo/42/extract")).unwrap();
        std::fs::write(dir.path().join("demo/42/extract/manifest.json"), b"{}").unwrap();
        std::fs::create_dir_all(dir.path().join("alpha")).unwrap();
        std::fs::write(dir.path().join("alpha/x"), b"x").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"n").unwrap();
        let store = Store::local(dir.path()).unwrap();
        assert_eq!(store.top_level().await.unwrap(), ["alpha/", "demo/", "notes.txt"]);
        let empty = tempfile::tempdir().unwrap();
        assert!(Store::local(empty.path())
            .unwrap()
            .top_level()
            .await
            .unwrap()
            .is_empty());
    }

    #[test]
    fn locations_parse_and_a_bucketless_one_is_an_error() {
        assert_eq!(Location::parse("runs").unwrap(), Location::Local("runs".into()));
        assert_eq!(
            Location::parse("s3://lab-runs/pspace/").unwrap(),
            Location::S3 {
                bucket: "lab-runs".into(),
                prefix: "pspace".into()
            }
        );
        assert_eq!(
            Location::parse("s3://lab-runs").unwrap(),
            Location::S3 {
                bucket: "lab-runs".into(),
                prefix: String::new()
            }
        );
        let err = Location::parse("s3:///x").unwrap_err().to_string();
        assert!(err.contains("s3://BUCKET") && err.contains("s3:///x"), "{err}");
        // A URL of another form was a local folder named after it.
        for typo in ["S3://bucket/x", "s3:/bucket/x", "http://host/x", "gs://bucket"] {
            let err = Location::parse(typo).unwrap_err().to_string();
            assert!(
                err.contains("expected s3://BUCKET") && err.contains(typo),
                "{err}"
            );
        }
        assert_eq!(
            Location::parse("./runs:a").unwrap(),
            Location::Local("./runs:a".into())
        );
    }

    #[test]
    fn entity_tags_compare_without_quotes_or_weak_marks() {
        assert_eq!(normalize_e_tag("\"9a03\""), "9a03");
        assert_eq!(normalize_e_tag("W/\"9a03\""), "9a03");
        assert_eq!(normalize_e_tag("1f-5e2-3"), "1f-5e2-3");
    }

    #[tokio::test]
    async fn list_range_head_and_delete_on_a_folder() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::local(dir.path()).unwrap();
        assert_eq!(store.list("journal").await.unwrap(), Vec::<String>::new());
        store.put("journal/2", b"b".to_vec()).await.unwrap();
        store.put("journal/1", b"a".to_vec()).await.unwrap();
        store.put("journalist/x", b"c".to_vec()).await.unwrap();
        assert_eq!(store.list("journal").await.unwrap(), ["journal/1", "journal/2"]);
        assert_eq!(store.list("").await.unwrap().len(), 3);

        store.put("obj", b"0123456789".to_vec()).await.unwrap();
        assert_eq!(&store.get_range("obj", 3..7).await.unwrap()[..], b"3456");
        let (size, e_tag) = store.head("obj").await.unwrap().unwrap();
        assert_eq!(size, 10);
        assert!(e_tag.is_some(), "a local folder reports an entity tag");
        assert_eq!(store.head("absent").await.unwrap(), None);
        store.delete("obj").await.unwrap();
        store.delete("obj").await.unwrap();
        assert_eq!(store.head("obj").await.unwrap(), None);
        assert_eq!(store.get_opt("obj").await.unwrap(), None);
    }
}
