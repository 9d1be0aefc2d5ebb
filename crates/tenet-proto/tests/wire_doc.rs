//! The worked example in docs/wire.md is what the encoder produces.

use tenet_proto::app::{ClientFrame, DaemonFrame, SubscriptionId};
use tenet_proto::frame::write_frame;
use tenet_proto::{Codec, EntityId, Message, Mtype};

const DOC: &str = include_str!("../../../docs/wire.md");

/// The hex bytes of the code block after `<!-- wire-example:NAME -->`; on
/// each line, the bytes before the first run of two or more spaces.
fn example(name: &str) -> Vec<u8> {
    let marker = format!("<!-- wire-example:{name} -->");
    let start = DOC.find(&marker).expect("marker in docs/wire.md");
    let block = &DOC[start..];
    let body = block.split("```").nth(1).expect("code block after marker");
    let mut out = Vec::new();
    for line in body.lines().skip(1) {
        let bytes = line.split("  ").next().unwrap_or("");
        for b in bytes.split_whitespace() {
            out.push(u8::from_str_radix(b, 16).expect("hex byte"));
        }
    }
    out
}

fn message() -> Message {
    let src: EntityId = "00112233445566778899aabb:5".parse().unwrap();
    let dst: EntityId = "00112233445566778899aabb:0".parse().unwrap();
    Message::new(src, dst, Mtype::ECHO_REQUEST, 1u64.to_be_bytes().to_vec())
}

#[test]
fn stream_frame_example_matches_encoder() {
    let mut out = Vec::new();
    write_frame(&mut out, &message().to_bytes());
    assert_eq!(example("frame"), out);
}

#[test]
fn app_socket_example_matches_encoder() {
    let mut out = Vec::new();
    write_frame(&mut out, &ClientFrame::Send(message()).to_bytes());
    assert_eq!(example("app"), out);
}

/// The examples tested above, by marker name.
const TESTED: [&str; 2] = ["frame", "app"];

/// Every `<!-- wire-example:NAME -->` marker in docs/wire.md is one of
/// [`TESTED`], so a new example cannot go untested.
#[test]
fn every_example_marker_is_tested() {
    let names: Vec<&str> = DOC
        .split("<!-- wire-example:")
        .skip(1)
        .map(|rest| rest.split(" -->").next().unwrap_or(rest))
        .collect();
    assert!(!names.is_empty(), "no markers in docs/wire.md");
    for name in &names {
        assert!(
            TESTED.contains(name),
            "docs/wire.md example {name:?} has no test in wire_doc.rs"
        );
    }
    for name in TESTED {
        assert!(
            names.contains(&name),
            "marker {name:?} gone from docs/wire.md"
        );
    }
}

/// The hex strings quoted (in backticks) in the paragraph that starts
/// with `start`.
fn quoted_hex(start: &str) -> Vec<Vec<u8>> {
    let at = DOC.find(start).expect("paragraph in docs/wire.md");
    let paragraph = DOC[at..].split("\n\n").next().unwrap_or_default();
    paragraph
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|q| {
            q.split_whitespace()
                .map(|b| u8::from_str_radix(b, 16).expect("hex byte"))
                .collect()
        })
        .collect()
}

/// The replies after the worked example: the daemon's Ok frame, and the
/// Deliver frame of the host entity's echo reply (src and dst swapped,
/// mtype echo-reply).
#[test]
fn reply_bytes_in_the_text_match_the_encoder() {
    let quoted = quoted_hex("The daemon answers");
    let [ok, deliver_op, subscription, mtype] = quoted.as_slice() else {
        panic!("expected four quoted byte strings, got {quoted:?}");
    };
    let mut out = Vec::new();
    write_frame(&mut out, &DaemonFrame::Ok(0).to_bytes());
    assert_eq!(ok, &out);

    let request = message();
    let reply = Message::new(
        request.dst(),
        request.src(),
        Mtype::ECHO_REPLY,
        request.param.clone(),
    );
    let frame = DaemonFrame::Deliver {
        subscription: SubscriptionId(0),
        message: reply.clone(),
    }
    .to_bytes();
    let head: Vec<u8> = deliver_op.iter().chain(subscription).copied().collect();
    assert_eq!(frame[..head.len()], head[..]);
    let body = &frame[head.len()..];
    assert_eq!(body, reply.to_bytes());
    // src and dst swapped against the request, then the mtype.
    let req = request.to_bytes();
    assert_eq!((&body[..16], &body[16..32]), (&req[16..32], &req[..16]));
    assert_eq!(&body[32..34], &mtype[..]);
}
