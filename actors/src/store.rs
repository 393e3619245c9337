//! The artifact store: where task outputs live, and the manifest that commits them.
//!
//! Backed by the `object_store` crate: a local folder by default, any S3-compatible server for
//! clusters. Writes are whole objects. A task writes its outputs first and its `manifest.json`
//! LAST; the manifest lists every output with its sha256, so a task whose manifest exists and
//! whose outputs still hash to the listed values is done, and is never run again. That one rule
//! gives resume, caching and idempotent retry.

use bytes::Bytes;
use object_store::{local::LocalFileSystem, path::Path as StorePath, ObjectStore, PutPayload};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
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
    #[error("manifest {key} is not valid JSON: {source}")]
    BadManifest { key: String, source: serde_json::Error },
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

/// The commit record of one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub task_id: String,
    pub kind: String,
    pub label: String,
    /// The task's canonical JSON (what its id hashes).
    pub spec: serde_json::Value,
    /// Output name (relative to the task folder) -> sha256 hex.
    pub outputs: BTreeMap<String, String>,
    pub pspace_version: String,
    pub started_unix_ms: u64,
    pub finished_unix_ms: u64,
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

/// Where a store lives, parsed from a location string: `s3://bucket[/prefix]` or a folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Local(std::path::PathBuf),
    S3 { bucket: String, prefix: String },
}

impl Location {
    pub fn parse(location: &str) -> Result<Location, StoreError> {
        let Some(rest) = location.strip_prefix("s3://") else {
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

    pub async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<String, StoreError> {
        let hash = sha256_hex(&bytes);
        self.inner
            .put(&StorePath::from(key), PutPayload::from(Bytes::from(bytes)))
            .await
            .map_err(|cause| StoreError::Io {
                location: self.description.clone(),
                op: "put",
                key: key.to_string(),
                cause: Box::new(cause),
            })?;
        Ok(hash)
    }

    pub async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        let got = self
            .inner
            .get(&StorePath::from(key))
            .await
            .map_err(|cause| StoreError::Io {
                location: self.description.clone(),
                op: "get",
                key: key.to_string(),
                cause: Box::new(cause),
            })?;
        got.bytes().await.map_err(|cause| StoreError::Io {
            location: self.description.clone(),
            op: "read",
            key: key.to_string(),
            cause: Box::new(cause),
        })
    }

    /// Some(bytes) if the object exists, None if it does not.
    pub async fn get_opt(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        match self.get(key).await {
            Ok(b) => Ok(Some(b)),
            Err(StoreError::Io { cause, .. }) if matches!(*cause, object_store::Error::NotFound { .. }) => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Writes the manifest of a task folder: the commit point, so it goes last.
    pub async fn commit(&self, task_dir: &str, manifest: &Manifest) -> Result<(), StoreError> {
        let json = serde_json::to_vec_pretty(manifest).map_err(|source| StoreError::BadManifest {
            key: format!("{task_dir}/manifest.json"),
            source,
        })?;
        self.put(&format!("{task_dir}/manifest.json"), json).await?;
        Ok(())
    }

    /// The manifest of a task folder if it exists AND every listed output still hashes to its
    /// recorded value; None means the task must (re)run.
    pub async fn verified_manifest(&self, task_dir: &str) -> Result<Option<Manifest>, StoreError> {
        let key = format!("{task_dir}/manifest.json");
        let Some(bytes) = self.get_opt(&key).await? else {
            return Ok(None);
        };
        let manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(|source| StoreError::BadManifest { key, source })?;
        for (name, want) in &manifest.outputs {
            match self.get_opt(&format!("{task_dir}/{name}")).await? {
                Some(b) if &sha256_hex(&b) == want => {}
                _ => return Ok(None),
            }
        }
        Ok(Some(manifest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(outputs: BTreeMap<String, String>) -> Manifest {
        Manifest {
            task_id: "t1".into(),
            kind: "extract".into(),
            label: "base".into(),
            spec: serde_json::json!({}),
            outputs,
            pspace_version: "0".into(),
            started_unix_ms: 0,
            finished_unix_ms: 1,
        }
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
    }

    #[tokio::test]
    async fn a_committed_task_verifies_and_a_tampered_one_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::local(dir.path()).unwrap();
        let task = "demo/42/extract/t1";
        assert_eq!(store.verified_manifest(task).await.unwrap(), None);
        let hash = store
            .put(&format!("{task}/A.safetensors"), b"vectors".to_vec())
            .await
            .unwrap();
        // Outputs without a manifest are not a finished task.
        assert_eq!(store.verified_manifest(task).await.unwrap(), None);
        let m = manifest(BTreeMap::from([("A.safetensors".to_string(), hash)]));
        store.commit(task, &m).await.unwrap();
        assert_eq!(store.verified_manifest(task).await.unwrap(), Some(m));
        store
            .put(&format!("{task}/A.safetensors"), b"tampered".to_vec())
            .await
            .unwrap();
        assert_eq!(store.verified_manifest(task).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_corrupt_manifest_is_an_error_naming_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::local(dir.path()).unwrap();
        store.put("x/manifest.json", b"{not json".to_vec()).await.unwrap();
        let err = store.verified_manifest("x").await.unwrap_err().to_string();
        assert!(err.contains("x/manifest.json"), "{err}");
    }
}
