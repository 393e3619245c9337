//! pspace-proto: the generated tonic/prost code of `pspace.proto`, and nothing else.
//!
//! Coordinator and workers exchange leases, heartbeats and task results; see the `.proto` file
//! for the meaning of each field.

#[allow(clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("pspace.v1");
}

pub use v1::*;

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn lease_round_trips_through_the_wire_format() {
        let lease = Lease {
            lease_id: "3:42/extract/base:2:9f3c".into(),
            task: "42/extract/base".into(),
            kind: "extract".into(),
            job_json: "{\"seed\":42}".into(),
            expires_unix_ms: 1_700_000_000_000,
            attempt: 2,
        };
        let bytes = lease.encode_to_vec();
        let back = Lease::decode(bytes.as_slice()).unwrap();
        assert_eq!(back, lease);
    }

    #[test]
    fn a_result_carries_either_a_manifest_or_a_failure() {
        let ok = TaskResult {
            outcome: Some(task_result::Outcome::ManifestJson("{}".into())),
            ..Default::default()
        };
        let decoded = TaskResult::decode(ok.encode_to_vec().as_slice()).unwrap();
        assert!(matches!(decoded.outcome, Some(task_result::Outcome::ManifestJson(k)) if k == "{}"));
        let failed = TaskResult {
            outcome: Some(task_result::Outcome::Failure(Failure {
                class: "crash".into(),
                message: "panicked".into(),
            })),
            ..Default::default()
        };
        let decoded = TaskResult::decode(failed.encode_to_vec().as_slice()).unwrap();
        assert!(matches!(decoded.outcome, Some(task_result::Outcome::Failure(f)) if f.class == "crash"));
    }
}
