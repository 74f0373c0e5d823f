//! How long finished workflows are kept: a default for every type and an override per type,
//! each a number of days or `forever`. Parsed once from the operator's flags; a bad value is
//! refused with the flag it came from.

use std::{collections::BTreeMap, fmt, str::FromStr, time::Duration};

use chrono::{DateTime, Utc};

use crate::store::retention::{Selection, Types};

/// How long one kind of finished workflow is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Archived and deleted this long after it finished.
    For(Duration),
    /// Never archived nor deleted.
    Forever,
}

impl Keep {
    pub const DEFAULT: Keep = Keep::For(Duration::from_secs(30 * 86_400));
}

impl FromStr for Keep {
    type Err = String;

    /// `forever`, or a count with a unit: `30d`, `12h`, `90m`, `45s`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("forever") {
            return Ok(Keep::Forever);
        }
        let bad = || {
            format!(
                "`{s}` is not a retention: give `forever` or a number with d, h, m or s (`30d`)"
            )
        };
        let unit = s.chars().last().ok_or_else(bad)?;
        let secs = match unit {
            'd' => 86_400,
            'h' => 3_600,
            'm' => 60,
            's' => 1,
            _ => return Err(bad()),
        };
        let n: u64 = s[..s.len() - 1].parse().map_err(|_| bad())?;
        if n == 0 {
            return Err(format!(
                "`{s}`: a retention of zero would delete workflows as they finish; give at least 1s, or `forever`"
            ));
        }
        Ok(Keep::For(Duration::from_secs(n * secs)))
    }
}

impl fmt::Display for Keep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Keep::Forever => f.write_str("forever"),
            Keep::For(d) if d.as_secs() % 86_400 == 0 => write!(f, "{}d", d.as_secs() / 86_400),
            Keep::For(d) => write!(f, "{}s", d.as_secs()),
        }
    }
}

/// The retention of every workflow type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub default: Keep,
    pub per_type: BTreeMap<String, Keep>,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            default: Keep::DEFAULT,
            per_type: BTreeMap::new(),
        }
    }
}

impl Policy {
    /// From `--retention` (the default) and `--retention-type` (`type=keep`, repeated or
    /// comma-separated). Errors name the flag.
    pub fn parse(default: Option<&str>, per_type: &[String]) -> Result<Self, String> {
        let mut policy = Policy::default();
        if let Some(d) = default {
            policy.default = d.parse().map_err(|e| format!("--retention: {e}"))?;
        }
        for item in per_type
            .iter()
            .flat_map(|s| s.split(','))
            .filter(|s| !s.trim().is_empty())
        {
            let (t, keep) = item.split_once('=').ok_or_else(|| {
                format!("--retention-type: `{item}` is not TYPE=RETENTION (`order=90d`, `import=forever`)")
            })?;
            let t = t.trim();
            if t.is_empty() {
                return Err(format!("--retention-type: `{item}` names no workflow type"));
            }
            let keep = keep
                .parse()
                .map_err(|e| format!("--retention-type: {t}: {e}"))?;
            if policy.per_type.insert(t.to_owned(), keep).is_some() {
                return Err(format!("--retention-type: `{t}` is given twice"));
            }
        }
        Ok(policy)
    }

    /// What is due at `now`: one selection per type with its own finite retention, and one for
    /// every other type under a finite default. `forever` types appear in no selection.
    pub fn selections(&self, now: DateTime<Utc>) -> Vec<(String, Selection)> {
        let cutoff =
            |d: Duration| now - chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
        let mut out: Vec<(String, Selection)> = self
            .per_type
            .iter()
            .filter_map(|(t, keep)| match keep {
                Keep::For(d) => Some((
                    t.clone(),
                    Selection {
                        types: Types::Only(t.clone()),
                        finished_before: cutoff(*d),
                    },
                )),
                Keep::Forever => None,
            })
            .collect();
        if let Keep::For(d) = self.default {
            out.push((
                "*".to_owned(),
                Selection {
                    types: Types::AllBut(self.per_type.keys().cloned().collect()),
                    finished_before: cutoff(d),
                },
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_policy_parses_and_names_the_bad_flag() {
        let p = Policy::parse(
            Some("7d"),
            &["order=90d,import=forever".into(), "x=12h".into()],
        )
        .unwrap();
        assert_eq!(p.default, Keep::For(Duration::from_secs(7 * 86_400)));
        assert_eq!(p.per_type["import"], Keep::Forever);
        assert_eq!(p.per_type["x"], Keep::For(Duration::from_secs(12 * 3_600)));
        assert_eq!(Policy::parse(None, &[]).unwrap(), Policy::default());

        let e = Policy::parse(Some("30"), &[]).unwrap_err();
        assert!(e.starts_with("--retention: `30`"), "{e}");
        let e = Policy::parse(None, &["order".into()]).unwrap_err();
        assert!(e.starts_with("--retention-type: `order`"), "{e}");
        let e = Policy::parse(None, &["order=0d".into()]).unwrap_err();
        assert!(e.contains("zero"), "{e}");
        let e = Policy::parse(None, &["a=1d,a=2d".into()]).unwrap_err();
        assert!(e.contains("twice"), "{e}");
    }

    #[test]
    fn retention_selections_leave_out_forever_types() {
        let now = Utc::now();
        let p =
            Policy::parse(Some("forever"), &["order=1d".into(), "keep=forever".into()]).unwrap();
        let s = p.selections(now);
        assert_eq!(s.len(), 1, "{s:?}");
        assert_eq!(s[0].1.types, Types::Only("order".into()));
        assert_eq!(s[0].1.finished_before, now - chrono::Duration::days(1));

        let p = Policy::parse(None, &["keep=forever".into()]).unwrap();
        let s = p.selections(now);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].1.types, Types::AllBut(vec!["keep".into()]));
    }
}
