//! The PIN the way card users expect it, at the card: PIN and PUK hashes
//! at rest are Argon2id with their parameters (read from the store's
//! bytes, not from the card's own view of them), a store written before
//! with SHA-256 hashes keeps working and is upgraded at the next
//! successful use, and `lock` ends every authenticated session. (The PUK
//! on a card no daemon holds: `pin_offline.rs`.)

use std::time::{Duration, Instant};

use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
use tenet_card::{Card, CardLimits, FileStore, MemStore, Personalization, SeededEntropy, Storage};
use tenet_proto::apdu::{Command, Response, StatusWord, tenet};
use tenet_proto::card::{ChangePin, PinOutcome, PinStatus, UnblockPin, VerifyPin};
use tenet_proto::notice::Refused;
use tenet_proto::tlv::{self, Fields, Tag};
use tenet_proto::{Codec, Domain, EntityId, Message, Mtype, Port};

const DOMAIN: Domain = Domain::new([0xc1; 12]);
const CARD: EntityId = DOMAIN.owner();
const PIN: &[u8] = b"1234";
const PUK: &[u8] = b"87654321";

// The store record's tags (crates/tenet-card/src/state.rs).
const T_VERSION: Tag = Tag(0x80);
const T_SALT: Tag = Tag(0x84);
const T_PIN: Tag = Tag(0x85);
const T_PUK: Tag = Tag(0x87);

/// The parameters this build hashes with: 19 MiB, 2 passes, 1 lane.
const M_KIB: u32 = 19 * 1024;
const T: u32 = 2;
const P: u32 = 1;

fn app(port: u32) -> EntityId {
    EntityId::new(DOMAIN, Port::new(port))
}

fn personalized() -> Card<MemStore> {
    let p = Personalization {
        domain: DOMAIN,
        pin: PIN.to_vec(),
        puk: PUK.to_vec(),
    };
    let mut c = Card::personalize(
        MemStore::new(32 * 1024),
        &p,
        CardLimits::default(),
        Box::new(SeededEntropy::new(3)),
    )
    .unwrap();
    select(&mut c);
    c
}

fn select<S: Storage>(c: &mut Card<S>) {
    let cmd = Command::new(0, tenet::INS_SELECT, 4, 0).with_data(tenet::AID.to_vec());
    let r = Response::decode(&c.process_apdu(&cmd.to_bytes())).unwrap();
    assert_eq!(r.sw, StatusWord::OK);
}

/// Delivers `m` and returns the card's one answer.
fn ask<S: Storage>(c: &mut Card<S>, m: Message) -> Message {
    let cmd = Command::new(tenet::CLA, tenet::INS_DELIVER, 0, 0)
        .with_data(m.to_bytes())
        .with_le(65_536);
    let r = Response::decode(&c.process_apdu(&cmd.to_bytes())).unwrap();
    assert_eq!(r.sw, StatusWord::OK, "exactly one answer");
    Message::decode(&r.data).unwrap()
}

fn status(m: &Message) -> PinStatus {
    assert_eq!(m.mtype(), Mtype::PIN_STATUS, "{m:?}");
    PinStatus::decode(&m.param).unwrap()
}

fn verify<S: Storage>(c: &mut Card<S>, from: EntityId, pin: &[u8]) -> PinStatus {
    let v = VerifyPin { pin: pin.to_vec() };
    status(&ask(
        c,
        Message::new(from, CARD, Mtype::VERIFY_PIN, v.to_bytes()),
    ))
}

fn st(outcome: PinOutcome, tries_left: u8) -> PinStatus {
    PinStatus {
        outcome,
        tries_left,
    }
}

/// One field of the record the store holds.
fn field(store: &mut impl Storage, tag: Tag) -> Vec<u8> {
    let record = store.load().unwrap().unwrap();
    Fields::parse(&record).unwrap().get(tag).unwrap().to_vec()
}

fn sha256(salt: &[u8], secret: &[u8]) -> Vec<u8> {
    let mut c = ring::digest::Context::new(&ring::digest::SHA256);
    c.update(salt);
    c.update(secret);
    c.finish().as_ref().to_vec()
}

/// What the store must hold for `secret`: `01` ‖ m ‖ t ‖ p ‖ Argon2id
/// (v0x13) of it salted with the card's salt and `label`, computed here
/// with the argon2 crate directly.
fn argon2id_field(salt: &[u8], label: &[u8], secret: &[u8]) -> Vec<u8> {
    let params = argon2::Params::new(M_KIB, T, P, Some(32)).unwrap();
    let mut out = [0u8; 32];
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password_into(secret, &[salt, label].concat(), &mut out)
        .unwrap();
    let mut f = vec![0x01];
    for x in [M_KIB, T, P] {
        f.extend_from_slice(&x.to_be_bytes());
    }
    f.extend_from_slice(&out);
    f
}

#[test]
fn pins_and_puks_are_stored_as_argon2id_with_their_parameters() {
    let mut c = personalized();
    let salt = field(c.store_mut(), T_SALT);
    assert_eq!(salt.len(), 16);
    let pin = field(c.store_mut(), T_PIN);
    assert_ne!(pin, sha256(&salt, PIN), "not the old SHA-256 hash");
    assert_eq!(pin, argon2id_field(&salt, b"PIN", PIN));
    assert_eq!(
        field(c.store_mut(), T_PUK),
        argon2id_field(&salt, b"PUK", PUK)
    );

    assert_eq!(verify(&mut c, app(1), b"9999"), st(PinOutcome::Wrong, 2));
    assert_eq!(verify(&mut c, app(1), PIN), st(PinOutcome::Verified, 3));
    assert_eq!(field(c.store_mut(), T_PIN), pin, "a current hash stays");

    // A changed or unblocked PIN is stored the same way.
    let change = ChangePin {
        new_pin: b"24680".to_vec(),
    };
    let m = ask(
        &mut c,
        Message::new(app(1), CARD, Mtype::CHANGE_PIN, change.to_bytes()),
    );
    assert_eq!(status(&m).outcome, PinOutcome::Changed);
    assert_eq!(
        field(c.store_mut(), T_PIN),
        argon2id_field(&salt, b"PIN", b"24680")
    );
    let unblock = UnblockPin {
        puk: PUK.to_vec(),
        new_pin: b"13579".to_vec(),
    };
    let m = ask(
        &mut c,
        Message::new(app(2), CARD, Mtype::UNBLOCK_PIN, unblock.to_bytes()),
    );
    assert_eq!(status(&m).outcome, PinOutcome::Changed);
    assert_eq!(
        field(c.store_mut(), T_PIN),
        argon2id_field(&salt, b"PIN", b"13579")
    );
    assert_eq!(
        verify(&mut c, app(3), b"13579"),
        st(PinOutcome::Verified, 3)
    );
}

/// A version 1 record, laid out as cards wrote it before Argon2id:
/// SHA-256(salt ‖ secret) for the PIN and the PUK.
fn old_record(salt: &[u8; 16]) -> Vec<u8> {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
    let key =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let mut r = Vec::new();
    tlv::write(&mut r, Tag(0x80), &[1]);
    tlv::write(&mut r, Tag(0x81), DOMAIN.bytes());
    tlv::write(&mut r, Tag(0x82), pkcs8.as_ref());
    tlv::write(&mut r, Tag(0x83), key.public_key().as_ref());
    tlv::write(&mut r, Tag(0x84), salt);
    tlv::write(&mut r, Tag(0x85), &sha256(salt, PIN));
    tlv::write(&mut r, Tag(0x86), &[3]);
    tlv::write(&mut r, Tag(0x87), &sha256(salt, PUK));
    tlv::write(&mut r, Tag(0x88), &[10]);
    tlv::write(&mut r, Tag(0x89), &7u32.to_be_bytes());
    tlv::write(&mut r, Tag(0x8b), &[]);
    r
}

fn reopen(path: &std::path::Path) -> Card<FileStore> {
    let mut c = Card::open(
        FileStore::open(path).unwrap(),
        CardLimits::default(),
        Box::new(SeededEntropy::new(4)),
    )
    .unwrap();
    select(&mut c);
    c
}

#[test]
fn an_old_store_with_sha256_hashes_is_upgraded_at_the_next_successful_verify() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.card");
    let salt = [0x5a; 16];
    FileStore::create(&path, 32 * 1024)
        .unwrap()
        .commit(&old_record(&salt))
        .unwrap();

    let mut c = reopen(&path);
    assert_eq!(c.next_port(), Port::new(7), "the old record is read");
    // A wrong PIN is refused against the old hash and upgrades nothing.
    assert_eq!(verify(&mut c, app(1), b"0000"), st(PinOutcome::Wrong, 2));
    assert_eq!(field(c.store_mut(), T_PIN), sha256(&salt, PIN));
    // The right one is taken, and its hash becomes Argon2id in the same
    // commit that restores the tries.
    assert_eq!(verify(&mut c, app(1), PIN), st(PinOutcome::Verified, 3));
    assert_eq!(
        field(c.store_mut(), T_PIN),
        argon2id_field(&salt, b"PIN", PIN)
    );
    assert_eq!(field(c.store_mut(), T_VERSION), [2]);
    // The PUK was not used: still the old hash, still working.
    assert_eq!(field(c.store_mut(), T_PUK), sha256(&salt, PUK));
    drop(c);

    // After a power cycle the upgraded PIN works, and a wrong one does not.
    let mut c = reopen(&path);
    assert_eq!(verify(&mut c, app(2), b"1111"), st(PinOutcome::Wrong, 2));
    assert_eq!(verify(&mut c, app(2), PIN), st(PinOutcome::Verified, 3));

    // The old PUK hash is upgraded at its next successful use.
    let unblock = |puk: &[u8]| {
        let u = UnblockPin {
            puk: puk.to_vec(),
            new_pin: b"4321".to_vec(),
        };
        Message::new(app(2), CARD, Mtype::UNBLOCK_PIN, u.to_bytes())
    };
    assert_eq!(
        status(&ask(&mut c, unblock(b"00000000"))).outcome,
        PinOutcome::WrongPuk
    );
    assert_eq!(c.state().puk_tries, 9);
    assert_eq!(field(c.store_mut(), T_PUK), sha256(&salt, PUK));
    assert_eq!(
        status(&ask(&mut c, unblock(PUK))).outcome,
        PinOutcome::Changed
    );
    assert_eq!(
        field(c.store_mut(), T_PUK),
        argon2id_field(&salt, b"PUK", PUK)
    );
    assert_eq!(c.state().puk_tries, 10);
    drop(c);
    let mut c = reopen(&path);
    assert_eq!(verify(&mut c, app(3), b"4321"), st(PinOutcome::Verified, 3));
}

#[test]
fn lock_ends_every_authenticated_session_and_needs_one() {
    let mut c = personalized();
    let (a, b, stranger) = (app(1), app(2), app(3));
    assert_eq!(verify(&mut c, a, PIN).outcome, PinOutcome::Verified);
    assert_eq!(verify(&mut c, b, PIN).outcome, PinOutcome::Verified);
    assert!(c.privileged().contains(&Mtype::LOCK));

    // Locking is privileged: an app that has not verified the PIN cannot
    // end the others' sessions.
    let m = ask(&mut c, Message::new(stranger, CARD, Mtype::LOCK, vec![]));
    assert_eq!(m.mtype(), Mtype::REFUSED);
    assert_eq!(Refused::decode(&m.param).unwrap().mtype, Mtype::LOCK);
    assert_eq!(c.authenticated().count(), 2);

    let m = ask(&mut c, Message::new(a, CARD, Mtype::LOCK, vec![]));
    assert_eq!(status(&m), st(PinOutcome::Locked, 3));
    assert_eq!(c.authenticated().count(), 0);
    // b's next privileged order is refused until it verifies again.
    let change = ChangePin {
        new_pin: b"5555".to_vec(),
    };
    let m = ask(
        &mut c,
        Message::new(b, CARD, Mtype::CHANGE_PIN, change.to_bytes()),
    );
    assert_eq!(m.mtype(), Mtype::REFUSED);
    assert!(
        Refused::decode(&m.param)
            .unwrap()
            .text
            .contains("not authenticated")
    );
    assert_eq!(verify(&mut c, b, PIN).outcome, PinOutcome::Verified);
    let m = ask(
        &mut c,
        Message::new(b, CARD, Mtype::CHANGE_PIN, change.to_bytes()),
    );
    assert_eq!(status(&m).outcome, PinOutcome::Changed);
}

/// How long a verify-pin takes (Argon2id at the parameters above), as a
/// median of 15: `cargo test -p tenet-card --release --test pin --
/// --ignored --nocapture verify_pin_time` (and without `--release` for
/// the debug build the tests run in).
#[test]
#[ignore = "a measurement, not a check"]
fn verify_pin_time() {
    let mut c = personalized();
    let mut times: Vec<Duration> = (0..15)
        .map(|_| {
            let t = Instant::now();
            assert_eq!(verify(&mut c, app(1), PIN).outcome, PinOutcome::Verified);
            t.elapsed()
        })
        .collect();
    times.sort();
    println!(
        "verify-pin: median {:.1} ms, min {:.1} ms, max {:.1} ms",
        times[7].as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3,
        times[14].as_secs_f64() * 1e3
    );
}
