//! Mutation-based generators: format tokens, edge values, the changes a
//! valid encoding goes through, and the mix of inputs a property gets.

use std::fmt::Debug;

use proptest::prelude::*;
use proptest::sample::{Index, select};

/// Arbitrary bytes, fewer than `max`.
pub fn bytes(max: usize) -> BoxedStrategy<Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max).boxed()
}

/// Byte values at the edges of the formats: TLV length forms (`80`-`84`),
/// multi-byte tag markers (`1f`, `9f`), constructed tags, APDU classes and
/// instructions, and the extremes.
pub const EDGE_BYTES: &[u8] = &[
    0x00, 0x01, 0x02, 0x04, 0x10, 0x12, 0x1f, 0x20, 0x22, 0x30, 0x3f, 0x7f, 0x80, 0x81, 0x82, 0x83,
    0x84, 0x90, 0x9f, 0xa0, 0xa1, 0xa2, 0xa4, 0xc0, 0xfe, 0xff,
];

/// Values for length and count fields: around the TLV, short/extended APDU,
/// eTP and u16/u32 boundaries.
pub const EDGE_WORDS: &[u32] = &[
    0,
    1,
    2,
    0x21,
    0x22,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x101,
    0x7fff,
    0x8000,
    // The largest eTP param: tenet-proto's MAX_MESSAGE_LEN less its
    // 34-byte header (tenet-proto's tests/hostile.rs checks the two agree).
    65_501,
    0xfffe,
    0xffff,
    0x1_0000,
    0x1_0001,
    0xff_ffff,
    0x100_0000,
    0x7fff_ffff,
    0xffff_fffe,
    0xffff_ffff,
];

/// Fragments of BER-TLV: headers with every length form, nested
/// constructed objects, over-long tags and lengths.
pub const TLV_TOKENS: &[&[u8]] = &[
    &[0x80, 0x00],
    &[0x80, 0x01, 0x00],
    &[0x81, 0x7f],
    &[0x82, 0x81, 0x80],
    &[0x83, 0x82, 0xff, 0xff],
    &[0x84, 0x83, 0xff, 0xff, 0xff],
    &[0x80, 0x84, 0, 0, 0, 1],
    &[0x80, 0x80],
    &[0x9f, 0x1a, 0x00],
    &[0x9f, 0x81, 0x81, 0x01],
    &[0x1f],
    &[0xa0, 0x00],
    &[0xa2, 0x04, 0xa0, 0x02, 0x80, 0x00],
    &[0x30, 0x00],
    &[0x30, 0x82, 0x01, 0x00],
    &[0x80, 0x10],
];

/// Fragments of DER certificates and keys: SEQUENCE headers, OIDs of the
/// subject alternative name and of EC keys, times, BOOLEAN and BIT STRING.
pub const DER_TOKENS: &[&[u8]] = &[
    &[0x30, 0x82, 0xff, 0xff],
    &[0x30, 0x81, 0x80],
    &[0x30, 0x00],
    &[0x06, 0x03, 0x55, 0x1d, 0x11],
    &[0x06, 0x03, 0x55, 0x1d, 0x13],
    &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07],
    &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02],
    &[0x02, 0x01, 0x00],
    &[0x02, 0x81, 0x81],
    &[0x01, 0x01, 0xff],
    &[0x03, 0x42, 0x00, 0x04],
    &[0x03, 0x01, 0x08],
    &[0x04, 0x00],
    &[0x05, 0x00],
    &[0x17, 0x0d],
    &[0x18, 0x0f],
    &[0x82, 0x00],
    &[0xa0, 0x03, 0x02, 0x01, 0x02],
    &[0xa3, 0x80],
    &[0x80, 0x80],
    &[0x84, 0xff, 0xff, 0xff, 0xff],
];

/// Fragments of PEM.
pub const PEM_TOKENS: &[&[u8]] = &[
    b"-----BEGIN CERTIFICATE-----\n",
    b"-----END CERTIFICATE-----\n",
    b"-----BEGIN PRIVATE KEY-----\n",
    b"-----END PRIVATE KEY-----\n",
    b"-----BEGIN EC PRIVATE KEY-----\n",
    b"-----BEGIN X-----\n",
    b"-----END X-----\n",
    b"-----BEGIN ",
    b"-----",
    b"\r\n",
    b"\n",
    b"====",
    b"=",
    b"A",
    b"/+",
    b" ",
    b"\0",
];

/// Fragments of the text forms: ids, mtypes, offer policies.
pub const TEXT_TOKENS: &[&[u8]] = &[
    b":",
    b",",
    b"0x",
    b"0X",
    b"+",
    b"-",
    b" ",
    b"GIVE>=",
    b"WANT<=",
    b"4294967295",
    b"4294967296",
    b"18446744073709551616",
    b"00112233445566778899aabb",
    b"\xc3\xa9",
    b"\xe2\x80\x8b",
    b"\0",
];

/// One change to a byte string. Positions are `Index`es, resolved against
/// the length the string has when the change is applied.
#[derive(Debug, Clone)]
pub enum Mutation {
    /// Flips one bit of a byte.
    FlipBit(Index, u8),
    /// Sets a byte.
    SetByte(Index, u8),
    /// Overwrites a big-endian u16 (`false`) or u32 (`true`).
    SetWord(Index, u32, bool),
    /// Inserts bytes.
    Insert(Index, Vec<u8>),
    /// Inserts a format token.
    InsertToken(Index, &'static [u8]),
    /// Writes a token over the bytes at a position, keeping the length
    /// where it fits (a fixed-width field stays fixed-width).
    OverwriteToken(Index, &'static [u8]),
    /// Deletes up to that many bytes.
    Delete(Index, usize),
    /// Cuts the string at a position.
    Truncate(Index),
    /// Repeats a range after itself.
    Repeat(Index, usize, usize),
}

/// One change, with format tokens from `tokens`.
pub fn mutation(tokens: &'static [&'static [u8]]) -> BoxedStrategy<Mutation> {
    prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        3 => (any::<Index>(), prop_oneof![select(EDGE_BYTES), any::<u8>()])
            .prop_map(|(i, v)| Mutation::SetByte(i, v)),
        2 => (any::<Index>(), select(EDGE_WORDS), any::<bool>())
            .prop_map(|(i, w, four)| Mutation::SetWord(i, w, four)),
        2 => (any::<Index>(), proptest::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        3 => (any::<Index>(), select(tokens)).prop_map(|(i, t)| Mutation::InsertToken(i, t)),
        2 => (any::<Index>(), select(tokens)).prop_map(|(i, t)| Mutation::OverwriteToken(i, t)),
        2 => (any::<Index>(), 1usize..32).prop_map(|(i, k)| Mutation::Delete(i, k)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => (any::<Index>(), 1usize..64, 1usize..4).prop_map(|(i, k, t)| Mutation::Repeat(i, k, t)),
    ]
    .boxed()
}

/// Applies one change to `buf`.
pub fn apply(buf: &mut Vec<u8>, m: &Mutation) {
    let len = buf.len();
    match m {
        Mutation::FlipBit(i, bit) if len > 0 => buf[i.index(len)] ^= 1 << bit,
        Mutation::SetByte(i, v) if len > 0 => buf[i.index(len)] = *v,
        Mutation::SetWord(i, w, four) => {
            let bytes = w.to_be_bytes();
            let word = if *four { &bytes[..] } else { &bytes[2..] };
            if len >= word.len() {
                let at = i.index(len - word.len() + 1);
                buf[at..at + word.len()].copy_from_slice(word);
            }
        }
        Mutation::Insert(i, bytes) => {
            let at = i.index(len + 1);
            buf.splice(at..at, bytes.iter().copied());
        }
        Mutation::InsertToken(i, token) => {
            let at = i.index(len + 1);
            buf.splice(at..at, token.iter().copied());
        }
        Mutation::OverwriteToken(i, token) if len > 0 => {
            let at = i.index(len);
            let end = (at + token.len()).min(len);
            buf.splice(at..end, token.iter().copied());
        }
        Mutation::Delete(i, k) if len > 0 => {
            let at = i.index(len);
            buf.drain(at..(at + k).min(len));
        }
        Mutation::Truncate(i) => buf.truncate(i.index(len + 1)),
        Mutation::Repeat(i, k, times) if len > 0 => {
            let at = i.index(len);
            let end = (at + k).min(len);
            let chunk = buf[at..end].to_vec();
            for _ in 0..*times {
                buf.splice(end..end, chunk.iter().copied());
            }
        }
        _ => {}
    }
}

/// `bytes` with the changes `ms` applied in order.
pub fn mutate(mut bytes: Vec<u8>, ms: &[Mutation]) -> Vec<u8> {
    for m in ms {
        apply(&mut bytes, m);
    }
    bytes
}

/// One hostile input. `pristine` inputs are valid encodings, unchanged.
#[derive(Clone)]
pub struct Input {
    /// The bytes.
    pub bytes: Vec<u8>,
    /// True for a valid encoding, unchanged.
    pub pristine: bool,
}

impl Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Input {{ pristine: {}, {} bytes: {:02x?} }}",
            self.pristine,
            self.bytes.len(),
            self.bytes
        )
    }
}

/// Valid encodings from `seeds` (one in ten unchanged), mutations of them,
/// splices of two of them, and random bytes.
pub fn hostile(
    seeds: BoxedStrategy<Vec<u8>>,
    tokens: &'static [&'static [u8]],
) -> BoxedStrategy<Input> {
    prop_oneof![
        1 => seeds.clone().prop_map(|bytes| Input { bytes, pristine: true }),
        6 => (seeds.clone(), proptest::collection::vec(mutation(tokens), 1..8))
            .prop_map(|(b, ms)| Input { bytes: mutate(b, &ms), pristine: false }),
        1 => (seeds.clone(), seeds, any::<Index>(), any::<Index>()).prop_map(|(a, b, i, j)| {
            let mut bytes = a[..i.index(a.len() + 1)].to_vec();
            bytes.extend_from_slice(&b[j.index(b.len() + 1)..]);
            Input { bytes, pristine: false }
        }),
        2 => proptest::collection::vec(any::<u8>(), 0..512)
            .prop_map(|bytes| Input { bytes, pristine: false }),
    ]
    .boxed()
}

/// One hostile text. `pristine` texts are valid, unchanged.
#[derive(Clone, Debug)]
pub struct TextInput {
    /// The text.
    pub text: String,
    /// True for a valid text, unchanged.
    pub pristine: bool,
}

/// Like [`hostile`], for text decoders: mutated bytes are read as UTF-8
/// with invalid sequences replaced, and random text is any Unicode.
pub fn hostile_text(
    seeds: BoxedStrategy<String>,
    tokens: &'static [&'static [u8]],
) -> BoxedStrategy<TextInput> {
    let as_bytes = seeds.clone().prop_map(String::into_bytes).boxed();
    prop_oneof![
        8 => hostile(as_bytes, tokens).prop_map(|i| TextInput {
            text: String::from_utf8_lossy(&i.bytes).into_owned(),
            pristine: i.pristine,
        }),
        1 => ".{0,200}".prop_map(|text| TextInput { text, pristine: false }),
        1 => seeds.prop_map(|text| TextInput { text, pristine: true }),
    ]
    .boxed()
}
