//! The device identity: an ed25519 keypair (libp2p) and a device uuid, created on first start
//! and persisted in the data directory.

use std::fs;
use std::io;
use std::path::Path;

use libp2p::identity::Keypair;
use libp2p::PeerId;
use uuid::Uuid;

const KEY_FILE: &str = "identity.key";
const DEVICE_FILE: &str = "device.id";

/// A device's identity.
#[derive(Clone)]
pub struct Identity {
    pub device_id: Uuid,
    pub keypair: Keypair,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("device_id", &self.device_id)
            .field("peer_id", &self.peer_id())
            .finish()
    }
}

impl Identity {
    /// The libp2p peer id of the keypair.
    pub fn peer_id(&self) -> PeerId {
        self.keypair.public().to_peer_id()
    }

    /// Loads the identity from `dir`, creating it on first use.
    pub fn load_or_create(dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let key_path = dir.join(KEY_FILE);
        let device_path = dir.join(DEVICE_FILE);
        if key_path.exists() && device_path.exists() {
            let bytes = fs::read(&key_path)?;
            let keypair = Keypair::from_protobuf_encoding(&bytes).map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", key_path.display()))
            })?;
            let text = fs::read_to_string(&device_path)?;
            let device_id = text.trim().parse().map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {e}", device_path.display()),
                )
            })?;
            return Ok(Self { device_id, keypair });
        }
        let keypair = Keypair::generate_ed25519();
        let device_id = Uuid::new_v4();
        let bytes = keypair
            .to_protobuf_encoding()
            .map_err(|e| io::Error::other(format!("cannot encode keypair: {e}")))?;
        write_private(&key_path, &bytes)?;
        write_private(&device_path, format!("{device_id}\n").as_bytes())?;
        Ok(Self { device_id, keypair })
    }
}

/// Writes a file readable by its owner only, atomically (temp file + rename).
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp)?;
        io::Write::write_all(&mut f, bytes)?;
        f.sync_all()?;
    }
    fs::rename(tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_created_once_and_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let a = Identity::load_or_create(dir.path()).unwrap();
        let b = Identity::load_or_create(dir.path()).unwrap();
        assert_eq!(a.device_id, b.device_id);
        assert_eq!(a.peer_id(), b.peer_id());
        let other = Identity::load_or_create(&dir.path().join("other")).unwrap();
        assert_ne!(a.device_id, other.device_id);
    }

    #[test]
    fn corrupt_key_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        Identity::load_or_create(dir.path()).unwrap();
        std::fs::write(dir.path().join(KEY_FILE), b"garbage").unwrap();
        let err = Identity::load_or_create(dir.path()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("identity.key"), "{err}");
    }
}
