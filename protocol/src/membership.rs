//! Who is a member of a library: the [`Configuration`] carried by configuration entries of the
//! sync log, the changes a member may ask the leader for ([`MembershipChange`]), and the signed
//! address hints devices exchange ([`AddressHint`]).
//!
//! A configuration entry is a [`crate::SyncLogEntry`] with `change_type`
//! [`crate::ChangeType::Config`], `model_type` [`CONFIG_MODEL_TYPE`], `record_id`
//! [`CONFIG_RECORD_ID`], `version` 0, and `data` = the MessagePack encoding (named fields) of a
//! [`Configuration`]: the whole membership, not a difference. Every device uses the latest
//! configuration in its own log for votes and majorities (docs/architecture.md, "Membership").

use std::collections::BTreeSet;

use libp2p::identity::{Keypair, PublicKey};
use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The `model_type` of configuration entries. Model types starting with `lsync.` are reserved.
pub const CONFIG_MODEL_TYPE: &str = "lsync.config";

/// The `record_id` of configuration entries.
pub const CONFIG_RECORD_ID: &str = "configuration";

/// The prefix of model types reserved for lsync itself; a host cannot register one.
pub const RESERVED_MODEL_PREFIX: &str = "lsync.";

/// The library feature version this build understands. 1: before configuration entries (the
/// member list was kept by hand on every device); 2: configuration entries, learners,
/// pre-vote, invitations; 3: stamped entries and conflict records (docs/protocol.md, "Stamps":
/// last-writer-wins by timestamp, conflicts recorded in the log). A leader raises a library's version (in its next configuration
/// entry) only once every member reports supporting it.
pub const FEATURE_VERSION: u32 = 3;

/// The most members a configuration may hold.
pub const MAX_MEMBERS: usize = 64;
/// The most addresses one member may list.
pub const MAX_ADDRESSES: usize = 16;
/// The longest address, name or peer id text, in bytes.
pub const MAX_TEXT: usize = 256;

/// Whether a member counts in elections and majorities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum MemberRole {
    /// Votes, may campaign and lead, counts in every majority.
    Voter,
    /// Receives the log and may write (proposals), but never votes, never campaigns and is not
    /// counted in any majority.
    Learner,
}

impl std::fmt::Display for MemberRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Voter => "voter",
            Self::Learner => "learner",
        })
    }
}

/// What the leader may make of a member when it balances the number of voters.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
pub enum RolePreference {
    /// The leader decides: it keeps the number of voters odd (1, 2, 3, then 5), promoting
    /// caught-up learners and demoting a voter when the count would be even.
    #[default]
    Auto,
    /// Stays a learner for good (e.g. a phone that is mostly offline).
    Learner,
    /// Promoted once caught up, whatever the count.
    Voter,
}

impl std::fmt::Display for RolePreference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Learner => "learner",
            Self::Voter => "voter",
        })
    }
}

/// One member device of a library.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Member {
    /// The device's stable id.
    pub device_id: Uuid,
    /// Its libp2p peer id, in text form (authenticates it: Noise proves the key).
    pub peer_id: String,
    /// Multiaddrs it was reachable at when it joined (hints: see [`AddressHint`]).
    pub addresses: Vec<String>,
    /// A human-readable name.
    pub name: String,
    /// Voter or learner.
    pub role: MemberRole,
    /// What the leader may make of it (absent: [`RolePreference::Auto`]).
    #[serde(default)]
    pub preference: RolePreference,
}

/// The membership of a library, as of one configuration entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Configuration {
    /// The library's feature version (see [`FEATURE_VERSION`]).
    pub feature_version: u32,
    /// Every member, sorted by device id, each once.
    pub members: Vec<Member>,
}

/// Why a [`Configuration`] or a [`MembershipChange`] is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidConfiguration(pub String);

impl Configuration {
    /// A configuration of `members` (sorted here).
    pub fn new(feature_version: u32, mut members: Vec<Member>) -> Self {
        members.sort_by_key(|m| m.device_id);
        Self { feature_version, members }
    }

    /// The member `device_id`, if any.
    pub fn member(&self, device_id: Uuid) -> Option<&Member> {
        self.members.iter().find(|m| m.device_id == device_id)
    }

    /// The member whose peer id is `peer_id`, if any.
    pub fn member_by_peer(&self, peer_id: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.peer_id == peer_id)
    }

    /// Whether `device_id` is a member.
    pub fn contains(&self, device_id: Uuid) -> bool {
        self.member(device_id).is_some()
    }

    /// Whether `device_id` is a voter.
    pub fn is_voter(&self, device_id: Uuid) -> bool {
        self.member(device_id).is_some_and(|m| m.role == MemberRole::Voter)
    }

    /// The voters' device ids.
    pub fn voters(&self) -> BTreeSet<Uuid> {
        self.with_role(MemberRole::Voter)
    }

    /// The learners' device ids.
    pub fn learners(&self) -> BTreeSet<Uuid> {
        self.with_role(MemberRole::Learner)
    }

    fn with_role(&self, role: MemberRole) -> BTreeSet<Uuid> {
        self.members.iter().filter(|m| m.role == role).map(|m| m.device_id).collect()
    }

    /// Checks what every configuration must be: 1 to [`MAX_MEMBERS`] members sorted by device
    /// id, no device or peer id twice, at least one voter, valid peer ids and addresses, bounded
    /// texts, a feature version of at least 2.
    pub fn validate(&self) -> Result<(), InvalidConfiguration> {
        let bad = |m: String| Err(InvalidConfiguration(m));
        if self.feature_version < 2 {
            return bad(format!(
                "feature version {} predates configurations",
                self.feature_version
            ));
        }
        if self.members.is_empty() || self.members.len() > MAX_MEMBERS {
            return bad(format!(
                "a configuration holds 1 to {MAX_MEMBERS} members, not {}",
                self.members.len()
            ));
        }
        if !self.members.windows(2).all(|w| w[0].device_id < w[1].device_id) {
            return bad("members must be sorted by device id, each once".into());
        }
        let peers: BTreeSet<&str> = self.members.iter().map(|m| m.peer_id.as_str()).collect();
        if peers.len() != self.members.len() {
            return bad("two members share a peer id".into());
        }
        if !self.members.iter().any(|m| m.role == MemberRole::Voter) {
            return bad("a configuration needs at least one voter".into());
        }
        self.members.iter().try_for_each(Member::validate)
    }

    /// The MessagePack encoding (named fields) stored in a configuration entry's `data`.
    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec_named(self).expect("a configuration always encodes")
    }

    /// Decodes and validates a configuration entry's `data`.
    pub fn decode(data: &[u8]) -> Result<Self, InvalidConfiguration> {
        let config: Self = rmp_serde::from_slice(data)
            .map_err(|e| InvalidConfiguration(format!("undecodable configuration: {e}")))?;
        config.validate()?;
        Ok(config)
    }

    /// The configuration after `change` made by the leader (the caller checks who may ask for
    /// it): an added device joins as a learner; a removed one must be a member and not the last
    /// voter; a preference applies to a member.
    pub fn with_change(&self, change: &MembershipChange) -> Result<Self, InvalidConfiguration> {
        let bad = |m: String| Err(InvalidConfiguration(m));
        let mut members = self.members.clone();
        match change {
            MembershipChange::Add { member } => {
                if let Some(existing) = self.member(member.device_id) {
                    if existing.peer_id != member.peer_id {
                        return bad(format!(
                            "device {} is a member already, with another peer id",
                            member.device_id
                        ));
                    }
                    return Ok(self.clone());
                }
                if self.member_by_peer(&member.peer_id).is_some() {
                    return bad(format!("peer {} is a member already", member.peer_id));
                }
                let mut member = member.clone();
                member.role = MemberRole::Learner;
                members.push(member);
            }
            MembershipChange::Remove { device_id } => {
                let Some(at) = members.iter().position(|m| m.device_id == *device_id) else {
                    return bad(format!("device {device_id} is not a member"));
                };
                members.remove(at);
                if !members.iter().any(|m| m.role == MemberRole::Voter) {
                    return bad(format!("device {device_id} is the last voter"));
                }
            }
            MembershipChange::SetPreference { device_id, preference } => {
                let Some(m) = members.iter_mut().find(|m| m.device_id == *device_id) else {
                    return bad(format!("device {device_id} is not a member"));
                };
                m.preference = *preference;
                if *preference == RolePreference::Learner && m.role == MemberRole::Voter {
                    m.role = MemberRole::Learner;
                }
            }
        }
        let config = Self::new(self.feature_version, members);
        config.validate()?;
        Ok(config)
    }

    /// The set of voters of `self` and of `other` differ by at most one device (a single-server
    /// change, docs/architecture.md "Membership").
    pub fn is_single_voter_change_from(&self, other: &Configuration) -> bool {
        let (a, b) = (self.voters(), other.voters());
        a.symmetric_difference(&b).count() <= 1
    }
}

impl Member {
    /// Checks the peer id, the addresses and the lengths of the texts.
    pub fn validate(&self) -> Result<(), InvalidConfiguration> {
        let bad = |m: String| Err(InvalidConfiguration(m));
        if self.peer_id.parse::<PeerId>().is_err() {
            return bad(format!("device {}: bad peer id {:?}", self.device_id, self.peer_id));
        }
        if self.name.len() > MAX_TEXT {
            return bad(format!("device {}: name longer than {MAX_TEXT} bytes", self.device_id));
        }
        check_addresses(&self.addresses)
            .map_err(|e| InvalidConfiguration(format!("device {}: {e}", self.device_id)))
    }
}

/// Checks a list of addresses: at most [`MAX_ADDRESSES`], each a multiaddr of at most
/// [`MAX_TEXT`] bytes.
pub fn check_addresses(addresses: &[String]) -> Result<(), String> {
    if addresses.len() > MAX_ADDRESSES {
        return Err(format!("more than {MAX_ADDRESSES} addresses"));
    }
    for a in addresses {
        if a.len() > MAX_TEXT || a.parse::<Multiaddr>().is_err() {
            return Err(format!("bad address {a:?}"));
        }
    }
    Ok(())
}

/// A change of membership a member asks the leader for (`ChangeMembership`). The leader turns
/// it into a new configuration entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MembershipChange {
    /// A new device, which joins as a learner (its `role` is ignored).
    Add {
        /// The device.
        member: Member,
    },
    /// A device leaves the library; every device refuses it once it applied the entry.
    Remove {
        /// The device.
        device_id: Uuid,
    },
    /// What the leader may make of a member.
    SetPreference {
        /// The member.
        device_id: Uuid,
        /// Its new preference.
        preference: RolePreference,
    },
}

/// The addresses a device listens on, signed by its libp2p key. Devices exchange them with
/// `AnnounceAddresses` and keep, per device, the hint with the highest `counter` whose signature
/// verifies; a hint changes where a member is dialled, never who is a member.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AddressHint {
    /// The device whose addresses these are.
    pub device_id: Uuid,
    /// Its addresses (multiaddrs).
    pub addresses: Vec<String>,
    /// Strictly increasing per device (milliseconds since the epoch when it was signed).
    pub counter: u64,
    /// Ed25519 signature, by the device's libp2p key, of [`AddressHint::signed_bytes`].
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

/// The domain tag that starts every signed address hint.
const HINT_DOMAIN: &str = "lsync/address-hint/1";

impl AddressHint {
    /// The bytes that are signed: the MessagePack array
    /// `["lsync/address-hint/1", device_id (bin 16), counter (uint), [address (str), …]]`.
    pub fn signed_bytes(device_id: Uuid, counter: u64, addresses: &[String]) -> Vec<u8> {
        rmp_serde::to_vec(&(
            HINT_DOMAIN,
            serde_bytes::Bytes::new(device_id.as_bytes()),
            counter,
            addresses,
        ))
        .expect("a hint always encodes")
    }

    /// A hint of `addresses` signed with `keypair`.
    pub fn sign(keypair: &Keypair, device_id: Uuid, counter: u64, addresses: Vec<String>) -> Self {
        let bytes = Self::signed_bytes(device_id, counter, &addresses);
        let signature = keypair.sign(&bytes).expect("ed25519 signing never fails");
        Self { device_id, addresses, counter, signature }
    }

    /// Whether the signature is `peer_id`'s (its Ed25519 key is inside the peer id) and the
    /// addresses are well-formed.
    pub fn verify(&self, peer_id: &PeerId) -> bool {
        if check_addresses(&self.addresses).is_err() || self.signature.len() > 128 {
            return false;
        }
        let Some(key) = public_key_of(peer_id) else { return false };
        key.verify(
            &Self::signed_bytes(self.device_id, self.counter, &self.addresses),
            &self.signature,
        )
    }
}

/// The public key inlined in a peer id (Ed25519 peer ids use the identity multihash).
pub fn public_key_of(peer_id: &PeerId) -> Option<PublicKey> {
    let multihash = peer_id.as_ref();
    if multihash.code() != 0 {
        return None;
    }
    PublicKey::try_decode_protobuf(multihash.digest()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(n: u128, role: MemberRole) -> Member {
        Member {
            device_id: Uuid::from_u128(n),
            peer_id: PeerId::random().to_string(),
            addresses: vec!["/ip4/127.0.0.1/tcp/7700".into()],
            name: format!("d{n}"),
            role,
            preference: RolePreference::Auto,
        }
    }

    #[test]
    fn a_configuration_round_trips_and_is_validated() {
        let c = Configuration::new(
            FEATURE_VERSION,
            vec![member(2, MemberRole::Learner), member(1, MemberRole::Voter)],
        );
        assert_eq!(c.members[0].device_id, Uuid::from_u128(1), "sorted");
        assert_eq!(Configuration::decode(&c.encode()).unwrap(), c);
        assert_eq!(c.voters().len(), 1);
        assert_eq!(c.learners().len(), 1);

        let no_voter = Configuration::new(2, vec![member(1, MemberRole::Learner)]);
        assert!(no_voter.validate().unwrap_err().0.contains("voter"));
        let twice =
            Configuration { feature_version: 2, members: vec![member(1, MemberRole::Voter); 2] };
        assert!(twice.validate().is_err());
        let mut bad_peer = member(1, MemberRole::Voter);
        bad_peer.peer_id = "nope".into();
        assert!(Configuration::new(2, vec![bad_peer]).validate().is_err());
        let mut bad_addr = member(1, MemberRole::Voter);
        bad_addr.addresses = vec!["not an address".into()];
        assert!(Configuration::new(2, vec![bad_addr]).validate().is_err());
        assert!(Configuration::new(1, vec![member(1, MemberRole::Voter)]).validate().is_err());
        assert!(Configuration::decode(&[0xc1]).is_err());
    }

    #[test]
    fn changes_add_learners_remove_members_and_keep_a_voter() {
        let c = Configuration::new(FEATURE_VERSION, vec![member(1, MemberRole::Voter)]);
        let joiner = member(2, MemberRole::Voter);
        let added = c.with_change(&MembershipChange::Add { member: joiner.clone() }).unwrap();
        assert_eq!(added.member(joiner.device_id).unwrap().role, MemberRole::Learner);
        assert_eq!(
            added.with_change(&MembershipChange::Add { member: joiner.clone() }).unwrap(),
            added
        );
        let mut other_peer = joiner.clone();
        other_peer.peer_id = PeerId::random().to_string();
        assert!(added.with_change(&MembershipChange::Add { member: other_peer }).is_err());
        let removed =
            added.with_change(&MembershipChange::Remove { device_id: joiner.device_id }).unwrap();
        assert_eq!(removed, c);
        assert!(c
            .with_change(&MembershipChange::Remove { device_id: Uuid::from_u128(1) })
            .is_err());
        assert!(c
            .with_change(&MembershipChange::Remove { device_id: Uuid::from_u128(9) })
            .is_err());
        let pinned = added
            .with_change(&MembershipChange::SetPreference {
                device_id: joiner.device_id,
                preference: RolePreference::Learner,
            })
            .unwrap();
        assert_eq!(pinned.member(joiner.device_id).unwrap().preference, RolePreference::Learner);
        assert!(pinned.is_single_voter_change_from(&c));
    }

    #[test]
    fn address_hints_verify_only_with_the_signers_key() {
        let key = Keypair::generate_ed25519();
        let peer = key.public().to_peer_id();
        let device = Uuid::from_u128(5);
        let hint = AddressHint::sign(&key, device, 7, vec!["/ip4/10.0.0.2/tcp/7700".into()]);
        assert!(hint.verify(&peer));
        assert!(!hint.verify(&PeerId::random()), "another peer's key");
        let mut forged = hint.clone();
        forged.addresses = vec!["/ip4/10.6.6.6/tcp/7700".into()];
        assert!(!forged.verify(&peer), "addresses changed after signing");
        let mut later = hint.clone();
        later.counter = 8;
        assert!(!later.verify(&peer), "counter changed after signing");
        let mut other_device = hint;
        other_device.device_id = Uuid::from_u128(6);
        assert!(!other_device.verify(&peer), "device changed after signing");
    }
}
