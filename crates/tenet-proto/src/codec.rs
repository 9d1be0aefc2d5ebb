//! The one codec trait of the project and a bounded reader.
//!
//! Every wire type implements [`Codec`]: it encodes into a caller-supplied
//! buffer and decodes from a [`Reader`] that refuses to read past the end of
//! its slice. [`Codec::decode`] additionally rejects trailing bytes.

use thiserror::Error;

/// Why bytes could not be decoded. Decoding never panics; every malformed
/// input maps to one of these.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The input ended before `what` was complete.
    #[error("truncated {what}: needed {needed} more bytes")]
    Truncated {
        /// The item being read.
        what: &'static str,
        /// How many bytes were missing.
        needed: usize,
    },
    /// Bytes were left over after a complete item.
    #[error("{count} trailing bytes after {what}")]
    TrailingBytes {
        /// The item that was complete.
        what: &'static str,
        /// How many bytes were left.
        count: usize,
    },
    /// A length field exceeds what the protocol allows.
    #[error("{what} of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// The item whose length was too large.
        what: &'static str,
        /// The announced length.
        len: usize,
        /// The allowed maximum.
        max: usize,
    },
    /// A field holds a value the protocol does not define.
    #[error("invalid {what}: {detail}")]
    Invalid {
        /// The field.
        what: &'static str,
        /// What was wrong with it.
        detail: String,
    },
}

/// A cursor over a byte slice that never reads past its end.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Starts reading at the beginning of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Bytes not yet read.
    pub fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Takes exactly `n` bytes, or fails naming `what`.
    pub fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.left() < n {
            return Err(DecodeError::Truncated {
                what,
                needed: n - self.left(),
            });
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    /// Takes a fixed-size array.
    pub fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    /// Reads one byte.
    pub fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }

    /// Reads a big-endian u16.
    pub fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    /// Reads a big-endian u32.
    pub fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    /// Reads a big-endian u64.
    pub fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    /// Takes everything that is left.
    pub fn rest(&mut self) -> &'a [u8] {
        let out = &self.buf[self.pos..];
        self.pos = self.buf.len();
        out
    }

    /// Fails if any bytes are left.
    pub fn expect_empty(&self, what: &'static str) -> Result<(), DecodeError> {
        match self.left() {
            0 => Ok(()),
            count => Err(DecodeError::TrailingBytes { what, count }),
        }
    }
}

/// Encoding to and decoding from the wire.
pub trait Codec: Sized {
    /// Appends the encoding of `self` to `out`.
    fn encode(&self, out: &mut Vec<u8>);

    /// Reads one value from `r`, leaving what follows it.
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError>;

    /// The encoding as a new vector.
    fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    /// Decodes exactly one value from `bytes`; trailing bytes are an error.
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let v = Self::read(&mut r)?;
        r.expect_empty(std::any::type_name::<Self>())?;
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_refuses_to_read_past_end() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(r.u16("x").unwrap(), 0x0102);
        assert_eq!(
            r.u16("y"),
            Err(DecodeError::Truncated {
                what: "y",
                needed: 1
            })
        );
        assert_eq!(r.left(), 1, "a failed read consumes nothing");
        assert_eq!(
            r.expect_empty("z"),
            Err(DecodeError::TrailingBytes {
                what: "z",
                count: 1
            })
        );
    }
}
