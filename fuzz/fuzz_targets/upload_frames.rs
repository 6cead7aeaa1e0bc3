//! The decoders of client-side upload: a peer frame of the upload kinds
//! (AppendByDigest's parts, UploadMiss) as loglogd's transport decodes it,
//! and the parts rebuilt into entries from a cache of uploads (here: the
//! input's tail as every upload). Never panics; parts that decode stand for
//! at most the cap, and what rebuilds is exactly that many bytes, every
//! referenced entry checked against its header.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loglog_proto::entry::ENTRY_HEADER_LEN;
use loglog_proto::upload::{decode_parts, rebuild_entries, Part};
use loglogd::fuzzing::{decode_upload_frame, UPLOAD_FRAME_KINDS};

/// Small enough that the fuzzer meets the cap.
const MAX_ENTRIES_BYTES: u64 = 1 << 16;
const MAX_PAYLOAD: u32 = 1 << 12;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    // The transport's own decoding of a frame body of either kind.
    let kind = UPLOAD_FRAME_KINDS[usize::from(selector & 1)];
    if let Ok(len) = decode_upload_frame(kind, rest, MAX_ENTRIES_BYTES) {
        if kind == UPLOAD_FRAME_KINDS[0] {
            assert!(len <= MAX_ENTRIES_BYTES);
        }
    }
    // The parts alone, then rebuilt: the first `split` bytes are parts, the
    // rest is what the cache holds for every key.
    let split = usize::from(selector) * rest.len() / 256;
    let (parts_bytes, upload) = rest.split_at(split);
    let Ok((parts, len)) = decode_parts(parts_bytes, MAX_ENTRIES_BYTES) else {
        return;
    };
    assert!(len <= MAX_ENTRIES_BYTES);
    let stated: u64 = parts
        .iter()
        .map(|part| match part {
            Part::Raw(bytes) => bytes.len() as u64,
            Part::Ref { header, .. } => {
                ENTRY_HEADER_LEN as u64
                    + u64::from(u32::from_le_bytes(header[4..8].try_into().unwrap()))
            }
        })
        .sum();
    assert_eq!(stated, len, "the parts' lengths add up to what decode says");
    if let Ok(rebuilt) = rebuild_entries(&parts, len, MAX_PAYLOAD, |key| {
        (upload.len() == key.len as usize).then_some(upload)
    }) {
        assert_eq!(rebuilt.len() as u64, len);
    }
});
