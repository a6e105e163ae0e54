//! The lsync wire protocol.
//!
//! - [`message`]: [`SyncMessage`] (every request and response), [`SyncLogEntry`],
//!   [`SyncRole`], [`ChangeType`], [`ErrorCode`];
//! - [`chain`]: the log's hash chain, [`ChainHash`] and [`chain_hash`] (the canonical encoding
//!   of an entry);
//! - [`membership`]: [`Configuration`] (the payload of configuration entries), [`Member`],
//!   [`MembershipChange`], signed [`AddressHint`]s;
//! - [`stamp`]: [`Hlc`] (hybrid logical clock timestamps) and [`EntryStamp`], what changes
//!   and entries carry for conflict resolution;
//! - [`codec`]: the length-prefixed MessagePack framing and the libp2p
//!   `request_response::Codec` ([`SyncCodec`]);
//! - [`PROTOCOL`]: the protocol id, `/spacedrive/sync/2.0.0` ([`PROTOCOL_V1`], the version
//!   before configuration entries, is still spoken with peers that know nothing newer).
//!
//! The complete wire specification is `docs/protocol.md`, included below.
#![doc = include_str!("../../docs/protocol.md")]
#![forbid(unsafe_code)]

pub mod chain;
pub mod codec;
pub mod membership;
pub mod message;
pub mod stamp;

pub use chain::{canonical_encoding, chain_hash, ChainHash};
pub use codec::{SyncCodec, DEFAULT_MAX_FRAME};
pub use libp2p::StreamProtocol;
pub use membership::{
    AddressHint, Configuration, InvalidConfiguration, Member, MemberRole, MembershipChange,
    RolePreference, CONFIG_MODEL_TYPE, CONFIG_RECORD_ID, FEATURE_VERSION, RESERVED_MODEL_PREFIX,
};
pub use message::{
    entry_bytes, ChangeType, ErrorCode, ProposedChange, SyncLogEntry, SyncMessage, SyncRole,
    ENTRY_OVERHEAD, ENVELOPE_BYTES, MAX_TERM, MIN_FRAME_BYTES,
};
pub use stamp::{EntryStamp, Hlc};

/// The protocol id negotiated on every sync stream: version 2 adds configuration entries,
/// `Join`/`Joined`, `ChangeMembership`/`MembershipResult`, `AnnounceAddresses` and pre-votes
/// (docs/protocol.md §11).
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/spacedrive/sync/2.0.0");

/// The protocol id of version 1 (the seed card's ALPN), still accepted from and spoken to
/// peers that do not support [`PROTOCOL`]; the messages new in version 2 are never sent on it.
pub const PROTOCOL_V1: StreamProtocol = StreamProtocol::new("/spacedrive/sync/1.0.0");
