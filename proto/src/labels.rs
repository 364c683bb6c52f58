//! Labels and annotations of topics, with Kubernetes' rules (so the same manifest works
//! with `kubectl apply`), checked alike by the brokers and by `sluice apply`.

use std::collections::BTreeMap;

/// All annotations of one topic together, at most (Kubernetes' limit).
pub const MAX_ANNOTATIONS_BYTES: usize = 256 * 1024;

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

/// Why `labels` and `annotations` cannot be a topic's, naming the key.
pub fn metadata_problem(
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
) -> Option<String> {
    for (key, value) in labels {
        if let Some(p) = label_key_problem(key).or_else(|| label_value_problem(key, value)) {
            return Some(format!("label {p}"));
        }
    }
    for key in annotations.keys() {
        if let Some(p) = label_key_problem(key) {
            return Some(format!("annotation {p}"));
        }
    }
    let bytes: usize = annotations.iter().map(|(k, v)| k.len() + v.len()).sum();
    (bytes > MAX_ANNOTATIONS_BYTES).then(|| {
        format!("the annotations take {bytes} bytes, more than the {MAX_ANNOTATIONS_BYTES} allowed")
    })
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
    fn metadata_problems_name_the_key() {
        let ok: BTreeMap<String, String> = [("team".to_string(), "payments".to_string())].into();
        assert!(metadata_problem(&ok, &ok).is_none());
        let bad: BTreeMap<String, String> = [("bad key".to_string(), String::new())].into();
        assert!(metadata_problem(&bad, &ok).unwrap().contains("'bad key'"));
        let big: BTreeMap<String, String> =
            [("a".to_string(), "x".repeat(MAX_ANNOTATIONS_BYTES))].into();
        assert!(metadata_problem(&ok, &big).unwrap().contains("bytes"));
    }
}
