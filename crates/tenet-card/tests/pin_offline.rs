//! The PUK on a card no daemon holds (`tenet card pin unblock --store`):
//! `Card::unblock_pin`, the same unblock the `unblock-pin` service runs.

use tenet_card::{Card, CardLimits, MemStore, Personalization, SeededEntropy, Unblock};
use tenet_proto::apdu::{Command, Response, StatusWord, tenet};
use tenet_proto::card::{PinOutcome, PinStatus, VerifyPin};
use tenet_proto::{Codec, Domain, EntityId, Message, Mtype, Port};

const DOMAIN: Domain = Domain::new([0xc2; 12]);
const PIN: &[u8] = b"1234";
const PUK: &[u8] = b"87654321";

fn verify(c: &mut Card<MemStore>, pin: &[u8]) -> PinStatus {
    let app = EntityId::new(DOMAIN, Port::new(1));
    let v = VerifyPin { pin: pin.to_vec() };
    let m = Message::new(app, DOMAIN.owner(), Mtype::VERIFY_PIN, v.to_bytes());
    let cmd = Command::new(tenet::CLA, tenet::INS_DELIVER, 0, 0)
        .with_data(m.to_bytes())
        .with_le(65_536);
    let r = Response::decode(&c.process_apdu(&cmd.to_bytes())).unwrap();
    assert_eq!(r.sw, StatusWord::OK);
    PinStatus::decode(&Message::decode(&r.data).unwrap().param).unwrap()
}

#[test]
fn the_puk_unblocks_without_a_host_and_ten_wrong_ones_block_it() {
    let p = Personalization {
        domain: DOMAIN,
        pin: PIN.to_vec(),
        puk: PUK.to_vec(),
    };
    let mut c = Card::personalize(
        MemStore::new(32 * 1024),
        &p,
        CardLimits::default(),
        Box::new(SeededEntropy::new(5)),
    )
    .unwrap();
    let select = Command::new(0, tenet::INS_SELECT, 4, 0).with_data(tenet::AID.to_vec());
    c.process_apdu(&select.to_bytes());
    for _ in 0..3 {
        verify(&mut c, b"0000");
    }
    assert_eq!(verify(&mut c, PIN).outcome, PinOutcome::Blocked);

    assert!(
        c.unblock_pin(b"12", b"4321").is_err(),
        "a malformed PUK is no try"
    );
    assert_eq!(c.state().puk_tries, 10);
    assert_eq!(c.unblock_pin(PUK, b"4321").unwrap(), Unblock::Unblocked);
    assert_eq!(c.state().pin_tries, 3);
    assert_eq!(verify(&mut c, b"4321").outcome, PinOutcome::Verified);

    for left in (0..10).rev() {
        assert_eq!(
            c.unblock_pin(b"00000000", b"9999").unwrap(),
            Unblock::WrongPuk {
                puk_tries_left: left
            }
        );
    }
    assert_eq!(c.unblock_pin(PUK, b"9999").unwrap(), Unblock::PukBlocked);
    assert_eq!(
        verify(&mut c, b"4321").outcome,
        PinOutcome::Verified,
        "wrong PUKs never change the PIN"
    );
}
