//! The coordinator over gRPC (tonic): the server that forwards each call to the coordinator
//! actor, and the client a remote worker uses.
//!
//! Security (see `security.rs`): the port serves TLS when the coordinator has a certificate
//! (mutual TLS when it has a client CA), and every call of `pspace.v1.Coordinator` passes an
//! interceptor that checks the bearer token. A plaintext client that reaches a TLS port is not
//! left to guess from a broken handshake: the first byte of each connection is looked at (a TLS
//! handshake starts with 0x16) and a plaintext connection is answered, in plaintext, by a
//! service that refuses every call with "this coordinator serves TLS only".
//!
//! Trace context (`trace.rs`): the AcquireLease reply carries the lease span's context in its
//! metadata, and every client call carries the caller's current span's.
//!
//! Dead connections: a network partition leaves a TCP connection open with nothing coming
//! back, and a call on it would wait for its whole deadline. Both ends send HTTP/2 PINGs
//! ([`KEEPALIVE_INTERVAL`], also while idle) and drop a connection whose PING is not answered
//! within [`KEEPALIVE_TIMEOUT`]: the calls on it fail at once, as transient errors, and the
//! client's next call connects afresh. Every call also has a deadline ([`CALL_DEADLINE`], well
//! inside a worker's report window), and a client whose call failed in transport replaces its
//! channel, so a retry never rides the connection that failed.
//!
//! Health: `grpc.health.v1.Health` is served on the same port (no token needed: it tells
//! nothing but SERVING or NOT_SERVING) and optionally on a plaintext port of its own for probes
//! that cannot speak TLS (Kubernetes' gRPC probes). It reports NOT_SERVING until the
//! coordinator's state is loaded from the store, SERVING while it serves the run, and
//! NOT_SERVING again once it starts shutting down.

use super::security::{ClientSecurity, ServerSecurity, TokenCheck};
use super::tls_probe::{self, ProbeSettings};
use super::trace::{self, TraceCarrier};
use super::TransportError;
use crate::coordinator::{CoordinatorMsg, RunStatus};
use pspace_proto::coordinator_client::CoordinatorClient as Stub;
use pspace_proto::coordinator_server::{Coordinator as CoordinatorRpc, CoordinatorServer};
use pspace_proto::{
    CompleteReply, Heartbeat, HeartbeatReply, LeaseReply, LeaseRequest, RunInfo, StatusReply, StatusRequest,
    TaskResult, WorkerInfo,
};
use ractor::ActorRef;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus as WireServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::server::{HealthReporter, HealthService};
use tonic_health::ServingStatus;

/// How long the server waits for the coordinator actor to answer one call.
const ACTOR_CALL_MS: u64 = 120_000;

/// Silence on a connection after which either end sends an HTTP/2 PING.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);

/// How long a PING may go unanswered before the connection counts as dead and is dropped.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest a client waits for one call. The coordinator answers in milliseconds unless its
/// store is slow; the bound keeps a call that is lost with its connection from outliving a
/// worker's report window (at least 30 s), so a timed-out report is retried at least once.
pub const CALL_DEADLINE: Duration = Duration::from_secs(20);

/// A server builder with HTTP/2 keep-alive: a client that vanished (partitioned, its host gone)
/// has its connection dropped within [`KEEPALIVE_INTERVAL`] + [`KEEPALIVE_TIMEOUT`] instead of
/// holding a graceful shutdown until its grace runs out.
fn server_builder() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
}

/// The name health checks ask about (`pspace.v1.Coordinator`).
pub const SERVICE_NAME: &str = <CoordinatorServer<CoordinatorService> as tonic::server::NamedService>::NAME;

/// The gRPC face of the coordinator actor (Unavailable until the actor is attached).
pub struct CoordinatorService {
    actor: Arc<OnceLock<ActorRef<CoordinatorMsg>>>,
}

fn unavailable(e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("coordinator: {e}"))
}

impl CoordinatorService {
    #[allow(clippy::result_large_err)]
    fn actor(&self) -> Result<&ActorRef<CoordinatorMsg>, Status> {
        self.actor.get().ok_or_else(|| {
            Status::unavailable("the coordinator is still loading the run's state from the store")
        })
    }
}

#[tonic::async_trait]
impl CoordinatorRpc for CoordinatorService {
    async fn register(&self, request: Request<WorkerInfo>) -> Result<Response<RunInfo>, Status> {
        let info = request.into_inner();
        ractor::call_t!(self.actor()?, CoordinatorMsg::Register, ACTOR_CALL_MS, info)
            .map(Response::new)
            .map_err(unavailable)
    }

    async fn acquire_lease(&self, request: Request<LeaseRequest>) -> Result<Response<LeaseReply>, Status> {
        let req = request.into_inner();
        let (reply, carrier) = ractor::call_t!(self.actor()?, CoordinatorMsg::Acquire, ACTOR_CALL_MS, req)
            .map_err(unavailable)?
            .map_err(unavailable)?;
        // The lease's span context rides back in the reply's metadata.
        let mut response = Response::new(reply);
        trace::to_metadata(&carrier, response.metadata_mut());
        Ok(response)
    }

    async fn keep_alive(&self, request: Request<Heartbeat>) -> Result<Response<HeartbeatReply>, Status> {
        let beat = request.into_inner();
        ractor::call_t!(self.actor()?, CoordinatorMsg::KeepAlive, ACTOR_CALL_MS, beat)
            .map(Response::new)
            .map_err(unavailable)
    }

    async fn complete(&self, request: Request<TaskResult>) -> Result<Response<CompleteReply>, Status> {
        let carrier = trace::from_metadata(request.metadata());
        let result = request.into_inner();
        ractor::call_t!(
            self.actor()?,
            CoordinatorMsg::Complete,
            ACTOR_CALL_MS,
            result,
            carrier
        )
        .map_err(unavailable)?
        .map(Response::new)
        .map_err(unavailable)
    }

    async fn status(&self, _request: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        let status =
            ractor::call_t!(self.actor()?, CoordinatorMsg::Status, ACTOR_CALL_MS).map_err(unavailable)?;
        let snapshot_json = serde_json::to_string(&status).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(StatusReply { snapshot_json }))
    }
}

/// What a plaintext client on a TLS port is told, whatever it calls.
const TLS_ONLY: &str = "this coordinator serves TLS only: connect with https:// (and --ca with the CA that signed its certificate)";

/// Answers every call of a plaintext client that reached a TLS port.
struct PlaintextRefused;

#[tonic::async_trait]
impl CoordinatorRpc for PlaintextRefused {
    async fn register(&self, _: Request<WorkerInfo>) -> Result<Response<RunInfo>, Status> {
        Err(Status::failed_precondition(TLS_ONLY))
    }
    async fn acquire_lease(&self, _: Request<LeaseRequest>) -> Result<Response<LeaseReply>, Status> {
        Err(Status::failed_precondition(TLS_ONLY))
    }
    async fn keep_alive(&self, _: Request<Heartbeat>) -> Result<Response<HeartbeatReply>, Status> {
        Err(Status::failed_precondition(TLS_ONLY))
    }
    async fn complete(&self, _: Request<TaskResult>) -> Result<Response<CompleteReply>, Status> {
        Err(Status::failed_precondition(TLS_ONLY))
    }
    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        Err(Status::failed_precondition(TLS_ONLY))
    }
}

/// A serving coordinator port's state: the actor once loaded, and the health it reports.
#[derive(Clone)]
pub struct Serving {
    actor: Arc<OnceLock<ActorRef<CoordinatorMsg>>>,
    health: HealthReporter,
}

impl Serving {
    /// NOT_SERVING (the overall status and `pspace.v1.Coordinator`) until [`Serving::loaded`].
    pub async fn new() -> Serving {
        let serving = Serving {
            actor: Arc::new(OnceLock::new()),
            health: HealthReporter::new(),
        };
        // HealthReporter starts the overall status at SERVING; nothing is served yet.
        serving.stopping().await;
        serving
    }

    /// The coordinator's state is loaded: calls reach `actor`, health says SERVING.
    pub async fn loaded(&self, actor: ActorRef<CoordinatorMsg>) {
        let _ = self.actor.set(actor);
        self.health.set_service_status("", ServingStatus::Serving).await;
        self.health
            .set_service_status(SERVICE_NAME, ServingStatus::Serving)
            .await;
    }

    /// Shutting down: health says NOT_SERVING (calls are still answered until the port closes).
    pub async fn stopping(&self) {
        self.health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        self.health
            .set_service_status(SERVICE_NAME, ServingStatus::NotServing)
            .await;
    }

    fn health_server(&self) -> HealthServer<HealthService> {
        HealthServer::new(HealthService::from_health_reporter(self.health.clone()))
    }
}

type Incoming = std::pin::Pin<Box<dyn futures::Stream<Item = Result<TcpStream, std::io::Error>> + Send>>;

fn channel_stream(rx: mpsc::Receiver<TcpStream>) -> Incoming {
    Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|s| (Ok(s), rx))
    }))
}

/// Resolves when `stop` turns true (or its sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|v| *v).await;
}

/// The first byte of a TLS connection is a handshake record (0x16); None when the client
/// hung up or sent nothing for 10 s.
async fn speaks_tls(stream: &TcpStream) -> Option<bool> {
    let mut first = [0u8; 1];
    match tokio::time::timeout(Duration::from_secs(10), stream.peek(&mut first)).await {
        Ok(Ok(1)) => Some(first[0] == 0x16),
        _ => None,
    }
}

/// Accepts connections until `stop`, sorting them into the TLS server's queue and the
/// plaintext refuser's (or all into `main` when the port serves no TLS).
fn accept_loop(
    listener: TcpListener,
    tls: bool,
    main: mpsc::Sender<TcpStream>,
    plain: mpsc::Sender<TcpStream>,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut failures = 0u32;
        loop {
            let accepted = tokio::select! {
                _ = stopped(stop.clone()) => break,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    failures += 1;
                    tracing::warn!("coordinator: accepting a connection failed: {e}");
                    tokio::time::sleep(super::backoff(failures.min(6), Duration::from_secs(2))).await;
                    continue;
                }
            };
            failures = 0;
            let _ = stream.set_nodelay(true);
            if !tls {
                let _ = main.send(stream).await;
                continue;
            }
            let (main, plain) = (main.clone(), plain.clone());
            tokio::spawn(async move {
                match speaks_tls(&stream).await {
                    Some(true) => {
                        let _ = main.send(stream).await;
                    }
                    Some(false) => {
                        eprintln!(
                            "coordinator: a plaintext client ({peer}) reached this TLS port; telling it to use https://"
                        );
                        let _ = plain.send(stream).await;
                    }
                    None => {}
                }
            });
        }
    })
}

fn server_tls(security: &ServerSecurity) -> Option<ServerTlsConfig> {
    let tls = security.tls.as_ref()?;
    let mut config = ServerTlsConfig::new().identity(Identity::from_pem(&tls.cert_pem, tls.key_pem.expose()));
    if let Some(ca) = &tls.client_ca_pem {
        config = config.client_ca_root(Certificate::from_pem(ca));
    }
    Some(config)
}

/// Checks that the TLS certificate and key (and client CA) can be used, so a bad file stops
/// the coordinator at start rather than inside its server task.
pub fn check_server_tls(security: &ServerSecurity) -> Result<(), TransportError> {
    if let Some(tls) = server_tls(security) {
        server_builder()
            .tls_config(tls)
            .map_err(|e| TransportError::Listen {
                address: "(TLS settings)".into(),
                message: format!("the TLS certificate or key cannot be used: {}", chain(&e)),
            })?;
    }
    Ok(())
}

/// Serves the coordinator on a bound listener (so the caller learns the port of
/// `--listen HOST:0` before serving) until `shutdown` resolves; then stops accepting, lets the
/// calls in flight finish, and returns.
pub async fn serve_listener(
    serving: Serving,
    listener: TcpListener,
    security: ServerSecurity,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), TransportError> {
    let security = &security;
    let address = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let listen_error = |message: String| TransportError::Listen {
        address: address.clone(),
        message,
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let check = TokenCheck::new(security.token.as_ref());
    let service = CoordinatorServer::with_interceptor(
        CoordinatorService {
            actor: serving.actor.clone(),
        },
        move |request: Request<()>| {
            check.check(&request)?;
            Ok(request)
        },
    );
    let mut builder = server_builder();
    let tls = server_tls(security);
    let serves_tls = tls.is_some();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls).map_err(|e| {
            listen_error(format!(
                "the TLS certificate or key cannot be used: {}",
                chain(&e)
            ))
        })?;
    }
    let (main_tx, main_rx) = mpsc::channel(64);
    let (plain_tx, plain_rx) = mpsc::channel(64);
    let acceptor = accept_loop(listener, serves_tls, main_tx, plain_tx, stop_rx.clone());
    let main = builder
        .add_service(serving.health_server())
        .add_service(service)
        .serve_with_incoming_shutdown(channel_stream(main_rx), stopped(stop_rx.clone()));
    let refuser = server_builder()
        .add_service(CoordinatorServer::new(PlaintextRefused))
        .serve_with_incoming_shutdown(channel_stream(plain_rx), stopped(stop_rx.clone()));
    let (main, refuser) = tokio::join!(main, refuser);
    acceptor.abort();
    main.and(refuser)
        .map_err(|e| listen_error(format!("{e}: {}", chain(&e))))
}

/// Serves only `grpc.health.v1.Health`, in plaintext, until `shutdown` (for probes that cannot
/// speak TLS or send a token; the answer says nothing but SERVING or NOT_SERVING).
pub async fn serve_health(
    serving: Serving,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), TransportError> {
    let address = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let (tx, rx) = mpsc::channel(16);
    let (unused, _) = mpsc::channel(1);
    let acceptor = accept_loop(listener, false, tx, unused, stop_rx.clone());
    let served = server_builder()
        .add_service(serving.health_server())
        .serve_with_incoming_shutdown(channel_stream(rx), stopped(stop_rx))
        .await;
    acceptor.abort();
    served.map_err(|e| TransportError::Listen {
        address,
        message: format!("{e}: {}", chain(&e)),
    })
}

/// An error and its sources, as one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut inner = e.source();
    while let Some(next) = inner {
        let text = next.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        inner = next.source();
    }
    parts.join(": ")
}

/// Adds the bearer token and the caller's trace context to every call of a client.
#[derive(Clone)]
pub struct ClientAuth {
    bearer: Option<MetadataValue<Ascii>>,
}

impl Interceptor for ClientAuth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(bearer) = &self.bearer {
            request.metadata_mut().insert("authorization", bearer.clone());
        }
        trace::to_metadata(&trace::current(), request.metadata_mut());
        Ok(request)
    }
}

/// A remote worker's client: a lazily connected channel that reconnects by itself, replaced by
/// a fresh one after a call that failed in transport.
#[derive(Clone)]
pub struct RemoteClient {
    endpoint: String,
    /// The channel's settings, for making a fresh one.
    settings: Endpoint,
    tls: bool,
    has_identity: bool,
    /// For a TLS client without a certificate: what a handshake of its own needs, to tell a
    /// mutual-TLS refusal from a lost connection (`tls_probe`).
    probe: Option<ProbeSettings>,
    /// A call has been answered: the coordinator accepts this client as it is, so a closed
    /// connection later is not a refusal of its (missing) certificate.
    answered: bool,
    channel: Channel,
    auth: ClientAuth,
    stub: Stub<InterceptedService<Channel, ClientAuth>>,
}

/// Whether `endpoint` has the form of a coordinator's URL: `http://` or `https://`, a host
/// (a name, an IPv4 address or a bracketed IPv6 one), an optional `:PORT`, nothing after but
/// an optional `/`. The channel would take `foo` or `localhost:50051` and fail every call,
/// reported as an unreachable coordinator, which sent the user looking for a network problem.
fn well_formed(endpoint: &str) -> Result<(), String> {
    let malformed = |why: &str| {
        format!(
            "malformed URL ({why}): expected http://HOST:PORT, or https://HOST:PORT for a TLS \
             coordinator (e.g. http://127.0.0.1:50051)"
        )
    };
    let Some((scheme, rest)) = endpoint.split_once("://") else {
        return Err(malformed("no http:// or https://"));
    };
    if scheme != "http" && scheme != "https" {
        return Err(malformed(&format!("scheme {scheme:?}")));
    }
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#', '@']) {
        return Err(malformed("more than a host and a port"));
    }
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((host, "")) => (host, None),
            Some((host, tail)) => match tail.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return Err(malformed("text after the IPv6 address")),
            },
            None => return Err(malformed("an unclosed [")),
        },
        None => match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    if host.is_empty() {
        return Err(malformed("no host"));
    }
    if let Some(port) = port {
        if port.parse::<u16>().is_err() {
            return Err(malformed(&format!("port {port:?} is not a number up to 65535")));
        }
    }
    Ok(())
}

/// A client of the coordinator at `endpoint` (`http://HOST:PORT`, or `https://HOST:PORT` for a
/// TLS coordinator); nothing is connected until the first call.
pub fn client(endpoint: &str, security: &ClientSecurity) -> Result<RemoteClient, TransportError> {
    let config = |message: String| TransportError::Config {
        endpoint: endpoint.to_string(),
        message,
    };
    well_formed(endpoint).map_err(config)?;
    security.check(endpoint).map_err(|e| config(e.to_string()))?;
    let mut ep = Endpoint::from_shared(endpoint.to_string())
        .map_err(|e| {
            config(format!(
                "not a valid endpoint (expected http(s)://HOST:PORT): {e}"
            ))
        })?
        .connect_timeout(Duration::from_secs(5))
        .timeout(CALL_DEADLINE)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        // A slot's channel is idle for as long as its task runs: find out it died before the
        // report rides it.
        .keep_alive_while_idle(true);
    let tls = endpoint.starts_with("https://");
    if tls {
        let mut config_tls = ClientTlsConfig::new();
        config_tls = match &security.ca_pem {
            Some(ca) => config_tls.ca_certificate(Certificate::from_pem(ca)),
            None => config_tls.with_native_roots(),
        };
        if let Some((cert, key)) = &security.identity {
            config_tls = config_tls.identity(Identity::from_pem(cert, key.expose()));
        }
        if let Some(domain) = &security.domain {
            config_tls = config_tls.domain_name(domain.clone());
        }
        ep = ep
            .tls_config(config_tls)
            .map_err(|e| config(format!("the TLS settings cannot be used: {}", chain(&e))))?;
    }
    let channel = ep.connect_lazy();
    let auth = ClientAuth {
        bearer: security.bearer().map_err(|e| config(e.to_string()))?,
    };
    Ok(RemoteClient {
        endpoint: endpoint.to_string(),
        settings: ep,
        tls,
        has_identity: security.identity.is_some(),
        probe: (tls && security.identity.is_none()).then(|| ProbeSettings {
            endpoint: endpoint.to_string(),
            ca_pem: security.ca_pem.clone(),
            domain: security.domain.clone(),
        }),
        answered: false,
        stub: Stub::with_interceptor(channel.clone(), auth.clone()),
        channel,
        auth,
    })
}

/// What a TLS failure means, from rustls' words in the error chain (None: not a TLS failure).
fn tls_problem(detail: &str, tls: bool, has_identity: bool) -> Option<String> {
    let has = |s: &str| detail.contains(s);
    if !tls {
        return None;
    }
    if has("UnknownIssuer") || has("BadSignature") {
        return Some("the coordinator's certificate is not signed by a CA this client trusts (give the CA that signed it with --ca)".into());
    }
    if has("NotValidForName") {
        return Some("the coordinator's certificate is not valid for this host name (connect by a name it carries, or set --tls-domain)".into());
    }
    if has("Expired") || has("NotValidYet") {
        return Some("the coordinator's certificate is outside its validity period".into());
    }
    if has("invalid peer certificate") {
        return Some("the coordinator's certificate is not trusted".into());
    }
    if has("CertificateRequired") || (has("HandshakeFailure") && !has_identity) {
        return Some(
            "the coordinator requires a client certificate (mutual TLS): give --tls-cert and --tls-key"
                .into(),
        );
    }
    if has("BadCertificate") || has("UnknownCA") || has("DecryptError") {
        return Some("the coordinator did not accept this client's certificate (is it signed by the coordinator's --client-ca?)".into());
    }
    if has("InvalidContentType") || has("corrupt message") {
        return Some("the coordinator did not answer with TLS: if it serves plaintext, use http://".into());
    }
    None
}

/// A status's message and the errors under it, as one line (without tonic's field dump).
fn detail(status: &Status) -> String {
    let mut parts = vec![status.message().to_string()];
    let mut inner = std::error::Error::source(status);
    while let Some(next) = inner {
        let text = next.to_string();
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        inner = next.source();
    }
    parts.join(": ")
}

/// Whether a call failed on its way (no connection, connection lost, deadline passed) rather
/// than being answered with an error by the coordinator.
fn failed_in_transport(status: &Status) -> bool {
    status.code() == tonic::Code::DeadlineExceeded
        || status.code() == tonic::Code::Cancelled
        || std::error::Error::source(status).is_some()
}

impl RemoteClient {
    /// Drops the channel (and its connection, which may be dead without knowing it yet) for a
    /// fresh one that connects at the next call. Inside a tokio runtime only: the channel's
    /// worker task is spawned on the current one.
    pub fn reconnect(&mut self) {
        self.channel = self.settings.connect_lazy();
        self.stub = Stub::with_interceptor(self.channel.clone(), self.auth.clone());
    }

    fn error(&mut self, op: &'static str, status: Status) -> TransportError {
        if failed_in_transport(&status) {
            self.reconnect();
        }
        let detail = detail(&status);
        match status.code() {
            tonic::Code::Unauthenticated
            | tonic::Code::PermissionDenied
            | tonic::Code::FailedPrecondition => TransportError::Refused {
                endpoint: self.endpoint.clone(),
                op,
                message: status.message().to_string(),
            },
            tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::Cancelled
            | tonic::Code::DeadlineExceeded => match tls_problem(&detail, self.tls, self.has_identity) {
                Some(why) => TransportError::Tls {
                    endpoint: self.endpoint.clone(),
                    message: format!("{why} ({detail})"),
                },
                None => TransportError::Unreachable {
                    endpoint: self.endpoint.clone(),
                    message: format!("{op}: {detail}"),
                },
            },
            _ => TransportError::Rpc {
                endpoint: self.endpoint.clone(),
                op,
                message: format!("{}: {}", status.code(), status.message()),
            },
        }
    }

    /// The reply of an answered call.
    fn answer<T>(&mut self, response: Response<T>) -> Response<T> {
        self.answered = true;
        response
    }

    /// The error of a failed call, as `error`, except that a closed connection of a TLS client
    /// without a certificate that has had no answer yet is explained by a probe handshake
    /// (`tls_probe`): a TLS 1.3 coordinator that requires one refuses after the client's side
    /// of the handshake, and its alert can be lost in the reset.
    async fn failure(&mut self, op: &'static str, status: Status) -> TransportError {
        let closed = detail(&status).contains("connection closed");
        let error = self.error(op, status);
        let (TransportError::Unreachable { message, .. }, true, false, Some(probe)) =
            (&error, closed, self.answered, &self.probe)
        else {
            return error;
        };
        match tls_probe::requires_client_certificate(probe).await {
            Some(true) => TransportError::Tls {
                endpoint: self.endpoint.clone(),
                message: format!(
                    "the coordinator requires a client certificate (mutual TLS): give --tls-cert and --tls-key (it closed the connection of this client, which has none: {message})"
                ),
            },
            Some(false) => error,
            None => TransportError::Unreachable {
                endpoint: self.endpoint.clone(),
                message: format!(
                    "{message} (if the coordinator requires client certificates, give --tls-cert and --tls-key)"
                ),
            },
        }
    }

    pub async fn register(&mut self, info: WorkerInfo) -> Result<RunInfo, TransportError> {
        match self.stub.register(info).await {
            Ok(r) => Ok(self.answer(r).into_inner()),
            Err(s) => Err(self.failure("register", s).await),
        }
    }

    /// A lease or why none, with the lease span's trace context from the reply's metadata.
    pub async fn acquire(
        &mut self,
        request: LeaseRequest,
    ) -> Result<(LeaseReply, TraceCarrier), TransportError> {
        let response = match self.stub.acquire_lease(request).await {
            Ok(r) => self.answer(r),
            Err(s) => return Err(self.failure("acquire", s).await),
        };
        let carrier = trace::from_metadata(response.metadata());
        Ok((response.into_inner(), carrier))
    }

    pub async fn keep_alive(&mut self, beat: Heartbeat) -> Result<HeartbeatReply, TransportError> {
        match self.stub.keep_alive(beat).await {
            Ok(r) => Ok(self.answer(r).into_inner()),
            Err(s) => Err(self.failure("keep_alive", s).await),
        }
    }

    pub async fn complete(&mut self, result: TaskResult) -> Result<CompleteReply, TransportError> {
        match self.stub.complete(result).await {
            Ok(r) => Ok(self.answer(r).into_inner()),
            Err(s) => Err(self.failure("complete", s).await),
        }
    }

    pub async fn status(&mut self) -> Result<RunStatus, TransportError> {
        let reply = match self.stub.status(StatusRequest {}).await {
            Ok(r) => self.answer(r).into_inner(),
            Err(s) => return Err(self.failure("status", s).await),
        };
        serde_json::from_str(&reply.snapshot_json).map_err(|e| TransportError::BadReply {
            endpoint: self.endpoint.clone(),
            op: "status",
            message: e.to_string(),
        })
    }

    /// The coordinator's health (`grpc.health.v1`): true when it reports SERVING for
    /// `pspace.v1.Coordinator`.
    pub async fn serving(&mut self) -> Result<bool, TransportError> {
        let mut health = HealthClient::with_interceptor(self.channel.clone(), self.auth.clone());
        let r = health
            .check(HealthCheckRequest {
                service: SERVICE_NAME.to_string(),
            })
            .await;
        let reply = match r {
            Ok(r) => self.answer(r).into_inner(),
            Err(s) => return Err(self.failure("health", s).await),
        };
        Ok(reply.status == WireServingStatus::Serving as i32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--coordinator foo` was reported as an unreachable coordinator (fresh-user probe): a URL
    /// that does not have the form is refused as malformed, saying the form expected.
    #[test]
    fn a_coordinator_url_that_does_not_parse_is_malformed_not_unreachable() {
        for good in [
            "http://127.0.0.1:50051",
            "https://coordinator:50051/",
            "http://[::1]:50051",
            "http://localhost",
        ] {
            assert_eq!(well_formed(good), Ok(()), "{good}");
        }
        for bad in [
            "foo",
            "localhost:50051",
            "ftp://x:1",
            "http://",
            "http://x:port",
            "http://x:70000",
            "http://x:1/path",
            "http://[::1",
        ] {
            let error = match client(bad, &ClientSecurity::default()) {
                Err(e) => e.to_string(),
                Ok(_) => panic!("{bad} was taken"),
            };
            assert!(
                error.starts_with(&format!("coordinator {bad}: malformed URL ("))
                    && error.contains("expected http://HOST:PORT"),
                "{bad}: {error}"
            );
        }
    }
}
