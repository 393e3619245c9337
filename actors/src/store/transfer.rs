//! Moving task outputs in and out of the store at any size: uploads that switch to a multipart
//! upload above [`PART_SIZE`] (so an adapter or an activation shard never needs one request of
//! its whole size, and a file is never read whole into memory), and downloads that hash what
//! they read and refuse bytes that differ from the manifest's sha256.

use super::{sha256_hex, Store, StoreError};
use bytes::Bytes;
use futures::StreamExt;
use object_store::{path::Path as StorePath, PutPayload, WriteMultipart};
use sha2::{Digest, Sha256};
use std::path::Path;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Part size of a multipart upload, and the size up to which one PUT is used: 8 MiB (S3 wants
/// parts of at least 5 MiB but the last, and at most 10,000 parts: objects up to 78 GiB).
pub const PART_SIZE: usize = 8 << 20;

/// Parts of one multipart upload in flight at once: bounds an upload's memory to about
/// `MAX_PARTS_IN_FLIGHT * PART_SIZE` (32 MiB).
const MAX_PARTS_IN_FLIGHT: usize = 4;

/// What the store reported for one uploaded object: what a manifest records for an output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    /// sha256 of the bytes, lowercase hex.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// The entity tag a HEAD of the object reports right after the upload (None where the
    /// store reports none); [`Store::committed_manifest`] compares it with what HEAD reports
    /// later.
    pub e_tag: Option<String>,
}

impl Store {
    /// Writes `bytes` at `key` (overwriting): one PUT up to [`PART_SIZE`], a multipart upload of
    /// [`PART_SIZE`] parts above. Returns the sha256, size and entity tag to record in the
    /// manifest.
    pub async fn put_output(&self, key: &str, bytes: Vec<u8>) -> Result<Uploaded, StoreError> {
        let sha256 = sha256_hex(&bytes);
        let size = bytes.len() as u64;
        let path = StorePath::from(key);
        if bytes.len() <= PART_SIZE {
            self.inner
                .put(&path, PutPayload::from(Bytes::from(bytes)))
                .await
                .map_err(self.io("put", key))?;
        } else {
            let upload = self
                .inner
                .put_multipart(&path)
                .await
                .map_err(self.io("start a multipart upload of", key))?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
            writer.put(Bytes::from(bytes));
            self.finish_multipart(writer, key).await?;
        }
        self.uploaded(key, sha256, size).await
    }

    /// Uploads the local file at `file` to `key` as [`Store::put_output`] does, reading it in
    /// [`PART_SIZE`] pieces (memory stays near `4 * PART_SIZE` whatever the file's size).
    pub async fn put_file(&self, key: &str, file: &Path) -> Result<Uploaded, StoreError> {
        let local = |op: &'static str| {
            move |cause| StoreError::LocalFile {
                op,
                path: file.to_path_buf(),
                cause,
            }
        };
        let mut reader = tokio::fs::File::open(file).await.map_err(local("open"))?;
        let length = reader.metadata().await.map_err(local("stat"))?.len();
        if length <= PART_SIZE as u64 {
            let mut bytes = Vec::with_capacity(length as usize);
            reader.read_to_end(&mut bytes).await.map_err(local("read"))?;
            return self.put_output(key, bytes).await;
        }
        let path = StorePath::from(key);
        let upload = self
            .inner
            .put_multipart(&path)
            .await
            .map_err(self.io("start a multipart upload of", key))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        loop {
            let part = match read_part(&mut reader).await {
                Ok(part) => part,
                Err(source) => {
                    let _ = writer.abort().await;
                    return Err(local("read")(source));
                }
            };
            if part.is_empty() {
                break;
            }
            hasher.update(&part);
            size += part.len() as u64;
            if let Err(cause) = writer.wait_for_capacity(MAX_PARTS_IN_FLIGHT).await {
                let _ = writer.abort().await;
                return Err(self.io("upload a part of", key)(cause));
            }
            writer.put(Bytes::from(part));
        }
        self.finish_multipart(writer, key).await?;
        self.uploaded(key, hex::encode(hasher.finalize()), size).await
    }

    /// Waits for every part, then completes the upload; aborts it (best effort, so the server
    /// can drop the parts) when a part failed.
    async fn finish_multipart(&self, mut writer: WriteMultipart, key: &str) -> Result<(), StoreError> {
        if let Err(cause) = writer.wait_for_capacity(0).await {
            let _ = writer.abort().await;
            return Err(self.io("upload a part of", key)(cause));
        }
        writer
            .finish()
            .await
            .map_err(self.io("complete the multipart upload of", key))?;
        Ok(())
    }

    /// The record of an upload: the entity tag as HEAD reports it (a multipart completion's
    /// response and a later HEAD need not quote it alike on every server).
    async fn uploaded(&self, key: &str, sha256: String, size: u64) -> Result<Uploaded, StoreError> {
        let e_tag = match self.head(key).await? {
            Some((_, e_tag)) => e_tag,
            None => None,
        };
        Ok(Uploaded { sha256, size, e_tag })
    }

    /// The object at `key`, hashed in full: [`StoreError::HashMismatch`] (naming the key, the
    /// expected and the found sha256) when it is not the object the manifest recorded.
    pub async fn get_verified(&self, key: &str, sha256: &str) -> Result<Bytes, StoreError> {
        let bytes = self.get(key).await?;
        let found = sha256_hex(&bytes);
        if found != sha256 {
            return Err(self.hash_mismatch(key, sha256, found));
        }
        Ok(bytes)
    }

    /// Streams the object at `key` into the local file `file` (its folder must exist), hashing
    /// as it goes; the file appears only once the whole object has arrived and hashes to
    /// `sha256` (written to `file` + `.part`, then renamed). Returns the size in bytes.
    pub async fn download_to(&self, key: &str, file: &Path, sha256: &str) -> Result<u64, StoreError> {
        let partial = {
            let mut name = file.as_os_str().to_owned();
            name.push(".part");
            std::path::PathBuf::from(name)
        };
        let result = self.download_unchecked(key, &partial).await;
        let (found, size) = match result {
            Ok(done) => done,
            Err(e) => {
                let _ = tokio::fs::remove_file(&partial).await;
                return Err(e);
            }
        };
        if found != sha256 {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(self.hash_mismatch(key, sha256, found));
        }
        tokio::fs::rename(&partial, file)
            .await
            .map_err(|cause| StoreError::LocalFile {
                op: "rename into",
                path: file.to_path_buf(),
                cause,
            })?;
        Ok(size)
    }

    /// Writes the object at `key` into `file`; returns (sha256 hex, size).
    async fn download_unchecked(&self, key: &str, file: &Path) -> Result<(String, u64), StoreError> {
        let local = |op: &'static str| {
            move |cause| StoreError::LocalFile {
                op,
                path: file.to_path_buf(),
                cause,
            }
        };
        let got = self
            .inner
            .get(&StorePath::from(key))
            .await
            .map_err(self.io("get", key))?;
        let mut stream = got.into_stream();
        let mut out = tokio::fs::File::create(file).await.map_err(local("create"))?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(self.io("read", key))?;
            hasher.update(&chunk);
            size += chunk.len() as u64;
            out.write_all(&chunk).await.map_err(local("write"))?;
        }
        out.flush().await.map_err(local("write"))?;
        out.sync_all().await.map_err(local("sync"))?;
        Ok((hex::encode(hasher.finalize()), size))
    }

    fn hash_mismatch(&self, key: &str, expected: &str, found: String) -> StoreError {
        StoreError::HashMismatch {
            location: self.description.clone(),
            key: key.to_string(),
            expected: expected.to_string(),
            found,
        }
    }
}

/// Up to [`PART_SIZE`] bytes from `reader` (fewer only at its end; empty at its end).
async fn read_part(reader: &mut tokio::fs::File) -> std::io::Result<Vec<u8>> {
    let mut part = vec![0u8; PART_SIZE];
    let mut filled = 0;
    while filled < PART_SIZE {
        let n = reader.read(&mut part[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    part.truncate(filled);
    Ok(part)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes that differ at every offset modulo a prime, so a part boundary in the wrong place
    /// changes the hash.
    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[tokio::test]
    async fn small_and_multipart_uploads_round_trip_with_their_size_and_hash() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::local(dir.path()).unwrap();
        for len in [0, 17, PART_SIZE, PART_SIZE + 1, 2 * PART_SIZE + 3] {
            let bytes = pattern(len);
            let key = format!("t/{len}.bin");
            let up = store.put_output(&key, bytes.clone()).await.unwrap();
            assert_eq!(up.size, len as u64);
            assert_eq!(up.sha256, sha256_hex(&bytes));
            assert_eq!(
                store.head(&key).await.unwrap(),
                Some((len as u64, up.e_tag.clone()))
            );
            assert_eq!(
                &store.get_verified(&key, &up.sha256).await.unwrap()[..],
                &bytes[..]
            );
        }
    }

    #[tokio::test]
    async fn a_file_uploads_in_parts_and_downloads_verified() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::local(&dir.path().join("store")).unwrap();
        let bytes = pattern(2 * PART_SIZE + 5);
        let source = dir.path().join("shard.bin");
        std::fs::write(&source, &bytes).unwrap();
        let up = store.put_file("t/shard.bin", &source).await.unwrap();
        assert_eq!(
            (up.size, up.sha256.as_str()),
            (bytes.len() as u64, sha256_hex(&bytes).as_str())
        );

        let target = dir.path().join("copy.bin");
        assert_eq!(
            store
                .download_to("t/shard.bin", &target, &up.sha256)
                .await
                .unwrap(),
            up.size
        );
        assert_eq!(std::fs::read(&target).unwrap(), bytes);

        let wrong = "0".repeat(64);
        let err = store
            .download_to("t/shard.bin", &dir.path().join("bad.bin"), &wrong)
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("t/shard.bin") && text.contains(&wrong) && text.contains(&up.sha256),
            "{text}"
        );
        assert!(!dir.path().join("bad.bin").exists() && !dir.path().join("bad.bin.part").exists());

        let err = store
            .put_file("t/x", &dir.path().join("absent"))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("absent"), "{err}");
    }

    #[tokio::test]
    async fn a_read_for_use_names_the_key_and_both_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::local(dir.path()).unwrap();
        let up = store.put_output("t/a", b"adapter".to_vec()).await.unwrap();
        store.put("t/a", b"rewritten".to_vec()).await.unwrap();
        match store.get_verified("t/a", &up.sha256).await.unwrap_err() {
            StoreError::HashMismatch {
                key, expected, found, ..
            } => {
                assert_eq!((key.as_str(), expected), ("t/a", up.sha256));
                assert_eq!(found, sha256_hex(b"rewritten"));
            }
            other => panic!("expected a hash mismatch, got {other}"),
        }
    }
}
