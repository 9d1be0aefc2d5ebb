//! Message filters: which messages a handler, a tap or a guard rule matches.

use crate::codec::{Codec, DecodeError, Reader};
use crate::id::{Domain, EntityId};
use crate::message::Header;
use crate::mtype::Mtype;
use crate::tlv::{self, Fields, Tag};

/// A conjunction of optional conditions on the eTP header; the empty filter
/// matches every message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Filter {
    /// Exact sender.
    pub src: Option<EntityId>,
    /// Exact destination.
    pub dst: Option<EntityId>,
    /// Sender's domain.
    pub src_domain: Option<Domain>,
    /// Destination's domain.
    pub dst_domain: Option<Domain>,
    /// Message type.
    pub mtype: Option<Mtype>,
}

impl Filter {
    /// The filter that matches everything.
    pub const ANY: Filter = Filter {
        src: None,
        dst: None,
        src_domain: None,
        dst_domain: None,
        mtype: None,
    };

    /// Matches messages to `dst`.
    pub fn to(dst: EntityId) -> Self {
        Self {
            dst: Some(dst),
            ..Self::ANY
        }
    }

    /// Matches messages to any entity of `domain`.
    pub fn to_domain(domain: Domain) -> Self {
        Self {
            dst_domain: Some(domain),
            ..Self::ANY
        }
    }

    /// True if `h` satisfies every condition that is set.
    pub fn matches(&self, h: &Header) -> bool {
        self.src.is_none_or(|s| s == h.src)
            && self.dst.is_none_or(|d| d == h.dst)
            && self.src_domain.is_none_or(|d| d == h.src.domain())
            && self.dst_domain.is_none_or(|d| d == h.dst.domain())
            && self.mtype.is_none_or(|m| m == h.mtype)
    }

    /// The single destination every matching message has, if the filter
    /// pins one down (`dst` set, or nothing else possible).
    pub fn fixed_dst(&self) -> Option<EntityId> {
        self.dst
            .filter(|d| self.dst_domain.is_none_or(|dd| dd == d.domain()))
    }
}

const T_SRC: Tag = Tag(0x80);
const T_DST: Tag = Tag(0x81);
const T_SRC_DOMAIN: Tag = Tag(0x82);
const T_DST_DOMAIN: Tag = Tag(0x83);
const T_MTYPE: Tag = Tag(0x84);

impl Codec for Filter {
    fn encode(&self, out: &mut Vec<u8>) {
        if let Some(s) = self.src {
            tlv::write(out, T_SRC, &s.to_array());
        }
        if let Some(d) = self.dst {
            tlv::write(out, T_DST, &d.to_array());
        }
        if let Some(d) = self.src_domain {
            tlv::write(out, T_SRC_DOMAIN, d.bytes());
        }
        if let Some(d) = self.dst_domain {
            tlv::write(out, T_DST_DOMAIN, d.bytes());
        }
        if let Some(m) = self.mtype {
            tlv::write(out, T_MTYPE, &m.0.to_be_bytes());
        }
    }

    /// Takes everything left in `r`.
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let f = Fields::parse(r.rest())?;
        f.only(
            &[T_SRC, T_DST, T_SRC_DOMAIN, T_DST_DOMAIN, T_MTYPE],
            "filter",
        )?;
        let id = |t, what| -> Result<Option<EntityId>, DecodeError> {
            f.get(t)
                .map(|_| f.require_array(t, what).map(EntityId::from_array))
                .transpose()
        };
        let dom = |t, what| -> Result<Option<Domain>, DecodeError> {
            f.get(t)
                .map(|_| f.require_array(t, what).map(Domain::new))
                .transpose()
        };
        Ok(Self {
            src: id(T_SRC, "filter src")?,
            dst: id(T_DST, "filter dst")?,
            src_domain: dom(T_SRC_DOMAIN, "filter src domain")?,
            dst_domain: dom(T_DST_DOMAIN, "filter dst domain")?,
            mtype: f
                .get(T_MTYPE)
                .map(|_| {
                    f.require_array(T_MTYPE, "filter mtype")
                        .map(|b| Mtype(u16::from_be_bytes(b)))
                })
                .transpose()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_filter() -> impl Strategy<Value = Filter> {
        (
            proptest::option::of(any::<[u8; 16]>()),
            proptest::option::of(any::<[u8; 16]>()),
            proptest::option::of(any::<[u8; 12]>()),
            proptest::option::of(any::<[u8; 12]>()),
            proptest::option::of(any::<u16>()),
        )
            .prop_map(|(s, d, sd, dd, m)| Filter {
                src: s.map(EntityId::from_array),
                dst: d.map(EntityId::from_array),
                src_domain: sd.map(Domain::new),
                dst_domain: dd.map(Domain::new),
                mtype: m.map(Mtype),
            })
    }

    #[test]
    fn each_condition_restricts() {
        let a = EntityId::from_array([1; 16]);
        let b = EntityId::from_array([2; 16]);
        let h = Header {
            src: a,
            dst: b,
            mtype: Mtype::ECHO_REQUEST,
        };
        assert!(Filter::ANY.matches(&h));
        assert!(Filter::to(b).matches(&h));
        assert!(!Filter::to(a).matches(&h));
        assert!(Filter::to_domain(b.domain()).matches(&h));
        assert!(
            !Filter {
                src_domain: Some(b.domain()),
                ..Filter::ANY
            }
            .matches(&h)
        );
        assert!(
            !Filter {
                mtype: Some(Mtype::ECHO_REPLY),
                ..Filter::ANY
            }
            .matches(&h)
        );
        assert!(
            Filter {
                src: Some(a),
                mtype: Some(Mtype::ECHO_REQUEST),
                ..Filter::ANY
            }
            .matches(&h)
        );
    }

    proptest! {
        #[test]
        fn filters_round_trip(f in arb_filter()) {
            prop_assert_eq!(Filter::decode(&f.to_bytes()), Ok(f));
        }

        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = Filter::decode(&b);
        }
    }
}
