//! The node's durable Raft state (`<data-dir>/node.state`), saved through
//! `loglog_storage::state_file` (atomic replace, CRC-framed).
//!
//! Payload, little endian:
//!
//! ```text
//! 0..4   node state format version  1
//! 4..8   reserved, 0
//! 8..16  node id
//! 16..24 current term
//! 24..32 voted for (node id, 0: none)
//! ```
//! Later versions may append fields; this version refuses any other version
//! number rather than guess.

/// Version of the node state payload this build reads and writes.
pub const NODE_STATE_VERSION: u32 = 1;
const NODE_STATE_LEN: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeState {
    pub node_id: u64,
    pub term: u64,
    pub voted_for: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeStateError {
    UnsupportedVersion { found: u32 },
    Malformed { reason: String },
}

impl NodeState {
    pub fn encode(&self) -> [u8; NODE_STATE_LEN] {
        let mut out = [0u8; NODE_STATE_LEN];
        out[0..4].copy_from_slice(&NODE_STATE_VERSION.to_le_bytes());
        out[8..16].copy_from_slice(&self.node_id.to_le_bytes());
        out[16..24].copy_from_slice(&self.term.to_le_bytes());
        out[24..32].copy_from_slice(&self.voted_for.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<NodeState, NodeStateError> {
        let Some(version) = bytes.get(0..4) else {
            return Err(NodeStateError::Malformed {
                reason: format!("{} bytes is too short for a version", bytes.len()),
            });
        };
        let version = u32::from_le_bytes(version.try_into().expect("4 bytes"));
        if version != NODE_STATE_VERSION {
            return Err(NodeStateError::UnsupportedVersion { found: version });
        }
        if bytes.len() != NODE_STATE_LEN {
            return Err(NodeStateError::Malformed {
                reason: format!("expected {NODE_STATE_LEN} bytes, found {}", bytes.len()),
            });
        }
        if bytes[4..8] != [0; 4] {
            return Err(NodeStateError::Malformed {
                reason: "reserved bytes are not zero".to_string(),
            });
        }
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        Ok(NodeState {
            node_id: u64_at(8),
            term: u64_at(16),
            voted_for: u64_at(24),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let state = NodeState {
            node_id: 3,
            term: 9,
            voted_for: 3,
        };
        assert_eq!(NodeState::decode(&state.encode()), Ok(state));
        let mut future = state.encode();
        future[0] = 2;
        assert_eq!(
            NodeState::decode(&future),
            Err(NodeStateError::UnsupportedVersion { found: 2 })
        );
        assert!(matches!(
            NodeState::decode(&state.encode()[..20]),
            Err(NodeStateError::Malformed { .. })
        ));
        assert!(matches!(
            NodeState::decode(&[1]),
            Err(NodeStateError::Malformed { .. })
        ));
    }
}
