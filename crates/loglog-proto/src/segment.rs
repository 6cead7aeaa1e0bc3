//! The segment file header (public contract, see `docs/FORMAT.md`).
//!
//! Every segment file starts with this 32-byte header; the log's bytes
//! follow it. The header is not part of the log: log offset `start_offset`
//! lives at file position [`SEGMENT_HEADER_LEN`].
//!
//! ```text
//! 0..8   magic           b"LOGLOGSG"
//! 8..12  format version  1
//! 12..16 reserved, 0
//! 16..24 start offset    log offset of the first byte after the header
//! 24..28 reserved, 0
//! 28..32 crc             CRC32C of bytes 0..28
//! ```

pub const SEGMENT_MAGIC: [u8; 8] = *b"LOGLOGSG";
pub const SEGMENT_FORMAT_VERSION: u32 = 1;
pub const SEGMENT_HEADER_LEN: usize = 32;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SegmentHeaderError {
    #[error("segment header truncated: {available} of {SEGMENT_HEADER_LEN} bytes")]
    Truncated { available: usize },
    #[error("not a LogLog segment (bad magic)")]
    BadMagic,
    #[error("segment format version {found} is not supported (this build reads version {SEGMENT_FORMAT_VERSION})")]
    UnsupportedVersion { found: u32 },
    #[error("segment header checksum mismatch")]
    BadCrc,
    /// Reserved bytes are not zero: not a header this version wrote.
    #[error("segment header has non-zero reserved bytes")]
    ReservedNotZero,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    pub start_offset: u64,
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut out = [0u8; SEGMENT_HEADER_LEN];
        out[0..8].copy_from_slice(&SEGMENT_MAGIC);
        out[8..12].copy_from_slice(&SEGMENT_FORMAT_VERSION.to_le_bytes());
        out[16..24].copy_from_slice(&self.start_offset.to_le_bytes());
        let crc = crc32c::crc32c(&out[..28]);
        out[28..32].copy_from_slice(&crc.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<SegmentHeader, SegmentHeaderError> {
        let Some(bytes) = bytes.get(..SEGMENT_HEADER_LEN) else {
            return Err(SegmentHeaderError::Truncated {
                available: bytes.len(),
            });
        };
        if bytes[0..8] != SEGMENT_MAGIC {
            return Err(SegmentHeaderError::BadMagic);
        }
        let stored_crc = u32::from_le_bytes(bytes[28..32].try_into().expect("4 bytes"));
        if crc32c::crc32c(&bytes[..28]) != stored_crc {
            return Err(SegmentHeaderError::BadCrc);
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        if version != SEGMENT_FORMAT_VERSION {
            return Err(SegmentHeaderError::UnsupportedVersion { found: version });
        }
        // One encoding per header, as for entry headers.
        if bytes[12..16] != [0; 4] || bytes[24..28] != [0; 4] {
            return Err(SegmentHeaderError::ReservedNotZero);
        }
        let start_offset = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"));
        Ok(SegmentHeader { start_offset })
    }
}

/// File name of the segment that starts at `start_offset`: 20 decimal digits
/// and `.seg`, so names sort in log order.
pub fn segment_file_name(start_offset: u64) -> String {
    format!("{start_offset:020}.seg")
}

/// Parses a name made by [`segment_file_name`].
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let header = SegmentHeader {
            start_offset: 123_456,
        };
        let bytes = header.encode();
        assert_eq!(SegmentHeader::decode(&bytes), Ok(header));
        assert_eq!(
            SegmentHeader::decode(&bytes[..10]),
            Err(SegmentHeaderError::Truncated { available: 10 })
        );
        let mut bad = bytes;
        bad[0] = b'X';
        assert_eq!(
            SegmentHeader::decode(&bad),
            Err(SegmentHeaderError::BadMagic)
        );
        let mut flipped = bytes;
        flipped[17] ^= 1;
        assert_eq!(
            SegmentHeader::decode(&flipped),
            Err(SegmentHeaderError::BadCrc)
        );
        let mut future = bytes;
        future[8] = 2;
        let crc = crc32c::crc32c(&future[..28]);
        future[28..32].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            SegmentHeader::decode(&future),
            Err(SegmentHeaderError::UnsupportedVersion { found: 2 })
        );
        // Found by the `entry_parser` fuzz target: reserved bytes under a
        // matching CRC were ignored, so two headers meant one.
        for at in [12, 15, 24, 27] {
            let mut reserved = bytes;
            reserved[at] = 39;
            let crc = crc32c::crc32c(&reserved[..28]);
            reserved[28..32].copy_from_slice(&crc.to_le_bytes());
            assert_eq!(
                SegmentHeader::decode(&reserved),
                Err(SegmentHeaderError::ReservedNotZero)
            );
        }
    }

    #[test]
    fn file_names_sort_in_log_order() {
        assert_eq!(segment_file_name(42), "00000000000000000042.seg");
        assert_eq!(
            parse_segment_file_name(&segment_file_name(u64::MAX)),
            Some(u64::MAX)
        );
        assert_eq!(parse_segment_file_name("42.seg"), None);
        assert_eq!(parse_segment_file_name("0000000000000000004x.seg"), None);
    }
}
