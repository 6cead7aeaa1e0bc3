//! Feeds arbitrary bytes to the frame decoder the way a server connection
//! does: decode a header, cut the body, parse the request (appends with a
//! producer envelope and the retry flag, and admin bodies, included),
//! repeat. The same bodies go through the client's response decoders
//! (errors, node and cluster status). What parses must encode back to the
//! same bytes; what the lenient client decoders read must survive their
//! encoders unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loglog_proto::wire::{
    ClusterStatus, FrameHeader, NodeStatus, Request, ServerError, FRAME_HEADER_LEN,
    MAX_NODE_ADDRESS_LEN,
};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some(header)) = FrameHeader::decode(rest, 1 << 20) {
        let Some(frame) = rest.get(..header.frame_len()) else {
            break;
        };
        let body = &frame[FRAME_HEADER_LEN..];
        if let Ok(request) = Request::parse(&header, body) {
            // What parses must encode back to the same frame.
            let mut encoded = Vec::new();
            request.encode(header.request_id, &mut encoded);
            assert_eq!(encoded, frame);
        }
        // The client side decodes responses from the same kind of bytes.
        if header.aux != 0 {
            let error = ServerError::decode(header.aux, body);
            assert_eq!(error.code(), header.aux);
            assert_eq!(
                ServerError::decode(error.code(), &error.encode_body()),
                error
            );
        }
        if let Some(status) = NodeStatus::decode(body) {
            assert_eq!(NodeStatus::decode(&status.encode()), Some(status));
        }
        if let Some(status) = ClusterStatus::decode(body) {
            // Addresses decode lossily (invalid UTF-8 becomes U+FFFD, which
            // may grow them past what the encoder keeps): only those that fit.
            let fits = status.members.iter().all(|member| {
                member.peer_addr.len() <= MAX_NODE_ADDRESS_LEN
                    && member.client_addr.len() <= MAX_NODE_ADDRESS_LEN
            });
            if fits {
                assert_eq!(ClusterStatus::decode(&status.encode()), Some(status));
            }
        }
        rest = &rest[header.frame_len()..];
    }
});
