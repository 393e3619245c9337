//! How a worker reaches its coordinator: the same five calls (register, acquire, keep-alive,
//! complete, status) either as messages to the coordinator actor in this process (`pspace run`)
//! or as gRPC calls over tonic (`pspace worker` against `pspace coordinator`). The worker code
//! above this module is the same for both. Remote calls carry the client's security settings
//! (TLS trust, client certificate, bearer token: `security.rs`), and both forms carry W3C trace
//! context (`trace.rs`): a lease comes with its lease span's context, and a completion with the
//! worker's execution span's, so one run is one trace across processes.

pub mod grpc;
pub mod security;
pub mod tls_probe;
pub mod trace;

pub use security::{ClientSecurity, Secret, ServerSecurity, ServerTls};

use crate::coordinator::{CoordinatorMsg, RunStatus};
use pspace_proto::{
    CompleteReply, Heartbeat, HeartbeatReply, LeaseReply, LeaseRequest, RunInfo, TaskResult, WorkerInfo,
};
use ractor::ActorRef;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("coordinator {endpoint} is unreachable: {message}")]
    Unreachable { endpoint: String, message: String },
    #[error("coordinator {endpoint} answered {op} with an error: {message}")]
    Rpc {
        endpoint: String,
        op: &'static str,
        message: String,
    },
    #[error("the in-process coordinator has stopped ({0})")]
    Stopped(String),
    #[error("coordinator {endpoint}: {op} reply is not valid: {message}")]
    BadReply {
        endpoint: String,
        op: &'static str,
        message: String,
    },
    #[error("cannot listen on {address}: {message}")]
    Listen { address: String, message: String },
    #[error("coordinator {endpoint} refused {op}: {message}")]
    Refused {
        endpoint: String,
        op: &'static str,
        message: String,
    },
    #[error("coordinator {endpoint}: TLS failed: {message}")]
    Tls { endpoint: String, message: String },
    #[error("coordinator {endpoint}: {message}")]
    Config { endpoint: String, message: String },
}

impl TransportError {
    /// Worth retrying after a pause (the coordinator restarting, a network blip).
    pub fn is_transient(&self) -> bool {
        matches!(self, TransportError::Unreachable { .. })
            || matches!(self, TransportError::Rpc { message, .. } if message.contains("Unavailable") || message.contains("unavailable"))
    }
}

/// Where the coordinator is: in this process, or at a gRPC endpoint (`http://host:port`).
#[derive(Clone)]
pub enum Transport {
    Local(ActorRef<CoordinatorMsg>),
    Remote {
        endpoint: String,
        security: Arc<ClientSecurity>,
    },
}

impl Transport {
    /// A client of this transport, bound to the runtime it is called from (each heartbeat
    /// thread makes its own, so GPU work on other threads cannot starve it). A remote client
    /// connects lazily and reconnects by itself.
    pub fn client(&self) -> Result<CoordinatorClient, TransportError> {
        match self {
            Transport::Local(actor) => Ok(CoordinatorClient::Local(actor.clone())),
            Transport::Remote { endpoint, security } => Ok(CoordinatorClient::Remote(Box::new(
                grpc::client(endpoint, security)?,
            ))),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Transport::Local(_) => "in-process".into(),
            Transport::Remote { endpoint, .. } => endpoint.clone(),
        }
    }
}

/// A connection to the coordinator.
#[derive(Clone)]
pub enum CoordinatorClient {
    Local(ActorRef<CoordinatorMsg>),
    Remote(Box<grpc::RemoteClient>),
}

fn stopped(e: impl std::fmt::Display) -> TransportError {
    TransportError::Stopped(e.to_string())
}

/// How long an in-process call may wait for the coordinator actor.
const LOCAL_CALL: Duration = Duration::from_secs(120);

impl CoordinatorClient {
    pub async fn register(&mut self, info: WorkerInfo) -> Result<RunInfo, TransportError> {
        match self {
            CoordinatorClient::Local(a) => {
                ractor::call_t!(a, CoordinatorMsg::Register, LOCAL_CALL.as_millis() as u64, info)
                    .map_err(stopped)
            }
            CoordinatorClient::Remote(c) => c.register(info).await,
        }
    }

    /// A lease (or why none), with the trace context of the lease's span.
    pub async fn acquire(
        &mut self,
        request: LeaseRequest,
    ) -> Result<(LeaseReply, trace::TraceCarrier), TransportError> {
        match self {
            CoordinatorClient::Local(a) => {
                ractor::call_t!(a, CoordinatorMsg::Acquire, LOCAL_CALL.as_millis() as u64, request)
                    .map_err(stopped)?
                    .map_err(TransportError::Stopped)
            }
            CoordinatorClient::Remote(c) => c.acquire(request).await,
        }
    }

    pub async fn keep_alive(&mut self, beat: Heartbeat) -> Result<HeartbeatReply, TransportError> {
        match self {
            CoordinatorClient::Local(a) => {
                ractor::call_t!(a, CoordinatorMsg::KeepAlive, LOCAL_CALL.as_millis() as u64, beat)
                    .map_err(stopped)
            }
            CoordinatorClient::Remote(c) => c.keep_alive(beat).await,
        }
    }

    /// Hands in a result; the caller's current span travels with it (the coordinator's commit
    /// span becomes its child).
    pub async fn complete(&mut self, result: TaskResult) -> Result<CompleteReply, TransportError> {
        match self {
            CoordinatorClient::Local(a) => {
                let carrier = trace::current();
                ractor::call_t!(
                    a,
                    CoordinatorMsg::Complete,
                    LOCAL_CALL.as_millis() as u64,
                    result,
                    carrier
                )
                .map_err(stopped)?
                .map_err(TransportError::Stopped)
            }
            CoordinatorClient::Remote(c) => c.complete(result).await,
        }
    }

    /// Drops a remote client's connection for a fresh one at the next call (after a call that
    /// was given up on: its connection may be dead without knowing it yet). Must be called
    /// inside the tokio runtime the client is bound to (the new channel's task is spawned there).
    pub fn reconnect(&mut self) {
        if let CoordinatorClient::Remote(c) = self {
            c.reconnect();
        }
    }

    pub async fn status(&mut self) -> Result<RunStatus, TransportError> {
        match self {
            CoordinatorClient::Local(a) => {
                ractor::call_t!(a, CoordinatorMsg::Status, LOCAL_CALL.as_millis() as u64).map_err(stopped)
            }
            CoordinatorClient::Remote(c) => c.status().await,
        }
    }
}

/// Capped exponential backoff: 100 ms, 200 ms, ... up to `cap`.
pub fn backoff(failures: u32, cap: Duration) -> Duration {
    let ms = 100u64.saturating_mul(1u64 << failures.min(16));
    Duration::from_millis(ms).min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let cap = Duration::from_secs(5);
        assert_eq!(backoff(0, cap), Duration::from_millis(100));
        assert_eq!(backoff(3, cap), Duration::from_millis(800));
        assert_eq!(backoff(10, cap), cap);
        assert_eq!(backoff(u32::MAX, cap), cap);
    }
}
