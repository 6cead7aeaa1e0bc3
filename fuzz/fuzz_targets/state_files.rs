//! Feeds arbitrary bytes to every decoder of a node's small state files,
//! which a node reads back from its data directory at every start:
//! - mode 0: the file framing of `loglog_storage::state_file` (magic,
//!   version, length, CRC): what loads must save back to the same bytes;
//! - mode 1: the power-cut emulation's mark file, against a real log
//!   directory: no byte past the mark may survive, none below it is cut;
//! - otherwise the payloads: `node.state`, `raft.durable`, `cluster.id`,
//!   `join.peers`, `raft.checkpoint` / `raft.reset`. What decodes must
//!   encode back to the same bytes (join.peers: to the same peers).
#![no_main]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use loglog_proto::segment::{segment_file_name, SEGMENT_HEADER_LEN};
use loglog_raft::Checkpoint;
use loglog_storage::state_file;
use loglogd::cluster::parse_peers;
use loglogd::fuzzing::{
    decode_cluster_id, drop_unsynced, encode_cluster_id, load_synced_hint, DurableRecord,
    NodeState, MARK_FILE, SYNCED_HINT_FILE,
};

/// One scratch directory per fuzzing process, on tmpfs when there is one.
fn scratch() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        tempfile::Builder::new()
            .prefix("loglog-fuzz-state-")
            .tempdir_in(base)
            .expect("a scratch directory")
    })
    .path()
}

fn framing(bytes: &[u8]) {
    let path = scratch().join("fuzzed.state");
    fs::write(&path, bytes).expect("write the fuzzed file");
    let Ok(Some(payload)) = state_file::load(&path) else {
        return;
    };
    let saved = scratch().join("saved.state");
    state_file::save(&saved, &payload).expect("save a loaded payload");
    assert_eq!(fs::read(&saved).expect("read the saved file"), bytes);
}

/// `raft.synced`: a synced end only from a whole, undamaged state file of
/// exactly 8 payload bytes (anything else is ignored, never a panic).
fn synced_hint(bytes: &[u8]) {
    let data_dir = scratch().join("synced-hint");
    fs::create_dir_all(&data_dir).expect("create the directory");
    fs::write(data_dir.join(SYNCED_HINT_FILE), bytes).expect("write the hint");
    if let Some(end) = load_synced_hint(&data_dir) {
        assert_eq!(state_file::frame(&end.to_le_bytes()), bytes);
    }
}

/// Segments at 0 (100 bytes of log) and 100 (50 bytes), then the mark.
fn power_cut_mark(bytes: &[u8]) {
    let data_dir = scratch().join("power-cut");
    let log_dir = data_dir.join("log");
    let _ = fs::remove_dir_all(&data_dir);
    fs::create_dir_all(&log_dir).expect("create the log directory");
    let segments: [(u64, u64); 2] = [(0, 100), (100, 50)];
    let path_of = |start: u64| -> PathBuf { log_dir.join(segment_file_name(start)) };
    for (start, len) in segments {
        fs::write(path_of(start), vec![7u8; SEGMENT_HEADER_LEN + len as usize])
            .expect("write a segment");
    }
    fs::write(data_dir.join(MARK_FILE), bytes).expect("write the mark");
    let mark = drop_unsynced(&data_dir, &log_dir).expect("tmpfs does not fail");
    let expected_mark = <[u8; 8]>::try_from(bytes).ok().map(u64::from_le_bytes);
    assert_eq!(mark, expected_mark);
    let mark = mark.unwrap_or(u64::MAX);
    for (start, len) in segments {
        let kept = fs::metadata(path_of(start)).map(|meta| meta.len()).ok();
        let expected = (start <= mark).then(|| SEGMENT_HEADER_LEN as u64 + len.min(mark - start));
        assert_eq!(kept, expected, "segment {start}, mark {mark}");
    }
}

fn payloads(bytes: &[u8]) {
    if let Ok(state) = NodeState::decode(bytes) {
        assert_eq!(state.encode(), bytes);
    }
    let path = Path::new("raft.durable");
    if let Ok(record) = DurableRecord::decode(path, bytes) {
        assert_eq!(record.encode(), bytes);
    }
    if let Ok(cluster_id) = decode_cluster_id(path, bytes) {
        assert_eq!(encode_cluster_id(&cluster_id), bytes);
    }
    // join.peers: UTF-8 text in the `--peers` syntax, as the node saved it.
    if let Ok(peers) = std::str::from_utf8(bytes)
        .map_err(drop)
        .and_then(|text| parse_peers(text).map_err(drop))
    {
        let saved = peers
            .iter()
            .map(|peer| format!("{}={}@{}", peer.id, peer.peer_addr, peer.client_addr))
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(parse_peers(&saved), Ok(peers));
    }
    if let Ok(checkpoint) = Checkpoint::decode(bytes) {
        assert_eq!(checkpoint.encode(), bytes);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, bytes)) = data.split_first() else {
        return;
    };
    match mode {
        0 => framing(bytes),
        1 => power_cut_mark(bytes),
        2 => synced_hint(bytes),
        _ => payloads(bytes),
    }
});
