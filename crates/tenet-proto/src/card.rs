//! Params of the card services every TENeT card offers (mtypes
//! `0x0101`-`0x0109`): PIN verification, unblocking and change, logout,
//! card info, the host's time, and lock. Wire layouts are in `docs/apdu.md`.

use crate::codec::{Codec, DecodeError, Reader};
use crate::id::Domain;
use crate::mtype::Mtype;
use crate::tlv::{self, Fields, Tag};

const T0: Tag = Tag(0x80);
const T1: Tag = Tag(0x81);
const T2: Tag = Tag(0x82);
const T3: Tag = Tag(0x83);
const T4: Tag = Tag(0x84);

/// Shortest PIN.
pub const PIN_MIN: usize = 4;
/// Longest PIN.
pub const PIN_MAX: usize = 12;

/// Checks that a PIN is 4 to 12 ASCII digits.
pub fn check_pin(pin: &[u8], what: &'static str) -> Result<(), DecodeError> {
    if !(PIN_MIN..=PIN_MAX).contains(&pin.len()) || !pin.iter().all(u8::is_ascii_digit) {
        return Err(DecodeError::Invalid {
            what,
            detail: format!("must be {PIN_MIN} to {PIN_MAX} digits"),
        });
    }
    Ok(())
}

/// `verify-pin` (`0x0101`): authenticate the sending app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyPin {
    /// The PIN, ASCII digits.
    pub pin: Vec<u8>,
}

impl Codec for VerifyPin {
    fn encode(&self, out: &mut Vec<u8>) {
        tlv::write(out, T0, &self.pin);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let f = Fields::parse(r.rest())?;
        f.only(&[T0], "verify-pin")?;
        let pin = f.require(T0, "PIN")?;
        check_pin(pin, "PIN")?;
        Ok(Self { pin: pin.to_vec() })
    }
}

/// `unblock-pin` (`0x0103`): reset the retry counter with the PUK and set a
/// new PIN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnblockPin {
    /// The PUK, ASCII digits.
    pub puk: Vec<u8>,
    /// The new PIN.
    pub new_pin: Vec<u8>,
}

impl Codec for UnblockPin {
    fn encode(&self, out: &mut Vec<u8>) {
        tlv::write(out, T0, &self.puk);
        tlv::write(out, T1, &self.new_pin);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let f = Fields::parse(r.rest())?;
        f.only(&[T0, T1], "unblock-pin")?;
        let puk = f.require(T0, "PUK")?;
        let new_pin = f.require(T1, "new PIN")?;
        check_pin(puk, "PUK")?;
        check_pin(new_pin, "new PIN")?;
        Ok(Self {
            puk: puk.to_vec(),
            new_pin: new_pin.to_vec(),
        })
    }
}

/// `change-pin` (`0x0104`, privileged): set a new PIN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangePin {
    /// The new PIN.
    pub new_pin: Vec<u8>,
}

impl Codec for ChangePin {
    fn encode(&self, out: &mut Vec<u8>) {
        tlv::write(out, T1, &self.new_pin);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let f = Fields::parse(r.rest())?;
        f.only(&[T1], "change-pin")?;
        let new_pin = f.require(T1, "new PIN")?;
        check_pin(new_pin, "new PIN")?;
        Ok(Self {
            new_pin: new_pin.to_vec(),
        })
    }
}

/// Outcome reported by `pin-status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinOutcome {
    /// The PIN was right; the sender is now authenticated.
    Verified,
    /// The PIN was wrong.
    Wrong,
    /// The PIN is blocked; unblock it with the PUK.
    Blocked,
    /// The PIN was changed or unblocked.
    Changed,
    /// The sender left the authenticated set.
    LoggedOut,
    /// The sender may not authenticate (not an app of the card's domain).
    NotAllowed,
    /// The PUK was wrong.
    WrongPuk,
    /// Every authenticated session of the card ended (`lock`).
    Locked,
}

impl PinOutcome {
    fn code(self) -> u8 {
        match self {
            Self::Verified => 0,
            Self::Wrong => 1,
            Self::Blocked => 2,
            Self::Changed => 3,
            Self::LoggedOut => 4,
            Self::NotAllowed => 5,
            Self::WrongPuk => 6,
            Self::Locked => 7,
        }
    }

    fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            0 => Self::Verified,
            1 => Self::Wrong,
            2 => Self::Blocked,
            3 => Self::Changed,
            4 => Self::LoggedOut,
            5 => Self::NotAllowed,
            6 => Self::WrongPuk,
            7 => Self::Locked,
            _ => return None,
        })
    }
}

/// `pin-status` (`0x0102`): the card's answer to the PIN services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PinStatus {
    /// What happened.
    pub outcome: PinOutcome,
    /// PIN tries left.
    pub tries_left: u8,
}

impl Codec for PinStatus {
    fn encode(&self, out: &mut Vec<u8>) {
        tlv::write(out, T0, &[self.outcome.code()]);
        tlv::write(out, T1, &[self.tries_left]);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let f = Fields::parse(r.rest())?;
        f.only(&[T0, T1], "pin-status")?;
        let [code] = f.require_array::<1>(T0, "pin outcome")?;
        let [tries_left] = f.require_array::<1>(T1, "tries left")?;
        Ok(Self {
            outcome: PinOutcome::from_code(code).ok_or_else(|| DecodeError::Invalid {
                what: "pin outcome",
                detail: format!("unknown code {code}"),
            })?,
            tries_left,
        })
    }
}

/// `card-info` (`0x0107`), also the GET INFO response: what a card says
/// about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardInfo {
    /// The card's domain; its id is `domain:0`.
    pub domain: Domain,
    /// ECDSA P-256 public key, uncompressed SEC1 (65 bytes).
    pub public_key: Vec<u8>,
    /// Mtypes its applets accept only from authenticated apps.
    pub privileged: Vec<Mtype>,
    /// Largest eTP message it accepts.
    pub max_message: u32,
    /// Its X.509 certificate (DER), once issued.
    pub certificate: Option<Vec<u8>>,
}

impl Codec for CardInfo {
    fn encode(&self, out: &mut Vec<u8>) {
        tlv::write(out, T0, self.domain.bytes());
        tlv::write(out, T1, &self.public_key);
        let p: Vec<u8> = self
            .privileged
            .iter()
            .flat_map(|m| m.0.to_be_bytes())
            .collect();
        tlv::write(out, T2, &p);
        tlv::write(out, T3, &self.max_message.to_be_bytes());
        if let Some(c) = &self.certificate {
            tlv::write(out, T4, c);
        }
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let f = Fields::parse(r.rest())?;
        f.only(&[T0, T1, T2, T3, T4], "card-info")?;
        let p = f.require(T2, "privileged mtypes")?;
        if p.len() % 2 != 0 {
            return Err(DecodeError::Invalid {
                what: "privileged mtypes",
                detail: "odd length".into(),
            });
        }
        Ok(Self {
            domain: Domain::new(f.require_array(T0, "card domain")?),
            public_key: f.require(T1, "public key")?.to_vec(),
            privileged: p
                .chunks(2)
                .map(|c| Mtype(u16::from_be_bytes([c[0], c[1]])))
                .collect(),
            max_message: u32::from_be_bytes(f.require_array(T3, "max message")?),
            certificate: f.get(T4).map(<[u8]>::to_vec),
        })
    }
}

/// `set-time` (`0x0108`): the host's time for the card's clock, in seconds
/// since the Unix epoch (UTC). What the card does with it is in
/// `tenet_card::clock`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetTime {
    /// Seconds since 1970-01-01T00:00:00Z.
    pub now: u64,
    /// Seconds that passed since the previous set-time to this card, by the
    /// sender's monotonic clock (which a wrong wall clock does not move);
    /// absent for the first after the card was selected.
    pub elapsed: Option<u64>,
}

impl Codec for SetTime {
    fn encode(&self, out: &mut Vec<u8>) {
        tlv::write(out, T0, &self.now.to_be_bytes());
        if let Some(e) = self.elapsed {
            tlv::write(out, T1, &e.to_be_bytes());
        }
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let f = Fields::parse(r.rest())?;
        f.only(&[T0, T1], "set-time")?;
        Ok(Self {
            now: u64::from_be_bytes(f.require_array(T0, "time")?),
            elapsed: f
                .get(T1)
                .map(|_| f.require_array(T1, "elapsed"))
                .transpose()?
                .map(u64::from_be_bytes),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trips() {
        let v = VerifyPin {
            pin: b"1234".to_vec(),
        };
        assert_eq!(VerifyPin::decode(&v.to_bytes()), Ok(v));
        let u = UnblockPin {
            puk: b"12345678".to_vec(),
            new_pin: b"4321".to_vec(),
        };
        assert_eq!(UnblockPin::decode(&u.to_bytes()), Ok(u));
        let s = PinStatus {
            outcome: PinOutcome::Wrong,
            tries_left: 2,
        };
        assert_eq!(PinStatus::decode(&s.to_bytes()), Ok(s));
        let l = PinStatus {
            outcome: PinOutcome::Locked,
            tries_left: 3,
        };
        assert_eq!(l.to_bytes(), [0x80, 1, 7, 0x81, 1, 3]);
        assert_eq!(PinStatus::decode(&l.to_bytes()), Ok(l));
        let i = CardInfo {
            domain: Domain::new([7; 12]),
            public_key: vec![4; 65],
            privileged: vec![Mtype(0x0104), Mtype(0x0201)],
            max_message: 65_535,
            certificate: None,
        };
        assert_eq!(CardInfo::decode(&i.to_bytes()), Ok(i));
        let t = SetTime {
            now: 1_795_737_600,
            elapsed: Some(10),
        };
        assert_eq!(SetTime::decode(&t.to_bytes()), Ok(t));
        assert!(SetTime::decode(&[0x80, 4, 0, 0, 0, 1]).is_err(), "8 bytes");
    }

    #[test]
    fn bad_pins_are_refused() {
        for pin in [&b"123"[..], b"1234567890123", b"12a4"] {
            let v = VerifyPin { pin: pin.to_vec() };
            assert!(VerifyPin::decode(&v.to_bytes()).is_err(), "{pin:?}");
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = VerifyPin::decode(&b);
            let _ = UnblockPin::decode(&b);
            let _ = ChangePin::decode(&b);
            let _ = PinStatus::decode(&b);
            let _ = CardInfo::decode(&b);
            let _ = SetTime::decode(&b);
        }
    }
}
