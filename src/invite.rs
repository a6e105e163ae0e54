//! Invitation tokens: one line that lets a new device join a library (docs/operations.md,
//! "Adding a device").
//!
//! A token names the library and the member that issued it (device id, peer id, addresses —
//! where the new device dials) and carries the invitation's one-time secret. The issuing
//! member keeps only a hash of the secret, refuses it once used by another device or expired,
//! and — on `Join` — has the leader add the new device as a learner.
//!
//! Text form: `lsync-invite-1.` followed by the URL-safe base64 (no padding) of the
//! MessagePack array `[library_id (bin 16), device_id (bin 16), peer_id (str),
//! [address (str), …], secret (bin 32)]`.

use base64::Engine;
use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The prefix of every token of this format.
pub const TOKEN_PREFIX: &str = "lsync-invite-1.";

/// The longest token accepted, in bytes.
const MAX_TOKEN: usize = 4096;

/// What an invitation token carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InviteToken {
    /// The library to join.
    pub library_id: Uuid,
    /// The member that issued the invitation (the new device dials it).
    pub device_id: Uuid,
    /// Its peer id.
    pub peer_id: PeerId,
    /// Its addresses.
    pub addresses: Vec<Multiaddr>,
    /// The one-time secret.
    pub secret: [u8; 32],
}

#[derive(Serialize, Deserialize)]
struct Wire(
    #[serde(with = "serde_bytes")] Vec<u8>,
    #[serde(with = "serde_bytes")] Vec<u8>,
    String,
    Vec<String>,
    #[serde(with = "serde_bytes")] Vec<u8>,
);

impl InviteToken {
    /// The one-line text form.
    pub fn encode(&self) -> String {
        let wire = Wire(
            self.library_id.as_bytes().to_vec(),
            self.device_id.as_bytes().to_vec(),
            self.peer_id.to_string(),
            self.addresses.iter().map(ToString::to_string).collect(),
            self.secret.to_vec(),
        );
        let bytes = rmp_serde::to_vec(&wire).expect("a token always encodes");
        format!("{TOKEN_PREFIX}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
    }

    /// Parses a token (surrounding whitespace is ignored); the error says what is wrong.
    pub fn decode(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.len() > MAX_TOKEN {
            return Err(format!("an invitation token is at most {MAX_TOKEN} characters"));
        }
        let body = text.strip_prefix(TOKEN_PREFIX).ok_or_else(|| {
            format!(
                "not an invitation token: it starts with {TOKEN_PREFIX:?} (copy the last line \
                 `lsync library invite` printed)"
            )
        })?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|e| format!("the invitation token is damaged ({e}): copy it whole"))?;
        let Wire(library, device, peer, addresses, secret) = rmp_serde::from_slice(&bytes)
            .map_err(|e| format!("the invitation token is damaged ({e}): copy it whole"))?;
        let uuid = |b: Vec<u8>| {
            Uuid::from_slice(&b).map_err(|_| "the invitation token is damaged".to_string())
        };
        let peer_id: PeerId =
            peer.parse().map_err(|e| format!("the invitation token has a bad peer id ({e})"))?;
        let addresses = addresses
            .iter()
            .map(|a| a.parse::<Multiaddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("the invitation token has a bad address ({e})"))?;
        if addresses.is_empty() {
            return Err("the invitation token names no address of the inviting device".into());
        }
        let secret: [u8; 32] = secret
            .try_into()
            .map_err(|_| "the invitation token is damaged (bad secret)".to_string())?;
        Ok(Self {
            library_id: uuid(library)?,
            device_id: uuid(device)?,
            peer_id,
            addresses,
            secret,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> InviteToken {
        InviteToken {
            library_id: Uuid::new_v4(),
            device_id: Uuid::new_v4(),
            peer_id: libp2p::identity::Keypair::generate_ed25519().public().to_peer_id(),
            addresses: vec!["/ip4/192.168.1.10/tcp/7700".parse().unwrap()],
            secret: [9; 32],
        }
    }

    #[test]
    fn a_token_is_one_line_and_round_trips() {
        let t = token();
        let text = t.encode();
        assert!(text.starts_with(TOKEN_PREFIX));
        assert!(!text.contains(char::is_whitespace), "{text}");
        assert_eq!(InviteToken::decode(&format!("  {text}\n")).unwrap(), t);
    }

    #[test]
    fn a_damaged_token_says_what_is_wrong() {
        let text = token().encode();
        assert!(InviteToken::decode("hello").unwrap_err().contains("not an invitation token"));
        let cut = &text[..text.len() - 10];
        assert!(InviteToken::decode(cut).unwrap_err().contains("damaged"));
        let mut bad = text.clone();
        bad.push('!');
        assert!(InviteToken::decode(&bad).unwrap_err().contains("damaged"));
        assert!(InviteToken::decode(&"x".repeat(5000)).unwrap_err().contains("at most"));
        let mut no_addr = token();
        no_addr.addresses.clear();
        assert!(InviteToken::decode(&no_addr.encode()).unwrap_err().contains("no address"));
    }
}
