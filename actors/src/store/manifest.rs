//! The manifest: a task's commit record, `<task folder>/manifest.json`. It lists every output
//! with its sha256 and, since the distributed runtime, its size and the store's entity tag and
//! the attempt prefix the outputs live under. Writing it is the commit; it goes last, created
//! only if absent, so exactly one attempt of a task commits.
//!
//! Checking a commit has two depths: [`Store::committed_manifest`] compares sizes and entity
//! tags from HEAD requests (no output downloaded: cheap enough for resume over a whole run), and
//! [`Store::verified_manifest`] hashes every output. A consumer reads an output through
//! [`Store::get_verified`] or [`Store::download_to`], which hash it in full anyway.

use super::{normalize_e_tag, sha256_hex, Created, Store, StoreError, Uploaded};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The commit record of one task. New fields are optional in JSON, so manifests written
/// before them still parse (and verify by hashing, having no sizes or tags to compare).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Manifest {
    pub task_id: String,
    pub kind: String,
    pub label: String,
    /// The task's canonical JSON (what its id hashes).
    pub spec: serde_json::Value,
    /// Output name -> sha256 hex. The name is relative to the attempt folder (see
    /// [`Manifest::output_key`]).
    pub outputs: BTreeMap<String, String>,
    pub pspace_version: String,
    pub started_unix_ms: u64,
    pub finished_unix_ms: u64,
    /// The folder inside the task folder that holds this attempt's outputs ("" = the outputs
    /// sit directly in the task folder, as for `pspace run` before attempts existed).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub attempt: String,
    /// Output name -> size in bytes, as uploaded.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sizes: BTreeMap<String, u64>,
    /// Output name -> the entity tag the store reported right after the upload (absent where
    /// the store reports none).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub e_tags: BTreeMap<String, String>,
}

/// Which attempt's manifest a create-only commit left in the store.
// Returned once per commit and matched at once, never stored: boxing would only add noise.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum CommitOutcome {
    /// This manifest is the task's commit.
    Committed,
    /// Another attempt committed first; this is its manifest (use its outputs, drop ours).
    Lost(Manifest),
}

/// The key of a task folder's manifest.
pub fn manifest_key(task_dir: &str) -> String {
    format!("{task_dir}/manifest.json")
}

/// The folder an attempt's outputs go to inside the task folder: `a<attempt>-<nonce, 8 hex>`
/// (the coordinator's grant; the nonce keeps two grants of one attempt number apart).
pub fn attempt_name(attempt: u32, nonce: u64) -> String {
    format!("a{attempt}-{:08x}", nonce as u32)
}

/// Whether `name` has the form [`attempt_name`] gives.
pub fn is_attempt_name(name: &str) -> bool {
    let Some((number, nonce)) = name.strip_prefix('a').and_then(|rest| rest.split_once('-')) else {
        return false;
    };
    !number.is_empty()
        && number.bytes().all(|b| b.is_ascii_digit())
        && nonce.len() == 8
        && nonce.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Manifest {
    /// The store key of output `name` of the task committed in `task_dir`:
    /// `<task_dir>/<attempt>/<name>`, or `<task_dir>/<name>` when `attempt` is empty.
    pub fn output_key(&self, task_dir: &str, name: &str) -> String {
        if self.attempt.is_empty() {
            format!("{task_dir}/{name}")
        } else {
            format!("{task_dir}/{}/{name}", self.attempt)
        }
    }

    /// Records an uploaded output: its sha256, size and (if any) entity tag.
    pub fn record_output(&mut self, name: &str, uploaded: &Uploaded) {
        self.outputs.insert(name.to_string(), uploaded.sha256.clone());
        self.sizes.insert(name.to_string(), uploaded.size);
        match &uploaded.e_tag {
            Some(tag) => self.e_tags.insert(name.to_string(), tag.clone()),
            None => self.e_tags.remove(name),
        };
    }

    fn to_json(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        serde_json::to_vec_pretty(self).map_err(|cause| StoreError::BadManifest {
            key: key.to_string(),
            cause,
        })
    }
}

impl Store {
    /// Writes the manifest of a task folder, overwriting any: the commit point of `pspace run`
    /// before attempts existed. Distributed runs use [`Store::commit_create`].
    pub async fn commit(&self, task_dir: &str, manifest: &Manifest) -> Result<(), StoreError> {
        let key = manifest_key(task_dir);
        self.put(&key, manifest.to_json(&key)?).await?;
        Ok(())
    }

    /// Deletes what attempts other than `keep` (the committed attempt) left under the task
    /// folder `task_dir`: the outputs of a worker that lost its lease, was cut off or was killed
    /// before its commit, which no manifest will ever name. Only folders named as attempts
    /// ([`is_attempt_name`]) are touched; the manifest and `keep`'s outputs stay. With `keep`
    /// empty (outputs directly in the task folder, `pspace run`) nothing is deleted. An attempt
    /// still uploading when this runs can leave objects behind; the next call removes them.
    /// Returns how many objects were deleted.
    ///
    /// Errors: the listing's or a deletion's [`StoreError`]; the objects deleted before it stay
    /// deleted.
    pub async fn remove_other_attempts(&self, task_dir: &str, keep: &str) -> Result<usize, StoreError> {
        if keep.is_empty() {
            return Ok(0);
        }
        let prefix = format!("{}/", task_dir.trim_end_matches('/'));
        let mut removed = 0;
        for key in self.list(task_dir).await? {
            let Some((folder, _)) = key.strip_prefix(&prefix).and_then(|rest| rest.split_once('/')) else {
                continue;
            };
            if folder != keep && is_attempt_name(folder) {
                self.delete(&key).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Commits `manifest` for `task_dir` only if no attempt has: [`CommitOutcome::Committed`],
    /// or [`CommitOutcome::Lost`] with the manifest already there. Re-sending the same
    /// manifest (a retry after a lost response) counts as Committed.
    pub async fn commit_create(
        &self,
        task_dir: &str,
        manifest: &Manifest,
    ) -> Result<CommitOutcome, StoreError> {
        let key = manifest_key(task_dir);
        match self.create(&key, manifest.to_json(&key)?).await? {
            Created::Yes => Ok(CommitOutcome::Committed),
            Created::AlreadyExists => {
                let bytes = self.get(&key).await?;
                let there: Manifest =
                    serde_json::from_slice(&bytes).map_err(|cause| StoreError::BadManifest { key, cause })?;
                if &there == manifest {
                    Ok(CommitOutcome::Committed)
                } else {
                    Ok(CommitOutcome::Lost(there))
                }
            }
        }
    }

    /// The manifest of a task folder as stored, None if there is none; no output is checked.
    pub async fn read_manifest(&self, task_dir: &str) -> Result<Option<Manifest>, StoreError> {
        let key = manifest_key(task_dir);
        let Some(bytes) = self.get_opt(&key).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|cause| StoreError::BadManifest { key, cause })
    }

    /// The manifest of a task folder if it exists and every output is still the object that
    /// was uploaded, judged by one HEAD per output: the size and entity tag the store reports
    /// now must equal the recorded ones. No output byte is downloaded, except for an output
    /// without a recorded size and entity tag (manifests from before they existed, or a store
    /// that reports no tags), which is hashed in full. None means the task must (re)run.
    ///
    /// Entity tags change whenever an object is rewritten with other bytes: an MD5 of the
    /// content on S3 servers, (inode, mtime, size) on a local folder. They also change when the
    /// same bytes are copied (a store folder copied with `cp -r`, rsync or a restore, or
    /// objects copied between buckets): an output of the recorded size under another tag is
    /// hashed in full, and its bytes decide, so a moved store resumes where it was. The one case
    /// the tags miss is a local file rewritten in place with the same size within the file
    /// system's timestamp granularity of its upload; the full hash on read for use catches it.
    pub async fn committed_manifest(&self, task_dir: &str) -> Result<Option<Manifest>, StoreError> {
        let Some(manifest) = self.read_manifest(task_dir).await? else {
            return Ok(None);
        };
        for (name, sha256) in &manifest.outputs {
            let key = manifest.output_key(task_dir, name);
            let intact = match (manifest.sizes.get(name), manifest.e_tags.get(name)) {
                (Some(&size), Some(e_tag)) => match self.same_object(&key, size, e_tag).await? {
                    Sameness::Same => true,
                    Sameness::SizeOnly => self.hashes_to(&key, sha256).await?,
                    Sameness::Different => false,
                },
                _ => self.hashes_to(&key, sha256).await?,
            };
            if !intact {
                return Ok(None);
            }
        }
        Ok(Some(manifest))
    }

    /// The manifest of a task folder if it exists AND every listed output still hashes to its
    /// recorded value (every output downloaded); None means the task must (re)run.
    pub async fn verified_manifest(&self, task_dir: &str) -> Result<Option<Manifest>, StoreError> {
        let Some(manifest) = self.read_manifest(task_dir).await? else {
            return Ok(None);
        };
        for (name, sha256) in &manifest.outputs {
            if !self
                .hashes_to(&manifest.output_key(task_dir, name), sha256)
                .await?
            {
                return Ok(None);
            }
        }
        Ok(Some(manifest))
    }

    async fn same_object(&self, key: &str, size: u64, e_tag: &str) -> Result<Sameness, StoreError> {
        let found = self.head(key).await?;
        Ok(match &found {
            Some((s, Some(t))) if *s == size && normalize_e_tag(t) == normalize_e_tag(e_tag) => {
                Sameness::Same
            }
            Some((s, _)) if *s == size => Sameness::SizeOnly,
            _ => {
                tracing::warn!(
                    store = %self.description, key,
                    "output changed since its commit: recorded size {size} and entity tag {e_tag}, found {found:?}; its task runs again"
                );
                Sameness::Different
            }
        })
    }

    async fn hashes_to(&self, key: &str, sha256: &str) -> Result<bool, StoreError> {
        let same = matches!(self.get_opt(key).await?, Some(bytes) if sha256_hex(&bytes) == sha256);
        if !same {
            tracing::warn!(store = %self.description, key, "output missing or not sha256 {sha256}; its task runs again");
        }
        Ok(same)
    }
}

/// What one HEAD says of an output against its recorded size and entity tag.
enum Sameness {
    /// The recorded size and tag: the uploaded object.
    Same,
    /// The recorded size under another tag (or none): rewritten, or the same bytes copied.
    SizeOnly,
    /// Missing, or of another size.
    Different,
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
            ..Manifest::default()
        }
    }

    #[test]
    fn an_old_manifest_parses_and_serialises_as_before() {
        let old = r#"{"task_id":"t1","kind":"extract","label":"base","spec":{},
            "outputs":{"A.safetensors":"ab"},"pspace_version":"0","started_unix_ms":0,"finished_unix_ms":1}"#;
        let m: Manifest = serde_json::from_str(old).unwrap();
        assert_eq!(
            m,
            manifest(BTreeMap::from([("A.safetensors".into(), "ab".into())]))
        );
        let json = serde_json::to_string(&m).unwrap();
        for absent in ["attempt", "sizes", "e_tags"] {
            assert!(!json.contains(absent), "{json}");
        }
    }

    #[test]
    fn attempt_names_are_recognised() {
        assert_eq!(attempt_name(3, 0x1_9f2c_0a1b), "a3-9f2c0a1b");
        assert!(is_attempt_name(&attempt_name(12, 7)));
        for other in [
            "",
            "a",
            "a3",
            "a3-",
            "a-9f2c0a1b",
            "ax-9f2c0a1b",
            "a3-9f2c0a1",
            "a3-9f2c0a1bc",
            "a3-9f2c0a1g",
            "adapter",
            "b3-9f2c0a1b",
        ] {
            assert!(!is_attempt_name(other), "{other:?}");
        }
    }

    /// The losing attempts' objects go; the manifest, the committed attempt's outputs and
    /// anything not named as an attempt stay; another task folder is not touched.
    #[tokio::test]
    async fn other_attempts_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::local(dir.path()).unwrap();
        let task = "run/42/extract/t1";
        let keys = [
            format!("{task}/manifest.json"),
            format!("{task}/a2-0000beef/A.safetensors"),
            format!("{task}/a2-0000beef/adapter/adapter_model.safetensors"),
            format!("{task}/a1-0000abcd/A.safetensors"),
            format!("{task}/a1-0000abcd/adapter/adapter_config.json"),
            format!("{task}/a3-00000001/partial.bin"),
            format!("{task}/notes/readme.txt"),
            "run/42/extract/t10/a1-0000abcd/A.safetensors".to_string(),
        ];
        for k in &keys {
            store.put(k, b"x".to_vec()).await.unwrap();
        }
        assert_eq!(store.remove_other_attempts(task, "").await.unwrap(), 0);
        assert_eq!(store.remove_other_attempts(task, "a2-0000beef").await.unwrap(), 3);
        let left = store.list("run").await.unwrap();
        let want: Vec<String> = [&keys[0], &keys[1], &keys[2], &keys[6], &keys[7]]
            .into_iter()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        assert_eq!(left, want);
    }

    #[test]
    fn output_keys_go_under_the_attempt_when_there_is_one() {
        let mut m = manifest(BTreeMap::new());
        assert_eq!(
            m.output_key("run/42/extract/t1", "A.safetensors"),
            "run/42/extract/t1/A.safetensors"
        );
        m.attempt = "attempt-3-9f2c".into();
        assert_eq!(
            m.output_key("run/42/extract/t1", "A.safetensors"),
            "run/42/extract/t1/attempt-3-9f2c/A.safetensors"
        );
        let up = Uploaded {
            sha256: "ab".into(),
            size: 7,
            e_tag: Some("\"x\"".into()),
        };
        m.record_output("A.safetensors", &up);
        assert_eq!(
            (m.outputs["A.safetensors"].as_str(), m.sizes["A.safetensors"]),
            ("ab", 7)
        );
        assert_eq!(m.e_tags["A.safetensors"], "\"x\"");
        let back: Manifest = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        assert_eq!(back, m);
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
        assert_eq!(store.verified_manifest(task).await.unwrap(), Some(m.clone()));
        // No size or tag recorded: the cheap check hashes instead.
        assert_eq!(store.committed_manifest(task).await.unwrap(), Some(m));
        store
            .put(&format!("{task}/A.safetensors"), b"tampered".to_vec())
            .await
            .unwrap();
        assert_eq!(store.verified_manifest(task).await.unwrap(), None);
        assert_eq!(store.committed_manifest(task).await.unwrap(), None);
    }

    #[tokio::test]
    async fn the_cheap_check_sees_a_same_size_rewrite_and_a_deletion() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::local(dir.path()).unwrap();
        let task = "demo/42/train_em/t2";
        let mut m = manifest(BTreeMap::new());
        m.attempt = "a1".into();
        let key = m.output_key(task, "adapter.safetensors");
        let up = store.put_output(&key, b"weights-1".to_vec()).await.unwrap();
        m.record_output("adapter.safetensors", &up);
        assert_eq!(
            store.commit_create(task, &m).await.unwrap(),
            CommitOutcome::Committed
        );
        assert_eq!(store.committed_manifest(task).await.unwrap(), Some(m.clone()));
        // Same size, other bytes, through the store: a new object.
        store.put(&key, b"weights-2".to_vec()).await.unwrap();
        assert_eq!(store.committed_manifest(task).await.unwrap(), None);
        // Back to a recorded state, then rewritten in place on disk (same inode, same size).
        let up = store.put_output(&key, b"weights-1".to_vec()).await.unwrap();
        m.record_output("adapter.safetensors", &up);
        store.commit(task, &m).await.unwrap();
        assert_eq!(store.committed_manifest(task).await.unwrap(), Some(m.clone()));
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(dir.path().join(&key), b"weights-3").unwrap();
        assert_eq!(store.committed_manifest(task).await.unwrap(), None);
        store.delete(&key).await.unwrap();
        assert_eq!(store.committed_manifest(task).await.unwrap(), None);
    }

    /// A store folder copied elsewhere (`cp -r`: every file a new inode and time, so a new
    /// entity tag) keeps its committed tasks: the outputs' bytes decide. Its tasks all ran
    /// again after a copy.
    #[tokio::test]
    async fn a_copied_store_keeps_its_committed_tasks() {
        fn copy(from: &std::path::Path, to: &std::path::Path) {
            std::fs::create_dir_all(to).unwrap();
            for entry in std::fs::read_dir(from).unwrap() {
                let entry = entry.unwrap();
                let target = to.join(entry.file_name());
                if entry.file_type().unwrap().is_dir() {
                    copy(&entry.path(), &target);
                } else {
                    std::fs::copy(entry.path(), &target).unwrap();
                }
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let store = Store::local(&dir.path().join("a")).unwrap();
        let task = "demo/42/train_em/t3";
        let mut m = manifest(BTreeMap::new());
        m.attempt = "a1".into();
        let key = m.output_key(task, "adapter.safetensors");
        let up = store.put_output(&key, b"weights-1".to_vec()).await.unwrap();
        m.record_output("adapter.safetensors", &up);
        store.commit(task, &m).await.unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        copy(&dir.path().join("a"), &dir.path().join("b"));
        let copied = Store::local(&dir.path().join("b")).unwrap();
        let (_, tag) = copied.head(&key).await.unwrap().unwrap();
        assert_ne!(
            tag.as_deref(),
            m.e_tags.get("adapter.safetensors").map(String::as_str)
        );
        assert_eq!(copied.committed_manifest(task).await.unwrap(), Some(m.clone()));
        // A copy whose bytes differ at the same size is still caught.
        std::fs::write(dir.path().join("b").join(&key), b"weights-2").unwrap();
        assert_eq!(copied.committed_manifest(task).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_second_commit_loses_to_the_first_and_a_resent_one_still_counts() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::local(dir.path()).unwrap();
        let mut first = manifest(BTreeMap::new());
        first.attempt = "a1".into();
        let mut second = first.clone();
        second.attempt = "a2".into();
        assert_eq!(
            store.commit_create("t", &first).await.unwrap(),
            CommitOutcome::Committed
        );
        assert_eq!(
            store.commit_create("t", &first).await.unwrap(),
            CommitOutcome::Committed
        );
        assert_eq!(
            store.commit_create("t", &second).await.unwrap(),
            CommitOutcome::Lost(first.clone())
        );
        assert_eq!(store.read_manifest("t").await.unwrap(), Some(first));
    }

    #[tokio::test]
    async fn a_corrupt_manifest_is_an_error_naming_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::local(dir.path()).unwrap();
        store.put("x/manifest.json", b"{not json".to_vec()).await.unwrap();
        let err = store.verified_manifest("x").await.unwrap_err().to_string();
        assert!(err.contains("x/manifest.json"), "{err}");
        let err = store.committed_manifest("x").await.unwrap_err().to_string();
        assert!(err.contains("x/manifest.json"), "{err}");
    }
}
