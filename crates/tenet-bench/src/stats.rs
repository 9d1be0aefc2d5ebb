//! Summaries of measured times, as the scenarios report them.

use std::time::Duration;

/// Mean, median and 99th percentile of a set of times.
pub(crate) struct Summary {
    pub(crate) mean: Duration,
    pub(crate) p50: Duration,
    pub(crate) p99: Duration,
}

/// The [`Summary`] of `v` (not empty).
pub(crate) fn summarize(mut v: Vec<Duration>) -> Summary {
    v.sort();
    let n = v.len().max(1);
    Summary {
        mean: v.iter().sum::<Duration>() / n as u32,
        p50: v[v.len() / 2],
        p99: v[(v.len() * 99 / 100).min(v.len() - 1)],
    }
}

/// `d` in microseconds.
pub(crate) fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// A markdown table of round trips, each p50 also as a multiple of the
/// first row's (the baseline), with the same figures as JSON.
pub(crate) fn rtt_table(rows: &[(&str, &Summary)]) -> (String, serde_json::Value) {
    let base = rows[0].1.p50.as_secs_f64();
    let mut md = String::from(
        "| round trip | mean us | p50 us | p99 us | p50 ratio |\n|---|---:|---:|---:|---:|\n",
    );
    let mut json = Vec::new();
    for (name, s) in rows {
        md.push_str(&format!(
            "| {name} | {:.1} | {:.1} | {:.1} | {:.2}x |\n",
            us(s.mean),
            us(s.p50),
            us(s.p99),
            s.p50.as_secs_f64() / base
        ));
        json.push(serde_json::json!({
            "name": name,
            "mean_us": us(s.mean),
            "p50_us": us(s.p50),
            "p99_us": us(s.p99),
            "p50_ratio": s.p50.as_secs_f64() / base,
        }));
    }
    (md, serde_json::Value::Array(json))
}
