//! The client side of the control API: finds the running daemon through its data directory
//! (`control.addr`, `control.token`) and turns every failure into one line saying what to do.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use lsync::control::api::ErrorBody;
use lsync::control::{ADDR_FILE, TOKEN_FILE};
use serde::de::DeserializeOwned;
use serde::Serialize;

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
        self.finish(resp)
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
        self.finish(resp)
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
        self.finish(resp)
    }

    /// `DELETE path`.
    pub fn delete<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let resp = self
            .agent
            .delete(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {}", self.token))
            .call();
        self.finish(resp)
    }

    fn finish<T: DeserializeOwned>(
        &self,
        resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> anyhow::Result<T> {
        let dir = self.data_dir.display();
        let mut resp = resp.map_err(|e| {
            anyhow!(
                "cannot reach the lsync daemon at {} ({e}): is `lsync run --data-dir {dir}` \
                 running? (a daemon that was killed leaves a stale {ADDR_FILE})",
                self.addr
            )
        })?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .read_to_string()
            .with_context(|| format!("cannot read the daemon's response ({status})"))?;
        if status == 401 {
            bail!(
                "the daemon at {} refused the token in {dir}/{TOKEN_FILE}: the token changes at \
                 every start of the daemon; check --data-dir, or restart `lsync run --data-dir {dir}`",
                self.addr
            );
        }
        if !(200..300).contains(&status) {
            let message = serde_json::from_str::<ErrorBody>(&text).map(|b| b.error).unwrap_or(text);
            bail!("{message} (HTTP {status})");
        }
        serde_json::from_str(&text)
            .with_context(|| format!("unexpected response from the daemon at {}", self.addr))
    }
}
