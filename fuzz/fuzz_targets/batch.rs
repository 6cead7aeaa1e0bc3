//! Feeds arbitrary bytes to the client's batch decoder, as a reader does
//! with any data entry it finds in the log. What decodes must encode back
//! to the same bytes.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use loglog::batch::{decode_batch, encode_batch, is_batch};

fuzz_target!(|data: &[u8]| {
    let payload = Bytes::copy_from_slice(data);
    let _ = is_batch(data);
    if let Ok(sub_entries) = decode_batch(&payload) {
        let encoded = encode_batch(sub_entries.iter()).expect("a decoded batch re-encodes");
        assert_eq!(&encoded[..], data);
    }
});
