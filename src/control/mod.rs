//! The daemon's local control API: actix-web on 127.0.0.1 only, in the node's actix System.
//!
//! Every request needs `Authorization: Bearer <token>`, the token being the content of
//! `<data dir>/control.token` (mode 0600, made once by the first start and kept across restarts
//! until `POST /token/rotate` — `lsync token rotate` — replaces it); anything else gets `401`.
//! The address actually bound is written to `<data dir>/control.addr` (and removed at a clean
//! stop), so clients find a daemon whose port was 0.
//!
//! | method and path | body → response |
//! |---|---|
//! | `GET /status` | → `{device, libraries: [LibraryStatus + outbox_size]}` |
//! | `GET /metrics` | → Prometheus text ([`metrics`]) |
//! | `POST /libraries` | → `{library_id, leader}` (this device leads it) |
//! | `POST /libraries/{id}/invitations` | `{learner?, expires_ms?}` → `{library_id, token, expires_at_ms, learner}` |
//! | `POST /join` | `{token}` → `{library_id, config_sequence, committed, leader}` |
//! | `GET /libraries/{id}/members` | → `{library_id, config_sequence, feature_version, commit_sequence, pending, member, members}` |
//! | `POST /libraries/{id}/devices` | `{device_id, peer_id, addresses, name}` → change |
//! | `DELETE /libraries/{id}/devices/{device}` | → change |
//! | `PUT /libraries/{id}/devices/{device}/preference` | `{preference: auto\|learner\|voter}` → change |
//! | `POST /libraries/{id}/force-reconfigure` | `{voters, i_understand_this_is_unsafe: true}` → change |
//! | `POST /libraries/{id}/join` | `{leader: device, members: [device]}` → `{}` |
//! | `POST /libraries/{id}/changes` | `{model_type, record_id?, change_type?, data, proposal_id?}` → `{status, first_sequence, last_sequence, proposal_id}`: the same `proposal_id` again never commits twice (the answer is what became of it); a nil one is `400` |
//! | `GET /libraries/{id}/log?since=N&limit=N` | → `{entries, last_sequence}` (limit ≤ 1000) |
//! | `GET /libraries/{id}/proposals/{proposal}` | → `{library_id, proposal_id, state: committed\|queued\|failed\|unknown, sequences, attempts, last_error, last_sequence}` |
//! | `GET /libraries/{id}/conflicts?limit=N` | → `{library_id, count, conflicts: [{id, model_type, record_id, policy, outcome, fields, kept, taken, change_type, base_version, current_version, stored, stored_hlc, proposed, proposed_hlc, origin_device, proposal_id, decided_at_ms}]}`, the most recently decided first (limit ≤ 1000, default 100) |
//! | `GET /libraries/{id}/outbox` | → `{entries: [{proposal_id, state: queued\|failed, created_at_ms, changes, attempts, next_attempt_ms, last_error, failed_reason, failed_at_ms}]}` |
//! | `POST /libraries/{id}/outbox/{proposal}/retry` | → `{proposal_id, retried: true}`: a failed entry delivered again; `404` if no failed entry has that id |
//! | `DELETE /libraries/{id}/outbox/{proposal}` | → `{proposal_id, discarded: true}`: a failed entry given up; `404` if no failed entry has that id |
//! | `POST /token/rotate` | → `{}`: a new token is in `control.token`, the old one is refused |
//!
//! A membership change answers `{library_id, config_sequence, committed}`: `200` when the
//! configuration entry is committed, `202` when it is pending (in use, not yet held by a
//! majority; docs/operations.md, "Membership").
//!
//! Errors are `{"error": "..."}` with 400 (bad input, a refused invitation), 401, 404 (unknown
//! library or path), 409 (not the leader, library exists, a membership change refused), 413 (a
//! change over `Node::max_change_bytes`, or a body over what the endpoint accepts),
//! 502 (the inviting device is unreachable), 503 (database busy, service stopped, no leader
//! known), 507 (disk full) or 500.

pub mod api;
pub mod metrics;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use actix_web::body::MessageBody;
use actix_web::dev::{ServerHandle, ServiceRequest, ServiceResponse};
use actix_web::http::{header, StatusCode};
use actix_web::middleware::{from_fn, Next};
use actix_web::{web, App, HttpResponse, HttpServer, ResponseError};
use serde::Serialize;
use uuid::Uuid;

use self::api::{
    ChangeRequest, CreatedLibrary, DeviceJson, EntryJson, ErrorBody, ForceReconfigureRequest,
    InvitationJson, InviteRequest, JoinRequest, JoinWithTokenRequest, JoinedJson, LogPage,
    MembersJson, MembershipChangeJson, PreferenceRequest, DEFAULT_INVITE_EXPIRY_MS,
    DEFAULT_LOG_LIMIT, MAX_INVITE_EXPIRY_MS, MAX_LOG_LIMIT,
};
use crate::crates::storage::{OutboxState, StorageError};
use crate::identity::write_private;
use crate::{LibraryStatus, Node, NodeError};

/// The token file in the data directory.
pub const TOKEN_FILE: &str = "control.token";
/// The file in the data directory holding the bound address (`127.0.0.1:PORT`).
pub const ADDR_FILE: &str = "control.addr";

/// Largest accepted request body, but for `POST /libraries/{id}/changes`.
const MAX_BODY: usize = 1024 * 1024;

/// Largest accepted body of `POST /libraries/{id}/changes` for a node whose largest change is
/// `max_change` bytes: room for a change of that size as JSON (escapes and all), so that a
/// change over the limit is refused for its own size, naming the limit, rather than for its
/// body's.
fn max_change_body(max_change: usize) -> usize {
    max_change.saturating_mul(4).saturating_add(MAX_BODY)
}

/// The JSON extractor's settings: `limit` bytes at most; a bad body is `400`, a body over the
/// limit `413` naming it.
fn json_config(limit: usize) -> web::JsonConfig {
    web::JsonConfig::default().limit(limit).content_type_required(false).error_handler(
        move |e, _| match e {
            actix_web::error::JsonPayloadError::Overflow { .. }
            | actix_web::error::JsonPayloadError::OverflowKnownLength { .. } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body is over {limit} bytes, the most this endpoint accepts"),
            )
            .into(),
            e => ApiError::bad_request(format!("bad JSON body: {e}")).into(),
        },
    )
}

/// A running control API.
#[derive(Debug)]
pub struct ControlServer {
    handle: ServerHandle,
    addr: SocketAddr,
    addr_file: PathBuf,
}

impl ControlServer {
    /// Starts the API for `node` on `127.0.0.1:port` (0: a free port) with the token of
    /// `<data_dir>/control.token` (made there first if there is none: [`load_or_create_token`])
    /// and writes the bound address to `<data_dir>/control.addr`. Must run inside the node's
    /// actix System.
    pub async fn start(node: Node, port: u16, data_dir: &Path) -> io::Result<ControlServer> {
        // the token is read (or made) once the port is bound: a daemon that cannot serve does
        // not touch the file; until then no token is accepted
        let token = web::Data::new(Token {
            value: RwLock::new(String::new()),
            file: data_dir.join(TOKEN_FILE),
        });
        let served = token.clone();
        let changes_body = max_change_body(node.max_change_bytes());
        let node = web::Data::new(node);
        let server = HttpServer::new(move || {
            App::new()
                .app_data(served.clone())
                .app_data(node.clone())
                .app_data(json_config(MAX_BODY))
                .wrap(from_fn(require_token))
                .route("/status", web::get().to(status))
                .route("/metrics", web::get().to(metrics_text))
                .route("/libraries", web::post().to(create_library))
                .route("/join", web::post().to(join_with_token))
                .route("/libraries/{id}/invitations", web::post().to(invite))
                .route("/libraries/{id}/members", web::get().to(members))
                .route("/libraries/{id}/devices", web::post().to(add_device))
                .route("/libraries/{id}/devices/{device}", web::delete().to(remove_device))
                .route("/libraries/{id}/devices/{device}/preference", web::put().to(set_preference))
                .route("/libraries/{id}/force-reconfigure", web::post().to(force_reconfigure))
                .route("/libraries/{id}/join", web::post().to(join_library))
                .service(
                    web::resource("/libraries/{id}/changes")
                        .app_data(json_config(changes_body))
                        .route(web::post().to(commit_change)),
                )
                .route("/libraries/{id}/log", web::get().to(read_log))
                .route("/libraries/{id}/proposals/{proposal}", web::get().to(proposal))
                .route("/libraries/{id}/conflicts", web::get().to(conflicts))
                .route("/libraries/{id}/outbox", web::get().to(outbox))
                .route("/libraries/{id}/outbox/{proposal}/retry", web::post().to(outbox_retry))
                .route("/libraries/{id}/outbox/{proposal}", web::delete().to(outbox_discard))
                .route("/token/rotate", web::post().to(rotate_token))
                .default_service(web::to(|| async {
                    ApiError::new(StatusCode::NOT_FOUND, "no such endpoint: see docs/operations.md")
                }))
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(2)
        .bind(("127.0.0.1", port))?;
        let addr = *server
            .addrs()
            .first()
            .ok_or_else(|| io::Error::other("the control API bound no address"))?;
        *token.value.write().unwrap_or_else(std::sync::PoisonError::into_inner) =
            load_or_create_token(data_dir)?;
        let server = server.run();
        let handle = server.handle();
        actix_rt::spawn(server);
        let addr_file = data_dir.join(ADDR_FILE);
        write_private(&addr_file, format!("{addr}\n").as_bytes())?;
        tracing::info!(%addr, "control API listening");
        Ok(ControlServer { handle, addr, addr_file })
    }

    /// The address the API listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Removes the address file and stops the server (open requests get 2 s to finish).
    pub async fn stop(self) {
        let _ = std::fs::remove_file(&self.addr_file);
        self.handle.stop(true).await;
    }
}

/// The token the API expects, and the file that holds it.
struct Token {
    value: RwLock<String>,
    file: PathBuf,
}

/// A fresh random token: 32 bytes from the OS-seeded CSPRNG, as hex.
fn new_token() -> String {
    rand::random::<[u8; 32]>().iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `text` is a token as [`new_token`] makes them (64 hex digits).
fn well_formed(text: &str) -> bool {
    text.len() == 64 && text.chars().all(|c| c.is_ascii_hexdigit())
}

/// The control token of a data directory: the one in `control.token` if it holds a
/// well-formed one (its mode is made 0600 again if it was wider), else a new one written there
/// (mode 0600). So the token stays the same across restarts of the daemon, and a client that
/// holds it is not refused after one.
pub fn load_or_create_token(data_dir: &Path) -> io::Result<String> {
    let path = data_dir.join(TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) if well_formed(text.trim()) => {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(&path)?.permissions().mode();
                if mode & 0o077 != 0 {
                    tracing::warn!(
                        file = %path.display(),
                        mode = format!("{:o}", mode & 0o777),
                        "the control token was readable by others: made owner-only (0600)"
                    );
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
                }
            }
            Ok(text.trim().to_owned())
        }
        Ok(_) => {
            tracing::warn!(
                file = %path.display(),
                "the control token file held no valid token: a new one was written"
            );
            rotate_token_file(data_dir)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => rotate_token_file(data_dir),
        Err(e) => Err(e),
    }
}

/// Writes a new token to `<data_dir>/control.token` (mode 0600) and returns it. A running
/// daemon goes on with the token it read at start: rotate through `POST /token/rotate` then.
pub fn rotate_token_file(data_dir: &Path) -> io::Result<String> {
    let token = new_token();
    write_private(&data_dir.join(TOKEN_FILE), format!("{token}\n").as_bytes())?;
    Ok(token)
}

/// `POST /token/rotate`: a new token in the file and in use at once; the old one is refused
/// from the next request on.
async fn rotate_token(token: web::Data<Token>) -> Result<HttpResponse, ApiError> {
    let dir = token.file.parent().unwrap_or(Path::new(".")).to_path_buf();
    let fresh = web::block(move || rotate_token_file(&dir))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "cannot write a new token to {} ({e}); the old one stays",
                    token.file.display()
                ),
            )
        })?;
    *token.value.write().unwrap_or_else(std::sync::PoisonError::into_inner) = fresh;
    tracing::info!(file = %token.file.display(), "control token rotated");
    Ok(HttpResponse::Ok().json(serde_json::json!({})))
}

/// Constant-time comparison, so the token cannot be guessed byte by byte from timings.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn require_token(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let expected = req
        .app_data::<web::Data<Token>>()
        .map(|t| t.value.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone())
        .unwrap_or_default();
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(t) if !expected.is_empty() && same(t.as_bytes(), expected.as_bytes()) => {
            Ok(next.call(req).await?.map_into_left_body())
        }
        _ => {
            let message = if given.is_none() {
                "missing `Authorization: Bearer <token>`: the token is in the daemon's data \
                 directory, file control.token"
            } else {
                "wrong token: read it again from control.token in the daemon's data directory \
                 (it changes only when `lsync token rotate` replaces it)"
            };
            let resp = ApiError::new(StatusCode::UNAUTHORIZED, message).error_response();
            Ok(req.into_response(resp).map_into_right_body())
        }
    }
}

/// An error response: a status and `{"error": message}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    /// The change may or may not have been carried out (`"outcome": "unknown"`).
    unknown: bool,
}

impl ApiError {
    /// An error; the message is made one line (runs of whitespace, newlines included, become
    /// one space), since clients print it as one.
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        let message: String = message.into();
        Self {
            status,
            message: message.split_whitespace().collect::<Vec<_>>().join(" "),
            unknown: false,
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status).json(ErrorBody {
            error: self.message.clone(),
            outcome: self.unknown.then(|| api::OUTCOME_UNKNOWN.to_owned()),
        })
    }
}

impl actix_web::Responder for ApiError {
    type Body = actix_web::body::BoxBody;
    fn respond_to(self, _: &actix_web::HttpRequest) -> HttpResponse {
        self.error_response()
    }
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        let status = match &e {
            NodeError::UnknownLibrary(id) => {
                return Self::new(
                    StatusCode::NOT_FOUND,
                    format!("library {id} is not open on this device: `lsync library list` shows the libraries"),
                )
            }
            NodeError::LibraryExists(_) => StatusCode::CONFLICT,
            NodeError::InvalidInput(_) => StatusCode::BAD_REQUEST,
            NodeError::ServiceStopped(_) | NodeError::WritesPaused(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            NodeError::Network(_) => StatusCode::BAD_GATEWAY,
            NodeError::Membership(m) => {
                if m.contains("no leader is known") || m.contains("could not be reached") {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::CONFLICT
                }
            }
            NodeError::Invitation(m) => {
                if m.contains("cannot reach") {
                    StatusCode::BAD_GATEWAY
                } else {
                    StatusCode::BAD_REQUEST
                }
            }
            NodeError::Transfer(_) => StatusCode::CONFLICT,
            NodeError::ChangeTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            NodeError::OutcomeUnknown(_) => {
                let unknown = Self::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
                return Self { unknown: true, ..unknown };
            }
            NodeError::Storage(s) => match s {
                StorageError::NotLeader { .. } => {
                    return Self::new(
                        StatusCode::CONFLICT,
                        format!("{e}: commit the change on the leader's daemon"),
                    )
                }
                StorageError::InvalidChange(_) | StorageError::UnknownModel(_) => {
                    StatusCode::BAD_REQUEST
                }
                other => {
                    let text = other.to_string();
                    if text.contains("database is locked") || text.contains("busy") {
                        return Self::new(
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("{text}: another process holds the library database; retry (see docs/operations.md)"),
                        );
                    }
                    if text.contains("disk is full") {
                        return Self::new(
                            StatusCode::INSUFFICIENT_STORAGE,
                            format!("{text}: free disk space on this device, then retry"),
                        );
                    }
                    StatusCode::INTERNAL_SERVER_ERROR
                }
            },
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, e.to_string())
    }
}

fn library_id(raw: &str) -> Result<Uuid, ApiError> {
    raw.parse().map_err(|e| {
        ApiError::bad_request(format!("bad library id {raw:?} ({e}): give the library's uuid"))
    })
}

/// One library in `GET /status`: the node's status plus the outbox size.
#[derive(Serialize)]
struct LibraryReport {
    #[serde(flatten)]
    status: LibraryStatus,
    /// Changes made on this device that wait in its durable outbox for the leader to sequence
    /// them (the same number as the status's `outbox_pending`).
    outbox_size: u64,
}

#[derive(Serialize)]
struct StatusReport {
    device: DeviceJson,
    libraries: Vec<LibraryReport>,
}

async fn library_statuses(node: &Node) -> Result<Vec<LibraryStatus>, ApiError> {
    let mut out = Vec::new();
    for id in node.libraries() {
        out.push(node.status(id).await?);
    }
    Ok(out)
}

async fn status(node: web::Data<Node>) -> Result<HttpResponse, ApiError> {
    let libraries = library_statuses(&node)
        .await?
        .into_iter()
        .map(|status| LibraryReport { outbox_size: status.outbox_pending, status })
        .collect();
    Ok(HttpResponse::Ok()
        .json(StatusReport { device: DeviceJson::from_info(&node.device_info()), libraries }))
}

async fn metrics_text(node: web::Data<Node>) -> Result<HttpResponse, ApiError> {
    let libraries: Vec<_> = library_statuses(&node)
        .await?
        .iter()
        .map(|s| metrics::LibraryGauges::from_status(s, s.outbox_pending))
        .collect();
    let text = metrics::render(node.metrics(), &node.network().stats(), &libraries);
    Ok(HttpResponse::Ok().content_type(metrics::CONTENT_TYPE).body(text))
}

async fn create_library(node: web::Data<Node>) -> Result<HttpResponse, ApiError> {
    let library_id = node.create_library().await?;
    tracing::info!(%library_id, "library created");
    Ok(HttpResponse::Ok()
        .json(CreatedLibrary { library_id, leader: DeviceJson::from_info(&node.device_info()) }))
}

fn device_id(raw: &str) -> Result<Uuid, ApiError> {
    raw.parse().map_err(|e| {
        ApiError::bad_request(format!(
            "bad device id {raw:?} ({e}): give the device's uuid (`lsync library members` lists them)"
        ))
    })
}

/// `200` with the outcome when the change is committed, `202` when it is pending.
fn membership_change(library: Uuid, outcome: crate::MembershipOutcome) -> HttpResponse {
    let body = MembershipChangeJson::from_outcome(library, outcome);
    if outcome.committed {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::Accepted().json(body)
    }
}

async fn invite(
    node: web::Data<Node>,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let id = library_id(&path)?;
    // no body: the defaults
    let body: InviteRequest = if body.iter().all(u8::is_ascii_whitespace) {
        InviteRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("bad JSON body: {e}")))?
    };
    let expires_ms = body.expires_ms.unwrap_or(DEFAULT_INVITE_EXPIRY_MS);
    if expires_ms == 0 || expires_ms > MAX_INVITE_EXPIRY_MS {
        return Err(ApiError::bad_request(format!(
            "`expires_ms` must be between 1 and {MAX_INVITE_EXPIRY_MS} (7 days), got {expires_ms}"
        )));
    }
    let invitation =
        node.invite(id, body.learner, std::time::Duration::from_millis(expires_ms)).await?;
    tracing::info!(library_id = %id, learner = body.learner, expires_ms, "invitation made");
    Ok(HttpResponse::Ok().json(InvitationJson {
        library_id: id,
        token: invitation.token,
        expires_at_ms: invitation.expires_at_ms,
        learner: invitation.learner,
    }))
}

async fn join_with_token(
    node: web::Data<Node>,
    body: web::Json<JoinWithTokenRequest>,
) -> Result<HttpResponse, ApiError> {
    let joined = match node.join_with_invite(&body.token).await {
        Err(NodeError::LibraryExists(id)) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "this device is a member of library {id} already (`lsync library members` \
                     shows it); an invitation is for a device that is not"
                ),
            ))
        }
        other => other?,
    };
    tracing::info!(library_id = %joined.library_id, committed = joined.committed, "joined with an invitation");
    Ok(HttpResponse::Ok().json(JoinedJson {
        library_id: joined.library_id,
        config_sequence: joined.config_sequence,
        committed: joined.committed,
        leader: joined.leader,
    }))
}

async fn members(node: web::Data<Node>, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = library_id(&path)?;
    let status = node.status(id).await?;
    Ok(HttpResponse::Ok().json(MembersJson::from_status(&status)))
}

async fn add_device(
    node: web::Data<Node>,
    path: web::Path<String>,
    body: web::Json<DeviceJson>,
) -> Result<HttpResponse, ApiError> {
    let id = library_id(&path)?;
    let info = body.to_info().map_err(ApiError::bad_request)?;
    let outcome = node.add_device(id, info).await?;
    tracing::info!(library_id = %id, device_id = %body.device_id, committed = outcome.committed, "member device added");
    Ok(membership_change(id, outcome))
}

async fn remove_device(
    node: web::Data<Node>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let id = library_id(&path.0)?;
    let device = device_id(&path.1)?;
    let outcome = node.remove_device(id, device).await?;
    tracing::info!(library_id = %id, %device, committed = outcome.committed, "member device removed");
    Ok(membership_change(id, outcome))
}

async fn set_preference(
    node: web::Data<Node>,
    path: web::Path<(String, String)>,
    body: web::Json<PreferenceRequest>,
) -> Result<HttpResponse, ApiError> {
    let id = library_id(&path.0)?;
    let device = device_id(&path.1)?;
    let preference = api::parse_preference(&body.preference).map_err(ApiError::bad_request)?;
    let outcome = node.set_device_preference(id, device, preference).await?;
    tracing::info!(library_id = %id, %device, %preference, committed = outcome.committed, "role preference set");
    Ok(membership_change(id, outcome))
}

async fn force_reconfigure(
    node: web::Data<Node>,
    path: web::Path<String>,
    body: web::Json<ForceReconfigureRequest>,
) -> Result<HttpResponse, ApiError> {
    let id = library_id(&path)?;
    if !body.i_understand_this_is_unsafe {
        return Err(ApiError::bad_request(api::FORCE_RECONFIGURE_REFUSED));
    }
    if body.voters.is_empty() {
        return Err(ApiError::bad_request("give at least one voter (this device)"));
    }
    let outcome = node.force_reconfigure(id, body.voters.clone()).await?;
    tracing::warn!(library_id = %id, voters = ?body.voters, "configuration forced");
    Ok(membership_change(id, outcome))
}

async fn join_library(
    node: web::Data<Node>,
    path: web::Path<String>,
    body: web::Json<JoinRequest>,
) -> Result<HttpResponse, ApiError> {
    let id = library_id(&path)?;
    let leader = body.leader.to_info().map_err(ApiError::bad_request)?;
    let members = body
        .members
        .iter()
        .map(DeviceJson::to_info)
        .collect::<Result<Vec<_>, _>>()
        .map_err(ApiError::bad_request)?;
    node.join_library(id, leader, members).await?;
    tracing::info!(library_id = %id, leader = %body.leader.device_id, "joined library");
    Ok(HttpResponse::Ok().json(serde_json::json!({})))
}

async fn commit_change(
    node: web::Data<Node>,
    path: web::Path<String>,
    body: web::Json<ChangeRequest>,
) -> Result<HttpResponse, ApiError> {
    let id = library_id(&path)?;
    let change = body.to_change().map_err(ApiError::bad_request)?;
    let durability = body.durability().map_err(ApiError::bad_request)?;
    let proposal_id = match body.proposal_id {
        Some(p) if p.is_nil() => return Err(ApiError::bad_request(api::NIL_PROPOSAL_ID)),
        Some(p) => p,
        None => Uuid::new_v4(),
    };
    // the same write on every device: committed at once on the leader, proposed from a follower;
    // a change over the size limit is 413 naming it (NodeError::ChangeTooLarge); an id written
    // before is answered with what became of it, never committed twice
    let outcome = node.write_with(id, proposal_id, durability, vec![change]).await?;
    Ok(HttpResponse::Ok().json(api::WriteJson::from_outcome(proposal_id, outcome)))
}

/// `GET /libraries/{id}/proposals/{proposal}`: the entries of this device's log that carry the
/// proposal id, else its outbox entry, else `unknown`.
async fn proposal(
    node: web::Data<Node>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let id = library_id(&path.0)?;
    let proposal_id = proposal_id(&path.1)?;
    let db = node.database(id)?;
    let answer = web::block(move || -> Result<api::ProposalJson, StorageError> {
        let (entries, last) = db.with_reader(|conn| {
            let entries = crate::crates::storage::SyncLog::proposal_entries(conn, proposal_id)?;
            Ok((entries, crate::crates::storage::SyncLog::last(conn)?.sequence))
        })?;
        let mut answer = api::ProposalJson {
            library_id: id,
            proposal_id,
            state: "unknown".into(),
            sequences: entries.iter().map(|e| e.sequence).collect(),
            attempts: 0,
            last_error: None,
            last_sequence: last,
        };
        if !entries.is_empty() {
            answer.state = "committed".into();
        } else if let Some(queued) = db.outbox_get(proposal_id)? {
            answer.attempts = queued.attempts;
            match queued.state {
                OutboxState::Pending => {
                    answer.state = "queued".into();
                    answer.last_error = queued.last_error;
                }
                // a leader committed it; this device's log has not reached it yet
                OutboxState::Delivered { .. } => answer.state = "delivered".into(),
                // refused for good by a leader: the reason is the last error
                OutboxState::Failed { reason, .. } => {
                    answer.state = "failed".into();
                    answer.last_error = Some(reason);
                }
            }
        }
        Ok(answer)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(|e| ApiError::from(NodeError::Storage(e)))?;
    Ok(HttpResponse::Ok().json(answer))
}

/// A proposal id in a path: the uuid `lsync put` printed.
fn proposal_id(text: &str) -> Result<Uuid, ApiError> {
    text.parse().map_err(|e| {
        ApiError::bad_request(format!(
            "bad proposal id {text:?} ({e}): give the uuid `lsync put` or `lsync outbox list` printed"
        ))
    })
}

/// `GET /libraries/{id}/conflicts?limit=N`: the conflicts recorded in this device's copy,
/// the most recently decided first, and how many there are in all.
async fn conflicts(
    node: web::Data<Node>,
    path: web::Path<String>,
    query: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    let id = library_id(&path)?;
    if let Some(unknown) = query.keys().find(|k| *k != "limit") {
        return Err(ApiError::bad_request(format!("unknown parameter `{unknown}`: use limit")));
    }
    let limit = conflict_limit(query_u64(&query, "limit")?)?;
    let db = node.database(id)?;
    // one read: the count and the list of the same moment
    let (count, list) = web::block(move || {
        db.with_reader(|conn| {
            use crate::crates::storage::conflicts;
            use crate::crates::storage::diesel::Connection as _;
            conn.transaction(|conn| Ok((conflicts::count(conn)?, conflicts::list(conn, limit)?)))
        })
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(|e| ApiError::from(NodeError::Storage(e)))?;
    Ok(HttpResponse::Ok().json(api::ConflictsJson {
        library_id: id,
        count,
        conflicts: list.iter().map(api::ConflictJson::from_conflict).collect(),
    }))
}

/// The `limit` of `GET /libraries/{id}/conflicts`: the default when none is given, capped to
/// the most; 0 is refused.
fn conflict_limit(given: Option<u64>) -> Result<u64, ApiError> {
    match given {
        None => Ok(api::DEFAULT_CONFLICT_LIMIT),
        Some(0) => Err(ApiError::bad_request(format!(
            "`limit` must be between 1 and {}",
            api::MAX_CONFLICT_LIMIT
        ))),
        Some(n) => Ok(n.min(api::MAX_CONFLICT_LIMIT)),
    }
}

/// `GET /libraries/{id}/outbox`: this device's outbox, oldest first.
async fn outbox(node: web::Data<Node>, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = library_id(&path)?;
    let entries = node.outbox(id).await?;
    let entries: Vec<api::OutboxEntryJson> =
        entries.into_iter().map(api::OutboxEntryJson::from_entry).collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "entries": entries })))
}

/// `POST /libraries/{id}/outbox/{proposal}/retry`.
async fn outbox_retry(
    node: web::Data<Node>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let id = library_id(&path.0)?;
    let proposal = proposal_id(&path.1)?;
    if !node.outbox_retry(id, proposal).await? {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no failed outbox entry {proposal} on this device (see `lsync outbox list`)"),
        ));
    }
    tracing::info!(library_id = %id, %proposal, "failed outbox entry retried");
    Ok(HttpResponse::Ok().json(serde_json::json!({ "proposal_id": proposal, "retried": true })))
}

/// `DELETE /libraries/{id}/outbox/{proposal}`: only a failed entry (a queued one may be
/// committed at any moment).
async fn outbox_discard(
    node: web::Data<Node>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let id = library_id(&path.0)?;
    let proposal = proposal_id(&path.1)?;
    if !node.outbox_discard(id, proposal).await? {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "no failed outbox entry {proposal} on this device (a queued one is never \
                 discarded: it may be committed at any moment)"
            ),
        ));
    }
    tracing::warn!(library_id = %id, %proposal, "failed outbox entry discarded");
    Ok(HttpResponse::Ok().json(serde_json::json!({ "proposal_id": proposal, "discarded": true })))
}

fn query_u64(query: &HashMap<String, String>, key: &str) -> Result<Option<u64>, ApiError> {
    query
        .get(key)
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                ApiError::bad_request(format!("`{key}` must be a non-negative integer, got {v:?}"))
            })
        })
        .transpose()
}

async fn read_log(
    node: web::Data<Node>,
    path: web::Path<String>,
    query: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    let id = library_id(&path)?;
    if let Some(unknown) = query.keys().find(|k| *k != "since" && *k != "limit") {
        return Err(ApiError::bad_request(format!(
            "unknown parameter `{unknown}`: use since and limit"
        )));
    }
    let since = query_u64(&query, "since")?.unwrap_or(0);
    let limit = query_u64(&query, "limit")?.unwrap_or(DEFAULT_LOG_LIMIT);
    if limit == 0 {
        return Err(ApiError::bad_request(format!(
            "`limit` must be between 1 and {MAX_LOG_LIMIT}"
        )));
    }
    let limit = limit.min(MAX_LOG_LIMIT);
    let db = node.database(id)?;
    let page = web::block(move || -> Result<LogPage, StorageError> {
        let entries = db.fetch_since(since, limit)?;
        let last_sequence = db.last_position()?.sequence;
        Ok(LogPage { entries: entries.iter().map(EntryJson::from_entry).collect(), last_sequence })
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(|e| ApiError::from(NodeError::Storage(e)))?;
    Ok(HttpResponse::Ok().json(page))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_conflict_limit_has_a_default_a_cap_and_refuses_zero() {
        assert_eq!(conflict_limit(None).unwrap(), api::DEFAULT_CONFLICT_LIMIT);
        assert_eq!(conflict_limit(Some(5)).unwrap(), 5);
        assert_eq!(conflict_limit(Some(1_000_000)).unwrap(), api::MAX_CONFLICT_LIMIT);
        assert_eq!(conflict_limit(Some(0)).unwrap_err().status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn error_messages_are_one_line() {
        let e = ApiError::new(StatusCode::CONFLICT, "removed);\n                 its copy");
        assert_eq!(e.to_string(), "removed); its copy");
    }

    #[test]
    fn membership_and_invitation_errors_map_to_their_status() {
        let status = |e: NodeError| ApiError::from(e).status;
        assert_eq!(
            status(NodeError::Membership("device x is not a member".into())),
            StatusCode::CONFLICT
        );
        assert_eq!(
            status(NodeError::Membership("no leader is known now: retry".into())),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            status(NodeError::Invitation("refused: the invitation expired".into())),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status(NodeError::Invitation("cannot reach the inviting device at []".into())),
            StatusCode::BAD_GATEWAY
        );
    }

    #[test]
    fn tokens_are_fresh_hex() {
        let (a, b) = (new_token(), new_token());
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        assert!(same(a.as_bytes(), a.as_bytes()) && !same(a.as_bytes(), b.as_bytes()));
        assert!(!same(b"abc", b"ab"));
    }

    #[test]
    fn the_token_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create_token(dir.path()).unwrap();
        assert!(well_formed(&a), "{a}");
        assert_eq!(load_or_create_token(dir.path()).unwrap(), a);
        let b = rotate_token_file(dir.path()).unwrap();
        assert_ne!(a, b);
        assert_eq!(load_or_create_token(dir.path()).unwrap(), b);
    }

    #[test]
    fn a_damaged_token_file_gets_a_new_token() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(TOKEN_FILE), "short\n").unwrap();
        let t = load_or_create_token(dir.path()).unwrap();
        assert!(well_formed(&t), "{t}");
        let on_disk = std::fs::read_to_string(dir.path().join(TOKEN_FILE)).unwrap();
        assert_eq!(on_disk.trim(), t);
    }

    #[cfg(unix)]
    #[test]
    fn a_token_readable_by_others_is_made_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(TOKEN_FILE);
        std::fs::write(&p, "ab".repeat(32)).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(load_or_create_token(dir.path()).unwrap(), "ab".repeat(32));
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn a_change_too_large_is_413_naming_the_limit() {
        let e = ApiError::from(NodeError::ChangeTooLarge {
            bytes: 9_000_000,
            limit: 8_388_608,
            max_frame_bytes: 16_777_216,
        });
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(e.message.contains("8388608 bytes") && e.message.contains("9000000"), "{e}");
        assert!(max_change_body(8_388_608) > 4 * 8_388_608);
    }

    #[test]
    fn an_unknown_outcome_says_so_in_its_body() {
        let e = ApiError::from(NodeError::OutcomeUnknown(Uuid::nil()));
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        let body = actix_web::body::to_bytes(e.error_response().into_body());
        let body = futures::executor::block_on(body).unwrap();
        let body: ErrorBody = serde_json::from_slice(&body).unwrap();
        assert_eq!(body.outcome.as_deref(), Some(api::OUTCOME_UNKNOWN));
        assert!(body.error.contains("may or may not be committed"), "{}", body.error);
        let refused = ApiError::from(NodeError::WritesPaused(Uuid::nil()));
        let body = actix_web::body::to_bytes(refused.error_response().into_body());
        let body = futures::executor::block_on(body).unwrap();
        assert!(!String::from_utf8_lossy(&body).contains("outcome"));
    }

    #[cfg(unix)]
    #[test]
    fn private_files_are_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(TOKEN_FILE);
        write_private(&p, b"x").unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
