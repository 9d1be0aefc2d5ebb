//! BER-TLV (ISO/IEC 7816-4 annex D / ISO 8825-1 subset) for eTP params.
//!
//! Supported: tags of one to three bytes, definite lengths in short form or
//! `81`, `82`, `83` long forms. Indefinite length (`80`) and longer length
//! forms are refused: a param never exceeds 64 KiB. Values are borrowed from
//! the input, so parsing allocates nothing but the returned list.

use std::fmt;

use crate::codec::{DecodeError, Reader};

/// A BER-TLV tag, its bytes packed big-endian into a u32 (`0x9f1a`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(pub u32);

impl Tag {
    /// True if the constructed bit (b6 of the first byte) is set.
    pub fn is_constructed(self) -> bool {
        self.first_byte() & 0x20 != 0
    }

    fn first_byte(self) -> u8 {
        let bytes = self.0.to_be_bytes();
        *bytes.iter().find(|b| **b != 0).unwrap_or(&0)
    }

    fn encode(self, out: &mut Vec<u8>) {
        match self.0 {
            0..=0xff => out.push(self.0 as u8),
            0x100..=0xffff => out.extend_from_slice(&(self.0 as u16).to_be_bytes()),
            _ => {
                let bytes = self.0.to_be_bytes();
                let start = bytes.iter().position(|b| *b != 0).unwrap_or(3);
                out.extend_from_slice(&bytes[start..]);
            }
        }
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let first = r.u8("TLV tag")?;
        let mut tag = u32::from(first);
        if first & 0x1f == 0x1f {
            for i in 0.. {
                if i == 2 {
                    return Err(DecodeError::Invalid {
                        what: "TLV tag",
                        detail: "longer than 3 bytes".into(),
                    });
                }
                let b = r.u8("TLV tag")?;
                tag = (tag << 8) | u32::from(b);
                if b & 0x80 == 0 {
                    break;
                }
            }
        }
        Ok(Tag(tag))
    }
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tag({:#04x})", self.0)
    }
}

/// One data object: a tag and its value (borrowed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tlv<'a> {
    /// The tag.
    pub tag: Tag,
    /// The value bytes.
    pub value: &'a [u8],
}

impl<'a> Tlv<'a> {
    /// Reads one data object.
    pub fn read(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let tag = Tag::read(r)?;
        let len = match r.u8("TLV length")? {
            n @ 0..=0x7f => usize::from(n),
            0x81 => usize::from(r.u8("TLV length")?),
            0x82 => usize::from(r.u16("TLV length")?),
            0x83 => {
                let b = r.array::<3>("TLV length")?;
                (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2])
            }
            other => {
                return Err(DecodeError::Invalid {
                    what: "TLV length",
                    detail: format!("unsupported length byte {other:#04x}"),
                });
            }
        };
        let value = r.take(len, "TLV value")?;
        Ok(Self { tag, value })
    }

    /// The data objects inside a constructed value.
    pub fn children(&self) -> Result<Vec<Tlv<'a>>, DecodeError> {
        parse_all(self.value)
    }
}

/// Parses a sequence of data objects that must fill `bytes` exactly.
pub fn parse_all(bytes: &[u8]) -> Result<Vec<Tlv<'_>>, DecodeError> {
    let mut r = Reader::new(bytes);
    let mut out = Vec::new();
    while r.left() > 0 {
        out.push(Tlv::read(&mut r)?);
    }
    Ok(out)
}

/// Appends one data object.
///
/// # Panics
/// If `value` is 16 MiB or longer (never the case for an eTP param).
pub fn write(out: &mut Vec<u8>, tag: Tag, value: &[u8]) {
    out.reserve(value.len() + 8);
    tag.encode(out);
    write_len(out, value.len());
    out.extend_from_slice(value);
}

/// Appends one data object whose value `value` writes straight into `out`:
/// nested objects need no buffer of their own. The length is patched in
/// afterwards (moving the value only when it is 128 bytes or longer).
///
/// # Panics
/// If the value is 16 MiB or longer (never the case for an eTP param).
pub fn write_with(out: &mut Vec<u8>, tag: Tag, value: impl FnOnce(&mut Vec<u8>)) {
    tag.encode(out);
    let at = out.len();
    out.push(0);
    value(out);
    let (len, n) = len_bytes(out.len() - at - 1);
    out[at] = len[0];
    if n > 1 {
        out.splice(at + 1..at + 1, len[1..n].iter().copied());
    }
}

/// Appends one data object whose value is the encoding of `v`.
pub fn write_codec(out: &mut Vec<u8>, tag: Tag, v: &impl crate::codec::Codec) {
    write_with(out, tag, |out| v.encode(out));
}

/// The length bytes of a value of `len` bytes, and how many there are.
fn len_bytes(len: usize) -> ([u8; 4], usize) {
    let b = (len as u32).to_be_bytes();
    match len {
        0..=0x7f => ([b[3], 0, 0, 0], 1),
        0x80..=0xff => ([0x81, b[3], 0, 0], 2),
        0x100..=0xffff => ([0x82, b[2], b[3], 0], 3),
        0x1_0000..=0xff_ffff => ([0x83, b[1], b[2], b[3]], 4),
        _ => panic!("TLV value of {len} bytes is too long"),
    }
}

fn write_len(out: &mut Vec<u8>, len: usize) {
    let (b, n) = len_bytes(len);
    out.extend_from_slice(&b[..n]);
}

/// A decoded list of data objects with lookups that name what is missing.
#[derive(Debug, Clone)]
pub struct Fields<'a> {
    items: Vec<Tlv<'a>>,
}

impl<'a> Fields<'a> {
    /// Parses `bytes`; a tag may appear at most once.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        let items = parse_all(bytes)?;
        // Sorted, duplicates are neighbours: O(k log k) for k objects, where
        // comparing each with all before it took O(k²) (a 64 KiB param holds
        // 16 000 distinct three-byte tags).
        let mut tags: Vec<Tag> = items.iter().map(|t| t.tag).collect();
        tags.sort_unstable();
        if let Some(w) = tags.windows(2).find(|w| w[0] == w[1]) {
            return Err(DecodeError::Invalid {
                what: "TLV list",
                detail: format!("tag {:#x} appears twice", w[0].0),
            });
        }
        Ok(Self { items })
    }

    /// The value of `tag`, if present.
    pub fn get(&self, tag: Tag) -> Option<&'a [u8]> {
        self.items.iter().find(|t| t.tag == tag).map(|t| t.value)
    }

    /// The value of `tag`, or an error naming `what`.
    pub fn require(&self, tag: Tag, what: &'static str) -> Result<&'a [u8], DecodeError> {
        self.get(tag).ok_or_else(|| DecodeError::Invalid {
            what,
            detail: format!("tag {:#x} missing", tag.0),
        })
    }

    /// The value of `tag` as a fixed-size array.
    pub fn require_array<const N: usize>(
        &self,
        tag: Tag,
        what: &'static str,
    ) -> Result<[u8; N], DecodeError> {
        let v = self.require(tag, what)?;
        v.try_into().map_err(|_| DecodeError::Invalid {
            what,
            detail: format!("expected {N} bytes, got {}", v.len()),
        })
    }

    /// Fails if any tag outside `known` is present.
    pub fn only(&self, known: &[Tag], what: &'static str) -> Result<(), DecodeError> {
        match self.items.iter().find(|t| !known.contains(&t.tag)) {
            None => Ok(()),
            Some(t) => Err(DecodeError::Invalid {
                what,
                detail: format!("unexpected tag {:#x}", t.tag.0),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_encodings() {
        let mut out = Vec::new();
        write(&mut out, Tag(0x80), &[1, 2]);
        write(&mut out, Tag(0x9f1a), &[0; 200]);
        assert_eq!(&out[..4], &[0x80, 0x02, 1, 2]);
        assert_eq!(&out[4..8], &[0x9f, 0x1a, 0x81, 200]);
        let items = parse_all(&out).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[1].tag, Tag(0x9f1a));
        assert_eq!(items[1].value.len(), 200);
    }

    #[test]
    fn constructed_values_nest() {
        let mut inner = Vec::new();
        write(&mut inner, Tag(0x80), b"a");
        let mut out = Vec::new();
        write(&mut out, Tag(0xa1), &inner);
        let items = parse_all(&out).unwrap();
        assert!(items[0].tag.is_constructed());
        assert_eq!(items[0].children().unwrap()[0].value, b"a");
    }

    #[test]
    fn malformed_inputs_are_typed_errors() {
        // value shorter than its length
        assert!(matches!(
            parse_all(&[0x80, 0x05, 1]),
            Err(DecodeError::Truncated { .. })
        ));
        // indefinite length
        assert!(matches!(
            parse_all(&[0x80, 0x80]),
            Err(DecodeError::Invalid { .. })
        ));
        // four-byte tag
        assert!(matches!(
            parse_all(&[0x9f, 0x81, 0x81, 0x01, 0x00]),
            Err(DecodeError::Invalid { .. })
        ));
        // tag without length
        assert!(matches!(
            parse_all(&[0x80]),
            Err(DecodeError::Truncated { .. })
        ));
        // duplicate tag
        assert!(Fields::parse(&[0x80, 0, 0x80, 0]).is_err());
    }

    proptest! {
        #[test]
        fn round_trips(items in proptest::collection::vec((prop_oneof![0x80u32..0x9f, 0x9f20u32..0x9f7f], proptest::collection::vec(any::<u8>(), 0..300)), 0..6)) {
            let mut out = Vec::new();
            for (t, v) in &items { write(&mut out, Tag(*t), v); }
            let parsed = parse_all(&out).unwrap();
            prop_assert_eq!(parsed.len(), items.len());
            for (p, (t, v)) in parsed.iter().zip(&items) {
                prop_assert_eq!(p.tag, Tag(*t));
                prop_assert_eq!(p.value, &v[..]);
            }
        }

        #[test]
        fn writing_in_place_gives_the_same_bytes(
            prefix in proptest::collection::vec(any::<u8>(), 0..4),
            len in prop_oneof![0usize..300, 0xfff0usize..0x1_0010],
            byte in any::<u8>(),
        ) {
            let value = vec![byte; len];
            let mut copied = prefix.clone();
            write(&mut copied, Tag(0xa1), &value);
            let mut in_place = prefix;
            write_with(&mut in_place, Tag(0xa1), |o| o.extend_from_slice(&value));
            prop_assert_eq!(in_place, copied);
        }

        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(items) = parse_all(&b) {
                for i in items { let _ = i.children(); }
            }
            let _ = Fields::parse(&b);
        }
    }
}
