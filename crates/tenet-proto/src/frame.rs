//! Stream framing: on byte streams (Unix socket, TCP) every frame is a u32
//! big-endian length followed by that many bytes of body.
//!
//! [`split_frame`] looks at the front of a receive buffer and either returns
//! a complete body, asks for more bytes, or refuses a length above the
//! caller's maximum before any of the body has been read, so a peer cannot
//! make the reader allocate more than that maximum. [`FrameDecoder`] keeps
//! the receive buffer around it: the app socket (client and daemon) and the
//! links between hosts read their streams through it, with no buffer loop
//! of their own; [`write_codec_frame`] is the other direction.

use crate::codec::{Codec, DecodeError};

/// Bytes a [`FrameDecoder`] makes room for before each read.
pub const READ_CHUNK: usize = 16 * 1024;

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

/// Appends one frame holding `value`'s encoding to `out`.
pub fn write_codec_frame<C: Codec>(out: &mut Vec<u8>, value: &C) {
    let at = begin_frame(out);
    value.encode(out);
    finish_frame(out, at);
}

/// The receive side of a framed byte stream, without I/O: the caller reads
/// from its stream into [`FrameDecoder::read_buf`] and takes whole frame
/// bodies from [`FrameDecoder::next_frame`].
///
/// The buffer holds at most one frame of `max_body` plus one read beyond
/// the bytes already consumed: a length above `max_body` is refused from
/// its prefix, before the body is read.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Bytes at the front of `buf` already returned as frames.
    start: usize,
    max_body: usize,
}

impl FrameDecoder {
    /// A decoder that refuses frames with a body over `max_body` bytes.
    pub fn new(max_body: usize) -> Self {
        Self {
            buf: Vec::with_capacity(READ_CHUNK),
            start: 0,
            max_body,
        }
    }

    /// The buffer to append the next read's bytes to, with room for
    /// [`READ_CHUNK`] more; consumed frames are dropped from its front first.
    pub fn read_buf(&mut self) -> &mut Vec<u8> {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.reserve(READ_CHUNK);
        &mut self.buf
    }

    /// The next complete frame body, `Ok(None)` when more bytes are needed,
    /// or `Err(TooLarge)` when the next frame announces a body over the
    /// maximum (the stream cannot be resynchronized after that).
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, DecodeError> {
        match split_frame(&self.buf[self.start..], self.max_body)? {
            Some((used, _)) => {
                let body = self.start + LEN_PREFIX..self.start + used;
                self.start += used;
                Ok(Some(&self.buf[body]))
            }
            None => Ok(None),
        }
    }

    /// The next complete frame, decoded as `C`.
    pub fn next_decoded<C: Codec>(&mut self) -> Result<Option<C>, DecodeError> {
        self.next_frame()?.map(C::decode).transpose()
    }

    /// Bytes received and not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }
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
    fn the_decoder_refuses_an_oversized_frame_from_its_prefix() {
        let mut d = FrameDecoder::new(65_535);
        d.read_buf().extend_from_slice(&70_000u32.to_be_bytes());
        assert!(matches!(
            d.next_frame(),
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
        fn the_decoder_returns_each_body_whatever_the_read_sizes(
            bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..50), 0..8),
            cuts in proptest::collection::vec(1usize..20, 1..40),
        ) {
            let mut wire = Vec::new();
            for b in &bodies {
                write_frame(&mut wire, b);
            }
            let mut d = FrameDecoder::new(1000);
            let mut got = Vec::new();
            let mut rest = &wire[..];
            let mut cut = cuts.iter().cycle();
            while !rest.is_empty() {
                let n = (*cut.next().unwrap()).min(rest.len());
                d.read_buf().extend_from_slice(&rest[..n]);
                rest = &rest[n..];
                while let Some(body) = d.next_frame().unwrap() {
                    got.push(body.to_vec());
                }
            }
            prop_assert_eq!(got, bodies);
            prop_assert_eq!(d.buffered(), 0);
        }

        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..40), max in 0usize..100) {
            let _ = split_frame(&b, max);
        }
    }
}
