//! Feeds arbitrary bytes to the client's read-answer parser, as the client
//! does with every read answer a node sends: the first 8 input bytes are
//! the offset the client asked for, the rest is the answer's body. What
//! parses must be a page of whole entries that tile the raw bytes exactly,
//! none past the commit offset the answer carries.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use loglog::ReadPage;
use loglog_proto::entry::ENTRY_HEADER_LEN;
use loglog_proto::producer::PRODUCER_ENVELOPE_LEN;

fuzz_target!(|data: &[u8]| {
    let Some((offset, body)) = data.split_first_chunk::<8>() else {
        return;
    };
    let offset = u64::from_le_bytes(*offset);
    let Ok(page) = ReadPage::parse("fuzz", offset, Bytes::copy_from_slice(body)) else {
        return;
    };
    let raw = &body[8..];
    assert_eq!(page.offset(), offset);
    assert_eq!(&page.raw()[..], raw);
    assert_eq!(page.commit_offset().to_le_bytes(), body[..8]);
    assert!(page.next_offset() <= page.commit_offset());
    assert_eq!(page.next_offset() - page.offset(), raw.len() as u64);
    let mut at = offset;
    for entry in page.all_entries() {
        assert_eq!(entry.offset, at, "entries tile the page");
        let position = (entry.offset - offset) as usize;
        let mut payload_at = position + ENTRY_HEADER_LEN;
        if let Some(tag) = entry.producer {
            assert_eq!(
                &raw[payload_at..payload_at + PRODUCER_ENVELOPE_LEN],
                tag.encode()
            );
            payload_at += PRODUCER_ENVELOPE_LEN;
        }
        assert_eq!(
            &raw[payload_at..payload_at + entry.payload.len()],
            &entry.payload[..]
        );
        at = entry.next_offset();
    }
    assert_eq!(at, page.next_offset());
    assert_eq!(page.is_empty(), raw.is_empty());
});
