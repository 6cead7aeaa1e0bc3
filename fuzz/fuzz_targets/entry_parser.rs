//! Feeds arbitrary bytes to the entry parser, as recovery and readers do
//! with bytes from disk or the network, to the producer envelope decoder
//! that readers and the node's producer table run on every entry, and to
//! the segment header and trim entry payload decoders.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loglog_proto::entry::{
    decode_trim_payload, encode_entry_with_flags, encode_trim_payload, EntryIter,
};
use loglog_proto::producer::{entry_producer, ProducerTag, PRODUCER_ENVELOPE_LEN};
use loglog_proto::segment::SegmentHeader;

fuzz_target!(|data: &[u8]| {
    if let Ok(header) = SegmentHeader::decode(data) {
        assert_eq!(header.encode()[..], data[..header.encode().len()]);
    }
    if let Some(offset) = decode_trim_payload(data) {
        assert_eq!(encode_trim_payload(offset), data);
    }
    if let Some((tag, rest)) = ProducerTag::split(data) {
        assert_eq!(&tag.encode()[..], &data[..PRODUCER_ENVELOPE_LEN]);
        assert_eq!(rest.len(), data.len() - PRODUCER_ENVELOPE_LEN);
    }
    let mut iter = EntryIter::new(data, 1000, 1 << 16);
    let mut valid_end = 1000;
    for entry in iter.by_ref() {
        let Ok(entry) = entry else { break };
        // Every valid entry re-encodes to exactly the bytes it came from.
        let mut encoded = Vec::new();
        encode_entry_with_flags(
            entry.header.term,
            entry.header.kind,
            entry.header.flags,
            entry.payload,
            &mut encoded,
        );
        let start = (entry.offset - 1000) as usize;
        assert_eq!(&encoded[..], &data[start..start + encoded.len()]);
        // A valid entry flagged PRODUCER always holds a whole envelope.
        let (tag, user) = entry_producer(&entry.header, entry.payload)
            .expect("the header decoder rejects short envelopes");
        let envelope = if tag.is_some() {
            PRODUCER_ENVELOPE_LEN
        } else {
            0
        };
        assert_eq!(user.len() + envelope, entry.payload.len());
        valid_end = entry.next_offset();
    }
    assert_eq!(iter.offset(), valid_end);
});
