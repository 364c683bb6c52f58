//! Sluice's declarative topic manifests, shared by `sluice apply`/`diff` and the Kubernetes
//! operator: the spec type ([`TopicManifest`], whose JSON Schema [`topic_schema`] is what
//! editors and the CRD validate with), and reading manifests from files with every problem
//! reported at once, each naming its file, document, field and line.
//!
//! Layout (each module uses only those above it): `yaml` (YAML documents as trees with
//! positions), `types` (the manifest types and their schema), `schema_walk` (a tree against
//! the schema), `checks` (config), this file (files, documents, problems), and `plan` (a
//! declared topic against the cluster's: what apply and the operator do).

mod checks;
pub mod plan;
mod schema_walk;
#[cfg(feature = "kube")]
pub mod status;
mod types;
mod yaml;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

pub use sluice_proto::labels::{is_k8s_name, k8s_name_for, label_key_problem, label_value_problem};
#[cfg(feature = "kube")]
pub use types::SluiceTopic;
pub use types::{
    API_VERSION, APPLIED_CONFIG_ANNOTATION, ClusterRef, ConfigValue, DeletionPolicy,
    MANAGED_BY_LABEL, MANAGED_BY_VALUE, ObjectMeta, TOPIC_KIND, TopicManifest, TopicSpec,
    topic_schema,
};
use yaml::{Node, Pos, Value};

/// Where a document came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The file as given (`-` for standard input).
    pub file: String,
    /// 1-based index of the document in its file.
    pub document: usize,
    pub line: usize,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{} (document {})",
            self.file, self.line, self.document
        )
    }
}

/// One problem found in the manifests.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    pub file: String,
    /// 1-based; 0 when the problem is about the file as a whole.
    pub document: usize,
    /// The document's `metadata.name`, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The field, e.g. `spec.config["retention.ms"]`; empty for the whole document.
    pub field: String,
    /// 1-based; 0 when unknown.
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if self.document > 0 {
            write!(f, ": document {}", self.document)?;
            if let Some(n) = &self.name {
                write!(f, " ({n})")?;
            }
        }
        if !self.field.is_empty() {
            write!(f, ", {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found; nothing is to be applied when there is any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(
            f,
            "{n} problem{} in the manifests; nothing was applied:",
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.0 {
            writeln!(f, "  {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

/// A topic manifest read, with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    pub manifest: TopicManifest,
    pub source: Source,
}

/// What was read: the topics, and documents of kinds `sluice apply` leaves to others
/// (a `SluiceCluster` is the operator's).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifests {
    pub topics: Vec<Loaded>,
    pub skipped: Vec<(Source, String)>,
}

/// The text of each input: `-` is standard input, a directory its `.yaml`, `.yml` and
/// `.json` files in name order (and its sub-directories' with `recursive`).
pub fn read_inputs(paths: &[PathBuf], recursive: bool) -> Result<Vec<(String, String)>, Problems> {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    let file_problem = |file: &Path, message: String| Problem {
        file: file.display().to_string(),
        document: 0,
        name: None,
        field: String::new(),
        line: 0,
        column: 0,
        message,
    };
    for path in paths {
        if path.as_os_str() == "-" {
            let mut text = String::new();
            match std::io::Read::read_to_string(&mut std::io::stdin(), &mut text) {
                Ok(_) => out.push(("-".to_string(), text)),
                Err(e) => problems.push(file_problem(path, format!("reading standard input: {e}"))),
            }
            continue;
        }
        let mut files = Vec::new();
        if path.is_dir() {
            if let Err(e) = list_dir(path, recursive, &mut files) {
                problems.push(file_problem(path, format!("reading the directory: {e}")));
            }
            if files.is_empty() && problems.is_empty() {
                problems.push(file_problem(
                    path,
                    format!(
                        "no .yaml, .yml or .json files in this directory{}",
                        if recursive {
                            " or below"
                        } else {
                            " (-R reads sub-directories)"
                        }
                    ),
                ));
            }
        } else {
            files.push(path.clone());
        }
        for f in files {
            match std::fs::read_to_string(&f) {
                Ok(text) => out.push((f.display().to_string(), text)),
                Err(e) => problems.push(file_problem(&f, format!("cannot read it: {e}"))),
            }
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(Problems(problems))
    }
}

fn list_dir(dir: &Path, recursive: bool, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for p in entries {
        if p.is_dir() {
            if recursive {
                list_dir(&p, recursive, out)?;
            }
        } else if p
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
        {
            out.push(p);
        }
    }
    Ok(())
}

/// Fields Kubernetes adds to an object's metadata; accepted and ignored.
const K8S_METADATA: &[&str] = &[
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "finalizers",
    "ownerReferences",
    "generateName",
    "selfLink",
];

/// Reads every document of every `(file, text)`, checking all of them; the topics when
/// there is no problem anywhere, else every problem.
pub fn parse(inputs: &[(String, String)]) -> Result<Manifests, Problems> {
    let schema = topic_schema();
    let mut out = Manifests::default();
    let mut problems = Vec::new();
    let mut seen: BTreeMap<String, Source> = BTreeMap::new();
    for (file, text) in inputs {
        let docs = match yaml::documents(text) {
            Ok(d) => d,
            Err(e) => {
                problems.push(Problem {
                    file: file.clone(),
                    document: 0,
                    name: None,
                    field: String::new(),
                    line: e.pos.line,
                    column: e.pos.column,
                    message: format!("not valid YAML: {}", e.message),
                });
                continue;
            }
        };
        for (i, doc) in docs.iter().enumerate() {
            let mut ctx = Doc {
                file,
                document: i + 1,
                name: None,
                problems: &mut problems,
            };
            // A list (`kubectl get -o yaml` of several) holds its documents in `items`.
            if doc.get("kind").and_then(Node::as_str) == Some("List") {
                match doc.get("items").map(|n| &n.value) {
                    Some(Value::Seq(items)) => {
                        for (j, item) in items.iter().enumerate() {
                            ctx.name = None;
                            one(
                                &mut ctx,
                                &schema,
                                item,
                                &format!("items[{j}]"),
                                &mut out,
                                &mut seen,
                            );
                        }
                    }
                    _ => ctx.problem(
                        "items",
                        doc.pos,
                        "a List needs its documents in 'items'".into(),
                    ),
                }
                continue;
            }
            one(&mut ctx, &schema, doc, "", &mut out, &mut seen);
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(Problems(problems))
    }
}

/// The document being read, to report against.
struct Doc<'a> {
    file: &'a str,
    document: usize,
    name: Option<String>,
    problems: &'a mut Vec<Problem>,
}

impl Doc<'_> {
    fn problem(&mut self, field: &str, pos: Pos, message: String) {
        self.problems.push(Problem {
            file: self.file.to_string(),
            document: self.document,
            name: self.name.clone(),
            field: field.to_string(),
            line: pos.line,
            column: pos.column,
            message,
        });
    }
}

/// Reads one document (at `prefix` inside its file's document).
fn one(
    ctx: &mut Doc<'_>,
    schema: &serde_json::Value,
    doc: &Node,
    prefix: &str,
    out: &mut Manifests,
    seen: &mut BTreeMap<String, Source>,
) {
    let field = |f: &str| {
        if prefix.is_empty() {
            f.to_string()
        } else {
            format!("{prefix}.{f}")
        }
    };
    let source = Source {
        file: ctx.file.to_string(),
        document: ctx.document,
        line: doc.pos.line,
    };
    let Value::Map(_) = doc.value else {
        ctx.problem(
            prefix,
            doc.pos,
            format!("expected a mapping (a manifest), found {}", doc.kind()),
        );
        return;
    };
    let meta = doc.get("metadata");
    ctx.name = meta
        .and_then(|m| m.get("name"))
        .and_then(Node::as_str)
        .map(str::to_string);
    match doc.get("kind").map(|k| (k, k.as_str())) {
        None => {
            ctx.problem(
                prefix,
                doc.pos,
                format!("missing required field 'kind' (sluice apply reads kind: {TOPIC_KIND})"),
            );
            return;
        }
        Some((_, Some(TOPIC_KIND))) => {}
        Some((_, Some(kind @ "SluiceCluster"))) => {
            out.skipped.push((source, kind.to_string()));
            return;
        }
        Some((k, other)) => {
            let found = other.map_or_else(|| k.kind().to_string(), |o| format!("'{o}'"));
            let mut message =
                format!("kind {found} is not one sluice apply reads; it reads kind: {TOPIC_KIND}");
            if let Some(near) = other.and_then(|o| schema_walk::did_you_mean(o, &[TOPIC_KIND])) {
                message =
                    format!("kind {found} is not one sluice apply reads; did you mean '{near}'?");
            }
            ctx.problem(&field("kind"), k.pos, message);
            return;
        }
    }
    // What Kubernetes adds is accepted and left out.
    let mut doc = doc.clone();
    if let Value::Map(entries) = &mut doc.value {
        entries.retain(|(k, _, _)| k != "status");
        for (k, _, n) in entries.iter_mut() {
            if k == "metadata"
                && let Value::Map(m) = &mut n.value
            {
                m.retain(|(k, _, _)| !K8S_METADATA.contains(&k.as_str()));
            }
        }
    }
    let found = schema_walk::check(schema, &doc, prefix);
    let schema_ok = found.is_empty();
    for f in found {
        ctx.problem(&f.path, f.pos, f.message);
    }
    if let Some(v) = doc.get("apiVersion")
        && v.as_str() != Some(API_VERSION)
    {
        let shown = v
            .as_str()
            .map_or_else(|| v.kind().to_string(), |s| format!("'{s}'"));
        ctx.problem(
            &field("apiVersion"),
            v.pos,
            format!("apiVersion {shown} is not one sluice apply reads; use {API_VERSION}"),
        );
    }
    if !schema_ok {
        return;
    }
    let manifest: TopicManifest = match serde_json::from_value(doc.to_json()) {
        Ok(m) => m,
        Err(e) => {
            ctx.problem(
                prefix,
                doc.pos,
                format!("cannot be read as a {TOPIC_KIND}: {e}"),
            );
            return;
        }
    };
    let at = |path: &[&str]| -> Pos {
        let mut node = &doc;
        for p in path {
            match node.get(p) {
                Some(n) => node = n,
                None => break,
            }
        }
        node.pos
    };
    let key_pos = |path: &[&str], key: &str| -> Pos {
        let mut node = &doc;
        for p in path {
            match node.get(p) {
                Some(n) => node = n,
                None => return node.pos,
            }
        }
        match &node.value {
            Value::Map(entries) => entries
                .iter()
                .find(|(k, _, _)| k == key)
                .map_or(node.pos, |(_, p, _)| *p),
            _ => node.pos,
        }
    };
    // Names: Kubernetes' for metadata.name, Sluice's for the topic.
    let meta_name = &manifest.metadata.name;
    if !is_k8s_name(meta_name) {
        let hint = if manifest.spec.topic_name.is_none() {
            format!(
                "; name it '{}' and set spec.topicName: {meta_name}",
                k8s_name_for(meta_name)
            )
        } else {
            String::new()
        };
        ctx.problem(&field("metadata.name"), at(&["metadata", "name"]), format!("'{meta_name}' is not a Kubernetes name (lowercase letters, digits, '-' and '.', at most 253 characters), so kubectl would refuse this file{hint}"));
    }
    let topic = manifest.topic_name().to_string();
    if let Err(e) = sluice_proto::topic::validate_topic_name(&topic) {
        let (f, p) = if manifest.spec.topic_name.is_some() {
            ("spec.topicName", at(&["spec", "topicName"]))
        } else {
            ("metadata.name", at(&["metadata", "name"]))
        };
        ctx.problem(&field(f), p, e);
    }
    for (key, value) in &manifest.metadata.labels {
        let f = schema_walk::join(&field("metadata.labels"), key);
        if let Some(m) = label_key_problem(key) {
            ctx.problem(&f, key_pos(&["metadata", "labels"], key), m);
        } else if let Some(m) = label_value_problem(key, value) {
            ctx.problem(&f, at(&["metadata", "labels", key]), m);
        }
    }
    for key in manifest.metadata.annotations.keys() {
        if let Some(m) = label_key_problem(key) {
            let f = schema_walk::join(&field("metadata.annotations"), key);
            ctx.problem(&f, key_pos(&["metadata", "annotations"], key), m);
        }
    }
    for p in checks::config_problems(&manifest.config(), manifest.spec.replication_factor) {
        let f = schema_walk::join(&field("spec.config"), &p.key);
        let pos = if p.value {
            at(&["spec", "config", &p.key])
        } else {
            key_pos(&["spec", "config"], &p.key)
        };
        ctx.problem(&f, pos, p.message);
    }
    if let Some(first) = seen.get(&topic) {
        ctx.problem(
            &field("metadata.name"),
            at(&["metadata", "name"]),
            format!("topic '{topic}' is declared twice; first at {first}"),
        );
        return;
    }
    seen.insert(topic, source.clone());
    out.topics.push(Loaded { manifest, source });
}

#[cfg(test)]
mod tests;
