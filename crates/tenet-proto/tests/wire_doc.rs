//! The worked example in docs/wire.md is what the encoder produces.

use tenet_proto::app::ClientFrame;
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
