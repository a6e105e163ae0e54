//! The client side of the control API: finds the running daemon through its data directory
//! (`control.addr`, `control.token`) and turns every failure into one line saying what to do,
//! typed as a [`RequestError`] whose [`Failure`] tells the exit status whether the request
//! certainly changed nothing, was too large, or may have been carried out (the connection broke
//! after it was sent). docs/operations.md, section 1, lists the exit statuses.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail};
use lsync::control::api::{ErrorBody, OUTCOME_UNKNOWN};
use lsync::control::{ADDR_FILE, TOKEN_FILE};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// How a request to the daemon failed, as far as its effect goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Nothing was done: the daemon answered with an error, or the request was never sent
    /// (no daemon listening).
    NotDone,
    /// Nothing was done because the change is larger than the daemon accepts (`413`).
    TooLarge,
    /// The request was sent but no answer came back (the connection broke or timed out), or
    /// the daemon said it cannot tell: the change may or may not be committed.
    Unknown,
}

/// A failed request: its [`Failure`] and the one line to print.
#[derive(Debug)]
pub struct RequestError {
    pub failure: Failure,
    pub message: String,
}

impl std::fmt::Display for RequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RequestError {}

fn failed(failure: Failure, message: String) -> anyhow::Error {
    RequestError { failure, message }.into()
}

/// Whether a transport error happened before any byte of the request could reach the daemon
/// (so it certainly did nothing): name resolution, a refused or failed connect, a bad URL.
fn never_sent(e: &ureq::Error) -> bool {
    match e {
        ureq::Error::Io(io) => matches!(
            io.kind(),
            std::io::ErrorKind::ConnectionRefused
                | std::io::ErrorKind::AddrNotAvailable
                | std::io::ErrorKind::AddrInUse
                | std::io::ErrorKind::NotFound
                | std::io::ErrorKind::PermissionDenied
                | std::io::ErrorKind::HostUnreachable
                | std::io::ErrorKind::NetworkUnreachable
        ),
        ureq::Error::Timeout(t) => {
            matches!(t, ureq::Timeout::Resolve | ureq::Timeout::Connect)
        }
        ureq::Error::HostNotFound
        | ureq::Error::ConnectionFailed
        | ureq::Error::BadUri(_)
        | ureq::Error::Http(_)
        | ureq::Error::InvalidProxyUrl => true,
        _ => false,
    }
}

/// A connection to the daemon of one data directory.
pub struct Client {
    base: String,
    addr: String,
    token: String,
    data_dir: PathBuf,
    agent: ureq::Agent,
}

impl Client {
    /// Reads the daemon's address and token from `data_dir`.
    pub fn connect(data_dir: &Path) -> anyhow::Result<Client> {
        let dir = data_dir.display();
        if !data_dir.is_dir() {
            bail!(
                "data directory {dir} does not exist: run `lsync init --data-dir {dir}` first, or \
                 point --data-dir (or LSYNC_DATA_DIR) at the daemon's data directory"
            );
        }
        let addr_path = data_dir.join(ADDR_FILE);
        let addr = match std::fs::read_to_string(&addr_path) {
            Ok(a) => a.trim().to_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                "no lsync daemon is running for {dir} ({} not found): start it with \
                 `lsync run --data-dir {dir}`",
                addr_path.display()
            ),
            Err(e) => bail!("cannot read {}: {e}", addr_path.display()),
        };
        let token_path = data_dir.join(TOKEN_FILE);
        let token = std::fs::read_to_string(&token_path)
            .map_err(|e| {
                anyhow!(
                    "cannot read the control token {} ({e}): run the client as the user that \
                     runs `lsync run --data-dir {dir}`",
                    token_path.display()
                )
            })?
            .trim()
            .to_owned();
        Ok(Self::new(data_dir, addr, token))
    }

    /// A client for the daemon at `addr` with `token` (tests and tools).
    pub fn new(data_dir: &Path, addr: String, token: String) -> Client {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(3)))
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .new_agent();
        Client {
            base: format!("http://{addr}"),
            addr,
            token,
            data_dir: data_dir.to_path_buf(),
            agent,
        }
    }

    /// `GET path`.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let resp = self
            .agent
            .get(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {}", self.token))
            .call();
        self.finish(resp, false)
    }

    /// `POST path` with a JSON body (or none).
    pub fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: Option<&B>,
    ) -> anyhow::Result<T> {
        let req = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {}", self.token));
        let resp = match body {
            Some(b) => req.send_json(b),
            None => req.send_empty(),
        };
        self.finish(resp, true)
    }

    /// `PUT path` with a JSON body.
    pub fn put<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        let resp = self
            .agent
            .put(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {}", self.token))
            .send_json(body);
        self.finish(resp, true)
    }

    /// `DELETE path`.
    pub fn delete<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let resp = self
            .agent
            .delete(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {}", self.token))
            .call();
        self.finish(resp, true)
    }

    /// Turns a response into its JSON body, or a [`RequestError`]. `changes` says whether the
    /// request changes something: then a request that was sent but not answered is
    /// [`Failure::Unknown`] (a read is just [`Failure::NotDone`]).
    fn finish<T: DeserializeOwned>(
        &self,
        resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
        changes: bool,
    ) -> anyhow::Result<T> {
        let dir = self.data_dir.display();
        let addr = &self.addr;
        let mut resp = match resp {
            Ok(r) => r,
            Err(e) if never_sent(&e) || !changes => {
                return Err(failed(
                    Failure::NotDone,
                    format!(
                        "cannot reach the lsync daemon at {addr} ({e}): is `lsync run \
                         --data-dir {dir}` running? (a daemon that was killed leaves a stale \
                         {ADDR_FILE})"
                    ),
                ))
            }
            Err(e) => {
                return Err(failed(
                    Failure::Unknown,
                    format!(
                        "no answer from the lsync daemon at {addr} after the request was sent \
                         ({e}): the change may or may not be committed; `lsync log` or \
                         `lsync status` on this device tells"
                    ),
                ))
            }
        };
        let status = resp.status().as_u16();
        let text = match resp.body_mut().read_to_string() {
            Ok(t) => t,
            // an answer was given but lost on the way: a 2xx was done, anything else was not
            Err(e) if (200..300).contains(&status) && changes => {
                return Err(failed(
                    Failure::Unknown,
                    format!(
                        "the answer of the lsync daemon at {addr} ({status}) was cut off ({e}): \
                         the change was accepted but whether it is committed or queued is \
                         unknown; `lsync log` or `lsync status` on this device tells"
                    ),
                ))
            }
            Err(e) => {
                return Err(failed(
                    Failure::NotDone,
                    format!("cannot read the daemon's response ({status}): {e}"),
                ))
            }
        };
        if status == 401 {
            return Err(failed(
                Failure::NotDone,
                format!(
                    "the daemon at {addr} refused the token in {dir}/{TOKEN_FILE}: check \
                     --data-dir (the token is the daemon's, kept across restarts; `lsync token \
                     rotate` replaces it)"
                ),
            ));
        }
        if !(200..300).contains(&status) {
            let (message, unknown) = match serde_json::from_str::<ErrorBody>(&text) {
                Ok(b) => (b.error, b.outcome.as_deref() == Some(OUTCOME_UNKNOWN)),
                Err(_) => (text, false),
            };
            let failure = match status {
                _ if unknown => Failure::Unknown,
                413 => Failure::TooLarge,
                _ => Failure::NotDone,
            };
            return Err(failed(failure, format!("{message} (HTTP {status})")));
        }
        serde_json::from_str(&text).map_err(|e| {
            let failure = if changes { Failure::Unknown } else { Failure::NotDone };
            failed(failure, format!("unexpected response from the daemon at {addr} ({e}): {text}"))
        })
    }
}
