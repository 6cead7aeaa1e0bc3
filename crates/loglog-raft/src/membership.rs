//! Cluster membership: who votes, who only learns, and the payload of
//! membership config entries ([`loglog_proto::EntryKind::Config`]).
//!
//! # Config entry payload
//!
//! A config entry carries the *whole* new membership, not a delta, so a node
//! that replicates the log from its start learns the configuration by
//! reading the latest config entry. Little endian. Version 1 (ids only):
//!
//! ```text
//! 0      version u8        1
//! 1      voter count u8    V (1..=255)
//! 2      learner count u8  L (0..=255)
//! 3      reserved u8       0
//! 4..    V voter ids, u64 each, strictly increasing
//! ..     L learner ids, u64 each, strictly increasing
//! ```
//!
//! The payload is exactly `4 + 8 * (V + L)` bytes; a voter is never also a
//! learner. Version 2 has the same 4-byte head (version 2) and then one
//! record per member, voters first, each list in increasing id order:
//!
//! ```text
//! id u64, peer address length u8 P, P bytes, client address length u8 C, C bytes
//! ```
//!
//! The addresses are opaque bytes to the core ([`MemberAddress`]; `loglogd`
//! stores `host:port` text); both empty means "unknown". A membership with
//! no known address encodes as version 1, one with any as version 2, so
//! every membership has exactly one encoding (a version 2 payload without
//! any address is rejected). Anything else is a [`MembershipError`].
//!
//! # Changes
//!
//! One server at a time (Ongaro's single-server change): each config entry
//! differs from the previous one by one learner added, one learner promoted
//! to voter, or one node removed, so any two consecutive configurations
//! have overlapping majorities. A configuration takes effect on a node as
//! soon as its entry is appended to that node's log (and is undone if that
//! entry is truncated), not when it commits. A leader proposes a change only
//! when the previous one has committed and it has committed an entry of its
//! own term.
//!
//! Votes are counted in the candidate's latest configuration. A node may
//! campaign if it is a voter in its latest or in its committed
//! configuration: a voter whose own removal is appended but not committed
//! may hold the most up-to-date log, and the others may need its election
//! to finish the change. A leader that is not a voter of its latest
//! configuration leads until that configuration commits, then steps down.
//! Learners never campaign and never count towards commit; a learner is
//! promoted only once its durable log holds an entry of the leader's term
//! and is within `max_learner_lag_bytes` of the leader's commit offset.

use std::collections::{BTreeMap, BTreeSet};

use crate::types::NodeId;

/// Version byte of the config entry payload with ids only.
pub const CONFIG_PAYLOAD_VERSION: u8 = 1;
/// Version byte of the config entry payload with member addresses.
pub const CONFIG_PAYLOAD_VERSION_ADDRESSES: u8 = 2;
/// Most voters, and most learners, one configuration may hold.
pub const MAX_MEMBERS: usize = 255;
/// Longest peer address, and longest client address, of a member (bytes).
pub const MAX_ADDRESS_LEN: usize = 255;

/// Where a member is reached: opaque to the core, carried in config
/// entries so that every node (also one added later, also after a
/// restart) learns it from the log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberAddress {
    /// Address its peers dial.
    pub peer: Vec<u8>,
    /// Address clients use.
    pub client: Vec<u8>,
}

impl MemberAddress {
    pub fn new(peer: impl Into<Vec<u8>>, client: impl Into<Vec<u8>>) -> MemberAddress {
        MemberAddress {
            peer: peer.into(),
            client: client.into(),
        }
    }

    fn is_unknown(&self) -> bool {
        self.peer.is_empty() && self.client.is_empty()
    }

    fn fits(&self) -> bool {
        self.peer.len() <= MAX_ADDRESS_LEN && self.client.len() <= MAX_ADDRESS_LEN
    }
}

/// A cluster configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    pub voters: BTreeSet<NodeId>,
    pub learners: BTreeSet<NodeId>,
    /// Known addresses of members (never of a non-member, never an unknown
    /// one: use [`Membership::set_address`]).
    pub addresses: BTreeMap<NodeId, MemberAddress>,
}

/// Why a config payload does not decode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    #[error("config payload is {len} bytes, expected {expected}")]
    BadLength { len: usize, expected: usize },
    #[error("unknown config payload version {0}")]
    UnknownVersion(u8),
    #[error("config payload reserved byte is not zero")]
    ReservedNotZero,
    #[error("config payload ends inside a member record")]
    Truncated,
    #[error("config has no voter")]
    NoVoter,
    #[error("config ids are not strictly increasing, or a voter is also a learner")]
    NotCanonical,
}

/// One single-server membership change (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MembershipChange {
    /// Add a non-voting learner; it receives the log but does not vote and
    /// does not count towards commit.
    AddLearner(NodeId),
    /// Make a caught-up learner a voter.
    PromoteLearner(NodeId),
    /// Remove a voter or a learner. A leader removing itself keeps leading
    /// until the change commits, then steps down.
    Remove(NodeId),
}

impl Membership {
    /// A configuration of voters only (the bootstrap configuration).
    pub fn with_voters(voters: impl IntoIterator<Item = NodeId>) -> Membership {
        Membership {
            voters: voters.into_iter().collect(),
            learners: BTreeSet::new(),
            addresses: BTreeMap::new(),
        }
    }

    /// The known address of member `id`.
    pub fn address(&self, id: NodeId) -> Option<&MemberAddress> {
        self.addresses.get(&id)
    }

    /// Records the address of member `id` (an empty one forgets it).
    pub fn set_address(&mut self, id: NodeId, address: MemberAddress) -> Result<(), &'static str> {
        if !self.is_member(id) {
            return Err("an address is only kept for a member");
        }
        if !address.fits() {
            return Err("a member address is longer than 255 bytes");
        }
        if address.is_unknown() {
            self.addresses.remove(&id);
        } else {
            self.addresses.insert(id, address);
        }
        Ok(())
    }

    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id)
    }

    pub fn is_member(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.learners.contains(&id)
    }

    /// Votes needed for a majority of the voters.
    pub fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    /// Voters and learners, in id order (voters first).
    pub fn members(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.voters.iter().chain(self.learners.iter()).copied()
    }

    /// The configuration after `change`, or why the change does not apply.
    pub fn apply(&self, change: MembershipChange) -> Result<Membership, &'static str> {
        let mut next = self.clone();
        match change {
            MembershipChange::AddLearner(id) => {
                if self.is_member(id) {
                    return Err("node is already a member");
                }
                if next.learners.len() >= MAX_MEMBERS {
                    return Err("too many learners");
                }
                next.learners.insert(id);
            }
            MembershipChange::PromoteLearner(id) => {
                if !next.learners.remove(&id) {
                    return Err("node is not a learner");
                }
                if next.voters.len() >= MAX_MEMBERS {
                    return Err("too many voters");
                }
                next.voters.insert(id);
            }
            MembershipChange::Remove(id) => {
                if !next.voters.remove(&id) && !next.learners.remove(&id) {
                    return Err("node is not a member");
                }
                next.addresses.remove(&id);
                if next.voters.is_empty() {
                    return Err("cannot remove the last voter");
                }
            }
        }
        Ok(next)
    }

    /// The config entry payload (see the module docs).
    pub fn encode(&self) -> Vec<u8> {
        assert!(
            !self.voters.is_empty()
                && self.voters.len() <= MAX_MEMBERS
                && self.learners.len() <= MAX_MEMBERS,
            "membership sizes are checked before encoding"
        );
        assert!(
            self.addresses
                .iter()
                .all(|(id, address)| self.is_member(*id)
                    && address.fits()
                    && !address.is_unknown()),
            "addresses are checked by set_address"
        );
        let with_addresses = !self.addresses.is_empty();
        let mut out = Vec::with_capacity(4 + 10 * (self.voters.len() + self.learners.len()));
        out.push(if with_addresses {
            CONFIG_PAYLOAD_VERSION_ADDRESSES
        } else {
            CONFIG_PAYLOAD_VERSION
        });
        out.push(self.voters.len() as u8);
        out.push(self.learners.len() as u8);
        out.push(0);
        let unknown = MemberAddress::default();
        for id in self.members() {
            out.extend_from_slice(&id.to_le_bytes());
            if with_addresses {
                let address = self.addresses.get(&id).unwrap_or(&unknown);
                for part in [&address.peer, &address.client] {
                    out.push(part.len() as u8);
                    out.extend_from_slice(part);
                }
            }
        }
        out
    }

    /// Decodes a config entry payload; untrusted bytes give an error, never
    /// a panic.
    pub fn decode(payload: &[u8]) -> Result<Membership, MembershipError> {
        if payload.len() < 4 {
            return Err(MembershipError::BadLength {
                len: payload.len(),
                expected: 4,
            });
        }
        let with_addresses = match payload[0] {
            CONFIG_PAYLOAD_VERSION => false,
            CONFIG_PAYLOAD_VERSION_ADDRESSES => true,
            other => return Err(MembershipError::UnknownVersion(other)),
        };
        if payload[3] != 0 {
            return Err(MembershipError::ReservedNotZero);
        }
        let voter_count = usize::from(payload[1]);
        let learner_count = usize::from(payload[2]);
        let (ids, addresses) = if with_addresses {
            decode_records(&payload[4..], voter_count + learner_count)?
        } else {
            let expected = 4 + 8 * (voter_count + learner_count);
            if payload.len() != expected {
                return Err(MembershipError::BadLength {
                    len: payload.len(),
                    expected,
                });
            }
            let ids: Vec<NodeId> = payload[4..]
                .chunks_exact(8)
                .map(|chunk| u64::from_le_bytes(chunk.try_into().expect("chunks of 8")))
                .collect();
            (ids, BTreeMap::new())
        };
        if voter_count == 0 {
            return Err(MembershipError::NoVoter);
        }
        if with_addresses && addresses.is_empty() {
            // Without any address, version 1 is the encoding.
            return Err(MembershipError::NotCanonical);
        }
        let (voters, learners) = ids.split_at(voter_count);
        let increasing = |list: &[NodeId]| list.windows(2).all(|pair| pair[0] < pair[1]);
        if !increasing(voters) || !increasing(learners) {
            return Err(MembershipError::NotCanonical);
        }
        let membership = Membership {
            voters: voters.iter().copied().collect(),
            learners: learners.iter().copied().collect(),
            addresses,
        };
        if membership
            .voters
            .intersection(&membership.learners)
            .next()
            .is_some()
        {
            return Err(MembershipError::NotCanonical);
        }
        Ok(membership)
    }
}

/// The member records of a version 2 payload (after its 4-byte head):
/// ids in order, and the known addresses.
#[allow(clippy::type_complexity)]
fn decode_records(
    mut bytes: &[u8],
    count: usize,
) -> Result<(Vec<NodeId>, BTreeMap<NodeId, MemberAddress>), MembershipError> {
    let total = bytes.len() + 4;
    let short = || MembershipError::Truncated;
    let mut ids = Vec::with_capacity(count);
    let mut addresses = BTreeMap::new();
    for _ in 0..count {
        let (id, rest) = bytes.split_first_chunk::<8>().ok_or_else(short)?;
        let id = u64::from_le_bytes(*id);
        bytes = rest;
        let mut parts = [Vec::new(), Vec::new()];
        for part in &mut parts {
            let (&len, rest) = bytes.split_first().ok_or_else(short)?;
            let len = usize::from(len);
            let text = rest.get(..len).ok_or_else(short)?;
            *part = text.to_vec();
            bytes = &rest[len..];
        }
        let [peer, client] = parts;
        let address = MemberAddress { peer, client };
        if !address.is_unknown() {
            addresses.insert(id, address);
        }
        ids.push(id);
    }
    if !bytes.is_empty() {
        return Err(MembershipError::BadLength {
            len: total,
            expected: total - bytes.len(),
        });
    }
    Ok((ids, addresses))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn layout_matches_the_docs() {
        let mut membership = Membership {
            voters: [1, 2].into(),
            learners: [9].into(),
            addresses: BTreeMap::new(),
        };
        let bytes = membership.encode();
        assert_eq!(&bytes[..4], &[1, 2, 1, 0]);
        assert_eq!(&bytes[4..12], &1u64.to_le_bytes());
        assert_eq!(&bytes[12..20], &2u64.to_le_bytes());
        assert_eq!(&bytes[20..28], &9u64.to_le_bytes());
        assert_eq!(Membership::decode(&bytes), Ok(membership.clone()));

        membership
            .set_address(9, MemberAddress::new("h9:2", "h9:1"))
            .unwrap();
        let bytes = membership.encode();
        assert_eq!(&bytes[..4], &[2, 2, 1, 0]);
        assert_eq!(&bytes[4..12], &1u64.to_le_bytes());
        assert_eq!(&bytes[12..14], &[0, 0], "node 1: no address known");
        assert_eq!(&bytes[24..32], &9u64.to_le_bytes());
        assert_eq!(&bytes[32..], b"\x04h9:2\x04h9:1");
        assert_eq!(Membership::decode(&bytes), Ok(membership.clone()));

        let removed = membership.apply(MembershipChange::Remove(9)).unwrap();
        assert!(
            removed.addresses.is_empty(),
            "a removed member's address goes"
        );
        assert_eq!(removed.encode()[0], 1);
    }

    #[test]
    fn version_2_without_addresses_or_with_trailing_bytes_is_rejected() {
        let mut bytes = vec![2, 1, 0, 0];
        bytes.extend_from_slice(&5u64.to_le_bytes());
        bytes.extend_from_slice(&[0, 0]);
        assert_eq!(
            Membership::decode(&bytes),
            Err(MembershipError::NotCanonical)
        );
        bytes[12] = 1;
        assert!(Membership::decode(&bytes).is_err(), "truncated address");
        bytes.extend_from_slice(b"a\0x");
        assert!(Membership::decode(&bytes).is_err(), "trailing byte");
        let mut member = Membership::with_voters([5]);
        assert!(member.set_address(6, MemberAddress::new("a", "b")).is_err());
        assert!(member
            .set_address(5, MemberAddress::new(vec![b'a'; 256], "b"))
            .is_err());
    }

    #[test]
    fn changes_are_single_server() {
        let base = Membership::with_voters([1, 2, 3]);
        let with_learner = base.apply(MembershipChange::AddLearner(4)).unwrap();
        assert!(with_learner.learners.contains(&4));
        assert!(with_learner.apply(MembershipChange::AddLearner(4)).is_err());
        assert!(base.apply(MembershipChange::PromoteLearner(4)).is_err());
        let promoted = with_learner
            .apply(MembershipChange::PromoteLearner(4))
            .unwrap();
        assert_eq!(promoted.voters.len(), 4);
        assert_eq!(promoted.quorum(), 3);
        let single = Membership::with_voters([1]);
        assert!(single.apply(MembershipChange::Remove(1)).is_err());
    }

    #[test]
    fn voter_and_learner_at_once_is_rejected() {
        let mut bytes = vec![1, 1, 1, 0];
        bytes.extend_from_slice(&5u64.to_le_bytes());
        bytes.extend_from_slice(&5u64.to_le_bytes());
        assert_eq!(
            Membership::decode(&bytes),
            Err(MembershipError::NotCanonical)
        );
    }

    proptest! {
        #[test]
        fn round_trip(voters in proptest::collection::btree_set(any::<u64>(), 1..20), learners in proptest::collection::btree_set(any::<u64>(), 0..20), with_address in any::<u64>()) {
            let learners = learners.difference(&voters).copied().collect();
            let mut membership = Membership { voters, learners, addresses: BTreeMap::new() };
            let members: Vec<NodeId> = membership.members().collect();
            for (index, id) in members.into_iter().enumerate() {
                if with_address >> (index % 64) & 1 == 1 {
                    membership.set_address(id, MemberAddress::new(format!("p{id}"), "")).unwrap();
                }
            }
            let bytes = membership.encode();
            prop_assert_eq!(Membership::decode(&bytes), Ok(membership));
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = Membership::decode(&bytes);
        }
    }
}
