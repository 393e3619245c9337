//! Create-only writes, the primitive that makes a commit exclusive: a PUT that succeeds only if
//! the key does not exist yet (`PutMode::Create`: `If-None-Match: *` on S3, a hard link on a
//! local folder). Execution is at-least-once (a lease can expire while its worker still runs),
//! so correctness rests on this write being atomic on the server. Some S3 servers ignore the
//! header and overwrite, or check for the key and then write (two racing creates both win);
//! [`Store::check_conditional_writes`] finds both at start so such a store is refused by name.

use super::{Store, StoreError};
use bytes::Bytes;
use object_store::{path::Path as StorePath, PutMode, PutOptions, PutPayload};

/// Whether a create-only write made the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// The object did not exist and now holds the bytes given.
    Yes,
    /// The key already held an object, which is left as it was.
    AlreadyExists,
}

/// The racing part of the start-up probe: rounds of concurrent creates of a fresh key, each
/// body this long. Measured on this machine: s3s-fs (check, then write) let two of three racers
/// win in 20 of 20 rounds at 64 KiB; SeaweedFS took 7 ms a round at three racers but 0.5 to
/// 1.5 s at four (its losers wait for a per-key lock), so three it is.
const RACERS: usize = 3;
const RACE_BODY: usize = 64 << 10;
const RACE_ROUNDS: usize = 8;

/// Where the probe writes, under the store's root.
pub const PROBE_PREFIX: &str = "_pspace/probe";

impl Store {
    /// Writes `bytes` at `key` only if no object is there: [`Created::Yes`], or
    /// [`Created::AlreadyExists`] leaving the existing object untouched. A store without
    /// create-only support answers with an error.
    pub async fn create(&self, key: &str, bytes: Vec<u8>) -> Result<Created, StoreError> {
        let options = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        let payload = PutPayload::from(Bytes::from(bytes));
        match self.inner.put_opts(&StorePath::from(key), payload, options).await {
            Ok(_) => Ok(Created::Yes),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(Created::AlreadyExists),
            Err(cause) => Err(self.io("create", key)(cause)),
        }
    }

    /// Checks that create-only writes hold on this store, with probe objects under
    /// `_pspace/probe/<random nonce>` (deleted afterwards, best effort): a second create of one
    /// key must report [`Created::AlreadyExists`] and leave the first bytes, and in each of 8
    /// rounds of 3 racing creates of a fresh key exactly one may win, with its bytes kept.
    /// Otherwise [`StoreError::NoCreateOnly`] says which rule broke. A store that ignores the
    /// condition is always caught; one that checks and then writes is caught when two racers
    /// meet inside its window, which they did in every round we ran against s3s-fs; a correct
    /// store always passes. About 40 requests and 1.5 MiB written: tens of milliseconds.
    pub async fn check_conditional_writes(&self) -> Result<(), StoreError> {
        let nonce = format!("{:016x}{:016x}", rand::random::<u64>(), rand::random::<u64>());
        let probe = format!("{PROBE_PREFIX}/{nonce}");
        let result = self.probe_conditional_writes(&probe).await;
        let _ = self.delete(&probe).await;
        for round in 0..RACE_ROUNDS {
            let _ = self.delete(&format!("{probe}-race{round}")).await;
        }
        result
    }

    async fn probe_conditional_writes(&self, probe: &str) -> Result<(), StoreError> {
        let refuse = |found: String| StoreError::NoCreateOnly {
            location: self.description.clone(),
            found,
        };
        let first = b"first create".to_vec();
        match self.create(probe, first.clone()).await {
            Ok(Created::Yes) => {}
            Ok(Created::AlreadyExists) => {
                return Err(refuse(format!(
                    "reported a fresh key {probe} as already existing"
                )))
            }
            Err(StoreError::Io { cause, .. }) if matches!(*cause, object_store::Error::NotImplemented) => {
                return Err(refuse("does not support create-only writes".into()))
            }
            Err(e) => return Err(e),
        }
        let second = self.create(probe, b"second create".to_vec()).await?;
        let kept = self.get(probe).await?;
        if second == Created::Yes || kept[..] != first[..] {
            return Err(refuse(format!(
                "accepted a second create-only write of {probe} and overwrote the object (it \
                 ignores If-None-Match)"
            )));
        }
        for round in 0..RACE_ROUNDS {
            self.probe_racing_creates(&format!("{probe}-race{round}"), &refuse)
                .await?;
        }
        Ok(())
    }

    /// [`RACERS`] concurrent creates of `key` with distinct bodies: exactly one wins and its
    /// body is what the key holds.
    async fn probe_racing_creates(
        &self,
        key: &str,
        refuse: &impl Fn(String) -> StoreError,
    ) -> Result<(), StoreError> {
        let body = |racer: usize| {
            let mut bytes = format!("racer {racer} ").into_bytes();
            bytes.resize(RACE_BODY, b'.');
            bytes
        };
        // Tasks of their own (not one joined future), so the requests leave at the same time.
        let racers: Vec<_> = (0..RACERS)
            .map(|i| {
                let (store, key, body) = (self.clone(), key.to_string(), body(i));
                tokio::spawn(async move { store.create(&key, body).await })
            })
            .collect();
        let mut winners = Vec::new();
        for (i, racer) in racers.into_iter().enumerate() {
            let outcome = racer
                .await
                .map_err(|e| refuse(format!("lost a probe task: {e}")))?;
            if outcome? == Created::Yes {
                winners.push(i);
            }
        }
        let kept = self.get(key).await?;
        match winners[..] {
            [winner] if kept[..] == body(winner)[..] => Ok(()),
            [winner] => Err(refuse(format!(
                "let one of {RACERS} racing create-only writes of {key} win (racer {winner}) but \
                 kept other bytes"
            ))),
            _ => Err(refuse(format!(
                "let {} of {RACERS} racing create-only writes of {key} succeed (it checks for the \
                 key and then writes, which is not atomic)",
                winners.len()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_folder_creates_once_and_passes_the_probe_leaving_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::local(dir.path()).unwrap();
        assert_eq!(store.create("k", b"one".to_vec()).await.unwrap(), Created::Yes);
        assert_eq!(
            store.create("k", b"two".to_vec()).await.unwrap(),
            Created::AlreadyExists
        );
        assert_eq!(&store.get("k").await.unwrap()[..], b"one");
        store.check_conditional_writes().await.unwrap();
        assert_eq!(store.list(PROBE_PREFIX).await.unwrap(), Vec::<String>::new());
    }

    #[test]
    fn the_refusal_names_the_store_and_the_servers_known_to_overwrite() {
        let text = StoreError::NoCreateOnly {
            location: "s3://lab/runs".into(),
            found: "does not support create-only writes".into(),
        }
        .to_string();
        for needle in [
            "s3://lab/runs",
            "refuses",
            "rclone serve s3",
            "s3s-fs",
            "SeaweedFS",
        ] {
            assert!(text.contains(needle), "{needle} missing from: {text}");
        }
    }
}
