//! Config keys and values of a manifest, checked with the same checks and messages as
//! `sluice topics create` (names and labels: `sluice_proto::labels`).

use std::collections::BTreeMap;

use sluice_proto::topic::TopicConfig;

/// A config problem: the key it is about and the message.
pub(crate) struct ConfigProblem {
    pub key: String,
    /// About the value (else the key).
    pub value: bool,
    pub message: String,
}

/// Every problem of `config`, checked as `topics create` checks it; `min.insync.replicas`
/// against `replication_factor` when the manifest sets it.
pub(crate) fn config_problems(
    config: &BTreeMap<String, String>,
    replication_factor: Option<i32>,
) -> Vec<ConfigProblem> {
    let mut problems = Vec::new();
    let known: Vec<&str> = TopicConfig::keys().collect();
    for (key, value) in config {
        let mut c = TopicConfig::default();
        if let Err(e) = c.set(key, value) {
            let unknown = !known.contains(&key.as_str());
            let mut message = e.message;
            if unknown && let Some(near) = crate::schema_walk::did_you_mean(key, &known) {
                message = format!("{message}; did you mean '{near}'?");
            }
            problems.push(ConfigProblem {
                key: key.clone(),
                value: !unknown,
                message,
            });
        }
    }
    if problems.is_empty()
        && let Some(rf) = replication_factor
        && let Err(e) = TopicConfig::from_map(config, rf)
    {
        problems.push(ConfigProblem {
            key: e.key,
            value: true,
            message: e.message,
        });
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_checked_like_topics_create() {
        let c: BTreeMap<String, String> = [
            ("retention.ms".to_string(), "soon".to_string()),
            ("retention.msx".to_string(), "1".to_string()),
        ]
        .into();
        let p = config_problems(&c, None);
        assert_eq!(p.len(), 2);
        assert!(
            p[0].value && p[0].message.contains("retention.ms"),
            "{}",
            p[0].message
        );
        assert!(
            !p[1].value && p[1].message.contains("did you mean 'retention.ms'"),
            "{}",
            p[1].message
        );
        let c: BTreeMap<String, String> =
            [("min.insync.replicas".to_string(), "3".to_string())].into();
        assert_eq!(config_problems(&c, Some(2)).len(), 1);
        assert!(config_problems(&c, Some(3)).is_empty());
        assert!(config_problems(&c, None).is_empty());
    }
}
