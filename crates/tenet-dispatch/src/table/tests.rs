use super::*;
use crate::budget::{Unit, Usage};
use crate::guard::Verdict;
use crate::rules::{RuleGuard, RuleSpec};
use tenet_proto::Header;
use tenet_proto::Port;

fn dom(b: u8) -> Domain {
    Domain::new([b; 12])
}

fn id(d: u8, p: u32) -> EntityId {
    EntityId::new(dom(d), Port::new(p))
}

fn msg(src: EntityId, dst: EntityId, mt: u16) -> Message {
    Message::new(src, dst, Mtype(mt), vec![mt as u8])
}

fn table(limits: Limits) -> DispatchTable {
    DispatchTable::new(id(1, 0), limits)
}

fn notice(d: &Delivery) -> Undeliverable {
    assert_eq!(d.message.mtype(), Mtype::UNDELIVERABLE);
    Undeliverable::decode(&d.message.param).unwrap()
}

fn events(t: &mut DispatchTable) -> Vec<Event> {
    std::iter::from_fn(|| t.poll_event()).collect()
}

#[test]
fn message_waits_until_its_reader_takes_it() {
    let mut t = table(Limits::default());
    let now = Instant::now();
    let (a, b) = (t.add_endpoint(), t.add_endpoint());
    t.bind(a, id(1, 1)).unwrap();
    t.bind(b, id(1, 2)).unwrap();
    assert_eq!(
        t.store(Ingress::App, msg(id(1, 1), id(1, 2), 9), now),
        Ok(Stored::Queued(b))
    );
    assert_eq!(events(&mut t), vec![Event::Readable(b)]);
    assert_eq!(t.len(), 1);
    assert_eq!(t.take(a), None, "not a's message");
    let d = t.take(b).unwrap();
    assert_eq!(d.message, msg(id(1, 1), id(1, 2), 9));
    assert_eq!(d.subscription, SubscriptionId(0));
    assert_eq!(t.take(b), None, "read once only");
    assert!(t.is_empty());
}

#[test]
fn readable_fires_on_empty_to_nonempty_only() {
    let mut t = table(Limits::default());
    let now = Instant::now();
    let b = t.add_endpoint();
    t.bind(b, id(1, 2)).unwrap();
    for _ in 0..3 {
        t.store(Ingress::App, msg(id(1, 1), id(1, 2), 9), now)
            .unwrap();
    }
    assert_eq!(events(&mut t), vec![Event::Readable(b)]);
    while t.take(b).is_some() {}
    t.store(Ingress::App, msg(id(1, 1), id(1, 2), 9), now)
        .unwrap();
    assert_eq!(events(&mut t), vec![Event::Readable(b)]);
}

#[test]
fn handlers_claim_by_each_filter_field_in_registration_order() {
    let mut t = table(Limits::default());
    let now = Instant::now();
    let (p1, p2, p3) = (t.add_endpoint(), t.add_endpoint(), t.add_endpoint());
    let s_mtype = t
        .subscribe(
            p1,
            Filter {
                dst_domain: Some(dom(7)),
                mtype: Some(Mtype(0x42)),
                ..Filter::ANY
            },
        )
        .unwrap();
    let s_dom = t.subscribe(p2, Filter::to_domain(dom(7))).unwrap();
    let s_src = t
        .subscribe(
            p3,
            Filter {
                src_domain: Some(dom(5)),
                ..Filter::ANY
            },
        )
        .unwrap();
    let s_src_id = t
        .subscribe(
            p3,
            Filter {
                src: Some(id(6, 3)),
                ..Filter::ANY
            },
        )
        .unwrap();
    let s_dst = t.subscribe(p1, Filter::to(id(8, 1))).unwrap();

    t.store(Ingress::App, msg(id(1, 1), id(7, 4), 0x42), now)
        .unwrap();
    t.store(Ingress::App, msg(id(1, 1), id(7, 4), 0x43), now)
        .unwrap();
    t.store(Ingress::App, msg(id(5, 1), id(9, 9), 1), now)
        .unwrap();
    t.store(Ingress::App, msg(id(6, 3), id(9, 9), 1), now)
        .unwrap();
    t.store(Ingress::App, msg(id(1, 1), id(8, 1), 1), now)
        .unwrap();
    assert_eq!(t.take(p1).unwrap().subscription, s_mtype);
    assert_eq!(t.take(p2).unwrap().subscription, s_dom);
    assert_eq!(t.take(p3).unwrap().subscription, s_src);
    assert_eq!(t.take(p3).unwrap().subscription, s_src_id);
    assert_eq!(t.take(p1).unwrap().subscription, s_dst);

    t.unsubscribe(p1, s_mtype).unwrap();
    t.store(Ingress::App, msg(id(1, 1), id(7, 4), 0x42), now)
        .unwrap();
    assert_eq!(
        t.take(p2).unwrap().subscription,
        s_dom,
        "after unsubscribe the next handler claims it"
    );
    assert_eq!(
        t.unsubscribe(p1, s_mtype),
        Err(TableError::NoSuchHandler(s_mtype.0))
    );
    assert_eq!(
        t.unsubscribe(p2, s_src),
        Err(TableError::NoSuchHandler(s_src.0)),
        "not p2's handler"
    );
}

#[test]
fn bound_id_beats_foreign_subscription_and_tags_own_subscription() {
    let mut t = table(Limits::default());
    let now = Instant::now();
    let (app, thief) = (t.add_endpoint(), t.add_endpoint());
    t.bind(app, id(1, 5)).unwrap();
    t.subscribe(thief, Filter::to(id(1, 5))).unwrap();
    let own = t
        .subscribe(
            app,
            Filter {
                dst: Some(id(1, 5)),
                mtype: Some(Mtype(3)),
                ..Filter::ANY
            },
        )
        .unwrap();
    t.store(Ingress::App, msg(id(1, 9), id(1, 5), 3), now)
        .unwrap();
    t.store(Ingress::App, msg(id(1, 9), id(1, 5), 4), now)
        .unwrap();
    assert_eq!(t.take(thief), None);
    assert_eq!(t.take(app).unwrap().subscription, own);
    assert_eq!(t.take(app).unwrap().subscription, SubscriptionId(0));
}

#[test]
fn taps_observe_without_consuming() {
    let mut t = table(Limits::default());
    let now = Instant::now();
    let (b, watcher) = (t.add_endpoint(), t.add_endpoint());
    t.bind(b, id(1, 2)).unwrap();
    let tap = t
        .tap(
            watcher,
            Filter {
                mtype: Some(Mtype(9)),
                ..Filter::ANY
            },
        )
        .unwrap();
    t.store(Ingress::App, msg(id(1, 1), id(1, 2), 9), now)
        .unwrap();
    t.store(Ingress::App, msg(id(1, 1), id(1, 2), 8), now)
        .unwrap();
    assert_eq!(
        events(&mut t),
        vec![Event::Readable(b), Event::TapReadable(watcher)]
    );
    assert_eq!(
        t.take_tap(watcher),
        Some(TapItem::Copy {
            tap,
            at: now,
            message: msg(id(1, 1), id(1, 2), 9)
        })
    );
    assert_eq!(t.take_tap(watcher), None, "mtype 8 did not match");
    assert_eq!(
        t.take(b).unwrap().message.mtype(),
        Mtype(9),
        "the tap did not consume it"
    );
    assert_eq!(t.take(watcher), None);
}

#[test]
fn full_tap_queue_reports_lag_and_never_blocks_delivery() {
    let limits = Limits {
        tap_queue: 2,
        ..Limits::default()
    };
    let mut t = table(limits);
    let now = Instant::now();
    let (b, w) = (t.add_endpoint(), t.add_endpoint());
    t.bind(b, id(1, 2)).unwrap();
    let tap = t.tap(w, Filter::ANY).unwrap();
    for _ in 0..5 {
        t.store(Ingress::App, msg(id(1, 1), id(1, 2), 9), now)
            .unwrap();
    }
    assert_eq!(t.pending(b), 5);
    assert!(matches!(t.take_tap(w), Some(TapItem::Copy { .. })));
    assert!(matches!(t.take_tap(w), Some(TapItem::Copy { .. })));
    assert_eq!(t.take_tap(w), Some(TapItem::Lagged { tap, missed: 3 }));
    assert_eq!(t.stats().tap_skipped, 3);
}

#[test]
fn unknown_local_id_and_unroutable_domain_notify_sender() {
    let mut t = table(Limits::default());
    let now = Instant::now();
    let a = t.add_endpoint();
    t.bind(a, id(1, 1)).unwrap();
    assert_eq!(
        t.store(Ingress::App, msg(id(1, 1), id(1, 77), 9), now),
        Ok(Stored::Undeliverable(
            UndeliverableReason::UNKNOWN_DESTINATION
        ))
    );
    assert_eq!(
        t.store(Ingress::App, msg(id(1, 1), id(4, 1), 9), now),
        Ok(Stored::Undeliverable(UndeliverableReason::NO_ROUTE))
    );
    let n1 = t.take(a).unwrap();
    assert_eq!(n1.message.src(), id(1, 0), "notices come from the host id");
    assert_eq!(
        notice(&n1),
        Undeliverable {
            reason: UndeliverableReason::UNKNOWN_DESTINATION,
            dst: id(1, 77),
            mtype: Mtype(9)
        }
    );
    assert_eq!(
        notice(&t.take(a).unwrap()).reason,
        UndeliverableReason::NO_ROUTE
    );
    assert_eq!(t.stats().undeliverable, 2);
}

#[test]
fn no_notice_about_a_notice() {
    let mut t = table(Limits::default());
    let now = Instant::now();
    let m = Message::new(id(1, 0), id(1, 99), Mtype::UNDELIVERABLE, vec![]);
    assert_eq!(
        t.store(Ingress::Internal, m, now),
        Ok(Stored::Undeliverable(
            UndeliverableReason::UNKNOWN_DESTINATION
        ))
    );
    assert!(t.is_empty());
    assert_eq!(t.stats().notices_dropped, 0);
}

#[test]
fn per_destination_bound_refuses_and_keeps_what_is_stored() {
    let limits = Limits {
        per_destination: 3,
        per_sender_share: Share::WHOLE,
        ..Limits::default()
    };
    let mut t = table(limits);
    let now = Instant::now();
    let (a, b, c) = (t.add_endpoint(), t.add_endpoint(), t.add_endpoint());
    t.bind(a, id(1, 1)).unwrap();
    t.bind(b, id(1, 2)).unwrap();
    t.bind(c, id(1, 3)).unwrap();
    for _ in 0..3 {
        t.store(Ingress::App, msg(id(1, 1), id(1, 2), 9), now)
            .unwrap();
    }
    assert_eq!(
        t.store(Ingress::App, msg(id(1, 1), id(1, 2), 9), now),
        Err(StoreError::QueueFull {
            dst: id(1, 2),
            which: Bound::PerDestination,
            limit: 3,
            unit: Unit::Messages,
        })
    );
    assert_eq!(t.pending(b), 3);
    assert_eq!(
        t.store(Ingress::App, msg(id(1, 1), id(1, 3), 9), now),
        Ok(Stored::Queued(c)),
        "others unaffected"
    );
    assert_eq!(t.stats().refused_full, 1);
}

#[test]
fn total_bound_refuses() {
    let limits = Limits {
        total: 4,
        per_sender_share: Share::WHOLE,
        ..Limits::default()
    };
    let mut t = table(limits);
    let now = Instant::now();
    let eps: Vec<_> = (0..5).map(|_| t.add_endpoint()).collect();
    for (i, ep) in eps.iter().enumerate() {
        t.bind(*ep, id(1, 10 + i as u32)).unwrap();
    }
    for i in 0..4 {
        t.store(Ingress::App, msg(id(1, 1), id(1, 10 + i), 9), now)
            .unwrap();
    }
    assert!(matches!(
        t.store(Ingress::App, msg(id(1, 1), id(1, 14), 9), now),
        Err(StoreError::QueueFull {
            which: Bound::Total,
            ..
        })
    ));
    assert_eq!(t.len(), 4);
}

#[test]
fn notice_that_cannot_be_stored_is_counted_and_reported() {
    let limits = Limits {
        total: 1,
        ..Limits::default()
    };
    let mut t = table(limits);
    let now = Instant::now();
    let (a, b) = (t.add_endpoint(), t.add_endpoint());
    t.bind(a, id(1, 1)).unwrap();
    t.bind(b, id(1, 2)).unwrap();
    t.store(Ingress::App, msg(id(1, 2), id(1, 2), 9), now)
        .unwrap();
    events(&mut t);
    // The table is full, so the notice for a's unroutable message cannot be stored.
    t.store(Ingress::App, msg(id(1, 1), id(4, 4), 9), now)
        .unwrap();
    assert_eq!(t.stats().notices_dropped, 1);
    assert_eq!(
        events(&mut t),
        vec![Event::NoticeDropped {
            to: id(1, 1),
            reason: UndeliverableReason::NO_ROUTE
        }]
    );
}

#[test]
fn tap_copies_of_pin_messages_carry_no_param() {
    let mut t = table(Limits::default());
    let now = Instant::now();
    let (a, card, w) = (t.add_endpoint(), t.add_endpoint(), t.add_endpoint());
    t.bind(a, id(1, 1)).unwrap();
    t.bind(card, id(2, 0)).unwrap();
    let tap = t.tap(w, Filter::ANY).unwrap();
    for mt in SECRET_PARAMS {
        let m = Message::new(id(1, 1), id(2, 0), mt, b"1234".to_vec());
        t.store(Ingress::App, m.clone(), now).unwrap();
        assert_eq!(t.take(card).unwrap().message, m, "the card gets the PIN");
        match t.take_tap(w).unwrap() {
            TapItem::Copy {
                tap: c, message, ..
            } => {
                assert_eq!((c, message.header), (tap, m.header));
                assert!(message.param.is_empty(), "{mt}");
            }
            other => panic!("{other:?}"),
        }
    }
    let echo = msg(id(1, 1), id(2, 0), Mtype::ECHO_REQUEST.0);
    t.store(Ingress::App, echo.clone(), now).unwrap();
    assert!(
        matches!(t.take_tap(w), Some(TapItem::Copy { message, .. }) if message == echo),
        "other copies are whole"
    );
}

#[test]
fn notices_may_exceed_the_per_destination_bound() {
    let limits = Limits {
        per_destination: 1,
        ..Limits::default()
    };
    let mut t = table(limits);
    let now = Instant::now();
    let a = t.add_endpoint();
    t.bind(a, id(1, 1)).unwrap();
    t.store(Ingress::App, msg(id(1, 1), id(1, 1), 9), now)
        .unwrap();
    t.store(Ingress::App, msg(id(1, 1), id(4, 4), 9), now)
        .unwrap();
    assert_eq!(t.pending(a), 2, "the sender still learns of the failure");
}

/// A reader that never reads and keeps sending to nowhere must not fill the
/// table with notices about its own messages: beyond twice the
/// per-destination bound they are dropped and counted, and others still
/// find room.
#[test]
fn notices_stop_at_twice_the_per_destination_bound() {
    let limits = Limits {
        per_destination: 4,
        total: 32,
        ..Limits::default()
    };
    let mut t = table(limits);
    let now = Instant::now();
    let (a, b) = (t.add_endpoint(), t.add_endpoint());
    t.bind(a, id(1, 1)).unwrap();
    t.bind(b, id(1, 2)).unwrap();
    for _ in 0..100 {
        t.store(Ingress::App, msg(id(1, 1), id(1, 99), 9), now)
            .unwrap();
    }
    assert_eq!(t.pending(a), 8, "notices up to twice the bound");
    assert_eq!(t.stats().notices_dropped, 92);
    assert_eq!(
        t.store(Ingress::App, msg(id(1, 2), id(1, 1), 9), now),
        Err(StoreError::QueueFull {
            dst: id(1, 1),
            which: Bound::PerDestination,
            limit: 4,
            unit: Unit::Messages,
        }),
        "a's queue is full for ordinary messages"
    );
    assert_eq!(
        t.store(Ingress::App, msg(id(1, 1), id(1, 2), 9), now),
        Ok(Stored::Queued(b)),
        "the table still has room for others"
    );
}

/// A message of `len` bytes in all (header and param).
fn sized(src: EntityId, dst: EntityId, len: usize) -> Message {
    Message::new(
        src,
        dst,
        Mtype(0x8001),
        vec![7; len - tenet_proto::HEADER_LEN],
    )
}

#[test]
fn per_destination_byte_budget_refuses_and_stores_nothing() {
    let limits = Limits {
        per_destination_bytes: 3000,
        per_sender_share: Share::WHOLE,
        ..Limits::default()
    };
    let mut t = table(limits);
    let now = Instant::now();
    let (b, c) = (t.add_endpoint(), t.add_endpoint());
    t.bind(b, id(1, 2)).unwrap();
    t.bind(c, id(1, 3)).unwrap();
    for _ in 0..2 {
        t.store(Ingress::App, sized(id(1, 1), id(1, 2), 1000), now)
            .unwrap();
    }
    let held = t.held();
    assert_eq!(
        held,
        Usage {
            messages: 2,
            bytes: 2000
        }
    );
    assert_eq!(
        t.store(Ingress::App, sized(id(1, 1), id(1, 2), 1001), now),
        Err(StoreError::QueueFull {
            dst: id(1, 2),
            which: Bound::PerDestination,
            limit: 3000,
            unit: Unit::Bytes,
        }),
        "far under the 1024-message bound, over the byte budget"
    );
    assert_eq!(t.held(), held, "nothing stored");
    assert_eq!(t.pending(b), 2);
    assert_eq!(t.stats().refused_full, 1);
    assert_eq!(
        t.store(Ingress::App, sized(id(1, 1), id(1, 2), 1000), now),
        Ok(Stored::Queued(b)),
        "exactly up to the budget"
    );
    assert_eq!(
        t.store(Ingress::App, sized(id(1, 1), id(1, 3), 3000), now),
        Ok(Stored::Queued(c)),
        "other destinations have their own budget"
    );
}

#[test]
fn total_byte_budget_refuses_and_stores_nothing() {
    let limits = Limits {
        total_bytes: 5000,
        per_sender_share: Share::WHOLE,
        ..Limits::default()
    };
    let mut t = table(limits);
    let now = Instant::now();
    let eps: Vec<_> = (0..3).map(|_| t.add_endpoint()).collect();
    for (i, ep) in eps.iter().enumerate() {
        t.bind(*ep, id(1, 10 + i as u32)).unwrap();
    }
    for i in 0..2 {
        t.store(Ingress::App, sized(id(1, 1), id(1, 10 + i), 2000), now)
            .unwrap();
    }
    assert_eq!(
        t.store(Ingress::App, sized(id(1, 1), id(1, 12), 1001), now),
        Err(StoreError::QueueFull {
            dst: id(1, 12),
            which: Bound::Total,
            limit: 5000,
            unit: Unit::Bytes,
        })
    );
    assert_eq!(
        t.held(),
        Usage {
            messages: 2,
            bytes: 4000
        }
    );
    assert_eq!(t.pending(eps[2]), 0);
    assert_eq!(t.stats().peak_bytes, 4000);
    // Reading gives the bytes back.
    t.take(eps[0]).unwrap();
    assert_eq!(
        t.held(),
        Usage {
            messages: 1,
            bytes: 2000
        }
    );
    t.store(Ingress::App, sized(id(1, 1), id(1, 12), 3000), now)
        .unwrap();
    assert_eq!(t.stats().peak_bytes, 5000);
}

/// One sender reaches its share of a destination (half, by default): it is
/// refused, nothing of it is stored, and another sender still gets through
/// to the same destination; once the destination reads, the first sender's
/// share has room again.
#[test]
fn one_sender_is_refused_at_its_share_while_another_gets_through() {
    let limits = Limits {
        per_destination_bytes: 4000,
        ..Limits::default()
    };
    assert_eq!(limits.per_sender_share, Share::HALF, "the default");
    let mut t = table(limits);
    let now = Instant::now();
    let card = t.add_endpoint();
    t.bind(card, id(2, 0)).unwrap();
    let (flooder, honest) = (id(2, 1), id(2, 2));
    t.add_local_domain(dom(2));
    for _ in 0..2 {
        t.store(Ingress::App, sized(flooder, id(2, 0), 1000), now)
            .unwrap();
    }
    let held = t.held();
    assert_eq!(
        t.store(Ingress::App, sized(flooder, id(2, 0), 1000), now),
        Err(StoreError::QueueFull {
            dst: id(2, 0),
            which: Bound::SenderPerDestination,
            limit: 2000,
            unit: Unit::Bytes,
        }),
        "half of the card's 4000 bytes"
    );
    assert_eq!(t.held(), held, "nothing stored on refusal");
    assert_eq!((t.stats().refused_full, t.stats().refused_share), (1, 1));
    assert_eq!(
        t.store(Ingress::App, sized(honest, id(2, 0), 1000), now),
        Ok(Stored::Queued(card)),
        "another sender gets through to the same destination"
    );
    assert_eq!(t.pending(card), 3);
    // Counts return after reads: the flooder's first message is read and it
    // may send one more.
    assert_eq!(t.take(card).unwrap().message.src(), flooder);
    assert_eq!(
        t.store(Ingress::App, sized(flooder, id(2, 0), 1000), now),
        Ok(Stored::Queued(card))
    );
    while t.take(card).is_some() {}
    assert_eq!(t.held(), Usage::default());
}

/// The sender's share applies to the whole table too: one app writing to
/// many readers that never read holds at most half of the total budget,
/// and the other half stays for everyone else.
#[test]
fn one_sender_holds_at_most_its_share_of_the_table() {
    let limits = Limits {
        total_bytes: 8000,
        per_destination_bytes: 8000,
        ..Limits::default()
    };
    let mut t = table(limits);
    let now = Instant::now();
    let eps: Vec<_> = (0..8).map(|_| t.add_endpoint()).collect();
    for (i, ep) in eps.iter().enumerate() {
        t.bind(*ep, id(1, 10 + i as u32)).unwrap();
    }
    let mut accepted = 0;
    for i in 0..8 {
        match t.store(Ingress::App, sized(id(1, 1), id(1, 10 + i), 1000), now) {
            Ok(_) => accepted += 1,
            Err(e) => assert!(
                matches!(
                    e,
                    StoreError::QueueFull {
                        which: Bound::SenderTotal,
                        limit: 4000,
                        unit: Unit::Bytes,
                        ..
                    }
                ),
                "{e}"
            ),
        }
    }
    assert_eq!(accepted, 4);
    for i in 0..4 {
        t.store(Ingress::App, sized(id(1, 2), id(1, 10 + i), 1000), now)
            .expect("another sender has the rest of the table");
    }
    assert_eq!(t.held().bytes, 8000);
}

/// A peer may use any port of its domains: a foreign domain is one sender.
#[test]
fn a_foreign_domain_is_one_sender() {
    let limits = Limits {
        per_destination: 4,
        ..Limits::default()
    };
    let mut t = table(limits);
    let now = Instant::now();
    let b = t.add_endpoint();
    t.bind(b, id(1, 2)).unwrap();
    t.store(Ingress::Remote, msg(id(9, 1), id(1, 2), 9), now)
        .unwrap();
    t.store(Ingress::Remote, msg(id(9, 2), id(1, 2), 9), now)
        .unwrap();
    assert!(matches!(
        t.store(Ingress::Remote, msg(id(9, 3), id(1, 2), 9), now),
        Err(StoreError::QueueFull {
            which: Bound::SenderPerDestination,
            unit: Unit::Messages,
            ..
        })
    ));
    t.store(Ingress::Remote, msg(id(8, 1), id(1, 2), 9), now)
        .expect("another domain has its own share");
    t.store(Ingress::App, msg(id(1, 1), id(1, 2), 9), now)
        .expect("local apps are senders each");
}

/// A destination serves its senders in turn: a message from an honest
/// sender waits behind at most one message of a sender with a deep queue,
/// and each sender's messages keep their order.
#[test]
fn senders_are_served_in_turn_each_in_order() {
    let mut t = table(Limits::default());
    let now = Instant::now();
    let card = t.add_endpoint();
    t.bind(card, id(1, 100)).unwrap();
    let (flooder, honest) = (id(1, 1), id(1, 2));
    for k in 0..5 {
        t.store(Ingress::App, msg(flooder, id(1, 100), k), now)
            .unwrap();
    }
    t.store(Ingress::App, msg(honest, id(1, 100), 100), now)
        .unwrap();
    t.store(Ingress::App, msg(honest, id(1, 100), 101), now)
        .unwrap();
    let order: Vec<(EntityId, u16)> = std::iter::from_fn(|| t.take(card))
        .map(|d| (d.message.src(), d.message.mtype().0))
        .collect();
    assert_eq!(
        order,
        [
            (flooder, 0),
            (honest, 100),
            (flooder, 1),
            (honest, 101),
            (flooder, 2),
            (flooder, 3),
            (flooder, 4)
        ]
    );
}

/// Notices are no sender's: they are stored for a reader whose queue holds
/// more than any sender's share, up to twice the per-destination bound.
#[test]
fn notices_count_against_no_share() {
    let limits = Limits {
        per_destination: 4,
        ..Limits::default()
    };
    let mut t = table(limits);
    let now = Instant::now();
    let a = t.add_endpoint();
    t.bind(a, id(1, 1)).unwrap();
    for _ in 0..6 {
        t.store(Ingress::App, msg(id(1, 1), id(1, 99), 9), now)
            .unwrap();
    }
    assert_eq!(t.pending(a), 6, "beyond the host's share of 2");
    assert_eq!(t.stats().notices_dropped, 0);
    assert!(
        matches!(
            t.store(Ingress::Internal, msg(id(1, 0), id(1, 1), 9), now),
            Err(StoreError::QueueFull {
                which: Bound::PerDestination,
                ..
            })
        ),
        "ordinary messages still see the per-destination bound"
    );
}

/// Expiry and a removed endpoint give back every byte and every share.
#[test]
fn counts_return_after_expiry_and_removal() {
    let limits = Limits {
        ttl: Duration::from_secs(10),
        per_destination_bytes: 2000,
        ..Limits::default()
    };
    let mut t = table(limits);
    let t0 = Instant::now();
    let (a, b) = (t.add_endpoint(), t.add_endpoint());
    t.bind(a, id(1, 1)).unwrap();
    t.bind(b, id(1, 2)).unwrap();
    t.store(Ingress::App, sized(id(1, 1), id(1, 2), 1000), t0)
        .unwrap();
    t.store(Ingress::App, sized(id(1, 1), id(1, 2), 100), t0)
        .expect_err("the sender's share is full");
    t.handle_timeout(t0 + Duration::from_secs(11));
    assert_eq!(t.pending(b), 0);
    let notice = t.pending_usage(a);
    assert_eq!(notice.messages, 1);
    assert_eq!(t.held(), notice, "only the expiry notice is held");
    t.store(Ingress::App, sized(id(1, 1), id(1, 2), 1000), t0)
        .expect("the share is back after expiry");
    t.remove_endpoint(b, t0);
    assert_eq!(t.pending(a), 2, "expired, then destination gone");
    assert_eq!(t.held(), t.pending_usage(a));
    while t.take(a).is_some() {}
    assert_eq!(t.held(), Usage::default());
    // The removed endpoint's bytes and the sender's share are back.
    let c = t.add_endpoint();
    t.bind(c, id(1, 3)).unwrap();
    t.store(Ingress::App, sized(id(1, 1), id(1, 3), 1000), t0)
        .unwrap();
}

/// Tap copies are bounded in bytes per tapping endpoint, count in the
/// table's total, and give their bytes back when read.
#[test]
fn tap_copies_are_bounded_in_bytes_and_counted() {
    let limits = Limits {
        per_destination_bytes: 2500,
        per_sender_share: Share::WHOLE,
        ..Limits::default()
    };
    let mut t = table(limits);
    let now = Instant::now();
    let (b, w) = (t.add_endpoint(), t.add_endpoint());
    t.bind(b, id(1, 2)).unwrap();
    let tap = t.tap(w, Filter::ANY).unwrap();
    for _ in 0..4 {
        t.store(Ingress::App, sized(id(1, 1), id(1, 2), 1000), now)
            .unwrap();
        t.take(b).unwrap();
    }
    assert_eq!(
        t.held(),
        Usage {
            messages: 2,
            bytes: 2000
        },
        "two copies held"
    );
    assert_eq!(t.stats().tap_skipped, 2);
    assert!(matches!(t.take_tap(w), Some(TapItem::Copy { .. })));
    assert_eq!(
        t.held(),
        Usage {
            messages: 1,
            bytes: 1000
        }
    );
    assert!(matches!(t.take_tap(w), Some(TapItem::Copy { .. })));
    assert_eq!(t.take_tap(w), Some(TapItem::Lagged { tap, missed: 2 }));
    assert_eq!(t.held(), Usage::default());
}

/// All taps together are one sender: many tapping endpoints that never read
/// hold at most its share of the table, and messages keep the rest.
#[test]
fn all_taps_together_hold_at_most_one_share_of_the_table() {
    let limits = Limits {
        total_bytes: 10_000,
        per_destination_bytes: 10_000,
        ..Limits::default()
    };
    let mut t = table(limits);
    let now = Instant::now();
    let b = t.add_endpoint();
    t.bind(b, id(1, 2)).unwrap();
    let watchers: Vec<_> = (0..10).map(|_| t.add_endpoint()).collect();
    for w in &watchers {
        t.tap(*w, Filter::ANY).unwrap();
    }
    t.store(Ingress::App, sized(id(1, 1), id(1, 2), 1000), now)
        .unwrap();
    assert_eq!(t.held().bytes, 1000 + 5 * 1000, "five copies, then skipped");
    assert_eq!(t.stats().tap_skipped, 5);
    t.take(b).unwrap();
    for s in 3..7 {
        t.store(Ingress::App, sized(id(1, s), id(1, 2), 1000), now)
            .expect("messages keep the other half");
    }
}

#[test]
fn expired_messages_are_removed_and_notified() {
    let limits = Limits {
        ttl: Duration::from_secs(10),
        ..Limits::default()
    };
    let mut t = table(limits);
    let t0 = Instant::now();
    let (a, b) = (t.add_endpoint(), t.add_endpoint());
    t.bind(a, id(1, 1)).unwrap();
    t.bind(b, id(1, 2)).unwrap();
    t.store(Ingress::App, msg(id(1, 1), id(1, 2), 1), t0)
        .unwrap();
    t.store(
        Ingress::App,
        msg(id(1, 1), id(1, 2), 2),
        t0 + Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(t.poll_timeout(), Some(t0 + Duration::from_secs(10)));
    t.handle_timeout(t0 + Duration::from_secs(9));
    assert_eq!(t.pending(b), 2, "nothing expires early");
    t.handle_timeout(t0 + Duration::from_secs(10));
    assert_eq!(t.pending(b), 1);
    let n = notice(&t.take(a).unwrap());
    assert_eq!(
        (n.reason, n.mtype),
        (UndeliverableReason::EXPIRED, Mtype(1))
    );
    assert_eq!(t.poll_timeout(), Some(t0 + Duration::from_secs(15)));
    // The second one is read in time and never expires.
    assert_eq!(t.take(b).unwrap().message.mtype(), Mtype(2));
    t.handle_timeout(t0 + Duration::from_secs(60));
    assert_eq!(t.stats().expired, 1);
    assert_eq!(t.poll_timeout(), None);
}

#[test]
fn removing_an_endpoint_notifies_senders_and_frees_its_id() {
    let mut t = table(Limits::default());
    let now = Instant::now();
    let (a, b) = (t.add_endpoint(), t.add_endpoint());
    t.bind(a, id(1, 1)).unwrap();
    t.bind(b, id(1, 2)).unwrap();
    t.tap(b, Filter::ANY).unwrap();
    t.store(Ingress::App, msg(id(1, 1), id(1, 2), 9), now)
        .unwrap();
    t.remove_endpoint(b, now);
    assert_eq!(
        notice(&t.take(a).unwrap()).reason,
        UndeliverableReason::DESTINATION_GONE
    );
    assert_eq!(t.bound_to(id(1, 2)), None);
    assert_eq!(
        t.store(Ingress::App, msg(id(1, 1), id(1, 2), 9), now),
        Ok(Stored::Undeliverable(
            UndeliverableReason::UNKNOWN_DESTINATION
        ))
    );
    assert!(t.bind(a, id(1, 1)).is_err(), "an id binds once");
}

#[test]
fn every_store_passes_the_guard_chain() {
    let mut t = table(Limits::default());
    let now = Instant::now();
    t.add_card(dom(3), [Mtype(0x0201)]);
    let card = t.add_endpoint();
    t.bind(card, id(3, 0)).unwrap();
    let forged = msg(id(3, 7), id(3, 0), 1);
    let err = t.store(Ingress::Remote, forged.clone(), now).unwrap_err();
    assert!(
        matches!(err, StoreError::Guard(ref d) if d.guard == "remote-ingress"),
        "{err}"
    );
    assert!(matches!(
        events(&mut t).as_slice(),
        [Event::GuardDropped {
            ingress: Ingress::Remote,
            ..
        }]
    ));
    assert_eq!(t.pending(card), 0);
    assert_eq!(t.stats().guard_dropped, 1);
    // A local app of the card's domain may send the same header.
    assert!(t.store(Ingress::App, forged, now).is_ok());

    let spec: RuleSpec =
        toml::from_str("action = \"drop\"\ningress = \"app\"\nmtype = \"0x0063\"").unwrap();
    t.push_guard(Box::new(RuleGuard::from_specs(&[spec]).unwrap()));
    assert!(matches!(
        t.store(Ingress::App, msg(id(3, 7), id(3, 0), 0x63), now),
        Err(StoreError::Guard(ref d)) if d.guard == "rules"
    ));
}

#[test]
fn counters_tell_ingress_guard_and_reason_apart() {
    let mut t = table(Limits::default());
    let now = Instant::now();
    t.add_card(dom(3), [Mtype(0x0201)]);
    let (card, app) = (t.add_endpoint(), t.add_endpoint());
    t.bind(card, id(3, 0)).unwrap();
    t.bind(app, id(1, 5)).unwrap();
    let spec: RuleSpec =
        toml::from_str("action = \"drop\"\ningress = \"app\"\nmtype = \"0x0063\"").unwrap();
    t.push_guard(Box::new(RuleGuard::from_specs(&[spec]).unwrap()));
    // Routed: two from the app, one from a remote host, one from the card.
    t.store(Ingress::App, msg(id(1, 5), id(3, 0), 1), now)
        .unwrap();
    t.store(Ingress::App, msg(id(1, 5), id(3, 0), 1), now)
        .unwrap();
    t.store(Ingress::Remote, msg(id(9, 1), id(1, 5), 1), now)
        .unwrap();
    t.store(Ingress::Card, msg(id(3, 0), id(1, 5), 1), now)
        .unwrap();
    // Dropped: one by each guard.
    assert!(
        t.store(Ingress::Remote, msg(id(3, 7), id(3, 0), 1), now)
            .is_err()
    );
    assert!(
        t.store(Ingress::App, msg(id(1, 5), id(3, 0), 0x63), now)
            .is_err()
    );
    // Undeliverable: an unknown local id, a foreign domain, a proxy's report.
    t.store(Ingress::App, msg(id(1, 5), id(1, 99), 1), now)
        .unwrap();
    t.store(Ingress::App, msg(id(1, 5), id(8, 1), 1), now)
        .unwrap();
    t.undeliverable(&msg(id(1, 5), id(8, 1), 1), UndeliverableReason(0x77), now);
    let s = t.stats();
    let routed: Vec<_> = s.routed.iter().collect();
    assert_eq!(
        routed,
        [
            (Ingress::App, 2),
            (Ingress::Card, 1),
            (Ingress::Remote, 1),
            (Ingress::Internal, 0)
        ]
    );
    let by_guard: Vec<_> = t
        .guard_drops()
        .iter()
        .map(|d| {
            (
                d.guard.as_str(),
                d.dropped.get(Ingress::Remote),
                d.dropped.get(Ingress::App),
            )
        })
        .collect();
    assert_eq!(by_guard, [("remote-ingress", 1, 0), ("rules", 0, 1)]);
    assert_eq!(s.guard_dropped, 2);
    let r = s.undeliverable_by_reason;
    assert_eq!(
        (
            r.get(UndeliverableReason::UNKNOWN_DESTINATION),
            r.get(UndeliverableReason::NO_ROUTE),
            r.other(),
            r.total()
        ),
        (1, 1, 1, 3)
    );
    // Expiry and a reader going away count under their reasons.
    t.remove_endpoint(app, now);
    t.handle_timeout(now + Duration::from_secs(3600));
    let r = t.stats().undeliverable_by_reason;
    assert_eq!(
        r.get(UndeliverableReason::DESTINATION_GONE),
        5,
        "what waited for the app: the card's and the remote's messages, its 3 notices"
    );
    assert!(
        r.get(UndeliverableReason::EXPIRED) >= 2,
        "the app's messages to the card"
    );
}

#[test]
fn oversized_message_is_refused() {
    let mut t = table(Limits::default());
    let m = Message::new(
        id(1, 1),
        id(1, 2),
        Mtype(1),
        vec![0; tenet_proto::MAX_PARAM_LEN + 1],
    );
    assert!(matches!(
        t.store(Ingress::App, m, Instant::now()),
        Err(StoreError::TooLarge { .. })
    ));
    assert!(t.is_empty());
}

#[test]
fn handler_limit_per_endpoint() {
    let limits = Limits {
        handlers_per_endpoint: 2,
        ..Limits::default()
    };
    let mut t = table(limits);
    let e = t.add_endpoint();
    t.subscribe(e, Filter::ANY).unwrap();
    let tap = t.tap(e, Filter::ANY).unwrap();
    assert_eq!(t.tap(e, Filter::ANY), Err(TableError::TooManyHandlers(2)));
    t.untap(e, tap).unwrap();
    assert!(t.tap(e, Filter::ANY).is_ok());
}

mod props {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Store {
            src: u32,
            dst: u32,
            mt: u16,
            len: usize,
        },
        Take(usize),
        TakeTap,
        Advance(u64),
        Remove(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u32..6, 0u32..8, 0u16..4, 0usize..120)
                .prop_map(|(src, dst, mt, len)| Op::Store { src, dst, mt, len }),
            3 => (0usize..6).prop_map(Op::Take),
            1 => Just(Op::TakeTap),
            1 => (0u64..20).prop_map(Op::Advance),
            1 => (0usize..6).prop_map(Op::Remove),
        ]
    }

    proptest! {
        /// Every message accepted is eventually accounted for exactly once:
        /// taken by a reader, expired, or returned as destination gone; and
        /// the table never holds more messages or bytes than its bounds, and
        /// holds nothing once everything is read or expired.
        #[test]
        fn every_accepted_message_is_accounted_for(ops in proptest::collection::vec(op(), 1..200)) {
            let limits = Limits {
                per_destination: 4,
                per_destination_bytes: 300,
                total: 12,
                total_bytes: 700,
                tap_queue: 3,
                ttl: Duration::from_secs(10),
                ..Limits::default()
            };
            let mut t = table(limits);
            let t0 = Instant::now();
            let mut now = t0;
            let eps: Vec<_> = (0..6).map(|_| t.add_endpoint()).collect();
            for (i, ep) in eps.iter().enumerate() {
                t.bind(*ep, id(1, i as u32 + 1)).unwrap();
            }
            let watcher = t.add_endpoint();
            t.tap(watcher, Filter { mtype: Some(Mtype(0x100)), ..Filter::ANY }).unwrap();
            let mut live = [true; 6];
            let mut accepted = 0u64;
            let mut taken_user = 0u64;
            for o in ops {
                match o {
                    Op::Store { src, dst, mt, len } => {
                        let m = Message::new(id(1, src + 1), id(1, dst + 1), Mtype(0x100 + mt), vec![0; len]);
                        let before = t.held();
                        let r = t.store(Ingress::App, m, now);
                        match r {
                            Ok(Stored::Queued(_)) => accepted += 1,
                            Err(StoreError::QueueFull { .. }) => prop_assert_eq!(t.held(), before, "nothing stored"),
                            _ => {}
                        }
                    }
                    Op::Take(i) => {
                        if let Some(d) = t.take(eps[i])
                            && d.message.mtype() != Mtype::UNDELIVERABLE { taken_user += 1; }
                    }
                    Op::TakeTap => { t.take_tap(watcher); }
                    Op::Advance(s) => { now += Duration::from_secs(s); t.handle_timeout(now); }
                    Op::Remove(i) => {
                        if live[i] {
                            while let Some(d) = t.take(eps[i]) {
                                if d.message.mtype() != Mtype::UNDELIVERABLE { taken_user += 1; }
                            }
                            live[i] = false;
                            t.remove_endpoint(eps[i], now);
                        }
                    }
                }
                let s = t.stats();
                prop_assert_eq!(s.stored, s.delivered + s.expired + t.len() as u64, "conservation");
                prop_assert_eq!(s.routed.get(Ingress::App), accepted);
                prop_assert_eq!(s.routed.total(), accepted, "apps only");
                prop_assert_eq!(s.undeliverable_by_reason.get(UndeliverableReason::EXPIRED), s.expired);
                let held = t.held();
                prop_assert!(held.messages <= limits.total && held.bytes <= limits.total_bytes, "{held:?}");
                prop_assert!(s.peak_bytes <= limits.total_bytes as u64);
                let mut queued = Usage::default();
                for ep in &eps {
                    let p = t.pending_usage(*ep);
                    prop_assert!(p.messages <= 2 * limits.per_destination);
                    prop_assert!(p.bytes <= 2 * limits.per_destination_bytes);
                    queued.add(p);
                }
                prop_assert_eq!(queued.messages, t.len());
                prop_assert!(queued.bytes <= held.bytes, "tap copies are the rest");
            }
            // Expired messages leave notices, which expire in turn (no notice about a notice).
            for _ in 0..2 {
                now += Duration::from_secs(100);
                t.handle_timeout(now);
            }
            while t.take_tap(watcher).is_some() {}
            let s = t.stats();
            prop_assert!(t.is_empty(), "everything expired or was read");
            prop_assert_eq!(t.held(), Usage::default(), "every byte returned");
            prop_assert_eq!(s.stored, s.delivered + s.expired);
            prop_assert!(taken_user <= accepted);
        }
    }
}

#[test]
fn default_route_takes_only_unclaimed_foreign_domains() {
    let mut t = table(Limits::default());
    let now = Instant::now();
    let (broker, peer, app) = (t.add_endpoint(), t.add_endpoint(), t.add_endpoint());
    t.bind(app, id(1, 1)).unwrap();
    t.subscribe(peer, Filter::to_domain(dom(5))).unwrap();
    t.set_default_route(Some(broker));
    assert_eq!(
        t.store(Ingress::App, msg(id(1, 1), id(5, 1), 9), now),
        Ok(Stored::Queued(peer))
    );
    assert_eq!(
        t.store(Ingress::App, msg(id(1, 1), id(6, 1), 9), now),
        Ok(Stored::Queued(broker))
    );
    assert_eq!(
        t.store(Ingress::App, msg(id(1, 1), id(1, 42), 9), now),
        Ok(Stored::Undeliverable(
            UndeliverableReason::UNKNOWN_DESTINATION
        )),
        "never for a local domain"
    );
}

/// Redirects messages with an odd first param byte to `to`.
struct OddToAcceptor {
    to: EntityId,
}

impl Guard for OddToAcceptor {
    fn name(&self) -> &str {
        "odd"
    }

    fn check(&mut self, _: &GuardContext, _: Ingress, _: &Header, _: Instant) -> Verdict {
        unreachable!("the chain calls inspect")
    }

    fn inspect(&mut self, _: &GuardContext, _: Ingress, m: &Message, _: Instant) -> Verdict {
        match m.param.first() {
            Some(b) if b % 2 == 1 => Verdict::Redirect {
                to: self.to,
                note: "odd".into(),
            },
            _ => Verdict::Pass,
        }
    }
}

#[test]
fn a_redirecting_guard_delivers_to_its_app_and_ends_the_chain() {
    let mut t = table(Limits::default());
    let now = Instant::now();
    let (card, app) = (t.add_endpoint(), t.add_endpoint());
    t.bind(card, id(3, 0)).unwrap();
    t.bind(app, id(3, 9)).unwrap();
    t.push_guard(Box::new(OddToAcceptor { to: id(3, 9) }));
    // A drop-everything rule after the redirecting guard never sees the
    // redirected message, but drops the others.
    let spec: RuleSpec = toml::from_str("action = \"drop\"").unwrap();
    t.push_guard(Box::new(RuleGuard::from_specs(&[spec]).unwrap()));
    assert_eq!(
        t.store(Ingress::Remote, msg(id(2, 1), id(3, 0), 1), now),
        Ok(Stored::Queued(app))
    );
    let d = t.take(app).unwrap();
    assert_eq!(d.message.header.dst, id(3, 9), "dst rewritten");
    assert_eq!(d.message.header.src, id(2, 1), "src kept");
    assert!(
        events(&mut t)
            .iter()
            .any(|e| matches!(e, Event::GuardNote(n) if n.contains("redirected to"))),
    );
    assert!(matches!(
        t.store(Ingress::Remote, msg(id(2, 1), id(3, 0), 2), now),
        Err(StoreError::Guard(ref d)) if d.guard == "rules"
    ));
    assert_eq!(t.pending(card), 0);
}
