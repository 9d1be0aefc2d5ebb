//! The host's own entity, `DOMAIN:0` of its software domain: it answers
//! echo and refuses everything else with a `refused` notice. Sans-IO: a
//! message in, an optional answer out.

use tenet_proto::notice::Refused;
use tenet_proto::{Codec, EntityId, Message, Mtype};

/// The answer of the entity `me` to `m`, if any. Notices and replies are
/// never answered, so two entities cannot bounce messages forever.
pub fn answer(me: EntityId, m: &Message) -> Option<Message> {
    match m.mtype() {
        Mtype::ECHO_REQUEST => Some(Message::new(
            me,
            m.src(),
            Mtype::ECHO_REPLY,
            m.param.clone(),
        )),
        Mtype::ECHO_REPLY | Mtype::UNDELIVERABLE | Mtype::REFUSED => None,
        other => Some(Message::new(
            me,
            m.src(),
            Mtype::REFUSED,
            Refused {
                mtype: other,
                text: "the host entity answers only echo-request".into(),
            }
            .to_bytes(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoes_refuses_and_never_answers_notices() {
        let me = EntityId::from_array([1; 16]);
        let you = EntityId::from_array([2; 16]);
        let e = answer(me, &Message::new(you, me, Mtype::ECHO_REQUEST, vec![7, 7])).unwrap();
        assert_eq!(e, Message::new(me, you, Mtype::ECHO_REPLY, vec![7, 7]));
        let r = answer(me, &Message::new(you, me, Mtype(0x8001), vec![])).unwrap();
        assert_eq!(r.mtype(), Mtype::REFUSED);
        assert_eq!(Refused::decode(&r.param).unwrap().mtype, Mtype(0x8001));
        for m in [Mtype::ECHO_REPLY, Mtype::UNDELIVERABLE, Mtype::REFUSED] {
            assert_eq!(answer(me, &Message::new(you, me, m, vec![])), None);
        }
    }
}
