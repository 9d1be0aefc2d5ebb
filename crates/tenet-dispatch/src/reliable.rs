//! Reliable delivery over a host-to-host link that can break and come back
//! (no I/O): sequence numbers, cumulative acknowledgements, retransmission
//! after a reconnect, and duplicate suppression.
//!
//! One [`PeerLink`] per peer host lives as long as the daemon. Messages sent
//! to the peer stay in its unacknowledged window until the peer acknowledges
//! them. When the link comes back and the peer is the same daemon instance
//! (same session), everything not acknowledged is sent again, and the peer
//! drops what it already stored, so nothing is lost and nothing is delivered
//! twice. When the peer daemon restarted (new session), it lost whatever it
//! held in memory: the messages it never acknowledged are handed back so
//! their senders get an `undeliverable` notice (at most once, never twice).
//!
//! The unacknowledged window is a [`Budget`] in messages and in bytes: a
//! peer that stops acknowledging makes this host hold at most that much
//! (plus less than one message) beyond what waits in the dispatch table.

use std::collections::VecDeque;

use tenet_proto::Message;
use tenet_proto::link::LinkFrame;

use crate::budget::{Budget, Usage};

/// What to do with a received data frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inbound {
    /// The next message: store it.
    New,
    /// Already stored: drop it (it still counts for the acknowledgement).
    Duplicate,
    /// A message is missing before it: the peer misbehaves; close the link.
    Gap {
        /// The seq expected.
        expected: u64,
    },
}

/// The result of a peer's hello.
#[derive(Debug, Default)]
pub struct Resume {
    /// Frames to send again, in order.
    pub resend: Vec<LinkFrame>,
    /// Messages the restarted peer never acknowledged: their senders must be
    /// told they are undeliverable.
    pub lost: Vec<Message>,
    /// True if the peer is a new daemon instance.
    pub peer_restarted: bool,
}

/// Delivery state towards and from one peer host.
#[derive(Debug)]
pub struct PeerLink {
    my_session: u64,
    peer_session: Option<u64>,
    next_seq: u64,
    unacked: VecDeque<(u64, Message)>,
    /// What `unacked` holds.
    in_flight: Usage,
    window: Budget,
    recv_upto: u64,
    acked_upto: u64,
    /// Hellos handled: links that came up, the first one included.
    hellos: u64,
}

impl PeerLink {
    /// State for a peer; `my_session` is this daemon's session, `window` the
    /// most unacknowledged messages and bytes in flight.
    pub fn new(my_session: u64, window: Budget) -> Self {
        Self {
            my_session,
            peer_session: None,
            next_seq: 1,
            unacked: VecDeque::new(),
            in_flight: Usage::default(),
            window: Budget::new(window.messages.max(1), window.bytes.max(1)),
            recv_upto: 0,
            acked_upto: 0,
            hellos: 0,
        }
    }

    /// Links to this peer that came up so far (hellos handled), the first
    /// one included: reconnects are one less.
    pub fn links_up(&self) -> u64 {
        self.hellos
    }

    /// The peer's session, once known.
    pub fn peer_session(&self) -> Option<u64> {
        self.peer_session
    }

    /// This side's hello fields: `(your_session, recv_upto)`.
    pub fn hello_fields(&self) -> (u64, u64) {
        (self.peer_session.unwrap_or(0), self.recv_upto)
    }

    /// Handles the peer's hello.
    pub fn on_hello(&mut self, session: u64, your_session: u64, recv_upto: u64) -> Resume {
        self.hellos += 1;
        let mut r = Resume::default();
        if self.peer_session != Some(session) {
            // First contact, or the peer restarted: its inbound state is new.
            if self.peer_session.is_some() {
                r.peer_restarted = true;
                r.lost = self.unacked.drain(..).map(|(_, m)| m).collect();
            }
            self.in_flight = Usage::default();
            self.peer_session = Some(session);
            self.recv_upto = 0;
            self.acked_upto = 0;
            self.next_seq = 1;
            self.unacked.clear();
            return r;
        }
        if your_session == self.my_session {
            self.on_ack(recv_upto);
        }
        let ack = self.recv_upto;
        r.resend = self
            .unacked
            .iter()
            .map(|(seq, m)| LinkFrame::Data {
                seq: *seq,
                ack,
                message: m.clone(),
            })
            .collect();
        self.acked_upto = ack;
        r
    }

    /// True if another message may be sent now: the messages and the bytes
    /// in flight are both under the window.
    pub fn has_room(&self) -> bool {
        self.window.has_room(self.in_flight)
    }

    /// Messages sent and not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.unacked.len()
    }

    /// Messages and bytes sent and not yet acknowledged.
    pub fn in_flight_usage(&self) -> Usage {
        self.in_flight
    }

    /// Numbers `m`, keeps it until acknowledged, and returns its frame (with
    /// a piggybacked acknowledgement).
    pub fn send(&mut self, m: Message) -> LinkFrame {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.in_flight.add(Usage::one(m.encoded_len()));
        self.unacked.push_back((seq, m.clone()));
        self.acked_upto = self.recv_upto;
        LinkFrame::Data {
            seq,
            ack: self.recv_upto,
            message: m,
        }
    }

    /// Handles a cumulative acknowledgement.
    pub fn on_ack(&mut self, ack: u64) {
        while self.unacked.front().is_some_and(|(s, _)| *s <= ack) {
            if let Some((_, m)) = self.unacked.pop_front() {
                self.in_flight.remove(Usage::one(m.encoded_len()));
            }
        }
    }

    /// Classifies a received data frame; call [`stored`](Self::stored) once
    /// a `New` one is in the dispatch table.
    pub fn on_data(&mut self, seq: u64) -> Inbound {
        if seq <= self.recv_upto {
            Inbound::Duplicate
        } else if seq == self.recv_upto + 1 {
            Inbound::New
        } else {
            Inbound::Gap {
                expected: self.recv_upto + 1,
            }
        }
    }

    /// Marks the next inbound message stored.
    pub fn stored(&mut self) {
        self.recv_upto += 1;
    }

    /// An acknowledgement to send, if the peer does not know everything we
    /// stored yet.
    pub fn ack_due(&mut self) -> Option<LinkFrame> {
        (self.recv_upto > self.acked_upto).then(|| {
            self.acked_upto = self.recv_upto;
            LinkFrame::Ack {
                ack: self.recv_upto,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tenet_proto::{EntityId, Mtype};

    /// A window that never limits these tests.
    const W: Budget = Budget::new(1000, 1 << 30);

    fn m(n: u8) -> Message {
        Message::new(
            EntityId::from_array([1; 16]),
            EntityId::from_array([2; 16]),
            Mtype(0x8000),
            vec![n],
        )
    }

    fn seq_of(f: &LinkFrame) -> u64 {
        match f {
            LinkFrame::Data { seq, .. } => *seq,
            other => panic!("{other:?}"),
        }
    }

    /// A and B greet each other.
    fn greet(a: &mut PeerLink, b: &mut PeerLink, sa: u64, sb: u64) -> (Resume, Resume) {
        let (ya, ra) = a.hello_fields();
        let (yb, rb) = b.hello_fields();
        (a.on_hello(sb, yb, rb), b.on_hello(sa, ya, ra))
    }

    #[test]
    fn reconnect_resends_exactly_the_unacknowledged() {
        let (mut a, mut b) = (PeerLink::new(10, W), PeerLink::new(20, W));
        greet(&mut a, &mut b, 10, 20);
        let frames: Vec<_> = (1..=5).map(|i| a.send(m(i))).collect();
        // B stores the first three, then the link breaks before its ack arrives.
        for f in &frames[..3] {
            assert_eq!(b.on_data(seq_of(f)), Inbound::New);
            b.stored();
        }
        let (ra, rb) = greet(&mut a, &mut b, 10, 20);
        assert!(!ra.peer_restarted && ra.lost.is_empty());
        assert_eq!(
            (a.links_up(), b.links_up()),
            (2, 2),
            "first link and one reconnect"
        );
        assert_eq!(
            ra.resend.iter().map(seq_of).collect::<Vec<_>>(),
            [4, 5],
            "B said it has 1..3"
        );
        assert!(rb.resend.is_empty());
        for f in &ra.resend {
            assert_eq!(b.on_data(seq_of(f)), Inbound::New);
            b.stored();
        }
        // A resent frame that B had already stored is a duplicate.
        assert_eq!(b.on_data(2), Inbound::Duplicate);
        assert_eq!(b.on_data(9), Inbound::Gap { expected: 6 });
        a.on_ack(5);
        assert_eq!(a.in_flight(), 0);
    }

    #[test]
    fn restarted_peer_gets_nothing_twice_and_senders_are_told() {
        let (mut a, mut b) = (PeerLink::new(10, W), PeerLink::new(20, W));
        greet(&mut a, &mut b, 10, 20);
        let f1 = a.send(m(1));
        a.send(m(2));
        assert_eq!(b.on_data(seq_of(&f1)), Inbound::New);
        b.stored();
        // B dies; a new B (session 21) knows nothing.
        let mut b2 = PeerLink::new(21, W);
        let (ra, _) = greet(&mut a, &mut b2, 10, 21);
        assert!(ra.peer_restarted);
        assert_eq!(
            ra.lost,
            vec![m(1), m(2)],
            "unacknowledged: returned, not resent"
        );
        assert!(ra.resend.is_empty());
        // Numbering starts again for the new session.
        assert_eq!(seq_of(&a.send(m(3))), 1);
    }

    #[test]
    fn window_bounds_in_flight() {
        let mut a = PeerLink::new(1, Budget::new(2, 1 << 20));
        a.send(m(1));
        assert!(a.has_room());
        a.send(m(2));
        assert!(!a.has_room());
        a.on_ack(1);
        assert!(a.has_room());
    }

    /// A peer that stops acknowledging large messages makes this side hold
    /// at most the window's bytes plus less than one message, far fewer
    /// than its message count allows.
    #[test]
    fn window_bounds_bytes_in_flight() {
        let big = |n: u8| Message::new(m(n).src(), m(n).dst(), Mtype(0x8000), vec![n; 60_000]);
        let mut a = PeerLink::new(1, Budget::new(1024, 200_000));
        let mut sent = 0;
        while a.has_room() {
            a.send(big(sent));
            sent += 1;
        }
        assert_eq!(sent, 4, "60,034 bytes each: the fourth crosses 200,000");
        let held = a.in_flight_usage();
        assert_eq!(held.messages, 4);
        assert!(held.bytes < 200_000 + 60_034, "{held:?}");
        a.on_ack(2);
        assert_eq!(a.in_flight_usage().messages, 2);
        assert!(a.has_room(), "acknowledgements give the bytes back");
        // A restarted peer hands everything back and the window is empty.
        let (ya, ra) = (1, 0);
        a.on_hello(7, ya, ra);
        a.on_hello(8, ya, ra);
        assert_eq!(a.in_flight_usage(), Usage::default());
    }

    #[test]
    fn acks_are_sent_once_and_piggybacked() {
        let (mut a, mut b) = (PeerLink::new(10, W), PeerLink::new(20, W));
        greet(&mut a, &mut b, 10, 20);
        let f = a.send(m(1));
        b.on_data(seq_of(&f));
        b.stored();
        assert_eq!(b.ack_due(), Some(LinkFrame::Ack { ack: 1 }));
        assert_eq!(b.ack_due(), None);
        let f = a.send(m(2));
        b.on_data(seq_of(&f));
        b.stored();
        match b.send(m(9)) {
            LinkFrame::Data { ack, .. } => assert_eq!(ack, 2),
            other => panic!("{other:?}"),
        }
        assert_eq!(b.ack_due(), None, "the data frame carried it");
    }

    proptest! {
        /// Random breaks: every message is stored exactly once, in order.
        #[test]
        fn exactly_once_in_order_across_breaks(plan in proptest::collection::vec((1usize..6, 0usize..6, any::<bool>()), 1..30)) {
            let (mut a, mut b) = (PeerLink::new(10, W), PeerLink::new(20, W));
            greet(&mut a, &mut b, 10, 20);
            let mut next = 0u8;
            let mut delivered: Vec<u8> = Vec::new();
            let mut wire: VecDeque<LinkFrame> = VecDeque::new();
            for (sends, arrive, ack_back) in plan {
                for _ in 0..sends {
                    wire.push_back(a.send(m(next)));
                    next = next.wrapping_add(1);
                }
                // Some frames arrive; the rest are lost with the link.
                for _ in 0..arrive.min(wire.len()) {
                    let f = wire.pop_front().unwrap();
                    if let LinkFrame::Data { seq, message, .. } = f {
                        match b.on_data(seq) {
                            Inbound::New => { b.stored(); delivered.push(message.param[0]); }
                            Inbound::Duplicate => {}
                            Inbound::Gap { .. } => prop_assert!(false, "gap on an in-order stream"),
                        }
                    }
                }
                if ack_back
                    && let Some(LinkFrame::Ack { ack }) = b.ack_due() { a.on_ack(ack); }
                // The link breaks and comes back.
                wire.clear();
                let (ra, _) = greet(&mut a, &mut b, 10, 20);
                wire.extend(ra.resend);
            }
            while let Some(f) = wire.pop_front() {
                if let LinkFrame::Data { seq, message, .. } = f
                    && b.on_data(seq) == Inbound::New { b.stored(); delivered.push(message.param[0]); }
            }
            let expected: Vec<u8> = (0..next as usize).map(|i| i as u8).collect();
            prop_assert_eq!(delivered, expected);
        }
    }
}
