//! The decoders of this crate that read disk or network bytes and are not
//! otherwise public, for the fuzz targets in `fuzz/` (a separate crate).
//! Not a stable API: use the node, not these.

pub use crate::cluster::driver::{
    decode_cluster_id, encode_cluster_id, DurableRecord, DURABLE_LEN,
};
pub use crate::cluster::power_cut::{drop_unsynced, MARK_FILE};
pub use crate::cluster::synced_hint::{load as load_synced_hint, SYNCED_HINT_FILE};
pub use crate::cluster::transport::{
    decode_handshake_head, decode_peer_frame, encode_handshake, max_frame_len, HANDSHAKE_FIXED_LEN,
};
pub use crate::state::{NodeState, NodeStateError};

/// Decodes the body of a peer frame of the upload kinds (64, 65) the way
/// the transport does; `Ok` with the log bytes it stands for.
pub fn decode_upload_frame(kind: u8, body: &[u8], max_entries_bytes: u64) -> Result<u64, String> {
    crate::cluster::upload::decode_frame(kind, body, max_entries_bytes).map(|frame| match frame {
        crate::cluster::upload::UploadFrame::ByDigest { head, .. } => head.entries_len,
        crate::cluster::upload::UploadFrame::Miss(miss) => miss.entries_len,
    })
}

/// The peer frame kinds of client-side upload (AppendByDigest, UploadMiss).
pub const UPLOAD_FRAME_KINDS: [u8; 2] = [
    crate::cluster::upload::KIND_APPEND_BY_DIGEST,
    crate::cluster::upload::KIND_UPLOAD_MISS,
];
