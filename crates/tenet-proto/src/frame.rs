//! Stream framing: on byte streams (Unix socket, TCP) every frame is a u32
//! big-endian length followed by that many bytes of body.
//!
//! [`split_frame`] looks at the front of a receive buffer and either returns
//! a complete body, asks for more bytes, or refuses a length above the
//! caller's maximum before any of the body has been read, so a peer cannot
//! make the reader allocate more than that maximum.

use crate::codec::DecodeError;

/// Size of the length prefix.
pub const LEN_PREFIX: usize = 4;

/// Appends one frame (length prefix, then `body`) to `out`.
///
/// # Panics
/// If `body` is longer than `u32::MAX`; callers bound bodies far below that.
pub fn write_frame(out: &mut Vec<u8>, body: &[u8]) {
    let len = u32::try_from(body.len()).expect("frame body fits u32");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(body);
}

/// Starts a frame whose body the caller appends next; finish it with
/// [`finish_frame`].
pub fn begin_frame(out: &mut Vec<u8>) -> usize {
    let at = out.len();
    out.extend_from_slice(&[0; LEN_PREFIX]);
    at
}

/// Writes the length prefix of a frame started at `at` by [`begin_frame`].
pub fn finish_frame(out: &mut [u8], at: usize) {
    let len = u32::try_from(out.len() - at - LEN_PREFIX).expect("frame body fits u32");
    out[at..at + LEN_PREFIX].copy_from_slice(&len.to_be_bytes());
}

/// Finds the first complete frame in `buf`.
///
/// Returns `Ok(Some((consumed, body)))` for a complete frame, `Ok(None)` if
/// more bytes are needed, and `Err(TooLarge)` if the announced length
/// exceeds `max_body`.
pub fn split_frame(buf: &[u8], max_body: usize) -> Result<Option<(usize, &[u8])>, DecodeError> {
    if buf.len() < LEN_PREFIX {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > max_body {
        return Err(DecodeError::TooLarge {
            what: "frame",
            len,
            max: max_body,
        });
    }
    let end = LEN_PREFIX + len;
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some((end, &buf[LEN_PREFIX..end])))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn oversized_length_is_refused_before_the_body_arrives() {
        let buf = 70_000u32.to_be_bytes();
        assert!(matches!(
            split_frame(&buf, 65_535),
            Err(DecodeError::TooLarge { len: 70_000, .. })
        ));
    }

    #[test]
    fn partial_frames_ask_for_more() {
        let mut out = Vec::new();
        write_frame(&mut out, b"hello");
        for n in 0..out.len() {
            assert_eq!(split_frame(&out[..n], 100), Ok(None));
        }
        assert_eq!(split_frame(&out, 100), Ok(Some((9, &b"hello"[..]))));
    }

    proptest! {
        #[test]
        fn frames_round_trip(bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..50), 0..8)) {
            let mut out = Vec::new();
            for b in &bodies {
                let at = begin_frame(&mut out);
                out.extend_from_slice(b);
                finish_frame(&mut out, at);
            }
            let mut rest = &out[..];
            for b in &bodies {
                let (used, body) = split_frame(rest, 1000).unwrap().unwrap();
                prop_assert_eq!(body, &b[..]);
                rest = &rest[used..];
            }
            prop_assert!(rest.is_empty());
        }

        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..40), max in 0usize..100) {
            let _ = split_frame(&b, max);
        }
    }
}
