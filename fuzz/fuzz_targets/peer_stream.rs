//! Feeds arbitrary bytes to a node's peer listener the way a connection
//! delivers them (loglogd's cluster transport): the handshake's fixed head,
//! the cluster id, then frames of `length u32 LE, Envelope bytes`, each
//! capped, decoded and checked to be addressed as the connection is. What
//! is accepted must encode back to the same bytes.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use loglogd::fuzzing::{
    decode_handshake_head, decode_peer_frame, encode_handshake, max_frame_len, HANDSHAKE_FIXED_LEN,
};

/// Small enough that the fuzzer meets the cap (the node's is 8 MiB and more).
const MAX_ENTRIES_BYTES: u64 = 4096;
const OWN_ID: u64 = 2;

fuzz_target!(|data: &[u8]| {
    let Some((head, rest)) = data.split_first_chunk::<HANDSHAKE_FIXED_LEN>() else {
        return;
    };
    let Ok((from, to, id_len)) = decode_handshake_head(head) else {
        return;
    };
    let Some(cluster_id) = rest.get(..id_len) else {
        return;
    };
    // The node compares the id as bytes with its own (printable ASCII);
    // whatever a dialer of this build sends, it encodes like this.
    if let Ok(text) = std::str::from_utf8(cluster_id) {
        assert_eq!(
            encode_handshake(from, to, text),
            data[..HANDSHAKE_FIXED_LEN + id_len]
        );
    }
    let mut frames = &rest[id_len..];
    let max_frame = max_frame_len(MAX_ENTRIES_BYTES);
    while let Some((len, tail)) = frames.split_first_chunk::<4>() {
        let len = u64::from(u32::from_le_bytes(*len));
        if len > max_frame {
            return; // the connection is closed
        }
        let Some(body) = tail.get(..len as usize) else {
            return; // the peer stopped mid-frame
        };
        let frame = Bytes::copy_from_slice(body);
        let Ok(envelope) = decode_peer_frame(&frame, MAX_ENTRIES_BYTES, from, OWN_ID) else {
            return; // the connection is closed
        };
        assert_eq!((envelope.from, envelope.to), (from, OWN_ID));
        let mut encoded = Vec::new();
        envelope.encode(&mut encoded);
        assert_eq!(encoded, body);
        frames = &tail[len as usize..];
    }
});
