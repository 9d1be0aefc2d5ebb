//! ISO/IEC 7816-4 APDUs: command and response codec, short and extended
//! length, and command chaining for readers limited to short APDUs.
//!
//! The TENeT mapping onto APDUs (AID, instructions, status words) is
//! documented in `docs/apdu.md` and defined in [`tenet`].

use std::fmt;

use crate::codec::DecodeError;

/// A status word (SW1 SW2).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct StatusWord(pub u16);

impl StatusWord {
    /// `9000`: success; for TENeT commands, no further outgoing message.
    pub const OK: Self = Self(0x9000);
    /// `6581`: memory failure (the card's store could not be written).
    pub const MEMORY_FAILURE: Self = Self(0x6581);
    /// `6700`: wrong length.
    pub const WRONG_LENGTH: Self = Self(0x6700);
    /// `6883`: last command of the chain expected.
    pub const CHAIN_EXPECTED: Self = Self(0x6883);
    /// `6982`: security status not satisfied.
    pub const SECURITY_NOT_SATISFIED: Self = Self(0x6982);
    /// `6884`: command chaining not supported (for this command).
    pub const CHAINING_NOT_SUPPORTED: Self = Self(0x6884);
    /// `6985`: conditions of use not satisfied (e.g. applet not selected).
    pub const CONDITIONS_NOT_SATISFIED: Self = Self(0x6985);
    /// `6a80`: incorrect data (malformed eTP message).
    pub const INCORRECT_DATA: Self = Self(0x6a80);
    /// `6a82`: applet not found (SELECT of an unknown AID).
    pub const NOT_FOUND: Self = Self(0x6a82);
    /// `6a84`: not enough memory (storage budget or message limit).
    pub const NOT_ENOUGH_MEMORY: Self = Self(0x6a84);
    /// `6a86`: incorrect P1 or P2.
    pub const INCORRECT_P1P2: Self = Self(0x6a86);
    /// `6a88`: referenced data not found (message not addressed to this card).
    pub const DATA_NOT_FOUND: Self = Self(0x6a88);
    /// `6d00`: instruction not supported.
    pub const INS_NOT_SUPPORTED: Self = Self(0x6d00);
    /// `6e00`: class not supported.
    pub const CLA_NOT_SUPPORTED: Self = Self(0x6e00);
    /// `6f00`: no precise diagnosis.
    pub const UNKNOWN: Self = Self(0x6f00);

    /// `61xx`: `xx` more response bytes (0 = 256 or more) via GET RESPONSE.
    pub fn more_bytes(n: usize) -> Self {
        Self(0x6100 | (n.min(256) & 0xff) as u16)
    }

    /// `91nn`: success, and `nn` more outgoing messages wait on the card
    /// (capped at 255). With `n == 0` this is [`StatusWord::OK`].
    pub fn messages_waiting(n: usize) -> Self {
        if n == 0 {
            Self::OK
        } else {
            Self(0x9100 | n.min(255) as u16)
        }
    }

    /// SW1.
    pub fn sw1(self) -> u8 {
        (self.0 >> 8) as u8
    }

    /// SW2.
    pub fn sw2(self) -> u8 {
        self.0 as u8
    }

    /// True for `9000` and `91nn`.
    pub fn is_success(self) -> bool {
        self.sw1() == 0x90 && self.sw2() == 0 || self.sw1() == 0x91
    }

    /// For `91nn`, `nn`; for `9000`, 0; otherwise `None`.
    pub fn waiting(self) -> Option<usize> {
        match self.sw1() {
            0x90 if self.sw2() == 0 => Some(0),
            0x91 => Some(usize::from(self.sw2())),
            _ => None,
        }
    }

    fn meaning(self) -> &'static str {
        match self {
            Self::OK => "success",
            Self::MEMORY_FAILURE => "memory failure",
            Self::WRONG_LENGTH => "wrong length",
            Self::CHAIN_EXPECTED => "last command of chain expected",
            Self::CHAINING_NOT_SUPPORTED => "command chaining not supported",
            Self::SECURITY_NOT_SATISFIED => "security status not satisfied",
            Self::CONDITIONS_NOT_SATISFIED => "conditions of use not satisfied",
            Self::INCORRECT_DATA => "incorrect data",
            Self::NOT_FOUND => "applet not found",
            Self::NOT_ENOUGH_MEMORY => "not enough memory",
            Self::INCORRECT_P1P2 => "incorrect P1/P2",
            Self::DATA_NOT_FOUND => "referenced data not found",
            Self::INS_NOT_SUPPORTED => "instruction not supported",
            Self::CLA_NOT_SUPPORTED => "class not supported",
            Self::UNKNOWN => "no precise diagnosis",
            s if s.sw1() == 0x61 => "more response bytes",
            s if s.sw1() == 0x91 => "success, messages waiting",
            _ => "unknown status",
        }
    }
}

impl fmt::Display for StatusWord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04x} ({})", self.0, self.meaning())
    }
}

impl fmt::Debug for StatusWord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StatusWord({self})")
    }
}

/// Largest data field of a short command APDU.
pub const SHORT_LC_MAX: usize = 255;
/// Largest Le of a short APDU.
pub const SHORT_LE_MAX: usize = 256;
/// Largest data field of an extended command APDU.
pub const EXTENDED_LC_MAX: usize = 65_535;
/// Largest Le of an extended APDU.
pub const EXTENDED_LE_MAX: usize = 65_536;

/// The chaining bit of CLA (ISO 7816-4 5.1.1): more commands of the chain
/// follow.
pub const CLA_CHAINING: u8 = 0x10;

/// A command APDU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// Class byte.
    pub cla: u8,
    /// Instruction.
    pub ins: u8,
    /// Parameter 1.
    pub p1: u8,
    /// Parameter 2.
    pub p2: u8,
    /// Data field (Lc bytes).
    pub data: Vec<u8>,
    /// Expected response length; `None` when no response data is expected.
    pub le: Option<usize>,
}

impl Command {
    /// A command with no data and no Le.
    pub fn new(cla: u8, ins: u8, p1: u8, p2: u8) -> Self {
        Self {
            cla,
            ins,
            p1,
            p2,
            data: Vec::new(),
            le: None,
        }
    }

    /// Sets the data field.
    pub fn with_data(mut self, data: Vec<u8>) -> Self {
        self.data = data;
        self
    }

    /// Sets Le.
    pub fn with_le(mut self, le: usize) -> Self {
        self.le = Some(le);
        self
    }

    /// True if this command needs the extended-length form.
    pub fn needs_extended(&self) -> bool {
        self.data.len() > SHORT_LC_MAX || self.le.is_some_and(|l| l > SHORT_LE_MAX)
    }

    /// True if the chaining bit is set.
    pub fn is_chained(&self) -> bool {
        self.cla & CLA_CHAINING != 0
    }

    /// Encodes in short form when possible, else extended.
    ///
    /// # Panics
    /// If data exceeds 65 535 bytes or Le exceeds 65 536: callers bound both.
    pub fn encode(&self, out: &mut Vec<u8>) {
        assert!(self.data.len() <= EXTENDED_LC_MAX, "data field too long");
        assert!(
            self.le.is_none_or(|l| (1..=EXTENDED_LE_MAX).contains(&l)),
            "Le out of range"
        );
        out.extend_from_slice(&[self.cla, self.ins, self.p1, self.p2]);
        let ext = self.needs_extended();
        if ext {
            out.push(0);
            if !self.data.is_empty() {
                out.extend_from_slice(&(self.data.len() as u16).to_be_bytes());
                out.extend_from_slice(&self.data);
            }
            if let Some(le) = self.le {
                out.extend_from_slice(&((le % EXTENDED_LE_MAX) as u16).to_be_bytes());
            }
        } else {
            if !self.data.is_empty() {
                out.push(self.data.len() as u8);
                out.extend_from_slice(&self.data);
            }
            if let Some(le) = self.le {
                out.push((le % SHORT_LE_MAX) as u8);
            }
        }
    }

    /// The encoding as a new vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(9 + self.data.len());
        self.encode(&mut out);
        out
    }

    /// Decodes any of the ISO 7816-4 cases 1, 2S, 3S, 4S, 2E, 3E, 4E.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let bad = |detail: String| DecodeError::Invalid {
            what: "command APDU",
            detail,
        };
        if b.len() < 4 {
            return Err(DecodeError::Truncated {
                what: "command APDU header",
                needed: 4 - b.len(),
            });
        }
        let mut c = Self::new(b[0], b[1], b[2], b[3]);
        let body = &b[4..];
        match body.len() {
            0 => {}
            1 => {
                c.le = Some(if body[0] == 0 {
                    256
                } else {
                    usize::from(body[0])
                })
            }
            _ if body[0] != 0 => {
                let lc = usize::from(body[0]);
                match body.len() - 1 {
                    n if n == lc => c.data = body[1..].to_vec(),
                    n if n == lc + 1 => {
                        c.data = body[1..=lc].to_vec();
                        let le = body[lc + 1];
                        c.le = Some(if le == 0 { 256 } else { usize::from(le) });
                    }
                    n => return Err(bad(format!("short Lc {lc} but {n} bytes follow"))),
                }
            }
            3 => {
                let le = usize::from(u16::from_be_bytes([body[1], body[2]]));
                c.le = Some(if le == 0 { 65_536 } else { le });
            }
            n if n >= 4 => {
                let lc = usize::from(u16::from_be_bytes([body[1], body[2]]));
                if lc == 0 {
                    return Err(bad("extended Lc of 0".into()));
                }
                match n - 3 {
                    m if m == lc => c.data = body[3..].to_vec(),
                    m if m == lc + 2 => {
                        c.data = body[3..3 + lc].to_vec();
                        let le = usize::from(u16::from_be_bytes([body[3 + lc], body[4 + lc]]));
                        c.le = Some(if le == 0 { 65_536 } else { le });
                    }
                    m => return Err(bad(format!("extended Lc {lc} but {m} bytes follow"))),
                }
            }
            n => return Err(bad(format!("{n} bytes after the header fit no case"))),
        }
        Ok(c)
    }

    /// Splits into a chain of short commands of at most `chunk` data bytes
    /// (1 to 255): every part but the last has the chaining bit set, and
    /// only the last carries Le (capped to the short maximum).
    pub fn chain(&self, chunk: usize) -> Vec<Command> {
        let chunk = chunk.clamp(1, SHORT_LC_MAX);
        if self.data.len() <= chunk {
            let mut c = self.clone();
            c.le = c.le.map(|l| l.min(SHORT_LE_MAX));
            return vec![c];
        }
        let parts: Vec<_> = self.data.chunks(chunk).collect();
        let last = parts.len() - 1;
        parts
            .iter()
            .enumerate()
            .map(|(i, part)| Command {
                cla: if i < last {
                    self.cla | CLA_CHAINING
                } else {
                    self.cla
                },
                ins: self.ins,
                p1: self.p1,
                p2: self.p2,
                data: part.to_vec(),
                le: if i < last {
                    None
                } else {
                    self.le.map(|l| l.min(SHORT_LE_MAX))
                },
            })
            .collect()
    }
}

/// A response APDU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Response data.
    pub data: Vec<u8>,
    /// Status word.
    pub sw: StatusWord,
}

impl Response {
    /// A response with a status word and no data.
    pub fn status(sw: StatusWord) -> Self {
        Self {
            data: Vec::new(),
            sw,
        }
    }

    /// Encodes data then SW1 SW2.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.data);
        out.extend_from_slice(&self.sw.0.to_be_bytes());
    }

    /// The encoding as a new vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.data.len() + 2);
        self.encode(&mut out);
        out
    }

    /// Decodes data and status word.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        if b.len() < 2 {
            return Err(DecodeError::Truncated {
                what: "response APDU status word",
                needed: 2 - b.len(),
            });
        }
        if b.len() > EXTENDED_LE_MAX + 2 {
            return Err(DecodeError::TooLarge {
                what: "response APDU",
                len: b.len(),
                max: EXTENDED_LE_MAX + 2,
            });
        }
        let (data, sw) = b.split_at(b.len() - 2);
        Ok(Self {
            data: data.to_vec(),
            sw: StatusWord(u16::from_be_bytes([sw[0], sw[1]])),
        })
    }
}

/// The TENeT card mapping: AID, instructions and their meaning.
pub mod tenet {
    /// The TENeT applet's AID: `F0 54 45 4E 45 54 01` (proprietary RID
    /// `F0`, then "TENET", version 1): DELIVER and POLL carry whole eTP
    /// messages.
    pub const AID: [u8; 7] = [0xf0, 0x54, 0x45, 0x4e, 0x45, 0x54, 0x01];
    /// The same applet's version 2, `F0 54 45 4E 45 54 02`: DELIVER and
    /// POLL carry messages in the compact form ([`super::compact`]). A
    /// host selects it first and falls back to [`AID`] on `6A 82`.
    pub const AID_COMPACT: [u8; 7] = [0xf0, 0x54, 0x45, 0x4e, 0x45, 0x54, 0x02];
    /// Class of the TENeT proprietary commands.
    pub const CLA: u8 = 0x80;
    /// ISO SELECT (CLA 00, P1 04 = by DF name / AID, P2 00).
    pub const INS_SELECT: u8 = 0xa4;
    /// ISO GET RESPONSE (CLA 00), for short-APDU readers.
    pub const INS_GET_RESPONSE: u8 = 0xc0;
    /// DELIVER: data is one eTP message for the card; the response data is
    /// the card's next outgoing message (possibly none); SW `9000` when no
    /// further message waits, `91nn` when `nn` more wait (fetch with POLL).
    pub const INS_DELIVER: u8 = 0x10;
    /// POLL: no data; the response is like DELIVER's.
    pub const INS_POLL: u8 = 0x12;
    /// ASSIGN PORT: no data; the response is a new port (u32 BE), never
    /// assigned before by this card.
    pub const INS_ASSIGN_PORT: u8 = 0x20;
    /// GET INFO: no data; the response is the card's info TLV (domain,
    /// public key, privileged mtypes, limits).
    pub const INS_GET_INFO: u8 = 0x22;
}

/// The compact card-link form of an eTP message (applet version 2,
/// [`tenet::AID_COMPACT`]).
///
/// On the card link the card's own id is implied: it is the `dst` of every
/// message the host delivers and the `src` of every message the card sends.
/// The compact form drops it and writes the other id in as few bytes as
/// the card's id allows:
///
/// ```text
/// form (1)   bit 0 (01): the other id's domain is the card's (omitted)
///            bit 1 (02): the other id's port is 0 (omitted)
///            other bits 0
/// mtype (2)
/// domain (12)  unless bit 0
/// port (4)     unless bit 1
/// param
/// ```
///
/// The other id is the `src` of a DELIVER's message and the `dst` of a
/// response's. A message from the card's own wallet (`DOMAIN:1`) takes 7
/// bytes of header, one from or to another card 15, where the full form
/// takes 34.
pub mod compact {
    use crate::codec::{DecodeError, Reader};
    use crate::id::{DOMAIN_LEN, Domain, EntityId, Port};
    use crate::message::{HEADER_LEN, MAX_MESSAGE_LEN, Message};
    use crate::mtype::Mtype;

    const SAME_DOMAIN: u8 = 0x01;
    const PORT_ZERO: u8 = 0x02;

    fn encode(card: EntityId, other: EntityId, mtype: Mtype, param: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(19 + param.len());
        let same = other.domain() == card.domain();
        let zero = other.port() == Port::new(0);
        out.push((u8::from(same) * SAME_DOMAIN) | (u8::from(zero) * PORT_ZERO));
        out.extend_from_slice(&mtype.0.to_be_bytes());
        if !same {
            out.extend_from_slice(other.domain().bytes());
        }
        if !zero {
            out.extend_from_slice(&other.port().get().to_be_bytes());
        }
        out.extend_from_slice(param);
        out
    }

    fn decode(card: EntityId, bytes: &[u8]) -> Result<(EntityId, Mtype, Vec<u8>), DecodeError> {
        let mut r = Reader::new(bytes);
        let form = r.u8("compact form byte")?;
        if form & !(SAME_DOMAIN | PORT_ZERO) != 0 {
            return Err(DecodeError::Invalid {
                what: "compact form byte",
                detail: format!("{form:#04x} sets bits other than 01 and 02"),
            });
        }
        let mtype = Mtype(r.u16("mtype")?);
        let domain = match form & SAME_DOMAIN {
            0 => Domain::new(r.array::<DOMAIN_LEN>("domain")?),
            _ => card.domain(),
        };
        let port = match form & PORT_ZERO {
            0 => Port::new(r.u32("port")?),
            _ => Port::new(0),
        };
        let param = r.rest();
        if HEADER_LEN + param.len() > MAX_MESSAGE_LEN {
            return Err(DecodeError::TooLarge {
                what: "eTP message",
                len: HEADER_LEN + param.len(),
                max: MAX_MESSAGE_LEN,
            });
        }
        Ok((EntityId::new(domain, port), mtype, param.to_vec()))
    }

    /// `m`, delivered to its `dst` (the card), in compact form.
    pub fn to_card(m: &Message) -> Vec<u8> {
        encode(m.dst(), m.src(), m.mtype(), &m.param)
    }

    /// A compact message delivered to `card`.
    pub fn decode_to_card(card: EntityId, bytes: &[u8]) -> Result<Message, DecodeError> {
        let (src, mtype, param) = decode(card, bytes)?;
        Ok(Message::new(src, card, mtype, param))
    }

    /// `m`, sent by its `src` (the card), in compact form.
    pub fn from_card(m: &Message) -> Vec<u8> {
        encode(m.src(), m.dst(), m.mtype(), &m.param)
    }

    /// A compact message sent by `card`.
    pub fn decode_from_card(card: EntityId, bytes: &[u8]) -> Result<Message, DecodeError> {
        let (dst, mtype, param) = decode(card, bytes)?;
        Ok(Message::new(card, dst, mtype, param))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_short_and_extended_encodings() {
        let select = Command::new(0x00, 0xa4, 0x04, 0x00).with_data(tenet::AID.to_vec());
        assert_eq!(
            select.to_bytes(),
            [
                0x00, 0xa4, 0x04, 0x00, 0x07, 0xf0, 0x54, 0x45, 0x4e, 0x45, 0x54, 0x01
            ]
        );
        let case2 = Command::new(0x80, 0x20, 0, 0).with_le(256);
        assert_eq!(case2.to_bytes(), [0x80, 0x20, 0, 0, 0x00]);
        let ext = Command::new(0x80, 0x10, 0, 0)
            .with_data(vec![0xaa; 300])
            .with_le(65_536);
        let b = ext.to_bytes();
        assert_eq!(&b[4..7], &[0x00, 0x01, 0x2c]);
        assert_eq!(&b[b.len() - 2..], &[0x00, 0x00]);
        assert_eq!(Command::decode(&b).unwrap(), ext);
        let case2e = Command::new(0x80, 0x12, 0, 0).with_le(1000);
        assert_eq!(case2e.to_bytes(), [0x80, 0x12, 0, 0, 0, 0x03, 0xe8]);
        assert_eq!(Command::decode(&case2e.to_bytes()).unwrap(), case2e);
    }

    #[test]
    fn malformed_commands_are_typed_errors() {
        assert!(matches!(
            Command::decode(&[0x80, 0x10]),
            Err(DecodeError::Truncated { .. })
        ));
        // Lc 5 with 2 bytes.
        assert!(matches!(
            Command::decode(&[0x80, 0x10, 0, 0, 5, 1, 2]),
            Err(DecodeError::Invalid { .. })
        ));
        // Extended Lc 0.
        assert!(matches!(
            Command::decode(&[0x80, 0x10, 0, 0, 0, 0, 0, 1]),
            Err(DecodeError::Invalid { .. })
        ));
        // Two bytes after the header fit no case.
        assert!(matches!(
            Command::decode(&[0x80, 0x10, 0, 0, 0, 1]),
            Err(DecodeError::Invalid { .. })
        ));
        assert!(matches!(
            Response::decode(&[0x90]),
            Err(DecodeError::Truncated { .. })
        ));
    }

    #[test]
    fn chaining_splits_and_marks_all_but_last() {
        let c = Command::new(0x80, 0x10, 0, 0)
            .with_data((0..600u32).map(|i| i as u8).collect())
            .with_le(65_536);
        let parts = c.chain(255);
        assert_eq!(parts.len(), 3);
        assert!(parts[0].is_chained() && parts[1].is_chained() && !parts[2].is_chained());
        assert_eq!(
            parts.iter().map(|p| p.data.len()).collect::<Vec<_>>(),
            [255, 255, 90]
        );
        assert_eq!((parts[0].le, parts[2].le), (None, Some(256)));
        assert!(parts.iter().all(|p| !p.needs_extended()));
        let joined: Vec<u8> = parts.iter().flat_map(|p| p.data.clone()).collect();
        assert_eq!(joined, c.data);
    }

    #[test]
    fn status_words() {
        assert_eq!(StatusWord::messages_waiting(0), StatusWord::OK);
        assert_eq!(StatusWord::messages_waiting(3), StatusWord(0x9103));
        assert_eq!(StatusWord::messages_waiting(999).waiting(), Some(255));
        assert!(StatusWord(0x9103).is_success());
        assert!(!StatusWord::NOT_FOUND.is_success());
        assert_eq!(StatusWord::NOT_FOUND.to_string(), "6a82 (applet not found)");
        assert_eq!(StatusWord::more_bytes(300), StatusWord(0x6100));
    }

    proptest! {
        #[test]
        fn commands_round_trip(cla in any::<u8>(), ins in any::<u8>(), p1 in any::<u8>(), p2 in any::<u8>(),
                               data in proptest::collection::vec(any::<u8>(), 0..600),
                               le in proptest::option::of(1usize..=65_536)) {
            let c = Command { cla, ins, p1, p2, data, le };
            prop_assert_eq!(Command::decode(&c.to_bytes()).unwrap(), c);
        }

        #[test]
        fn responses_round_trip(data in proptest::collection::vec(any::<u8>(), 0..600), sw in any::<u16>()) {
            let r = Response { data, sw: StatusWord(sw) };
            prop_assert_eq!(Response::decode(&r.to_bytes()).unwrap(), r);
        }

        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Command::decode(&b);
            let _ = Response::decode(&b);
        }
    }
}
