//! Feeds arbitrary bytes to the frame decoder the way a server connection
//! does: decode a header, cut the body, parse the request (appends with a
//! producer envelope and the retry flag included), repeat.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loglog_proto::wire::{FrameHeader, NodeStatus, Request, ServerError};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some(header)) = FrameHeader::decode(rest, 1 << 20) {
        let Some(frame) = rest.get(..header.frame_len()) else { break };
        let body = &frame[loglog_proto::wire::FRAME_HEADER_LEN..];
        if let Ok(request) = Request::parse(&header, body) {
            // What parses must encode back to the same frame.
            let mut encoded = Vec::new();
            request.encode(header.request_id, &mut encoded);
            assert_eq!(encoded, frame);
        }
        // The client side decodes responses from the same kind of bytes.
        let _ = ServerError::decode(header.aux, body);
        let _ = NodeStatus::decode(body);
        let _ = loglog_proto::wire::ClusterStatus::decode(body);
        rest = &rest[header.frame_len()..];
    }
});
