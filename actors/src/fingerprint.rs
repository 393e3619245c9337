//! Content digests of the files a run reads besides its spec: the base model (every file of an
//! HF folder, or the GGUF), the persona, question and extraction-question files and both
//! training sets. A task's id hashes the digests of the files it reads (issue 11 item 1), so an
//! edited personas.json or another base model re-runs exactly the tasks that read it, and a
//! moved but unchanged file re-runs nothing.
//!
//! Hashing a 15 GB model takes about a minute, so digests are kept in a small JSON file
//! ([`CACHE_FILE`], in the run's scratch folder) by canonical path, size and modification time:
//! a file whose size or time changed is hashed again, and a run on the same files hashes
//! nothing. A read-only command ([`DigestCache::read_only`], `pspace status`) uses that file
//! but never writes it.

use crate::task::TaskKind;
use pspace_engine::model::ModelSource;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

/// The digest cache's file name inside the scratch folder.
pub const CACHE_FILE: &str = "file-digests.json";

/// What [`Fingerprints::placeholder`] puts where a digest would be.
pub const UNHASHED: &str = "unhashed";

#[derive(Debug, thiserror::Error)]
pub enum FingerprintError {
    #[error("cannot hash {path}: {error}")]
    Read { path: PathBuf, error: std::io::Error },
    #[error("cannot write the digest cache {path}: {error}")]
    Cache { path: PathBuf, error: std::io::Error },
}

/// The sha256 (hex) of every file a run reads besides its spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprints {
    /// The base model: a GGUF's sha256, or of an HF folder the sha256 of its files' list
    /// (relative path and sha256 of each, dot-files left out).
    pub model: String,
    pub personas: String,
    pub questions: String,
    pub extraction_questions: String,
    pub em_data: String,
    pub benign_data: String,
}

impl Fingerprints {
    /// Hashes (or finds in `cache`) every file of `spec` with its base model `model`. Random
    /// weights (`random:<preset>@<seed>`) have no files: their name determines them, and its
    /// sha256 stands for them.
    pub fn compute(
        spec: &crate::spec::Spec,
        model: &ModelSource,
        cache: &mut DigestCache,
    ) -> Result<Fingerprints, FingerprintError> {
        let file = |cache: &mut DigestCache, p: &Path| cache.file(&spec.root.join(p));
        let model = match model {
            ModelSource::Files(path) => cache.model(path)?,
            ModelSource::Random(_) => hex::encode(Sha256::digest(model.to_string().as_bytes())),
        };
        Ok(Fingerprints {
            model,
            personas: file(cache, &spec.data.personas)?,
            questions: file(cache, &spec.data.questions)?,
            extraction_questions: file(cache, &spec.data.extraction_questions)?,
            em_data: file(cache, &spec.training.em.data)?,
            benign_data: file(cache, &spec.training.benign.data)?,
        })
    }

    /// Digests for a plan whose ids are not used (a dry run's listing, tests of the DAG's
    /// shape): every file reads [`UNHASHED`].
    pub fn placeholder() -> Fingerprints {
        let u = || UNHASHED.to_string();
        Fingerprints {
            model: u(),
            personas: u(),
            questions: u(),
            extraction_questions: u(),
            em_data: u(),
            benign_data: u(),
        }
    }

    /// The files a task of `kind` reads, by the names its parameters give them (`files` of
    /// `Task::params`), with their digests.
    pub fn read_by(&self, kind: TaskKind) -> BTreeMap<String, String> {
        let names: &[&str] = match kind {
            TaskKind::TrainEm => &["model", "em_data"],
            TaskKind::TrainBenign => &["model", "benign_data"],
            TaskKind::Extract => &["model", "personas", "extraction_questions"],
            TaskKind::GenerateOnpolicy | TaskKind::MarkerEval => &["model", "personas", "questions"],
            // The coupling rows carry the personas' system prompts.
            TaskKind::BuildCoupling => &["personas"],
            TaskKind::TrainCoupling => &["model"],
            // The analysis reads the personas file (order, conditions, cos to the assistant).
            TaskKind::Analyse => &["personas"],
            // Only its inputs, each seed's analysis.
            TaskKind::Summarise => &[],
        };
        names
            .iter()
            .map(|&n| (n.to_string(), self.get(n).to_string()))
            .collect()
    }

    /// The digest of the file called `name` in [`Fingerprints::read_by`].
    pub fn get(&self, name: &str) -> &str {
        match name {
            "model" => &self.model,
            "personas" => &self.personas,
            "questions" => &self.questions,
            "extraction_questions" => &self.extraction_questions,
            "em_data" => &self.em_data,
            "benign_data" => &self.benign_data,
            _ => UNHASHED,
        }
    }
}

/// One cached digest: the file's size and modification time when it was hashed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Entry {
    size: u64,
    modified_s: u64,
    modified_ns: u32,
    sha256: String,
}

/// Digests by canonical path, size and modification time, optionally kept in a file.
#[derive(Debug, Default)]
pub struct DigestCache {
    path: Option<PathBuf>,
    entries: BTreeMap<String, Entry>,
    changed: bool,
    /// Bytes hashed by this cache (not found in it): what a run spent on hashing.
    pub hashed_bytes: u64,
}

impl DigestCache {
    /// The cache kept at `path`. A missing file starts empty; so does an unreadable or
    /// malformed one (with a warning): it only saves time, and every digest it lacks is
    /// computed from the file itself.
    pub fn open(path: &Path) -> DigestCache {
        let entries = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(
                    "digest cache {} is not valid ({e}): hashing again",
                    path.display()
                );
                BTreeMap::new()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => {
                tracing::warn!(
                    "cannot read the digest cache {} ({e}): hashing again",
                    path.display()
                );
                BTreeMap::new()
            }
        };
        DigestCache {
            path: Some(path.to_path_buf()),
            entries,
            ..DigestCache::default()
        }
    }

    /// The digests kept at `path`, used but never written back: for a command that must only
    /// read (`pspace status`). What the file lacks is hashed and held for this value's life;
    /// [`DigestCache::save`] writes nothing.
    pub fn read_only(path: &Path) -> DigestCache {
        DigestCache {
            path: None,
            ..DigestCache::open(path)
        }
    }

    /// A cache that lives only as long as the value.
    pub fn in_memory() -> DigestCache {
        DigestCache::default()
    }

    /// The sha256 of the file at `path`.
    pub fn file(&mut self, path: &Path) -> Result<String, FingerprintError> {
        let read = |error| FingerprintError::Read {
            path: path.to_path_buf(),
            error,
        };
        let canonical = std::fs::canonicalize(path).map_err(read)?;
        let meta = std::fs::metadata(&canonical).map_err(read)?;
        let size = meta.len();
        // A file without a modification time after 1970 is hashed every time, never cached.
        let Some(since) = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        else {
            self.hashed_bytes += size;
            return sha256_file(&canonical).map_err(read);
        };
        let key = canonical.display().to_string();
        let (modified_s, modified_ns) = (since.as_secs(), since.subsec_nanos());
        if let Some(e) = self.entries.get(&key) {
            if (e.size, e.modified_s, e.modified_ns) == (size, modified_s, modified_ns) {
                return Ok(e.sha256.clone());
            }
        }
        let sha256 = sha256_file(&canonical).map_err(read)?;
        self.hashed_bytes += size;
        self.entries.insert(
            key,
            Entry {
                size,
                modified_s,
                modified_ns,
                sha256: sha256.clone(),
            },
        );
        self.changed = true;
        Ok(sha256)
    }

    /// A model's digest: a file's sha256, or of a folder the sha256 of the list of its files
    /// (relative path, a tab, the file's sha256, a newline; sorted by path; entries whose name
    /// starts with `.` left out, so a hub cache's lock files do not count).
    pub fn model(&mut self, path: &Path) -> Result<String, FingerprintError> {
        if !path.is_dir() {
            return self.file(path);
        }
        let mut files = Vec::new();
        let mut stack = vec![path.to_path_buf()];
        while let Some(dir) = stack.pop() {
            let read = |error| FingerprintError::Read {
                path: dir.clone(),
                error,
            };
            for entry in std::fs::read_dir(&dir).map_err(read)? {
                let entry = entry.map_err(read)?;
                if entry.file_name().to_string_lossy().starts_with('.') {
                    continue;
                }
                let p = entry.path();
                // Followed links: a hub snapshot is a folder of links to blobs.
                if p.is_dir() {
                    stack.push(p);
                } else {
                    files.push(p);
                }
            }
        }
        let mut list: Vec<(String, PathBuf)> = files
            .into_iter()
            .map(|p| {
                let rel = p.strip_prefix(path).unwrap_or(&p);
                let name = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join("/");
                (name, p)
            })
            .collect();
        list.sort();
        let mut text = String::new();
        for (name, p) in &list {
            text.push_str(&format!("{name}\t{}\n", self.file(p)?));
        }
        Ok(hex::encode(Sha256::digest(text.as_bytes())))
    }

    /// Writes the cache back when it learnt a digest (atomically: a temporary file renamed).
    pub fn save(&self) -> Result<(), FingerprintError> {
        let Some(path) = self.path.as_ref().filter(|_| self.changed) else {
            return Ok(());
        };
        let fail = |error| FingerprintError::Cache {
            path: path.clone(),
            error,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(fail)?;
        }
        let bytes = serde_json::to_vec_pretty(&self.entries)
            .map_err(|e| fail(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        std::fs::write(&tmp, bytes).map_err(fail)?;
        std::fs::rename(&tmp, path).map_err(fail)
    }
}

/// The sha256 (hex) of a file, read in 1 MiB pieces.
pub fn sha256_file(path: &Path) -> Result<String, std::io::Error> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_digest_is_reused_until_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("data.json");
        std::fs::write(&file, b"[1]").unwrap();
        let cache_path = dir.path().join("cache/file-digests.json");
        let mut cache = DigestCache::open(&cache_path);
        let first = cache.file(&file).unwrap();
        assert_eq!(first, hex::encode(Sha256::digest(b"[1]")));
        assert_eq!(cache.hashed_bytes, 3);
        cache.save().unwrap();
        let mut again = DigestCache::open(&cache_path);
        assert_eq!(again.file(&file).unwrap(), first);
        assert_eq!(again.hashed_bytes, 0, "found in the cache file, not hashed");
        // Another size: hashed again.
        std::fs::write(&file, b"[1, 2]").unwrap();
        assert_ne!(again.file(&file).unwrap(), first);
        assert_eq!(again.hashed_bytes, 6);
    }

    /// A read-only cache uses the digests kept in the file, hashes what it lacks, and writes
    /// nothing: no file where there was none, the kept one unchanged.
    #[test]
    fn a_read_only_cache_uses_the_file_and_never_writes_it() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.json"), dir.path().join("b.json"));
        std::fs::write(&a, b"[1]").unwrap();
        std::fs::write(&b, b"[2]").unwrap();
        let cache_path = dir.path().join("scratch/file-digests.json");
        let mut fresh = DigestCache::read_only(&cache_path);
        let digest_a = fresh.file(&a).unwrap();
        fresh.save().unwrap();
        assert!(!cache_path.exists(), "a read-only cache created its file");
        assert!(!cache_path.parent().unwrap().exists(), "nor its folder");

        let mut kept = DigestCache::open(&cache_path);
        kept.file(&a).unwrap();
        kept.save().unwrap();
        let bytes = std::fs::read(&cache_path).unwrap();
        let mut reader = DigestCache::read_only(&cache_path);
        assert_eq!(reader.file(&a).unwrap(), digest_a);
        assert_eq!(reader.hashed_bytes, 0, "found in the kept file, not hashed");
        assert_eq!(reader.file(&b).unwrap(), hex::encode(Sha256::digest(b"[2]")));
        assert_eq!(reader.hashed_bytes, 3, "a digest the file lacks is computed");
        reader.save().unwrap();
        assert_eq!(
            std::fs::read(&cache_path).unwrap(),
            bytes,
            "the kept file changed"
        );
    }

    #[test]
    fn a_folder_digest_covers_every_file_but_dot_files() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("model");
        std::fs::create_dir_all(model.join("sub")).unwrap();
        std::fs::write(model.join("config.json"), b"{}").unwrap();
        std::fs::write(model.join("sub/weights.bin"), b"w").unwrap();
        let mut cache = DigestCache::in_memory();
        let first = cache.model(&model).unwrap();
        std::fs::write(model.join(".lock"), b"anything").unwrap();
        assert_eq!(cache.model(&model).unwrap(), first);
        std::fs::write(model.join("sub/weights.bin"), b"W").unwrap();
        assert_ne!(cache.model(&model).unwrap(), first);
    }

    #[test]
    fn a_broken_cache_file_is_recomputed_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let cache_path = dir.path().join("file-digests.json");
        std::fs::write(&cache_path, b"not json").unwrap();
        let file = dir.path().join("x");
        std::fs::write(&file, b"x").unwrap();
        let mut cache = DigestCache::open(&cache_path);
        assert_eq!(cache.file(&file).unwrap(), hex::encode(Sha256::digest(b"x")));
        cache.save().unwrap();
        assert!(std::fs::read_to_string(&cache_path).unwrap().contains("sha256"));
    }
}
