//! Protocol versions (docs/protocol.md §11): which messages version 1 lacks, and which version
//! to speak to each peer. Pure: no I/O, no clock; the event loop feeds it what it saw.
//!
//! The swarm runs two request-response behaviours, because multistream-select stays lazy
//! (`V1Lazy`: the request leaves with the protocol proposal, no extra round trip) only when the
//! dialer proposes exactly one protocol — with two, it waits for the listener's answer to the
//! first. So `sync` proposes [`PROTOCOL`](lsync_protocol::PROTOCOL) (version 2) outbound and
//! accepts both versions inbound; `sync_v1` proposes
//! [`PROTOCOL_V1`] outbound only. [`PeerVersions`] picks one per
//! request:
//!
//! - a peer of unknown version is spoken to on version 2; the request keeps a copy for a resend
//!   (if it exists in version 1) until the peer is known;
//! - a peer that answered on version 2, or sent us a version-2 request, is known as version 2;
//! - a peer that refused version 2, or sent us a version-1 request, is known as version 1: its
//!   requests go on version 1, and a message of version 2 only ([`needs_version_2`]) fails
//!   with `UnsupportedProtocol` without being sent;
//! - what is known is believed until the peer's last connection closes (the peer may have been
//!   upgraded or downgraded when it comes back); then the next request tries version 2 again.
//!   [`PeerVersions::version`] still reports the last negotiated version of a member for
//!   status; a peer that is no member is forgotten at once, so guests cost no memory.

use std::collections::HashMap;

use libp2p::{PeerId, StreamProtocol};
use lsync_protocol::{ChangeType, SyncMessage, PROTOCOL_V1};

/// The version a protocol id stands for: 1 for [`PROTOCOL_V1`], 2 otherwise (the swarm accepts
/// nothing else).
pub(super) fn version_of(protocol: &StreamProtocol) -> u32 {
    if *protocol == PROTOCOL_V1 {
        1
    } else {
        2
    }
}

/// Whether `message` does not exist in version 1: `Join`, `Joined`, `ChangeMembership`,
/// `MembershipResult`, `AnnounceAddresses`, a pre-vote `RequestVote`/`Vote`, and any message
/// carrying a configuration entry (a `SyncLogEntry`, or a `ProposedChange`, whose
/// `change_type` is `Config`: a version-1 peer cannot decode it).
pub(super) fn needs_version_2(message: &SyncMessage) -> bool {
    match message {
        SyncMessage::Join { .. }
        | SyncMessage::Joined { .. }
        | SyncMessage::ChangeMembership { .. }
        | SyncMessage::MembershipResult { .. }
        | SyncMessage::AnnounceAddresses { .. } => true,
        SyncMessage::RequestVote { pre_vote, .. } | SyncMessage::Vote { pre_vote, .. } => *pre_vote,
        SyncMessage::NewEntries { entries, .. } | SyncMessage::EntriesResponse { entries, .. } => {
            entries.iter().any(|entry| entry.change_type == ChangeType::Config)
        }
        SyncMessage::Propose { changes, .. } => {
            changes.iter().any(|change| change.change_type == ChangeType::Config)
        }
        SyncMessage::FetchEntries { .. }
        | SyncMessage::Acknowledge { .. }
        | SyncMessage::Heartbeat { .. }
        | SyncMessage::SyncRequired { .. }
        | SyncMessage::TimeoutNow { .. }
        | SyncMessage::ProposalResult { .. }
        | SyncMessage::Error { .. } => false,
    }
}

/// How to send one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Speak {
    /// On version 2; `keep_copy`: the peer's version is unknown and the message exists in
    /// version 1, so keep a copy to resend it on version 1 if the peer refuses version 2.
    V2 { keep_copy: bool },
    /// On version 1.
    V1,
    /// Not at all: the peer speaks version 1 and the message does not exist there.
    Unsupported,
}

/// What is known of one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Known {
    /// The version negotiated last.
    version: u32,
    /// Whether that was on a connection that is still open (otherwise it is only reported).
    live: bool,
}

/// The version negotiated with each peer.
#[derive(Debug, Default)]
pub(super) struct PeerVersions {
    peers: HashMap<PeerId, Known>,
}

impl PeerVersions {
    /// How to send `message` to `peer`.
    pub(super) fn speak(&self, peer: &PeerId, message: &SyncMessage) -> Speak {
        match self.peers.get(peer) {
            Some(Known { version: 2, live: true }) => Speak::V2 { keep_copy: false },
            Some(Known { version: 1, live: true }) if needs_version_2(message) => {
                Speak::Unsupported
            }
            Some(Known { version: 1, live: true }) => Speak::V1,
            _ => Speak::V2 { keep_copy: !needs_version_2(message) },
        }
    }

    /// A stream of `version` was negotiated with `peer` (a response came back on it, or the
    /// peer sent a request on it).
    pub(super) fn negotiated(&mut self, peer: PeerId, version: u32) {
        self.peers.insert(peer, Known { version, live: true });
    }

    /// `peer` refused version 2: it is spoken to on version 1 from now on.
    pub(super) fn refused_version_2(&mut self, peer: PeerId) {
        self.negotiated(peer, 1);
    }

    /// The last connection to `peer` closed: what is known of it is no longer believed, and is
    /// forgotten unless `remember` (a member, whose version status shows).
    pub(super) fn disconnected(&mut self, peer: &PeerId, remember: bool) {
        if remember {
            if let Some(known) = self.peers.get_mut(peer) {
                known.live = false;
            }
        } else {
            self.peers.remove(peer);
        }
    }

    /// Forgets `peer` (a member of no library any more).
    pub(super) fn forget(&mut self, peer: &PeerId) {
        self.peers.remove(peer);
    }

    /// The version negotiated last with `peer`, if any.
    pub(super) fn version(&self, peer: &PeerId) -> Option<u32> {
        self.peers.get(peer).map(|known| known.version)
    }
}

#[cfg(test)]
mod tests {
    use lsync_protocol::{ProposedChange, SyncLogEntry, SyncRole, PROTOCOL};
    use uuid::Uuid;

    use super::*;

    fn heartbeat() -> SyncMessage {
        SyncMessage::Heartbeat {
            library_id: Uuid::nil(),
            term: 1,
            current_sequence: 0,
            last_term: 0,
            role: SyncRole::Follower,
            commit_sequence: 0,
            features: 0,
            last_hash: None,
        }
    }

    fn announce() -> SyncMessage {
        SyncMessage::AnnounceAddresses { library_id: Uuid::nil(), hints: Vec::new() }
    }

    fn entry(change_type: ChangeType) -> SyncLogEntry {
        SyncLogEntry {
            sequence: 1,
            term: 1,
            origin_device: Uuid::nil(),
            timestamp_ms: 0,
            model_type: "tag".into(),
            record_id: "1".into(),
            change_type,
            version: 1,
            data: Vec::new(),
            proposal_id: None,
            hash: None,
            stamp: None,
        }
    }

    fn new_entries(entries: Vec<SyncLogEntry>) -> SyncMessage {
        SyncMessage::NewEntries {
            library_id: Uuid::nil(),
            term: 1,
            from_sequence: 1,
            to_sequence: entries.len() as u64,
            entry_count: entries.len() as u64,
            prev_term: 0,
            entries,
            commit_sequence: 0,
            prev_hash: None,
        }
    }

    fn vote_request(pre_vote: bool) -> SyncMessage {
        SyncMessage::RequestVote {
            library_id: Uuid::nil(),
            term: 2,
            candidate: Uuid::nil(),
            last_log_term: 1,
            last_log_sequence: 1,
            transfer: false,
            pre_vote,
        }
    }

    #[test]
    fn protocol_ids_map_to_versions() {
        assert_eq!(version_of(&PROTOCOL_V1), 1);
        assert_eq!(version_of(&PROTOCOL), 2);
    }

    #[test]
    fn messages_new_in_version_2_need_it() {
        assert!(needs_version_2(&announce()));
        let join = SyncMessage::Join {
            library_id: Uuid::nil(),
            secret: vec![1],
            device_id: Uuid::nil(),
            name: "d".into(),
            addresses: Vec::new(),
        };
        assert!(needs_version_2(&join));
    }

    #[test]
    fn only_a_pre_vote_needs_version_2() {
        assert!(needs_version_2(&vote_request(true)));
        assert!(!needs_version_2(&vote_request(false)));
        let vote = |pre_vote| SyncMessage::Vote {
            library_id: Uuid::nil(),
            term: 2,
            voter: Uuid::nil(),
            granted: true,
            pre_vote,
        };
        assert!(needs_version_2(&vote(true)));
        assert!(!needs_version_2(&vote(false)));
    }

    #[test]
    fn a_configuration_entry_needs_version_2() {
        assert!(!needs_version_2(&new_entries(vec![entry(ChangeType::Insert)])));
        assert!(needs_version_2(&new_entries(vec![
            entry(ChangeType::Insert),
            entry(ChangeType::Config)
        ])));
        let propose = |change_type| SyncMessage::Propose {
            library_id: Uuid::nil(),
            term: 1,
            proposal_id: Uuid::nil(),
            origin_device: Uuid::nil(),
            changes: vec![ProposedChange {
                model_type: "tag".into(),
                record_id: "1".into(),
                change_type,
                data: Vec::new(),
                base_version: None,
                hlc: None,
            }],
        };
        assert!(needs_version_2(&propose(ChangeType::Config)));
        assert!(!needs_version_2(&propose(ChangeType::Update)));
    }

    #[test]
    fn version_1_messages_do_not_need_version_2() {
        assert!(!needs_version_2(&heartbeat()));
        assert!(!needs_version_2(&new_entries(Vec::new())));
    }

    #[test]
    fn an_unknown_peer_gets_version_2_with_a_copy_kept() {
        let versions = PeerVersions::default();
        let peer = PeerId::random();
        assert_eq!(versions.speak(&peer, &heartbeat()), Speak::V2 { keep_copy: true });
        assert_eq!(versions.version(&peer), None);
    }

    #[test]
    fn no_copy_is_kept_of_a_message_version_1_lacks() {
        let versions = PeerVersions::default();
        assert_eq!(versions.speak(&PeerId::random(), &announce()), Speak::V2 { keep_copy: false });
    }

    #[test]
    fn a_version_2_peer_gets_version_2_without_a_copy() {
        let mut versions = PeerVersions::default();
        let peer = PeerId::random();
        versions.negotiated(peer, 2);
        assert_eq!(versions.speak(&peer, &heartbeat()), Speak::V2 { keep_copy: false });
        assert_eq!(versions.version(&peer), Some(2));
    }

    #[test]
    fn a_peer_that_refused_version_2_gets_version_1() {
        let mut versions = PeerVersions::default();
        let peer = PeerId::random();
        versions.refused_version_2(peer);
        assert_eq!(versions.speak(&peer, &heartbeat()), Speak::V1);
        assert_eq!(versions.version(&peer), Some(1));
    }

    #[test]
    fn a_version_1_peer_is_never_sent_a_version_2_message() {
        let mut versions = PeerVersions::default();
        let peer = PeerId::random();
        versions.negotiated(peer, 1);
        assert_eq!(versions.speak(&peer, &announce()), Speak::Unsupported);
        assert_eq!(versions.speak(&peer, &vote_request(true)), Speak::Unsupported);
    }

    #[test]
    fn a_reconnected_member_is_tried_on_version_2_again_and_still_reported() {
        let mut versions = PeerVersions::default();
        let peer = PeerId::random();
        versions.refused_version_2(peer);
        versions.disconnected(&peer, true);
        assert_eq!(versions.speak(&peer, &heartbeat()), Speak::V2 { keep_copy: true });
        assert_eq!(versions.version(&peer), Some(1));
    }

    #[test]
    fn a_disconnected_non_member_is_forgotten() {
        let mut versions = PeerVersions::default();
        let peer = PeerId::random();
        versions.negotiated(peer, 2);
        versions.disconnected(&peer, false);
        assert_eq!(versions.version(&peer), None);
    }
}
