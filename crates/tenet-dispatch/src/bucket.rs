//! A token bucket: at most `burst` at once, refilled at `rate` per second.
//! Time is an input, as everywhere in this crate.

use std::time::{Duration, Instant};

/// A token bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl TokenBucket {
    /// A full bucket of `burst` tokens refilled at `rate` per second.
    pub fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate,
            burst,
            tokens: burst,
            last: None,
        }
    }

    /// Takes one token at `now`, or tells how long until one is there.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        if let Some(last) = self.last {
            let dt = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else if self.rate > 0.0 {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        } else {
            Err(Duration::MAX)
        }
    }

    /// True once the bucket is full again at `now` (it may be forgotten).
    pub fn is_full(&self, now: Instant) -> bool {
        self.last.is_none_or(|last| {
            self.tokens + now.saturating_duration_since(last).as_secs_f64() * self.rate
                >= self.burst
        })
    }
}

/// One bucket per key (a local user, a peer), each `rate` per second and
/// `burst` at once. Full buckets are forgotten once
/// [`KeyedBuckets::REMEMBERED`] keys are held; if none is full, a new key
/// waits (is refused) until one is, so the map never holds more than that.
#[derive(Debug, Clone)]
pub struct KeyedBuckets<K> {
    rate: f64,
    burst: f64,
    buckets: std::collections::HashMap<K, TokenBucket>,
}

impl<K: std::hash::Hash + Eq + Clone> KeyedBuckets<K> {
    /// Keys held before full buckets are forgotten.
    pub const REMEMBERED: usize = 1024;

    /// Buckets of `burst` tokens refilled at `rate` per second.
    pub fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate,
            burst,
            buckets: std::collections::HashMap::new(),
        }
    }

    /// Takes one token of `key`'s bucket at `now`, or tells how long until
    /// one is there.
    pub fn take(&mut self, key: &K, now: Instant) -> Result<(), Duration> {
        if self.buckets.len() >= Self::REMEMBERED && !self.buckets.contains_key(key) {
            self.buckets.retain(|_, b| !b.is_full(now));
            if self.buckets.len() >= Self::REMEMBERED {
                // Every remembered key is still being limited: a new one
                // waits for room rather than growing the map.
                return Err(Duration::from_secs_f64(1.0 / self.rate.max(1e-9))
                    .min(Duration::from_secs(3600)));
            }
        }
        let (rate, burst) = (self.rate, self.burst);
        self.buckets
            .entry(key.clone())
            .or_insert_with(|| TokenBucket::new(rate, burst))
            .take(now)
    }

    /// The rate, per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// The burst.
    pub fn burst(&self) -> f64 {
        self.burst
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(2.0, 3.0);
        for _ in 0..3 {
            assert_eq!(b.take(t0), Ok(()));
        }
        let wait = b.take(t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        assert!(!b.is_full(t0));
        assert_eq!(b.take(t0 + Duration::from_millis(500)), Ok(()));
        assert!(b.take(t0 + Duration::from_millis(500)).is_err());
        assert!(b.is_full(t0 + Duration::from_secs(2)));
        assert_eq!(
            TokenBucket::new(0.0, 0.0).take(t0),
            Err(Duration::MAX),
            "a bucket of nothing never gives"
        );
    }

    #[test]
    fn each_key_has_its_own_bucket() {
        let t0 = Instant::now();
        let mut k = KeyedBuckets::new(1.0, 2.0);
        assert!(k.take(&1000u32, t0).is_ok());
        assert!(k.take(&1000, t0).is_ok());
        assert!(k.take(&1000, t0).is_err(), "user 1000 spent its burst");
        assert!(k.take(&1001, t0).is_ok(), "user 1001 is not held up");
        assert!(k.take(&1000, t0 + Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn the_map_stays_bounded_by_the_keys_being_limited() {
        let t0 = Instant::now();
        let mut k = KeyedBuckets::new(1.0, 1.0);
        let n = KeyedBuckets::<u32>::REMEMBERED as u32;
        for key in 0..n {
            assert!(k.take(&key, t0).is_ok());
        }
        assert!(
            k.take(&n, t0).is_err(),
            "no room while every key is limited"
        );
        assert_eq!(k.buckets.len(), KeyedBuckets::<u32>::REMEMBERED);
        // Once buckets are full again they are forgotten and room returns.
        assert!(k.take(&n, t0 + Duration::from_secs(2)).is_ok());
        assert_eq!(k.buckets.len(), 1);
    }
}
