//! The decoders of this crate that read disk or network bytes and are not
//! otherwise public, for the fuzz targets in `fuzz/` (a separate crate).
//! Not a stable API: use the node, not these.

pub use crate::cluster::driver::{
    decode_cluster_id, encode_cluster_id, DurableRecord, DURABLE_LEN,
};
pub use crate::cluster::power_cut::{drop_unsynced, MARK_FILE};
pub use crate::cluster::transport::{
    decode_handshake_head, decode_peer_frame, encode_handshake, max_frame_len, HANDSHAKE_FIXED_LEN,
};
pub use crate::state::{NodeState, NodeStateError};
