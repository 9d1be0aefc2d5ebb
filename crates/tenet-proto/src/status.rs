//! A host daemon's figures: what `tenet status` asks for on the app socket
//! ([`ClientFrame::Status`](crate::app::ClientFrame::Status), answered by
//! [`DaemonFrame::Status`](crate::app::DaemonFrame::Status)) and what the
//! daemon's `/metrics` serves in the Prometheus text format.
//!
//! A [`Figure`] is a metric's name without the `tenet_` prefix, its labels
//! and one value: a count (counters and gauges alike) or a time. The names
//! and their meanings are the daemon's (`docs/host.md`); this module only
//! carries them, so a daemon that learns a new figure needs no new frame.
//! The byte layout is in `docs/wire.md`.

use std::fmt;
use std::time::Duration;

use crate::codec::{Codec, DecodeError, Reader};

/// One figure of a daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Figure {
    /// The metric name without the `tenet_` prefix, e.g.
    /// `messages_routed_total`; never empty.
    pub name: String,
    /// Label pairs, e.g. `("ingress", "app")`; keys and values never empty.
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: Value,
}

/// The value of a [`Figure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value {
    /// A number of things: messages, bytes, links, APDUs.
    Count(u64),
    /// A time, carried in whole microseconds.
    Time(Duration),
}

impl Value {
    /// The value as Prometheus writes it: a count as is, a time in seconds.
    pub fn as_f64(self) -> f64 {
        match self {
            Value::Count(n) => n as f64,
            Value::Time(d) => d.as_secs_f64(),
        }
    }
}

impl fmt::Display for Value {
    /// A count as a plain integer, a time in seconds with three decimals
    /// and the unit (`1.250 s`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Count(n) => write!(f, "{n}"),
            Value::Time(d) => write!(f, "{:.3} s", d.as_secs_f64()),
        }
    }
}

impl Figure {
    /// A count.
    pub fn count(name: &str, labels: &[(&str, &str)], n: u64) -> Self {
        Self::new(name, labels, Value::Count(n))
    }

    /// A figure with `value`.
    pub fn new(name: &str, labels: &[(&str, &str)], value: Value) -> Self {
        Self {
            name: name.to_owned(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            value,
        }
    }

    /// The value of the label `key`, if the figure has it.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// A daemon's answer to a status request: its figures, as many as fit in
/// one app-socket frame.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// The figures, grouped by name in the daemon's order.
    pub figures: Vec<Figure>,
    /// Figures left out because the frame was full (a host with very many
    /// peers); `/metrics` has them all.
    pub omitted: u32,
}

impl Status {
    /// The first figure named `name` whose labels include all of `labels`.
    pub fn find(&self, name: &str, labels: &[(&str, &str)]) -> Option<&Figure> {
        self.figures
            .iter()
            .find(|f| f.name == name && labels.iter().all(|(k, v)| f.label(k) == Some(*v)))
    }

    /// The count of [`find`](Self::find), 0 if there is no such figure (a
    /// counter that does not apply to this host) or it is a time.
    pub fn count(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        match self.find(name, labels).map(|f| f.value) {
            Some(Value::Count(n)) => n,
            _ => 0,
        }
    }
}

/// Encoded bytes of the smallest figure: a one-byte name, no label, a
/// value.
const MIN_FIGURE: usize = 2 + 1 + 1 + 1 + 8;
/// Encoded bytes of the smallest label: a one-byte key and value.
const MIN_LABEL: usize = 2 + 1 + 2 + 1;
/// Value kinds on the wire.
const COUNT: u8 = 0;
const TIME_MICROS: u8 = 1;

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Names and labels are the daemon's own short words, peer addresses
    // and guard names: far below 64 KiB. A longer one is cut at a
    // character boundary rather than corrupting the frame.
    let mut end = s.len().min(usize::from(u16::MAX));
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.extend_from_slice(&(end as u16).to_be_bytes());
    out.extend_from_slice(&s.as_bytes()[..end]);
}

fn read_str(r: &mut Reader<'_>, what: &'static str) -> Result<String, DecodeError> {
    let len = usize::from(r.u16(what)?);
    if len == 0 {
        return Err(DecodeError::Invalid {
            what,
            detail: "empty".into(),
        });
    }
    let bytes = r.take(len, what)?;
    match std::str::from_utf8(bytes) {
        Ok(s) => Ok(s.to_owned()),
        Err(e) => Err(DecodeError::Invalid {
            what,
            detail: e.to_string(),
        }),
    }
}

/// Checks that `count` items of at least `min` bytes each can follow, so
/// that their vector is allocated once, at its final size.
fn room(r: &Reader<'_>, count: usize, min: usize, what: &'static str) -> Result<(), DecodeError> {
    if count * min > r.left() {
        return Err(DecodeError::Truncated {
            what,
            needed: count * min - r.left(),
        });
    }
    Ok(())
}

impl Codec for Figure {
    fn encode(&self, out: &mut Vec<u8>) {
        put_str(out, &self.name);
        let labels = &self.labels[..self.labels.len().min(usize::from(u8::MAX))];
        out.push(labels.len() as u8);
        for (k, v) in labels {
            put_str(out, k);
            put_str(out, v);
        }
        match self.value {
            Value::Count(n) => {
                out.push(COUNT);
                out.extend_from_slice(&n.to_be_bytes());
            }
            Value::Time(d) => {
                out.push(TIME_MICROS);
                let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
                out.extend_from_slice(&micros.to_be_bytes());
            }
        }
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let name = read_str(r, "figure name")?;
        let n = usize::from(r.u8("label count")?);
        room(r, n, MIN_LABEL, "figure labels")?;
        let mut labels = Vec::with_capacity(n);
        for _ in 0..n {
            labels.push((read_str(r, "label key")?, read_str(r, "label value")?));
        }
        let value = match r.u8("value kind")? {
            COUNT => Value::Count(r.u64("count")?),
            TIME_MICROS => Value::Time(Duration::from_micros(r.u64("time")?)),
            other => {
                return Err(DecodeError::Invalid {
                    what: "value kind",
                    detail: format!("unknown kind {other:#04x}"),
                });
            }
        };
        Ok(Self {
            name,
            labels,
            value,
        })
    }
}

impl Codec for Status {
    fn encode(&self, out: &mut Vec<u8>) {
        let figures = &self.figures[..self.figures.len().min(usize::from(u16::MAX))];
        let omitted = self.omitted as usize + (self.figures.len() - figures.len());
        out.extend_from_slice(&u32::try_from(omitted).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(&(figures.len() as u16).to_be_bytes());
        for f in figures {
            f.encode(out);
        }
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let omitted = r.u32("omitted figures")?;
        let n = usize::from(r.u16("figure count")?);
        room(r, n, MIN_FIGURE, "figures")?;
        let mut figures = Vec::with_capacity(n);
        for _ in 0..n {
            figures.push(Figure::read(r)?);
        }
        Ok(Self { figures, omitted })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Status {
        Status {
            figures: vec![
                Figure::count("messages_routed_total", &[("ingress", "app")], 7),
                Figure::count("queue_messages", &[], 0),
                Figure::new(
                    "card_link_busy_seconds_total",
                    &[],
                    Value::Time(Duration::from_micros(1_250_000)),
                ),
            ],
            omitted: 2,
        }
    }

    #[test]
    fn status_round_trips_and_finds_figures() {
        let s = sample();
        assert_eq!(Status::decode(&s.to_bytes()), Ok(s.clone()));
        assert_eq!(s.count("messages_routed_total", &[("ingress", "app")]), 7);
        assert_eq!(s.count("messages_routed_total", &[("ingress", "card")]), 0);
        assert_eq!(
            s.find("card_link_busy_seconds_total", &[])
                .map(|f| f.value.to_string()),
            Some("1.250 s".into())
        );
    }

    #[test]
    fn empty_names_bad_kinds_and_short_counts_are_refused() {
        // An empty name (and a byte more, so the count fits the bytes).
        let mut b = vec![0, 0, 0, 0, 0, 1, 0, 0, 0, COUNT];
        b.extend_from_slice(&[0; 9]);
        assert!(matches!(
            Status::decode(&b),
            Err(DecodeError::Invalid { .. })
        ));
        // An unknown value kind.
        let mut f = Figure::count("x", &[], 1).to_bytes();
        f[4] = 9;
        assert!(matches!(
            Figure::decode(&f),
            Err(DecodeError::Invalid { .. })
        ));
        // More figures announced than the bytes can hold: refused before
        // anything is allocated for them.
        assert!(matches!(
            Status::decode(&[0, 0, 0, 0, 0xff, 0xff]),
            Err(DecodeError::Truncated { .. })
        ));
    }
}
