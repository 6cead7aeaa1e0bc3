//! Client-side upload (`docs/FORMAT.md` 3, "upload", and 6).
//!
//! A writing client sends an entry's payload to every member itself
//! (request `upload`, keyed by the payload's [`UploadKey`]) while it asks
//! the leader to append it. The leader then replicates that entry to a
//! follower as its 16-byte header and digest only ([`Part::Ref`]); the
//! follower rebuilds the entry from its upload cache and checks it against
//! the header's CRC before writing it. Whatever is missing or wrong, the
//! follower gets the leader's own bytes instead: correctness never depends
//! on an upload.
//!
//! **The digest is SHA-256 of the payload (plus its length).** Both ends
//! compute it themselves: the leader over the bytes it appends, the
//! follower over the bytes uploaded to it (an upload whose bytes do not
//! match the digest it names is refused). A non-cryptographic digest would
//! not do: a client that controls both the appended and the uploaded bytes
//! can make two payloads collide in xxh3 or a CRC at will, and since the
//! entry's CRC32C is linear, two equal-length payloads with the same CRC32C
//! also give the same entry CRC, so the follower's CRC check could not
//! catch it and the follower would write bytes the leader never wrote.
//! SHA-256 runs at about 2 GB/s with the SHA extensions of this CPU; the
//! CRC check stays as a second line (against a damaged cache).

use sha2::{Digest as _, Sha256};

use crate::entry::{EntryHeader, ENTRY_HEADER_LEN};

/// Length of a payload digest.
pub const DIGEST_LEN: usize = 32;

/// SHA-256 of a payload.
pub type Digest = [u8; DIGEST_LEN];

/// SHA-256 of `payload`.
pub fn digest(payload: &[u8]) -> Digest {
    Sha256::digest(payload).into()
}

/// What an uploaded payload is cached under: its digest and length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UploadKey {
    pub digest: Digest,
    pub len: u32,
}

impl UploadKey {
    /// The key of `payload` (computes its digest). `None` when the payload
    /// is longer than the entry format allows.
    pub fn of(payload: &[u8]) -> Option<UploadKey> {
        Some(UploadKey {
            digest: digest(payload),
            len: u32::try_from(payload.len()).ok()?,
        })
    }
}

/// Splits an upload request body (`digest 32 bytes, payload`); `None` when
/// it is shorter than a digest.
pub fn split_upload_body(body: &[u8]) -> Option<(Digest, &[u8])> {
    let digest: Digest = body.get(..DIGEST_LEN)?.try_into().ok()?;
    Some((digest, &body[DIGEST_LEN..]))
}

const PART_RAW: u8 = 0;
const PART_REF: u8 = 1;
/// Encoded length of a [`Part::Ref`].
pub const REF_PART_LEN: usize = 1 + ENTRY_HEADER_LEN + DIGEST_LEN;

/// One piece of a run of entries sent by reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part<'a> {
    /// Whole entries, raw bytes.
    Raw(&'a [u8]),
    /// One entry: its header; the payload is the upload with this digest
    /// and the header's length.
    Ref {
        header: [u8; ENTRY_HEADER_LEN],
        digest: Digest,
    },
}

impl Part<'_> {
    /// Bytes this part stands for in the log.
    fn log_len(&self) -> u64 {
        match self {
            Part::Raw(bytes) => bytes.len() as u64,
            Part::Ref { header, .. } => ENTRY_HEADER_LEN as u64 + u64::from(header_len(header)),
        }
    }
}

fn header_len(header: &[u8; ENTRY_HEADER_LEN]) -> u32 {
    u32::from_le_bytes([header[4], header[5], header[6], header[7]])
}

/// Encodes the run of whole entries `entries` (starting at log offset
/// `base`) into `out` as parts: every entry for which `digest_at(offset)`
/// gives a digest becomes a [`Part::Ref`], the others stay raw. Returns
/// how many entries went by reference. Bytes that do not parse as entries
/// (which a leader never sends) are kept raw.
///
/// Encoding: `count u32`, then per part a tag byte and
/// `0 raw: len u32, bytes` or `1 ref: entry header (16 bytes), digest (32)`.
pub fn encode_parts(
    entries: &[u8],
    base: u64,
    mut digest_at: impl FnMut(u64) -> Option<Digest>,
    out: &mut Vec<u8>,
) -> usize {
    let count_at = out.len();
    out.extend_from_slice(&0u32.to_le_bytes());
    let mut count = 0u32;
    let mut refs = 0;
    let mut raw_start = 0usize;
    let mut at = 0usize;
    let flush_raw = |out: &mut Vec<u8>, count: &mut u32, raw: &[u8]| {
        if !raw.is_empty() {
            out.push(PART_RAW);
            out.extend_from_slice(
                &u32::try_from(raw.len())
                    .expect("a message's entries fit u32")
                    .to_le_bytes(),
            );
            out.extend_from_slice(raw);
            *count += 1;
        }
    };
    while at < entries.len() {
        let Ok(header) = EntryHeader::decode(&entries[at..], u32::MAX) else {
            break;
        };
        let end = at as u64 + header.entry_len();
        if end > entries.len() as u64 {
            break;
        }
        let end = end as usize;
        if let Some(digest) = digest_at(base + at as u64) {
            flush_raw(out, &mut count, &entries[raw_start..at]);
            out.push(PART_REF);
            out.extend_from_slice(&entries[at..at + ENTRY_HEADER_LEN]);
            out.extend_from_slice(&digest);
            count += 1;
            refs += 1;
            raw_start = end;
        }
        at = end;
    }
    flush_raw(out, &mut count, &entries[raw_start..]);
    out[count_at..count_at + 4].copy_from_slice(&count.to_le_bytes());
    refs
}

/// Why encoded parts are malformed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PartsError {
    #[error("parts truncated")]
    Truncated,
    #[error("unknown part tag {0}")]
    UnknownTag(u8),
    #[error("the entries would be {len} bytes, over the limit of {max}")]
    TooLarge { len: u64, max: u64 },
    #[error("{0} trailing bytes after the parts")]
    TrailingBytes(usize),
}

/// Decodes [`encode_parts`]' bytes; the log bytes they stand for must not
/// exceed `max_len`. Returns the parts and that length. Never panics.
pub fn decode_parts(bytes: &[u8], max_len: u64) -> Result<(Vec<Part<'_>>, u64), PartsError> {
    let mut rest = bytes;
    let mut take = |n: usize| -> Result<&[u8], PartsError> {
        if rest.len() < n {
            return Err(PartsError::Truncated);
        }
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Ok(head)
    };
    let count = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes"));
    // Each part takes at least 5 bytes: no allocation beyond the input.
    let mut parts = Vec::with_capacity((count as usize).min(bytes.len() / 5));
    let mut total = 0u64;
    for _ in 0..count {
        let tag = take(1)?[0];
        let part = match tag {
            PART_RAW => {
                let len = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes"));
                Part::Raw(take(len as usize)?)
            }
            PART_REF => {
                let header: [u8; ENTRY_HEADER_LEN] =
                    take(ENTRY_HEADER_LEN)?.try_into().expect("16 bytes");
                let digest: Digest = take(DIGEST_LEN)?.try_into().expect("32 bytes");
                Part::Ref { header, digest }
            }
            other => return Err(PartsError::UnknownTag(other)),
        };
        total += part.log_len();
        if total > max_len {
            return Err(PartsError::TooLarge {
                len: total,
                max: max_len,
            });
        }
        parts.push(part);
    }
    if !rest.is_empty() {
        return Err(PartsError::TrailingBytes(rest.len()));
    }
    Ok((parts, total))
}

/// The upload keys the [`Part::Ref`]s of `parts` need.
pub fn referenced_keys(parts: &[Part<'_>]) -> Vec<UploadKey> {
    parts
        .iter()
        .filter_map(|part| match part {
            Part::Raw(_) => None,
            Part::Ref { header, digest } => Some(UploadKey {
                digest: *digest,
                len: header_len(header),
            }),
        })
        .collect()
}

/// Why parts could not be rebuilt into entries: the caller falls back to
/// the leader's bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RebuildError {
    /// No upload with this key is at hand.
    Missing(UploadKey),
    /// The upload does not make a valid entry with the leader's header
    /// (its CRC, length or header fields do not match): never written.
    Mismatch(UploadKey),
}

/// Rebuilds the raw entries `parts` stand for (`len` bytes, from
/// [`decode_parts`]), taking each referenced payload from `lookup` and
/// checking every rebuilt entry against its header (length limit, CRC).
pub fn rebuild_entries<P: AsRef<[u8]>>(
    parts: &[Part<'_>],
    len: u64,
    max_payload: u32,
    mut lookup: impl FnMut(&UploadKey) -> Option<P>,
) -> Result<Vec<u8>, RebuildError> {
    let mut out = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    for part in parts {
        match part {
            Part::Raw(bytes) => out.extend_from_slice(bytes),
            Part::Ref { header, digest } => {
                let key = UploadKey {
                    digest: *digest,
                    len: header_len(header),
                };
                let payload = lookup(&key).ok_or(RebuildError::Missing(key))?;
                let payload = payload.as_ref();
                let valid = EntryHeader::decode(header, max_payload)
                    .and_then(|decoded| decoded.verify(payload));
                if valid.is_err() {
                    return Err(RebuildError::Mismatch(key));
                }
                out.extend_from_slice(header);
                out.extend_from_slice(payload);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::{encode_entry, EntryKind};

    fn log_of(payloads: &[&[u8]]) -> (Vec<u8>, Vec<u64>) {
        let mut log = Vec::new();
        let mut offsets = Vec::new();
        for payload in payloads {
            offsets.push(1000 + log.len() as u64);
            encode_entry(7, EntryKind::Data, payload, &mut log);
        }
        (log, offsets)
    }

    #[test]
    fn entries_by_reference_rebuild_byte_for_byte() {
        let payloads: [&[u8]; 4] = [b"alpha", &[9u8; 5000], b"", b"omega"];
        let (log, offsets) = log_of(&payloads);
        let by_offset = |offset: u64| {
            offsets
                .iter()
                .position(|o| *o == offset)
                .filter(|i| i % 2 == 1)
                .map(|i| digest(payloads[i]))
        };
        let mut encoded = Vec::new();
        assert_eq!(encode_parts(&log, 1000, by_offset, &mut encoded), 2);
        assert!(encoded.len() < log.len() - 4000);
        let (parts, len) = decode_parts(&encoded, u64::MAX).unwrap();
        assert_eq!(len, log.len() as u64);
        let keys = referenced_keys(&parts);
        assert_eq!(keys.len(), 2);
        let cache = |key: &UploadKey| {
            payloads
                .iter()
                .find(|p| UploadKey::of(p) == Some(*key))
                .map(|p| p.to_vec())
        };
        assert_eq!(rebuild_entries(&parts, len, u32::MAX, cache).unwrap(), log);
        // A missing upload is reported, never guessed.
        let missing = rebuild_entries(&parts, len, u32::MAX, |_: &UploadKey| None::<Vec<u8>>);
        assert_eq!(missing, Err(RebuildError::Missing(keys[0])));
        // Bytes that do not match the header's CRC are never used.
        let wrong = rebuild_entries(&parts, len, u32::MAX, |key: &UploadKey| {
            Some(vec![1u8; key.len as usize])
        });
        assert_eq!(wrong, Err(RebuildError::Mismatch(keys[0])));
        assert!(matches!(
            decode_parts(&encoded, log.len() as u64 - 1),
            Err(PartsError::TooLarge { .. })
        ));
    }

    #[test]
    fn no_reference_is_one_raw_part() {
        let (log, _) = log_of(&[b"a", b"b"]);
        let mut encoded = Vec::new();
        assert_eq!(encode_parts(&log, 0, |_| None, &mut encoded), 0);
        let (parts, len) = decode_parts(&encoded, u64::MAX).unwrap();
        assert_eq!(parts, vec![Part::Raw(&log)]);
        assert_eq!(len, log.len() as u64);
    }

    #[test]
    fn malformed_parts_are_errors() {
        assert_eq!(decode_parts(&[], 10), Err(PartsError::Truncated));
        assert_eq!(
            decode_parts(&[1, 0, 0, 0, 9], 10),
            Err(PartsError::UnknownTag(9))
        );
        assert_eq!(
            decode_parts(&[0, 0, 0, 0, 1], 10),
            Err(PartsError::TrailingBytes(1))
        );
        assert_eq!(
            decode_parts(&[1, 0, 0, 0, 0, 9, 0, 0, 0], 10),
            Err(PartsError::Truncated)
        );
    }

    #[test]
    fn upload_bodies_split_after_the_digest() {
        assert_eq!(split_upload_body(&[0; 31]), None);
        let mut body = digest(b"x").to_vec();
        body.extend_from_slice(b"x");
        assert_eq!(split_upload_body(&body), Some((digest(b"x"), &b"x"[..])));
    }
}
