//! Rule guards from the configuration: match on the header and the ingress
//! path, then allow, drop, log or rate-limit.
//!
//! Rules are checked in order. `allow` passes the message and ends the rule
//! list; `drop` drops it; `log` records a note and goes on; `rate-limit`
//! drops the message when the rule's token bucket is empty and otherwise
//! goes on. A message no rule stops passes.
//!
//! ```toml
//! [[guard.rules]]
//! name = "limit-remote-echo"
//! ingress = "remote"          # app | card | remote | internal | any (default)
//! mtype = "echo-request"      # also: src, dst (DOMAIN:PORT), src_domain, dst_domain (hex)
//! action = "rate-limit"       # allow | drop | log | rate-limit
//! rate = 100.0                # tokens per second (rate-limit only)
//! burst = 20                  # bucket size (rate-limit only)
//! ```

use crate::bucket::TokenBucket;
use std::time::Instant;

use serde::Deserialize;
use tenet_proto::{Domain, EntityId, Filter, Header, Mtype};

use crate::guard::{Guard, GuardContext, Ingress, Verdict};

/// A rule as written in the config file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Name used in logs; defaults to `rule-N`.
    pub name: Option<String>,
    /// Ingress path to match: `app`, `card`, `remote`, `internal` or `any`.
    pub ingress: Option<String>,
    /// Exact sender, `DOMAIN:PORT`.
    pub src: Option<String>,
    /// Exact destination, `DOMAIN:PORT`.
    pub dst: Option<String>,
    /// Sender's domain, 24 hex digits.
    pub src_domain: Option<String>,
    /// Destination's domain, 24 hex digits.
    pub dst_domain: Option<String>,
    /// Mtype name or hex.
    pub mtype: Option<String>,
    /// `allow`, `drop`, `log` or `rate-limit`.
    pub action: String,
    /// Tokens per second, for `rate-limit`.
    pub rate: Option<f64>,
    /// Bucket size, for `rate-limit`; defaults to the rate rounded up.
    pub burst: Option<u32>,
}

/// A rule spec that does not make sense, naming the rule and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("guard rule {rule}: {field}: {detail}")]
pub struct RuleError {
    /// The rule's name or position.
    pub rule: String,
    /// The offending field.
    pub field: &'static str,
    /// What is wrong.
    pub detail: String,
}

/// What a matching rule does.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Pass and stop checking rules.
    Allow,
    /// Drop.
    Drop,
    /// Record a note and go on.
    Log,
    /// Drop when the bucket is empty, otherwise go on.
    RateLimit {
        /// Tokens per second.
        rate: f64,
        /// Bucket size.
        burst: f64,
    },
}

/// A checked rule.
#[derive(Debug, Clone)]
pub struct Rule {
    name: String,
    ingress: Option<Ingress>,
    filter: Filter,
    action: Action,
    /// The rate limit's bucket (`rate-limit` only).
    bucket: Option<TokenBucket>,
}

impl Rule {
    /// Checks a spec; `index` names unnamed rules.
    pub fn from_spec(spec: &RuleSpec, index: usize) -> Result<Self, RuleError> {
        let name = spec.name.clone().unwrap_or_else(|| format!("rule-{index}"));
        let err = |field, detail: String| RuleError {
            rule: name.clone(),
            field,
            detail,
        };
        let ingress = match spec.ingress.as_deref() {
            None | Some("any") => None,
            Some("app") => Some(Ingress::App),
            Some("card") => Some(Ingress::Card),
            Some("remote") => Some(Ingress::Remote),
            Some("internal") => Some(Ingress::Internal),
            Some(other) => {
                return Err(err(
                    "ingress",
                    format!("{other:?} is not one of app, card, remote, internal, any"),
                ));
            }
        };
        let id = |field, v: &Option<String>| -> Result<Option<EntityId>, RuleError> {
            v.as_deref()
                .map(|s| s.parse().map_err(|e| err(field, format!("{e}"))))
                .transpose()
        };
        let dom = |field, v: &Option<String>| -> Result<Option<Domain>, RuleError> {
            v.as_deref()
                .map(|s| s.parse().map_err(|e| err(field, format!("{e}"))))
                .transpose()
        };
        let filter = Filter {
            src: id("src", &spec.src)?,
            dst: id("dst", &spec.dst)?,
            src_domain: dom("src_domain", &spec.src_domain)?,
            dst_domain: dom("dst_domain", &spec.dst_domain)?,
            mtype: spec
                .mtype
                .as_deref()
                .map(|s| s.parse::<Mtype>().map_err(|e| err("mtype", e.to_string())))
                .transpose()?,
        };
        let action = match spec.action.as_str() {
            "allow" => Action::Allow,
            "drop" => Action::Drop,
            "log" => Action::Log,
            "rate-limit" => {
                let rate = spec
                    .rate
                    .ok_or_else(|| err("rate", "rate-limit needs a rate (per second)".into()))?;
                if !(rate.is_finite() && rate > 0.0) {
                    return Err(err("rate", format!("{rate} is not a positive number")));
                }
                let burst = f64::from(spec.burst.unwrap_or(rate.ceil().min(1e9) as u32).max(1));
                Action::RateLimit { rate, burst }
            }
            other => {
                return Err(err(
                    "action",
                    format!("{other:?} is not one of allow, drop, log, rate-limit"),
                ));
            }
        };
        if !matches!(action, Action::RateLimit { .. })
            && (spec.rate.is_some() || spec.burst.is_some())
        {
            return Err(err(
                "rate",
                "rate and burst belong to action = \"rate-limit\"".into(),
            ));
        }
        let bucket = match action {
            Action::RateLimit { rate, burst } => Some(TokenBucket::new(rate, burst)),
            _ => None,
        };
        Ok(Self {
            name,
            ingress,
            filter,
            action,
            bucket,
        })
    }

    fn matches(&self, ingress: Ingress, h: &Header) -> bool {
        self.ingress.is_none_or(|i| i == ingress) && self.filter.matches(h)
    }

    fn take_token(&mut self, now: Instant) -> bool {
        self.bucket.as_mut().is_none_or(|b| b.take(now).is_ok())
    }
}

/// The guard made of the config's rules.
#[derive(Debug, Clone, Default)]
pub struct RuleGuard {
    rules: Vec<Rule>,
}

impl RuleGuard {
    /// Checks every spec; the first bad one is the error.
    pub fn from_specs(specs: &[RuleSpec]) -> Result<Self, RuleError> {
        let rules = specs
            .iter()
            .enumerate()
            .map(|(i, s)| Rule::from_spec(s, i))
            .collect::<Result<_, _>>()?;
        Ok(Self { rules })
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// True if there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

impl Guard for RuleGuard {
    fn name(&self) -> &str {
        "rules"
    }

    fn check(&mut self, _cx: &GuardContext, ingress: Ingress, h: &Header, now: Instant) -> Verdict {
        let mut notes = Vec::new();
        for r in &mut self.rules {
            if !r.matches(ingress, h) {
                continue;
            }
            match r.action {
                Action::Allow => break,
                Action::Drop => return Verdict::Drop(format!("rule {} drops it", r.name)),
                Action::Log => notes.push(format!(
                    "rule {}: {} {} -> {} {}",
                    r.name,
                    ingress.name(),
                    h.src,
                    h.dst,
                    h.mtype
                )),
                Action::RateLimit { .. } => {
                    if !r.take_token(now) {
                        return Verdict::Drop(format!("rule {} rate limit exceeded", r.name));
                    }
                }
            }
        }
        if notes.is_empty() {
            Verdict::Pass
        } else {
            Verdict::Note(notes.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tenet_proto::Port;

    #[derive(Deserialize)]
    struct Doc {
        rules: Vec<RuleSpec>,
    }

    fn guard(toml_text: &str) -> Result<RuleGuard, RuleError> {
        let d: Doc = toml::from_str(toml_text).unwrap();
        RuleGuard::from_specs(&d.rules)
    }

    fn h(src_d: u8, dst_d: u8, m: Mtype) -> Header {
        Header {
            src: EntityId::new(Domain::new([src_d; 12]), Port::new(1)),
            dst: EntityId::new(Domain::new([dst_d; 12]), Port::new(0)),
            mtype: m,
        }
    }

    #[test]
    fn drop_rule_matches_mtype_and_ingress_only() {
        let mut g = guard(
            r#"
            [[rules]]
            ingress = "remote"
            mtype = "echo-request"
            action = "drop"
        "#,
        )
        .unwrap();
        let cx = GuardContext::default();
        let now = Instant::now();
        let echo = h(2, 1, Mtype::ECHO_REQUEST);
        assert!(
            matches!(g.check(&cx, Ingress::Remote, &echo, now), Verdict::Drop(r) if r.contains("rule-0"))
        );
        assert_eq!(g.check(&cx, Ingress::App, &echo, now), Verdict::Pass);
        assert_eq!(
            g.check(&cx, Ingress::Remote, &h(2, 1, Mtype::ECHO_REPLY), now),
            Verdict::Pass
        );
    }

    #[test]
    fn allow_before_drop_wins_and_log_notes() {
        let d1 = Domain::new([1; 12]);
        let mut g = guard(&format!(
            r#"
            [[rules]]
            name = "watch"
            action = "log"
            [[rules]]
            src_domain = "{d1}"
            action = "allow"
            [[rules]]
            action = "drop"
        "#
        ))
        .unwrap();
        let cx = GuardContext::default();
        let now = Instant::now();
        assert!(
            matches!(g.check(&cx, Ingress::App, &h(1, 3, Mtype(9)), now), Verdict::Note(n) if n.contains("watch"))
        );
        assert!(matches!(
            g.check(&cx, Ingress::App, &h(2, 3, Mtype(9)), now),
            Verdict::Drop(_)
        ));
    }

    #[test]
    fn rate_limit_refills_with_time() {
        let mut g = guard(
            r#"
            [[rules]]
            action = "rate-limit"
            rate = 10.0
            burst = 2
        "#,
        )
        .unwrap();
        let cx = GuardContext::default();
        let t0 = Instant::now();
        let m = h(2, 1, Mtype(9));
        assert_eq!(g.check(&cx, Ingress::Remote, &m, t0), Verdict::Pass);
        assert_eq!(g.check(&cx, Ingress::Remote, &m, t0), Verdict::Pass);
        assert!(matches!(
            g.check(&cx, Ingress::Remote, &m, t0),
            Verdict::Drop(_)
        ));
        // 100 ms at 10/s refills one token.
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(g.check(&cx, Ingress::Remote, &m, t1), Verdict::Pass);
        assert!(matches!(
            g.check(&cx, Ingress::Remote, &m, t1),
            Verdict::Drop(_)
        ));
    }

    #[test]
    fn bad_specs_name_rule_and_field() {
        let e = guard("[[rules]]\nname = \"x\"\naction = \"explode\"").unwrap_err();
        assert_eq!((e.rule.as_str(), e.field), ("x", "action"));
        let e = guard("[[rules]]\naction = \"rate-limit\"").unwrap_err();
        assert_eq!(e.field, "rate");
        let e = guard("[[rules]]\naction = \"drop\"\nsrc = \"nope\"").unwrap_err();
        assert_eq!(e.field, "src");
        let e = guard("[[rules]]\naction = \"drop\"\ningress = \"moon\"").unwrap_err();
        assert_eq!(e.field, "ingress");
        let e = guard("[[rules]]\naction = \"drop\"\nrate = 3.0").unwrap_err();
        assert_eq!(e.field, "rate");
        let e = guard("[[rules]]\naction = \"rate-limit\"\nrate = -1.0").unwrap_err();
        assert_eq!(e.field, "rate");
    }
}
