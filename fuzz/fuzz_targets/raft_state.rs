//! Feeds arbitrary bytes to every decoder of the consensus core: peer
//! messages (from the network), and hard state, checkpoints and membership
//! configurations (from disk). What decodes must encode back to the same
//! bytes, so no two encodings mean the same thing.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use loglog_raft::{Checkpoint, Envelope, HardState, Membership};

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = Envelope::decode(&Bytes::copy_from_slice(data), 1 << 16) {
        let mut encoded = Vec::new();
        envelope.encode(&mut encoded);
        assert_eq!(encoded, data);
    }
    if let Some(state) = HardState::decode(data) {
        assert_eq!(&state.encode()[..], &data[..state.encode().len()]);
    }
    if let Ok(checkpoint) = Checkpoint::decode(data) {
        assert_eq!(Checkpoint::decode(&checkpoint.encode()), Ok(checkpoint));
    }
    if let Ok(membership) = Membership::decode(data) {
        assert_eq!(membership.encode(), data);
    }
});
