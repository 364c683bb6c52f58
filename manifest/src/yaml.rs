//! YAML documents as trees that remember where each node was (line and column), so every
//! problem can point at its line. Scalars are typed by the YAML 1.2 core schema (quoted
//! scalars are always strings); anchors and aliases are resolved.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// A position in a file, both 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Pos {
    pub line: usize,
    pub column: usize,
}

impl From<Marker> for Pos {
    fn from(m: Marker) -> Self {
        // yaml-rust2 counts lines from 1 and columns from 0.
        Pos {
            line: m.line(),
            column: m.col() + 1,
        }
    }
}

/// One YAML node.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    String(String),
    Seq(Vec<Node>),
    /// Keys in the order written, each with its own position.
    Map(Vec<(String, Pos, Node)>),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub pos: Pos,
    pub value: Value,
}

impl Node {
    /// What kind of value this is, in the words errors use.
    pub(crate) fn kind(&self) -> &'static str {
        match self.value {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::String(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    pub(crate) fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(entries) => entries.iter().find(|(k, _, _)| k == key).map(|(_, _, n)| n),
            _ => None,
        }
    }

    pub(crate) fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The node as JSON, for deserializing into the spec types once it is known valid.
    pub(crate) fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Value::String(s) => J::String(s.clone()),
            Value::Seq(items) => J::Array(items.iter().map(Node::to_json).collect()),
            Value::Map(entries) => J::Object(
                entries
                    .iter()
                    .map(|(k, _, n)| (k.clone(), n.to_json()))
                    .collect(),
            ),
        }
    }
}

/// A problem in the YAML itself (it cannot be read as a tree).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

/// Every document of `text`, each as the position of its start and its root node; empty
/// documents (a stray `---`) are left out.
pub(crate) fn documents(text: &str) -> Result<Vec<Node>, SyntaxError> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text);
    if let Err(e) = parser.load(&mut builder, true) {
        return Err(SyntaxError {
            pos: (*e.marker()).into(),
            message: e.info().to_string(),
        });
    }
    if let Some(e) = builder.error {
        return Err(e);
    }
    Ok(builder
        .docs
        .into_iter()
        .filter(|d| d.value != Value::Null)
        .collect())
}

/// An open collection while its events arrive.
#[derive(Debug)]
enum Open {
    Seq(Pos, usize, Vec<Node>),
    /// Entries so far, and a key read whose value has not come yet.
    Map(Pos, usize, Vec<(String, Pos, Node)>, Option<(String, Pos)>),
}

#[derive(Debug, Default)]
struct Builder {
    stack: Vec<Open>,
    docs: Vec<Node>,
    anchors: HashMap<usize, Node>,
    error: Option<SyntaxError>,
}

impl Builder {
    fn fail(&mut self, pos: Pos, message: String) {
        self.error.get_or_insert(SyntaxError { pos, message });
    }

    /// A complete node: into the collection that is open, or a document of its own.
    fn push(&mut self, node: Node, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => self.docs.push(node),
            Some(Open::Seq(_, _, items)) => items.push(node),
            Some(Open::Map(_, _, entries, key)) => match key.take() {
                None => {
                    // A key: only scalars make sense as field names here.
                    let name = match &node.value {
                        Value::String(s) => s.clone(),
                        Value::Int(i) => i.to_string(),
                        Value::Bool(b) => b.to_string(),
                        Value::Float(f) => f.to_string(),
                        Value::Null => "null".to_string(),
                        Value::Seq(_) | Value::Map(_) => {
                            let pos = node.pos;
                            self.fail(
                                pos,
                                "a mapping key must be a plain value, not a list or mapping".into(),
                            );
                            return;
                        }
                    };
                    if entries.iter().any(|(k, _, _)| *k == name) {
                        let pos = node.pos;
                        self.fail(
                            pos,
                            format!("key '{name}' appears twice in the same mapping"),
                        );
                        return;
                    }
                    *key = Some((name, node.pos));
                }
                Some((k, kpos)) => entries.push((k, kpos, node)),
            },
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.error.is_some() {
            return;
        }
        let pos = Pos::from(mark);
        match ev {
            Event::Scalar(text, style, anchor, _tag) => {
                let value = if style == TScalarStyle::Plain {
                    plain(&text)
                } else {
                    Value::String(text)
                };
                self.push(Node { pos, value }, anchor);
            }
            Event::SequenceStart(anchor, _) => self.stack.push(Open::Seq(pos, anchor, Vec::new())),
            Event::MappingStart(anchor, _) => {
                self.stack.push(Open::Map(pos, anchor, Vec::new(), None))
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match self.stack.pop() {
                    Some(Open::Seq(p, a, items)) => (
                        Node {
                            pos: p,
                            value: Value::Seq(items),
                        },
                        a,
                    ),
                    Some(Open::Map(p, a, entries, _)) => (
                        Node {
                            pos: p,
                            value: Value::Map(entries),
                        },
                        a,
                    ),
                    None => return,
                };
                self.push(node, anchor);
            }
            Event::Alias(id) => match self.anchors.get(&id).cloned() {
                Some(mut node) => {
                    node.pos = pos;
                    self.push(node, 0);
                }
                None => self.fail(pos, "an alias to an anchor that is not defined".into()),
            },
            Event::DocumentStart => self.anchors.clear(),
            Event::DocumentEnd | Event::StreamStart | Event::StreamEnd | Event::Nothing => {}
        }
    }
}

/// A plain scalar by the YAML 1.2 core schema.
fn plain(s: &str) -> Value {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    let int = if let Some(h) = s.strip_prefix("0x") {
        i64::from_str_radix(h, 16).ok()
    } else if let Some(o) = s.strip_prefix("0o") {
        i64::from_str_radix(o, 8).ok()
    } else if s
        .strip_prefix(['-', '+'])
        .unwrap_or(s)
        .chars()
        .all(|c| c.is_ascii_digit())
    {
        s.parse().ok()
    } else {
        None
    };
    if let Some(i) = int {
        return Value::Int(i);
    }
    let looks_numeric = s.chars().all(|c| c.is_ascii_digit() || "+-.eE".contains(c))
        && s.chars().any(|c| c.is_ascii_digit());
    if looks_numeric && let Ok(f) = s.parse::<f64>() {
        return Value::Float(f);
    }
    match s {
        ".inf" | ".Inf" | ".INF" | "+.inf" => Value::Float(f64::INFINITY),
        "-.inf" | "-.Inf" | "-.INF" => Value::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => Value::Float(f64::NAN),
        _ => Value::String(s.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_know_their_line_and_column() {
        let docs = documents("a: 1\nb:\n  c: 'x'\n---\n- true\n").unwrap();
        assert_eq!(docs.len(), 2);
        let a = docs[0].get("a").unwrap();
        assert_eq!(a.value, Value::Int(1));
        assert_eq!(a.pos, Pos { line: 1, column: 4 });
        let c = docs[0].get("b").unwrap().get("c").unwrap();
        assert_eq!(c.value, Value::String("x".into()));
        assert_eq!(c.pos, Pos { line: 3, column: 6 });
        let Value::Map(entries) = &docs[0].value else {
            panic!()
        };
        assert_eq!(entries[1].1, Pos { line: 2, column: 1 });
        assert_eq!(
            docs[1].value,
            Value::Seq(vec![Node {
                pos: Pos { line: 5, column: 3 },
                value: Value::Bool(true)
            }])
        );
    }

    #[test]
    fn quoted_scalars_are_strings_and_plain_ones_are_typed() {
        let d = &documents("a: \"12\"\nb: 12\nc: 1.5\nd: yes\ne: ~\nf: -3\n").unwrap()[0];
        assert_eq!(d.get("a").unwrap().value, Value::String("12".into()));
        assert_eq!(d.get("b").unwrap().value, Value::Int(12));
        assert_eq!(d.get("c").unwrap().value, Value::Float(1.5));
        // YAML 1.2: `yes` is a string (Kubernetes' YAML 1.1 would say boolean).
        assert_eq!(d.get("d").unwrap().value, Value::String("yes".into()));
        assert_eq!(d.get("e").unwrap().value, Value::Null);
        assert_eq!(d.get("f").unwrap().value, Value::Int(-3));
    }

    #[test]
    fn empty_documents_are_skipped_and_aliases_resolved() {
        let docs = documents("---\n---\nx: &a {k: v}\ny: *a\n---\n").unwrap();
        assert_eq!(docs.len(), 1);
        assert_eq!(
            docs[0].get("y").unwrap().get("k").unwrap().value,
            Value::String("v".into())
        );
    }

    #[test]
    fn syntax_errors_and_duplicate_keys_have_a_position() {
        let e = documents("a: 1\nb: [1, 2\n").unwrap_err();
        assert!(e.pos.line >= 2, "{e:?}");
        let e = documents("a: 1\nb: 2\na: 3\n").unwrap_err();
        assert_eq!(e.pos.line, 3, "{e:?}");
        assert!(e.message.contains("'a' appears twice"), "{e:?}");
    }
}
