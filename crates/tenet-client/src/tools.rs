//! The diagnostic apps of `tenet ping`, `tenet tap` and `tenet wallet
//! watch`, with the text they print: ping(8) for entities, one line per
//! tapped message, and a card's voucher messages.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tenet_proto::{EntityId, Filter, HEADER_LEN, MAX_MESSAGE_LEN, MAX_PARAM_LEN, Message};

use crate::{Capability, ClientError, Incoming};

/// What `ping` sends.
#[derive(Debug, Clone, Copy)]
pub struct PingOptions {
    /// Number of requests.
    pub count: u32,
    /// Time between requests.
    pub interval: Duration,
    /// Time to wait for each reply.
    pub timeout: Duration,
    /// Payload bytes per request, besides the 8-byte sequence number.
    pub size: usize,
}

/// Echoes `dst` like ping(8) through the daemon at `socket`, writing a line
/// per request and the statistics to `out`; returns how many replies were
/// lost.
pub async fn ping(
    socket: &Path,
    dst: EntityId,
    o: PingOptions,
    out: &mut dyn Write,
) -> Result<u32, ClientError> {
    // The request's param is an 8-byte sequence number and the payload.
    if o.size > MAX_PARAM_LEN - 8 {
        let len = HEADER_LEN + 8 + o.size;
        return Err(ClientError::TooLarge {
            len,
            max: MAX_MESSAGE_LEN,
        });
    }
    let mut cap = Capability::acquire(socket).await?;
    let payload = vec![0xa5u8; o.size];
    writeln!(
        out,
        "PING {dst} from {}: {} bytes of param",
        cap.id(),
        o.size + 8
    )?;
    let mut rtts = Vec::new();
    for seq in 1..=o.count {
        match cap.echo(dst, &payload, o.timeout).await {
            Ok(rtt) => {
                let ms = rtt.as_secs_f64() * 1e3;
                writeln!(out, "reply from {dst}: seq={seq} time={ms:.3} ms")?;
                rtts.push(rtt);
            }
            Err(e @ (ClientError::Undeliverable { .. } | ClientError::Timeout { .. })) => {
                writeln!(out, "seq={seq}: {e}")?;
            }
            Err(e) => return Err(e),
        }
        if seq < o.count && !o.interval.is_zero() {
            tokio::time::sleep(o.interval).await;
        }
    }
    let lost = o.count - rtts.len() as u32;
    writeln!(out, "--- {dst} ping statistics ---")?;
    let loss = if o.count == 0 {
        0.0
    } else {
        100.0 * f64::from(lost) / f64::from(o.count)
    };
    writeln!(
        out,
        "{} requests sent, {} replies received, {loss:.1}% loss",
        o.count,
        rtts.len()
    )?;
    if !rtts.is_empty() {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let min = rtts.iter().min().copied().unwrap_or_default();
        let max = rtts.iter().max().copied().unwrap_or_default();
        let avg = rtts.iter().sum::<Duration>() / rtts.len() as u32;
        let (min, avg, max) = (ms(min), ms(avg), ms(max));
        writeln!(out, "rtt min/avg/max = {min:.3}/{avg:.3}/{max:.3} ms")?;
    }
    Ok(lost)
}

/// The time of day of `t`, UTC, to the microsecond.
pub fn time_of_day(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let s = d.as_secs() % 86_400;
    let (h, m, us) = (s / 3600, s / 60 % 60, d.subsec_micros());
    format!("{h:02}:{m:02}:{:02}.{us:06}", s % 60)
}

/// Taps the daemon at `socket` for messages matching `filter`, writing one
/// line each to `out` (and a note on stderr saying who taps), and handing
/// each to `each`; stops after `count` messages, if given.
pub async fn tap(
    socket: &Path,
    filter: Filter,
    count: Option<u64>,
    out: &mut dyn Write,
    each: &mut dyn FnMut(SystemTime, &Message) -> std::io::Result<()>,
) -> Result<(), ClientError> {
    let mut cap = Capability::acquire(socket).await?;
    let me = cap.id();
    cap.tap(filter).await?;
    eprintln!("tapping as {me}; times are UTC");
    let mut seen = 0u64;
    while count.is_none_or(|c| seen < c) {
        match cap.next().await? {
            Incoming::Tapped { at, message, .. } => {
                seen += 1;
                each(at, &message)?;
                let (src, dst, len) = (message.src(), message.dst(), message.param.len());
                let time = time_of_day(at);
                writeln!(out, "{time} {src} -> {dst} {} len={len}", message.mtype())?;
            }
            Incoming::Lagged { missed, .. } => {
                writeln!(out, "(tap lagged: {missed} messages not shown)")?
            }
            Incoming::Message { .. } => {}
        }
    }
    Ok(())
}

/// Prints `src -> dst mtype` for each voucher message to and from `card`
/// that passes the daemon at `socket`; stops after `count`, if given.
pub async fn watch_card(
    socket: &Path,
    card: EntityId,
    count: Option<u64>,
    out: &mut dyn Write,
) -> Result<(), ClientError> {
    let mut to = Capability::acquire(socket).await?;
    to.tap(Filter {
        dst_domain: Some(card.domain()),
        ..Filter::ANY
    })
    .await?;
    let mut from = Capability::acquire(socket).await?;
    from.tap(Filter {
        src: Some(card),
        ..Filter::ANY
    })
    .await?;
    let mut seen = 0u64;
    while count.is_none_or(|c| seen < c) {
        let m = tokio::select! {
            i = to.next() => i?,
            i = from.next() => i?,
        };
        if let Incoming::Tapped { message, .. } = m
            && message.mtype().0 & 0xff00 == 0x0200
        // the voucher mtypes
        {
            seen += 1;
            writeln!(
                out,
                "{} -> {} {}",
                message.src(),
                message.dst(),
                message.mtype()
            )?;
        }
    }
    Ok(())
}
