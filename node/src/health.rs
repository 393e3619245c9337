//! `pspace health`: one grpc.health.v1 check of a coordinator (its gRPC port, or its
//! `--health-listen` port), for container health checks and scripts. Exits 0 when it reports
//! SERVING; 1 when it is NOT_SERVING (loading its state, or stopping) or cannot be reached.

use crate::cli::HealthArgs;
use anyhow::{bail, Result};
use pspace_actors::transport::{grpc, TransportError};
use std::time::Duration;

/// A one-shot call, tried up to three times while the error is transient (a coordinator
/// restarting; a TLS refusal whose alert was lost in the connection reset shows on a retry).
pub async fn retry_transient<T, F, Fut>(mut call: F) -> Result<T, TransportError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, TransportError>>,
{
    let mut tries = 0;
    loop {
        tries += 1;
        match call().await {
            Err(e) if e.is_transient() && tries < 3 => {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            other => return other,
        }
    }
}

pub fn run(args: HealthArgs) -> Result<()> {
    let security = args.security.load()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client = grpc::client(&args.coordinator, &security)?;
        let serving = retry_transient(|| {
            let mut c = client.clone();
            async move { c.serving().await }
        })
        .await?;
        if serving {
            println!("SERVING");
            Ok(())
        } else {
            println!("NOT_SERVING");
            bail!(
                "coordinator {} is not serving (loading its state, or stopping)",
                args.coordinator
            )
        }
    })
}
