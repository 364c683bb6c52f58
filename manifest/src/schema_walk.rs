//! Checks a YAML tree against the JSON Schema generated from the manifest types, reporting
//! every mismatch (unknown field with a did-you-mean, wrong type, missing field, value out of
//! range) with its field path and position. The schema is the one source of field names
//! and types: what `sluice schema topic` prints and the CRD carries is what is checked.

use serde_json::Value as J;

use crate::yaml::{Node, Pos, Value};

/// One mismatch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Found {
    pub path: String,
    pub pos: Pos,
    pub message: String,
}

/// Every mismatch of `node` against `schema` (a root schema with `$defs`).
pub(crate) fn check(schema: &J, node: &Node, path: &str) -> Vec<Found> {
    let mut w = Walk {
        root: schema,
        found: Vec::new(),
    };
    w.node(schema, node, path);
    w.found
}

/// `path` followed by `key`, quoting keys that hold dots or slashes.
pub(crate) fn join(path: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    match (path.is_empty(), plain) {
        (true, true) => key.to_string(),
        (false, true) => format!("{path}.{key}"),
        (_, false) => format!("{path}[\"{key}\"]"),
    }
}

struct Walk<'a> {
    root: &'a J,
    found: Vec<Found>,
}

impl<'a> Walk<'a> {
    fn resolve(&self, mut schema: &'a J) -> &'a J {
        for _ in 0..16 {
            let Some(r) = schema.get("$ref").and_then(J::as_str) else {
                break;
            };
            let Some(target) = r
                .strip_prefix("#/$defs/")
                .and_then(|name| self.root.get("$defs")?.get(name))
            else {
                break;
            };
            schema = target;
        }
        schema
    }

    fn fail(&mut self, path: &str, pos: Pos, message: String) {
        self.found.push(Found {
            path: path.to_string(),
            pos,
            message,
        });
    }

    fn node(&mut self, schema: &'a J, node: &Node, path: &str) {
        let schema = self.resolve(schema);
        let J::Object(s) = schema else {
            // `true` (anything) or `false` (nothing; not generated here).
            return;
        };
        if s.get("x-kubernetes-int-or-string") == Some(&J::Bool(true)) {
            if !matches!(node.value, Value::Int(_) | Value::String(_)) {
                let hint = match node.value {
                    Value::Bool(b) => format!(" (quote it: \"{b}\")"),
                    Value::Float(_) => " (quote it)".to_string(),
                    _ => String::new(),
                };
                self.fail(
                    path,
                    node.pos,
                    format!(
                        "expected a string or an integer, found {}{hint}",
                        node.kind()
                    ),
                );
            }
            return;
        }
        if let Some(J::Array(branches)) = s.get("anyOf") {
            let fits = branches.iter().find(|b| type_fits(self.resolve(b), node));
            match fits {
                Some(b) => self.node(b, node, path),
                None => {
                    let wanted: Vec<String> =
                        branches.iter().map(|b| describe(self.resolve(b))).collect();
                    self.fail(
                        path,
                        node.pos,
                        format!("expected {}, found {}", wanted.join(" or "), node.kind()),
                    );
                }
            }
            return;
        }
        if s.contains_key("type") && !type_fits(schema, node) {
            let mut message = format!("expected {}, found {}", describe(schema), node.kind());
            if wants(schema, "string") && matches!(node.value, Value::Int(_) | Value::Bool(_)) {
                message.push_str(" (quote it to make it a string)");
            }
            self.fail(path, node.pos, message);
            return;
        }
        match &node.value {
            Value::Int(i) => self.range(s, *i, node.pos, path),
            Value::Map(entries) => self.object(s, entries, node.pos, path),
            Value::Seq(items) => {
                if let Some(item) = s.get("items") {
                    for (i, n) in items.iter().enumerate() {
                        self.node(item, n, &format!("{path}[{i}]"));
                    }
                }
            }
            _ => {}
        }
    }

    fn range(&mut self, s: &serde_json::Map<String, J>, i: i64, pos: Pos, path: &str) {
        let (mut min, mut max) = (
            s.get("minimum").and_then(J::as_i64),
            s.get("maximum").and_then(J::as_i64),
        );
        if s.get("format").and_then(J::as_str) == Some("int32") {
            min = Some(min.unwrap_or(i64::from(i32::MIN)).max(i64::from(i32::MIN)));
            max = Some(max.unwrap_or(i64::from(i32::MAX)).min(i64::from(i32::MAX)));
        }
        if let Some(m) = min
            && i < m
        {
            self.fail(path, pos, format!("must be at least {m}, found {i}"));
        } else if let Some(m) = max
            && i > m
        {
            self.fail(path, pos, format!("must be at most {m}, found {i}"));
        }
    }

    fn object(
        &mut self,
        s: &'a serde_json::Map<String, J>,
        entries: &[(String, Pos, Node)],
        pos: Pos,
        path: &str,
    ) {
        let props = s.get("properties").and_then(J::as_object);
        let additional = s.get("additionalProperties");
        for (key, kpos, child) in entries {
            let child_path = join(path, key);
            if let Some(p) = props.and_then(|p| p.get(key)) {
                self.node(p, child, &child_path);
            } else if let Some(a) = additional.filter(|a| **a != J::Bool(false)) {
                self.node(a, child, &child_path);
            } else {
                let known: Vec<&str> = props
                    .map(|p| p.keys().map(String::as_str).collect())
                    .unwrap_or_default();
                let mut message = format!("unknown field '{key}'");
                if let Some(near) = did_you_mean(key, &known) {
                    message.push_str(&format!("; did you mean '{near}'?"));
                }
                if !known.is_empty() {
                    message.push_str(&format!(" (fields here: {})", known.join(", ")));
                }
                self.fail(&child_path, *kpos, message);
            }
        }
        if let Some(J::Array(required)) = s.get("required") {
            for r in required.iter().filter_map(J::as_str) {
                if !entries.iter().any(|(k, _, _)| k == r) {
                    self.fail(&join(path, r), pos, format!("missing required field '{r}'"));
                }
            }
        }
    }
}

/// Whether `node` is of a type `schema` allows (only the `type` keyword).
fn type_fits(schema: &J, node: &Node) -> bool {
    if schema.get("x-kubernetes-int-or-string") == Some(&J::Bool(true)) {
        return matches!(node.value, Value::Int(_) | Value::String(_));
    }
    let Some(t) = schema.get("type") else {
        // A reference or an unconstrained schema: objects have properties.
        return schema.get("properties").is_none() || matches!(node.value, Value::Map(_));
    };
    let types: Vec<&str> = match t {
        J::String(s) => vec![s.as_str()],
        J::Array(a) => a.iter().filter_map(J::as_str).collect(),
        _ => return true,
    };
    types.iter().any(|t| {
        matches!(
            (*t, &node.value),
            ("null", Value::Null)
                | ("boolean", Value::Bool(_))
                | ("integer", Value::Int(_))
                | ("number", Value::Int(_) | Value::Float(_))
                | ("string", Value::String(_))
                | ("array", Value::Seq(_))
                | ("object", Value::Map(_))
        )
    })
}

fn wants(schema: &J, ty: &str) -> bool {
    match schema.get("type") {
        Some(J::String(s)) => s == ty,
        Some(J::Array(a)) => a.iter().any(|t| t.as_str() == Some(ty)),
        _ => false,
    }
}

/// A schema's type in words.
fn describe(schema: &J) -> String {
    let word = |t: &str| match t {
        "null" => "null",
        "boolean" => "a boolean",
        "integer" => "an integer",
        "number" => "a number",
        "string" => "a string",
        "array" => "a list",
        "object" => "a mapping",
        _ => "a value",
    };
    match schema.get("type") {
        Some(J::String(s)) => word(s).to_string(),
        Some(J::Array(a)) => a
            .iter()
            .filter_map(J::as_str)
            .filter(|t| *t != "null")
            .map(word)
            .collect::<Vec<_>>()
            .join(" or "),
        _ if schema.get("properties").is_some() => "a mapping".to_string(),
        _ => "a value".to_string(),
    }
}

/// The known name closest to `key`, if it is close enough to be a typo of it.
pub(crate) fn did_you_mean<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    let k = key.to_ascii_lowercase();
    known
        .iter()
        .map(|c| (edit_distance(&k, &c.to_ascii_lowercase()), *c))
        .filter(|(d, c)| *d <= (c.len() / 3).clamp(1, 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_get_the_nearest_field() {
        let known = ["partitions", "replicationFactor", "config", "topicName"];
        assert_eq!(
            did_you_mean("replicationFactr", &known),
            Some("replicationFactor")
        );
        assert_eq!(
            did_you_mean("replication_factor", &known),
            Some("replicationFactor")
        );
        assert_eq!(did_you_mean("partition", &known), Some("partitions"));
        assert_eq!(did_you_mean("retention", &known), None);
    }

    #[test]
    fn paths_quote_keys_with_dots() {
        assert_eq!(join("spec", "partitions"), "spec.partitions");
        assert_eq!(
            join("spec.config", "retention.ms"),
            "spec.config[\"retention.ms\"]"
        );
        assert_eq!(join("", "spec"), "spec");
    }
}
