//! Feeds arbitrary bytes to the entry parser, as recovery and readers do
//! with bytes from disk or the network.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loglog_proto::entry::{encode_entry, EntryIter};
use loglog_proto::segment::SegmentHeader;

fuzz_target!(|data: &[u8]| {
    let _ = SegmentHeader::decode(data);
    let mut iter = EntryIter::new(data, 1000, 1 << 16);
    let mut valid_end = 1000;
    for entry in iter.by_ref() {
        let Ok(entry) = entry else { break };
        // Every valid entry re-encodes to exactly the bytes it came from.
        let mut encoded = Vec::new();
        encode_entry(entry.header.term, entry.header.kind, entry.payload, &mut encoded);
        let start = (entry.offset - 1000) as usize;
        if entry.header.flags == 0 {
            assert_eq!(&encoded[..], &data[start..start + encoded.len()]);
        }
        valid_end = entry.next_offset();
    }
    assert_eq!(iter.offset(), valid_end);
});
