//! The lsync wire protocol.
//!
//! - [`message`]: [`SyncMessage`] (every request and response), [`SyncLogEntry`],
//!   [`SyncRole`], [`ChangeType`], [`ErrorCode`];
//! - [`codec`]: the length-prefixed MessagePack framing and the libp2p
//!   `request_response::Codec` ([`SyncCodec`]);
//! - [`PROTOCOL`]: the protocol id, `/spacedrive/sync/1.0.0`.
//!
//! The complete wire specification is `docs/protocol.md`, included below.
#![doc = include_str!("../../docs/protocol.md")]
#![forbid(unsafe_code)]

pub mod codec;
pub mod message;

pub use codec::{SyncCodec, DEFAULT_MAX_FRAME};
pub use libp2p::StreamProtocol;
pub use message::{ChangeType, ErrorCode, ProposedChange, SyncLogEntry, SyncMessage, SyncRole};

/// The protocol id negotiated on every sync stream (the seed card's ALPN).
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/spacedrive/sync/1.0.0");
