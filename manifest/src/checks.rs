//! The rules a manifest must follow beyond its schema: which kinds `sluice apply` reads,
//! names (Kubernetes' and Sluice's), labels, config keys and values (the same checks and
//! messages as `sluice topics create`).

use std::collections::BTreeMap;

use sluice_proto::topic::TopicConfig;

/// Whether `s` is a Kubernetes object name (a DNS-1123 subdomain: at most 253 characters,
/// lowercase letters, digits, '-' and '.', starting and ending with a letter or digit).
pub fn is_k8s_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// A Kubernetes name for topic `topic` (lowercased, other characters as '-').
pub fn k8s_name_for(topic: &str) -> String {
    let s: String = topic
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '.' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '-',
        })
        .collect();
    let s = s.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    let s: String = s.chars().take(253).collect();
    if s.is_empty() { "topic".to_string() } else { s }
}

/// Why `key` is not a valid label or annotation key (Kubernetes' rules: an optional DNS
/// subdomain prefix and '/', then a name of 1-63 letters, digits, '-', '_', '.', starting
/// and ending with a letter or digit).
pub fn label_key_problem(key: &str) -> Option<String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix
        && (p.len() > 253 || !is_k8s_name(p))
    {
        return Some(format!(
            "the prefix '{p}' of key '{key}' must be a DNS subdomain (lowercase letters, digits, '-' and '.', at most 253 characters)"
        ));
    }
    if !is_label_name(name) {
        return Some(format!(
            "key '{key}': the name part must be 1-63 characters of letters, digits, '-', '_' and '.', starting and ending with a letter or digit"
        ));
    }
    None
}

/// Why `value` is not a valid label value (empty, or a label name).
pub fn label_value_problem(key: &str, value: &str) -> Option<String> {
    (!value.is_empty() && !is_label_name(value)).then(|| {
        format!(
            "the value '{value}' of label '{key}' must be empty or 1-63 characters of letters, digits, '-', '_' and '.', starting and ending with a letter or digit"
        )
    })
}

fn is_label_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

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
    fn kubernetes_names_and_labels() {
        assert!(is_k8s_name("orders"));
        assert!(is_k8s_name("orders.v2-eu"));
        assert!(!is_k8s_name("Orders_V2"));
        assert!(!is_k8s_name("-x"));
        assert_eq!(k8s_name_for("Orders_V2"), "orders-v2");
        assert_eq!(k8s_name_for("__x__"), "x");
        assert!(label_key_problem("app.kubernetes.io/managed-by").is_none());
        assert!(label_key_problem("team").is_none());
        assert!(label_key_problem("Bad Key").is_some());
        assert!(label_key_problem("UPPER.io/x").is_some());
        assert!(label_key_problem(&"x".repeat(64)).is_some());
        assert!(label_value_problem("team", "payments").is_none());
        assert!(label_value_problem("team", "").is_none());
        assert!(label_value_problem("team", "a b").is_some());
    }

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
