//! Hostile input into tenet-proto's decoders: stream framing, eTP messages
//! and headers, the app socket's frames, link frames, command and response
//! APDUs, BER-TLV lists and trees, the card services' params, notices,
//! filters, and the text forms of ids and mtypes.
//!
//! Each property feeds one decoder mutations of valid encodings and random
//! bytes or text (the harness: the tenet-hostile crate) and asserts that it
//! never panics, that a valid encoding decodes and encodes back to the same
//! bytes (a valid text parses and prints back, and whatever parses is in
//! the documented text form), and that decoding `n` bytes allocates at most
//! the decoder's bound `a·n + c`, counted by the counting global allocator
//! this binary installs. The bounds and why they hold are in
//! `docs/hostile-input.md`, with where the other crates' properties live.
//!
//! Cases per property: `TENET_HOSTILE_CASES` (default 2000). A failure
//! prints the shrunk input; `PROPTEST_RNG_SEED=N` fixes a run's random seed.

use std::fmt::Debug;

use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::TestCaseError;
use tenet_hostile::{
    Bound, EDGE_WORDS, ERROR_TEXT, NOTHING, ONE_COPY, Probe, TLV_TOKENS, allocated_by, bytes,
    cases, check, distinct_tags, fuzz_decoder, fuzz_text, hostile, shape,
};
use tenet_proto::apdu::{Command, Response, StatusWord};
use tenet_proto::app::{ClientFrame, DaemonFrame, ErrorCode, SubscriptionId, TapId};
use tenet_proto::card::{CardInfo, ChangePin, PinOutcome, PinStatus, UnblockPin, VerifyPin};
use tenet_proto::frame::{LEN_PREFIX, split_frame, write_frame};
use tenet_proto::link::LinkFrame;
use tenet_proto::notice::{Refused, Undeliverable, UndeliverableReason};
use tenet_proto::status::{Figure, Status, Value};
use tenet_proto::tlv::{self, Fields, Tag};
use tenet_proto::{
    Codec, DecodeError, Domain, EntityId, Filter, Header, MAX_MESSAGE_LEN, MAX_PARAM_LEN, Message,
    Mtype, Port,
};

tenet_hostile::install_counting_allocator!();

// The mutations overwrite length fields with the largest eTP param too
// (tenet-hostile knows no TENeT constant and writes it as a number).
const _: () = {
    let mut i = 0;
    while i < EDGE_WORDS.len() && EDGE_WORDS[i] != MAX_PARAM_LEN as u32 {
        i += 1;
    }
    assert!(
        i < EDGE_WORDS.len(),
        "EDGE_WORDS lacks the largest eTP param"
    );
};

/// Size of one parsed data object (`Tlv`: a tag and a borrowed value).
const TLV_ITEM: usize = std::mem::size_of::<tlv::Tlv<'static>>();

/// [`Bound::tlv_lists`] for tenet-proto's TLV objects.
const fn tlv_list(per_byte_levels: usize, lists: usize) -> Bound {
    Bound::tlv_lists(TLV_ITEM, per_byte_levels, lists)
}

// ---------------------------------------------------------------------------
// Valid values
// ---------------------------------------------------------------------------

fn domain() -> BoxedStrategy<Domain> {
    prop_oneof![
        any::<[u8; 12]>().prop_map(Domain::new),
        select(&[0u8, 0xc0, 0xff][..]).prop_map(|b| Domain::new([b; 12])),
    ]
    .boxed()
}

fn entity() -> BoxedStrategy<EntityId> {
    prop_oneof![
        any::<[u8; 16]>().prop_map(EntityId::from_array),
        (domain(), 0u32..4).prop_map(|(d, p)| EntityId::new(d, Port::new(p))),
    ]
    .boxed()
}

fn mtype() -> BoxedStrategy<Mtype> {
    let known: Vec<Mtype> = Mtype::registry().map(|(m, _)| m).collect();
    prop_oneof![any::<u16>().prop_map(Mtype), select(known)].boxed()
}

fn message(max_param: usize) -> BoxedStrategy<Message> {
    (entity(), entity(), mtype(), bytes(max_param))
        .prop_map(|(s, d, m, p)| Message::new(s, d, m, p))
        .boxed()
}

fn filter() -> BoxedStrategy<Filter> {
    (
        proptest::option::of(entity()),
        proptest::option::of(entity()),
        proptest::option::of(domain()),
        proptest::option::of(domain()),
        proptest::option::of(mtype()),
    )
        .prop_map(|(src, dst, src_domain, dst_domain, mtype)| Filter {
            src,
            dst,
            src_domain,
            dst_domain,
            mtype,
        })
        .boxed()
}

fn client_frame() -> BoxedStrategy<ClientFrame> {
    prop_oneof![
        Just(ClientFrame::Acquire),
        message(300).prop_map(ClientFrame::Send),
        filter().prop_map(ClientFrame::Subscribe),
        filter().prop_map(ClientFrame::Tap),
        any::<u32>().prop_map(|v| ClientFrame::Unsubscribe(SubscriptionId(v))),
        any::<u32>().prop_map(|v| ClientFrame::Untap(TapId(v))),
        Just(ClientFrame::Status),
    ]
    .boxed()
}

fn daemon_frame() -> BoxedStrategy<DaemonFrame> {
    prop_oneof![
        entity().prop_map(DaemonFrame::Acquired),
        any::<u32>().prop_map(DaemonFrame::Ok),
        (any::<u16>(), ".{0,40}").prop_map(|(c, text)| DaemonFrame::Error {
            code: ErrorCode(c),
            text
        }),
        (any::<u32>(), message(300)).prop_map(|(s, message)| DaemonFrame::Deliver {
            subscription: SubscriptionId(s),
            message
        }),
        (any::<u32>(), any::<u64>(), message(300)).prop_map(|(t, at_micros, message)| {
            DaemonFrame::Tapped {
                tap: TapId(t),
                at_micros,
                message,
            }
        }),
        (any::<u32>(), any::<u64>()).prop_map(|(t, missed)| DaemonFrame::Lagged {
            tap: TapId(t),
            missed
        }),
        (proptest::collection::vec(figure(), 0..12), any::<u32>())
            .prop_map(|(figures, omitted)| DaemonFrame::Status(Status { figures, omitted })),
    ]
    .boxed()
}

fn figure() -> BoxedStrategy<Figure> {
    let word = "[a-z_]{1,20}";
    (
        word,
        proptest::collection::vec((word, ".{1,12}"), 0..3),
        prop_oneof![
            any::<u64>().prop_map(Value::Count),
            any::<u64>().prop_map(|us| Value::Time(std::time::Duration::from_micros(us))),
        ],
    )
        .prop_map(|(name, labels, value)| Figure {
            name,
            labels,
            value,
        })
        .boxed()
}

fn link_frame() -> BoxedStrategy<LinkFrame> {
    prop_oneof![
        (
            entity(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            proptest::collection::vec(domain(), 0..8)
        )
            .prop_map(|(host, session, your_session, recv_upto, domains)| {
                LinkFrame::Hello {
                    host,
                    session,
                    your_session,
                    recv_upto,
                    domains,
                }
            }),
        (any::<u64>(), any::<u64>(), message(300))
            .prop_map(|(seq, ack, message)| LinkFrame::Data { seq, ack, message }),
        any::<u64>().prop_map(|ack| LinkFrame::Ack { ack }),
        ".{0,40}".prop_map(|reason| LinkFrame::Close { reason }),
    ]
    .boxed()
}

fn command() -> BoxedStrategy<Command> {
    (
        any::<[u8; 4]>(),
        prop_oneof![4 => bytes(300), 1 => bytes(1200)],
        proptest::option::of(prop_oneof![1usize..=256, 1usize..=65_536]),
    )
        .prop_map(|([cla, ins, p1, p2], data, le)| Command {
            cla,
            ins,
            p1,
            p2,
            data,
            le,
        })
        .boxed()
}

fn pin() -> BoxedStrategy<Vec<u8>> {
    "[0-9]{4,12}".prop_map(String::into_bytes).boxed()
}

fn card_info() -> BoxedStrategy<CardInfo> {
    (
        domain(),
        bytes(80),
        proptest::collection::vec(mtype(), 0..8),
        any::<u32>(),
        proptest::option::of(bytes(400)),
    )
        .prop_map(
            |(domain, public_key, privileged, max_message, certificate)| CardInfo {
                domain,
                public_key,
                privileged,
                max_message,
                certificate,
            },
        )
        .boxed()
}

fn pin_status() -> BoxedStrategy<PinStatus> {
    let outcomes = vec![
        PinOutcome::Verified,
        PinOutcome::Wrong,
        PinOutcome::Blocked,
        PinOutcome::Changed,
        PinOutcome::LoggedOut,
        PinOutcome::NotAllowed,
        PinOutcome::WrongPuk,
    ];
    (select(outcomes), any::<u8>())
        .prop_map(|(outcome, tries_left)| PinStatus {
            outcome,
            tries_left,
        })
        .boxed()
}

/// A BER-TLV tree of up to four levels: primitive and constructed objects
/// with tags of one to three bytes and every length form.
fn tlv_tree() -> BoxedStrategy<Vec<u8>> {
    let tag = prop_oneof![0x80u32..0x9f, 0x9f20u32..0x9f7f, Just(0x9f_8101u32)];
    let leaf = proptest::collection::vec((tag, bytes(300)), 0..4).prop_map(|items| {
        let mut out = Vec::new();
        for (t, v) in items {
            tlv::write(&mut out, Tag(t), &v);
        }
        out
    });
    leaf.prop_recursive(4, 64, 4, |inner| {
        proptest::collection::vec((prop_oneof![0xa0u32..0xbf, Just(0x30 | 0x20)], inner), 0..4)
            .prop_map(|items| {
                let mut out = Vec::new();
                for (t, v) in items {
                    tlv::write(&mut out, Tag(t), &v);
                }
                out
            })
    })
    .boxed()
}

fn encoded<T: Codec + Debug + 'static>(s: BoxedStrategy<T>) -> BoxedStrategy<Vec<u8>> {
    s.prop_map(|v| v.to_bytes()).boxed()
}

/// [`fuzz_decoder`] for a [`Codec`] type.
fn fuzz_codec<T: Codec + Debug + 'static>(
    name: &'static str,
    bound: Bound,
    seeds: BoxedStrategy<T>,
) {
    fuzz_decoder(
        name,
        bound,
        encoded(seeds),
        TLV_TOKENS,
        T::decode,
        T::to_bytes,
    );
}

// ---------------------------------------------------------------------------
// Frames, messages, APDUs, TLV, params
// ---------------------------------------------------------------------------

/// `split_frame` over a stream of frames fed in hostile chunks: it never
/// panics, never allocates, never hands out a body above the maximum,
/// refuses an oversized length before the body arrives, and finds the same
/// frames however the stream is cut.
#[test]
fn stream_framing() {
    let probe = Probe::new("split_frame", NOTHING);
    let stream = proptest::collection::vec(bytes(200), 0..6).prop_map(|bodies| {
        let mut out = Vec::new();
        for b in &bodies {
            write_frame(&mut out, b);
        }
        out
    });
    let cut = proptest::collection::vec(1usize..64, 1..32);
    check(
        (hostile(stream.boxed(), TLV_TOKENS), 0usize..300, cut),
        |(input, max, cuts)| {
            // The whole buffer at once.
            let mut whole = Vec::new();
            let mut rest = &input.bytes[..];
            let whole_end = loop {
                match probe.run(rest.len(), || split_frame(rest, max))? {
                    Ok(Some((used, body))) => {
                        prop_assert!(body.len() <= max, "body above the maximum");
                        prop_assert_eq!(used, LEN_PREFIX + body.len());
                        whole.push(body.to_vec());
                        rest = &rest[used..];
                    }
                    Ok(None) => break Ok(rest.len()),
                    Err(DecodeError::TooLarge { len, max: m, .. }) => {
                        prop_assert!(len > m && m == max);
                        break Err(());
                    }
                    Err(e) => return Err(TestCaseError::fail(format!("unexpected error {e}"))),
                }
            };
            // The same stream arriving in pieces, as a socket reader sees it.
            let mut buf: Vec<u8> = Vec::new();
            let mut pieces = Vec::new();
            let mut fed = 0;
            let mut cuts = cuts.iter().cycle();
            let chunked_end = 'feed: loop {
                loop {
                    match split_frame(&buf, max) {
                        Ok(Some((used, body))) => {
                            pieces.push(body.to_vec());
                            buf.drain(..used);
                        }
                        Ok(None) => break,
                        Err(_) => break 'feed Err(()),
                    }
                }
                if fed == input.bytes.len() {
                    break Ok(buf.len());
                }
                let n = (*cuts.next().expect("cycle")).min(input.bytes.len() - fed);
                buf.extend_from_slice(&input.bytes[fed..fed + n]);
                fed += n;
            };
            prop_assert_eq!(&pieces, &whole, "chunking changed the frames");
            prop_assert_eq!(chunked_end, whole_end, "chunking changed the outcome");
            Ok(())
        },
    );
    probe.finish(cases());
}

#[test]
fn etp_messages() {
    fuzz_codec("Message", ONE_COPY, message(300));
}

#[test]
fn etp_headers_and_entity_ids() {
    let seeds = prop_oneof![
        (entity(), entity(), mtype())
            .prop_map(|(src, dst, mtype)| Header { src, dst, mtype }.to_bytes()),
        entity().prop_map(|e| e.to_bytes()),
    ]
    .boxed();
    let header = Probe::new("Header", NOTHING);
    let id = Probe::new("EntityId", NOTHING);
    check(hostile(seeds, TLV_TOKENS), |input| {
        let n = input.bytes.len();
        let h = header.run(n, || Header::decode(&input.bytes))?;
        let e = id.run(n, || EntityId::decode(&input.bytes))?;
        if input.pristine {
            prop_assert!(h.is_ok() || e.is_ok(), "a valid header or id was refused");
        }
        if let Ok(h) = h {
            prop_assert_eq!(h.to_bytes(), input.bytes.clone());
        }
        if let Ok(e) = e {
            prop_assert_eq!(e.to_bytes(), input.bytes.clone());
        }
        Ok(())
    });
    header.finish(cases());
    id.finish(cases());
}

/// A compact message: one copy of the param, or the text of the error
/// naming a form byte it does not know.
const COMPACT: Bound = Bound::new(1, ERROR_TEXT);

/// Messages in the compact card-link form (applet version 2), both ways:
/// no panic, one copy of the param at most, the untouched ones decode,
/// and whatever decodes encodes to a form that
/// decodes to the same message (the form byte may say "the card's domain"
/// where the input spelled it out).
#[test]
fn compact_card_link_messages() {
    use tenet_proto::apdu::compact;
    let card = Domain::new([0xca; 12]).owner();
    let seeds = (message(300), any::<bool>(), any::<bool>(), any::<bool>())
        .prop_map(move |(m, to_card, same_domain, port_zero)| {
            let other = EntityId::new(
                if same_domain {
                    card.domain()
                } else {
                    m.src().domain()
                },
                if port_zero {
                    Port::new(0)
                } else {
                    m.src().port()
                },
            );
            match to_card {
                true => compact::to_card(&Message::new(other, card, m.mtype(), m.param)),
                false => compact::from_card(&Message::new(card, other, m.mtype(), m.param)),
            }
        })
        .boxed();
    let to_card = Probe::new("compact::decode_to_card", COMPACT);
    let from_card = Probe::new("compact::decode_from_card", COMPACT);
    check(hostile(seeds, TLV_TOKENS), |input| {
        let n = input.bytes.len();
        let a = to_card.run(n, || compact::decode_to_card(card, &input.bytes))?;
        let b = from_card.run(n, || compact::decode_from_card(card, &input.bytes))?;
        if input.pristine {
            prop_assert!(
                a.is_ok() && b.is_ok(),
                "a valid compact message was refused"
            );
        }
        if let Ok(m) = a {
            prop_assert_eq!(m.dst(), card);
            prop_assert_eq!(
                compact::decode_to_card(card, &compact::to_card(&m)).ok(),
                Some(m)
            );
        }
        if let Ok(m) = b {
            prop_assert_eq!(m.src(), card);
            prop_assert_eq!(
                compact::decode_from_card(card, &compact::from_card(&m)).ok(),
                Some(m)
            );
        }
        Ok(())
    });
    to_card.finish(cases());
    from_card.finish(cases());
}

/// A message above the largest eTP message is refused without copying it.
#[test]
fn oversized_messages_are_refused_without_copying() {
    for len in [MAX_MESSAGE_LEN + 1, 2 * MAX_MESSAGE_LEN, 1 << 20] {
        let big = vec![0u8; len];
        let (r, used) = allocated_by(|| Message::decode(&big));
        assert!(matches!(r, Err(DecodeError::TooLarge { .. })));
        assert_eq!(used, 0, "{len} bytes");
        // In the compact form: 3 bytes of header, so a param 32 bytes
        // shorter than `big` still makes a whole message over the limit.
        let mut compact = vec![0x03, 0, 1];
        compact.extend_from_slice(&big[..len - 32]);
        let card = Domain::new([0xca; 12]).owner();
        let (r, used) = allocated_by(|| tenet_proto::apdu::compact::decode_to_card(card, &compact));
        assert!(matches!(r, Err(DecodeError::TooLarge { .. })), "{r:?}");
        assert_eq!(used, 0, "{len} bytes, compact");
        let mut frame = vec![0x02];
        frame.extend_from_slice(&big);
        let (r, used) = allocated_by(|| ClientFrame::decode(&frame));
        assert!(matches!(r, Err(DecodeError::TooLarge { .. })));
        assert_eq!(used, 0, "{len} bytes");
    }
}

/// Send: one copy of the message. Subscribe and Tap: one TLV list.
const CLIENT_FRAME: Bound = tlv_list(1, 1);

#[test]
fn app_socket_client_frames() {
    fuzz_codec("ClientFrame", CLIENT_FRAME, client_frame());
}

/// Deliver and Tapped: one copy of the message. Error: the text, read as
/// UTF-8 with every invalid byte replaced by U+FFFD (3 bytes), so at most
/// `3n` bytes, in a `String` that starts at `n` and may double twice. An
/// unknown op formats an error text. Status: its figure and label vectors
/// are allocated once, at the size their announced counts need, after a
/// check that the bytes for that many are there; the costliest input is
/// all labels, 48 bytes of a label pair and 2 of its strings per 6 input
/// bytes (key and value of one byte each, with their u16 lengths).
const DAEMON_FRAME: Bound = Bound::new(9, ERROR_TEXT);

#[test]
fn app_socket_daemon_frames() {
    fuzz_codec("DaemonFrame", DAEMON_FRAME, daemon_frame());
}

/// Hello: a domain list of at most 256 × 12 bytes allocated up front from
/// the count. Data: one copy of the message. Close: the lossy text as for
/// the daemon's Error. An unknown op formats an error text.
const LINK_FRAME: Bound = Bound::new(8, 256 * 12 + ERROR_TEXT);

#[test]
fn link_frames() {
    fuzz_codec("LinkFrame", LINK_FRAME, link_frame());
}

/// Data copied once; an error formats a short text.
const COMMAND_APDU: Bound = Bound::new(1, ERROR_TEXT);

#[test]
fn command_apdus() {
    fuzz_decoder(
        "Command",
        COMMAND_APDU,
        command().prop_map(|c| c.to_bytes()).boxed(),
        TLV_TOKENS,
        Command::decode,
        Command::to_bytes,
    );
}

#[test]
fn response_apdus() {
    let seeds = (bytes(600), any::<u16>())
        .prop_map(|(data, sw)| {
            Response {
                data,
                sw: StatusWord(sw),
            }
            .to_bytes()
        })
        .boxed();
    fuzz_decoder(
        "Response",
        ONE_COPY,
        seeds,
        TLV_TOKENS,
        Response::decode,
        Response::to_bytes,
    );
}

/// A response larger than the largest extended response is refused without
/// copying it.
#[test]
fn oversized_responses_are_refused_without_copying() {
    let big = vec![0x90u8; 65_536 + 3];
    let (r, used) = allocated_by(|| Response::decode(&big));
    assert!(matches!(r, Err(DecodeError::TooLarge { .. })));
    assert_eq!(used, 0);
}

/// Every constructed object's children, without recursion (depth is up to
/// the input's length).
fn walk_tlv(bytes: &[u8]) -> Result<usize, DecodeError> {
    let mut stack = vec![bytes];
    let mut objects = 0;
    while let Some(b) = stack.pop() {
        for t in tlv::parse_all(b)? {
            objects += 1;
            if t.tag.is_constructed() {
                stack.push(t.value);
            }
        }
    }
    Ok(objects)
}

/// One list of objects (`parse_all`, `Fields::parse`, whose duplicate check
/// allocates nothing but an error).
const TLV_LIST: Bound = tlv_list(1, 1);
/// The whole tree: every object is an item of exactly one list, so the
/// lists together hold at most `n/2` items, but each non-empty list may be
/// as short as one item, and a one-item list allocates 4 items (charged
/// `4 · 24` per 2 input bytes); the work stack holds one slice (16 bytes)
/// per constructed object.
const TLV_TREE: Bound = Bound::new(2 * 4 * TLV_ITEM + 2 * 16 * 2, 4 * 16 + ERROR_TEXT);

#[test]
fn ber_tlv_lists_fields_and_trees() {
    let list = Probe::new("tlv::parse_all", TLV_LIST);
    let fields = Probe::new("Fields::parse", TLV_LIST);
    let tree = Probe::new("TLV tree walk", TLV_TREE);
    check(hostile(tlv_tree(), TLV_TOKENS), |input| {
        let n = input.bytes.len();
        let l = list.run(n, || tlv::parse_all(&input.bytes))?;
        let _ = fields.run(n, || Fields::parse(&input.bytes))?;
        let t = tree.run(n, || walk_tlv(&input.bytes))?;
        if input.pristine {
            prop_assert!(l.is_ok() && t.is_ok(), "a valid tree was refused");
        }
        if let Ok(items) = l {
            // Every object has a header of at least two bytes, and the
            // values lie inside the input without overlapping.
            prop_assert!(items.len() <= n / 2);
            let values: usize = items.iter().map(|i| i.value.len()).sum();
            prop_assert!(values + 2 * items.len() <= n);
        }
        Ok(())
    });
    list.finish(cases());
    fields.finish(cases());
    tree.finish(cases());
}

/// One TLV list, one copy of each value, an error text.
const FLAT_PARAMS: Bound = tlv_list(1, 1);

#[test]
fn card_service_verify_pin() {
    fuzz_codec(
        "VerifyPin",
        FLAT_PARAMS,
        pin().prop_map(|pin| VerifyPin { pin }).boxed(),
    );
}

#[test]
fn card_service_unblock_pin() {
    fuzz_codec(
        "UnblockPin",
        FLAT_PARAMS,
        (pin(), pin())
            .prop_map(|(puk, new_pin)| UnblockPin { puk, new_pin })
            .boxed(),
    );
}

#[test]
fn card_service_change_pin() {
    fuzz_codec(
        "ChangePin",
        FLAT_PARAMS,
        pin().prop_map(|new_pin| ChangePin { new_pin }).boxed(),
    );
}

#[test]
fn card_service_pin_status() {
    fuzz_codec("PinStatus", FLAT_PARAMS, pin_status());
}

/// One TLV list; the key, the privileged mtypes (2 bytes each, collected
/// with their exact count) and the certificate copied once each.
const CARD_INFO: Bound = Bound::new(2 * TLV_ITEM + 16 + 3, 4 * 2 * TLV_ITEM + ERROR_TEXT);

#[test]
fn card_service_card_info() {
    fuzz_codec("CardInfo", CARD_INFO, card_info());
}

#[test]
fn notice_undeliverable() {
    let seeds = (any::<u8>(), entity(), mtype())
        .prop_map(|(r, dst, mtype)| Undeliverable {
            reason: UndeliverableReason(r),
            dst,
            mtype,
        })
        .boxed();
    fuzz_codec("Undeliverable", FLAT_PARAMS, seeds);
}

#[test]
fn notice_refused() {
    let seeds = (mtype(), ".{0,60}")
        .prop_map(|(mtype, text)| Refused { mtype, text })
        .boxed();
    fuzz_codec("Refused", FLAT_PARAMS, seeds);
}

#[test]
fn filters() {
    fuzz_codec("Filter", FLAT_PARAMS, filter());
}

// ---------------------------------------------------------------------------
// Text: ids and mtypes
// ---------------------------------------------------------------------------

/// A refused text is kept once in the error; an accepted one allocates
/// nothing.
const ID_TEXT: Bound = ONE_COPY;

fn is_hex(s: &str, max: usize) -> bool {
    (1..=max).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn is_domain_text(s: &str) -> bool {
    s.len() == 24 && is_hex(s, 24)
}

fn is_port_text(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

#[test]
fn entity_id_text() {
    fuzz_text(
        "EntityId text",
        ID_TEXT,
        entity().prop_map(|e| e.to_string()).boxed(),
        str::parse::<EntityId>,
        EntityId::to_string,
        |s| {
            s.split_once(':')
                .is_some_and(|(d, p)| is_domain_text(d) && is_port_text(p))
        },
    );
}

#[test]
fn domain_text() {
    fuzz_text(
        "Domain text",
        ID_TEXT,
        domain().prop_map(|d| d.to_string()).boxed(),
        str::parse::<Domain>,
        Domain::to_string,
        is_domain_text,
    );
}

#[test]
fn port_text() {
    fuzz_text(
        "Port text",
        ID_TEXT,
        any::<u32>().prop_map(|p| p.to_string()).boxed(),
        str::parse::<Port>,
        Port::to_string,
        is_port_text,
    );
}

#[test]
fn mtype_text() {
    fuzz_text(
        "Mtype text",
        ID_TEXT,
        mtype().prop_map(|m| m.to_string()).boxed(),
        str::parse::<Mtype>,
        Mtype::to_string,
        |s| {
            Mtype::registry().any(|(_, n)| n.eq_ignore_ascii_case(s))
                || (s.starts_with("0x") || s.starts_with("0X")) && is_hex(&s[2..], 4)
        },
    );
}

// ---------------------------------------------------------------------------
// Worst-case shapes
// ---------------------------------------------------------------------------

/// Large inputs of the shapes that cost each decoder most per byte (most
/// objects per byte, invalid UTF-8 everywhere, deepest nesting, longest
/// quoted errors), so the per-byte factors of the bounds are checked where
/// the constants no longer help. The random inputs above are mostly small.
#[test]
fn worst_case_shapes_stay_within_the_bounds() {
    let max = MAX_MESSAGE_LEN;
    let fill = |unit: &[u8], prefix: &[u8]| {
        let mut b = prefix.to_vec();
        while b.len() + unit.len() <= max {
            b.extend_from_slice(unit);
        }
        b
    };
    let empties = fill(&[0x80, 0x00], &[]);
    shape(
        "parse_all, empty objects",
        TLV_LIST,
        &empties,
        tlv::parse_all,
    );
    shape(
        "Fields, duplicate empty objects",
        TLV_LIST,
        &empties,
        Fields::parse,
    );
    let distinct = distinct_tags(max);
    shape("Fields, distinct tags", TLV_LIST, &distinct, Fields::parse);
    shape(
        "Filter, distinct tags",
        FLAT_PARAMS,
        &distinct,
        Filter::decode,
    );
    let constructed = fill(&[0xa0, 0x00], &[]);
    shape(
        "TLV walk, constructed empties",
        TLV_TREE,
        &constructed,
        walk_tlv,
    );
    let mut nested = Vec::new();
    while nested.len() + 4 <= max {
        let mut outer = Vec::new();
        tlv::write(&mut outer, Tag(0xa0), &nested);
        nested = outer;
    }
    shape("TLV walk, deepest nesting", TLV_TREE, &nested, walk_tlv);
    let mut subscribe = vec![0x03];
    subscribe.extend_from_slice(&empties[..max - 1]);
    shape(
        "ClientFrame, subscribe",
        CLIENT_FRAME,
        &subscribe,
        ClientFrame::decode,
    );
    shape(
        "DaemonFrame, error text of invalid UTF-8",
        DAEMON_FRAME,
        &fill(&[0xff], &[0x83, 0, 6]),
        DaemonFrame::decode,
    );
    let status = |figure: &Figure| {
        let one = figure.to_bytes();
        let n = (max - 7) / one.len();
        let mut b = vec![0x87, 0, 0, 0, 0];
        b.extend_from_slice(&(n as u16).to_be_bytes());
        for _ in 0..n {
            b.extend_from_slice(&one);
        }
        b
    };
    shape(
        "DaemonFrame, status of the smallest figures",
        DAEMON_FRAME,
        &status(&Figure::count("a", &[], 1)),
        DaemonFrame::decode,
    );
    shape(
        "DaemonFrame, status of figures with 255 of the smallest labels",
        DAEMON_FRAME,
        &status(&Figure::count("a", &[("k", "v"); 255], 1)),
        DaemonFrame::decode,
    );
    shape(
        "LinkFrame, close reason of invalid UTF-8",
        LINK_FRAME,
        &fill(&[0xff], &[0x04]),
        LinkFrame::decode,
    );
    let mut hello = vec![0x01];
    hello.extend_from_slice(&[0; 40]);
    hello.extend_from_slice(&256u16.to_be_bytes());
    shape(
        "LinkFrame, hello announcing 256 domains",
        LINK_FRAME,
        &hello,
        LinkFrame::decode,
    );
    let mut extended = vec![0x80, 0x10, 0, 0, 0, 0xff, 0xff];
    extended.extend_from_slice(&vec![0; 0xffff]);
    shape(
        "Command, extended",
        COMMAND_APDU,
        &extended,
        Command::decode,
    );

    let info = CardInfo {
        domain: Domain::new([1; 12]),
        public_key: vec![4; 65],
        privileged: vec![Mtype(1); 32_000],
        max_message: 1,
        certificate: None,
    };
    shape(
        "CardInfo, most privileged mtypes",
        CARD_INFO,
        &info.to_bytes(),
        CardInfo::decode,
    );

    let no_colon = "f".repeat(max);
    shape(
        "EntityId text, no colon",
        ID_TEXT,
        no_colon.as_bytes(),
        |b| std::str::from_utf8(b).unwrap().parse::<EntityId>(),
    );
}

// ---------------------------------------------------------------------------
// Regressions: inputs the properties above found
// ---------------------------------------------------------------------------

/// Hex digits parsed with `from_str_radix` also took a leading `+`, so
/// `+f+f...` was accepted as a domain and `0x+1` as an mtype: texts outside
/// the documented forms, and several spellings of one id.
#[test]
fn regression_signs_are_not_hex_digits() {
    let plus = "+f".repeat(12);
    assert!(plus.parse::<Domain>().is_err(), "{plus}");
    assert!(format!("{plus}:1").parse::<EntityId>().is_err());
    assert!("0x+1".parse::<Mtype>().is_err());
    assert!("0x+fff".parse::<Mtype>().is_err());
    assert_eq!("0x0001".parse::<Mtype>(), Ok(Mtype::ECHO_REQUEST));
    assert_eq!(
        "0F0F0F0F0F0F0F0F0F0F0F0F".parse::<Domain>(),
        Ok(Domain::new([0x0f; 12]))
    );
}

/// `Fields::parse` compared every object's tag with all before it: O(k²)
/// for k objects, and a 64 KiB param holds 16 000 distinct three-byte tags
/// (85 ms per decode in a release build, for any param a remote peer can
/// send to the offer guard or the TTP). The duplicate check must cost about
/// what parsing the list costs, not hundreds of times more.
#[test]
fn regression_duplicate_tag_check_is_not_quadratic() {
    let b = distinct_tags(MAX_MESSAGE_LEN - 34);
    let fastest = |f: &dyn Fn()| {
        (0..5)
            .map(|_| {
                let t = std::time::Instant::now();
                f();
                t.elapsed()
            })
            .min()
            .expect("five runs")
    };
    let list = fastest(&|| assert!(tlv::parse_all(&b).is_ok()));
    let fields = fastest(&|| assert!(Fields::parse(&b).is_ok()));
    assert!(
        fields < list * 30,
        "Fields::parse took {fields:?}, parse_all {list:?} for the same {} bytes",
        b.len()
    );
}
