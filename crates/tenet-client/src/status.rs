//! A host daemon's figures, for a person or a program (`tenet status`).
//!
//! [`host_status`](crate::host_status) asks the daemon on its app socket,
//! without acquiring an id; [`text`] lays the answer out as aligned
//! `name  value` lines under a heading per section (the first word of the
//! names: `messages`, `queue`, `apps`, `card`, `remote`, `service`), and
//! [`json`] as a JSON document. The names are the daemon's `/metrics`
//! names without the `tenet_` prefix; `docs/host.md` says what each means.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tenet_client::ClientError> {
//! let status = tenet_client::host_status(tenet_client::default_socket_path()).await?;
//! print!("{}", tenet_client::status::text(&status));
//! println!("routed from apps: {}", status.count("messages_routed_total", &[("ingress", "app")]));
//! # Ok(()) }
//! ```

use serde_json::{Map, Value as Json, json};

pub use tenet_proto::status::{Figure, Status, Value};

/// The section a figure belongs to: the first word of its name.
pub fn section(name: &str) -> &str {
    name.split('_').next().unwrap_or(name)
}

/// `name{key=value,...}` without the section's word: what a line shows.
fn label_of(f: &Figure) -> String {
    let s = section(&f.name);
    let mut out = f
        .name
        .strip_prefix(s)
        .and_then(|rest| rest.strip_prefix('_'))
        .unwrap_or(&f.name)
        .to_owned();
    if !f.labels.is_empty() {
        let pairs: Vec<String> = f.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        out.push('{');
        out.push_str(&pairs.join(","));
        out.push('}');
    }
    out
}

/// The figures for a person: a heading per section, then one line per
/// figure, its name indented and its value in one column:
///
/// ```text
/// messages
///   routed_total{ingress=app}         3
///   delivered_total                   6
/// queue
///   messages                          0
/// ```
pub fn text(status: &Status) -> String {
    let labels: Vec<String> = status.figures.iter().map(label_of).collect();
    let width = labels.iter().map(|l| l.chars().count()).max().unwrap_or(0);
    let mut out = String::new();
    let mut current = None;
    for (f, label) in status.figures.iter().zip(&labels) {
        let s = section(&f.name);
        if current != Some(s) {
            out.push_str(s);
            out.push('\n');
            current = Some(s);
        }
        out.push_str(&format!("  {label:<width$}  {}\n", f.value));
    }
    if status.omitted > 0 {
        out.push_str(&format!(
            "({} more figures did not fit in the answer; /metrics has them all)\n",
            status.omitted
        ));
    }
    out
}

/// The figures as JSON: `{"figures": [{"name", "labels", "value"}],
/// "omitted": N}`, a time's value in seconds.
pub fn json(status: &Status) -> Json {
    let figures: Vec<Json> = status
        .figures
        .iter()
        .map(|f| {
            let labels: Map<String, Json> = f
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), Json::String(v.clone())))
                .collect();
            let value = match f.value {
                Value::Count(n) => json!(n),
                Value::Time(d) => json!(d.as_secs_f64()),
            };
            json!({ "name": f.name, "labels": labels, "value": value })
        })
        .collect();
    json!({ "figures": figures, "omitted": status.omitted })
}

/// The status as `tenet status` prints it: [`text`], or with `json`
/// [`json`] pretty-printed.
pub fn render(s: &Status, json: bool) -> String {
    if json {
        serde_json::to_string_pretty(&self::json(s)).unwrap_or_default() + "\n"
    } else {
        text(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sample() -> Status {
        Status {
            figures: vec![
                Figure::count("messages_routed_total", &[("ingress", "app")], 3),
                Figure::count("messages_delivered_total", &[], 12),
                Figure::count("queue_messages", &[], 0),
                Figure::new(
                    "card_link_busy_seconds_total",
                    &[],
                    Value::Time(Duration::from_millis(1500)),
                ),
            ],
            omitted: 0,
        }
    }

    #[test]
    fn text_groups_by_section_and_aligns_values() {
        let t = text(&sample());
        assert_eq!(
            t,
            "messages\n\
             \x20 routed_total{ingress=app}  3\n\
             \x20 delivered_total            12\n\
             queue\n\
             \x20 messages                   0\n\
             card\n\
             \x20 link_busy_seconds_total    1.500 s\n"
        );
        let mut cut = sample();
        cut.omitted = 2;
        assert!(
            text(&cut)
                .ends_with("(2 more figures did not fit in the answer; /metrics has them all)\n")
        );
    }

    #[test]
    fn json_keeps_names_labels_and_values() {
        let j = json(&sample());
        assert_eq!(j["figures"][0]["name"], "messages_routed_total");
        assert_eq!(j["figures"][0]["labels"]["ingress"], "app");
        assert_eq!(j["figures"][0]["value"], 3);
        assert_eq!(j["figures"][3]["value"], 1.5);
        assert_eq!(j["omitted"], 0);
    }
}
