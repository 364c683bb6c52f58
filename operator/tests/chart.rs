//! The Helm chart, rendered here (no helm binary on these machines) with a Go-template
//! engine and the few Helm functions the chart uses, with its default values and with
//! `ci/full-values.yaml`: values checked against `values.schema.json`, every rendered object
//! checked by `kubernetes-validate --strict` (the SluiceCluster against its Rust type).

use std::path::{Path, PathBuf};

use gtmpl_value::{FuncError, Value};

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/sluice")
}

/// serde_json -> template value.
fn to_tmpl(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Nil,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::from(i),
            None => Value::from(n.as_f64().unwrap_or_default()),
        },
        serde_json::Value::String(s) => Value::String(s.clone()),
        serde_json::Value::Array(a) => Value::Array(a.iter().map(to_tmpl).collect()),
        serde_json::Value::Object(o) => {
            Value::Map(o.iter().map(|(k, v)| (k.clone(), to_tmpl(v))).collect())
        }
    }
}

/// Template value -> serde_json (for toYaml).
fn to_json(v: &Value) -> serde_json::Value {
    match v {
        Value::NoValue | Value::Nil | Value::Function(_) => serde_json::Value::Null,
        Value::Bool(b) => (*b).into(),
        Value::String(s) => s.clone().into(),
        Value::Number(n) => n
            .as_i64()
            .map(serde_json::Value::from)
            .or_else(|| n.as_f64().map(serde_json::Value::from))
            .unwrap_or_default(),
        Value::Array(a) => a.iter().map(to_json).collect(),
        Value::Map(m) | Value::Object(m) => {
            let sorted: std::collections::BTreeMap<_, _> =
                m.iter().map(|(k, v)| (k.clone(), to_json(v))).collect();
            serde_json::to_value(sorted).unwrap_or_default()
        }
    }
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::NoValue | Value::Nil => false,
        Value::Bool(b) => *b,
        Value::String(s) => !s.is_empty(),
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::Array(a) => !a.is_empty(),
        Value::Map(m) | Value::Object(m) => !m.is_empty(),
        Value::Function(_) => true,
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Helm's `default DEFAULT VALUE`.
fn default(args: &[Value]) -> Result<Value, FuncError> {
    match args {
        [d, v] => Ok(if truthy(v) { v.clone() } else { d.clone() }),
        [d] => Ok(d.clone()),
        _ => Err(FuncError::AtLeastXArgs("default".into(), 1)),
    }
}

fn quote(args: &[Value]) -> Result<Value, FuncError> {
    let s = args.iter().map(text).collect::<Vec<_>>().join(" ");
    Ok(Value::String(serde_json::Value::String(s).to_string()))
}

fn to_yaml(args: &[Value]) -> Result<Value, FuncError> {
    let [v] = args else {
        return Err(FuncError::ExactlyXArgs("toYaml".into(), 1));
    };
    let y = serde_yaml::to_string(&to_json(v)).map_err(|e| FuncError::Generic(e.to_string()))?;
    Ok(Value::String(y.trim_end().to_string()))
}

fn nindent(args: &[Value]) -> Result<Value, FuncError> {
    let [n, s] = args else {
        return Err(FuncError::ExactlyXArgs("nindent".into(), 2));
    };
    let n = match n {
        Value::Number(n) => n.as_i64().unwrap_or(0) as usize,
        _ => return Err(FuncError::UnableToConvertFromValue),
    };
    let pad = " ".repeat(n);
    let body: Vec<String> = text(s).lines().map(|l| format!("{pad}{l}")).collect();
    Ok(Value::String(format!("\n{}", body.join("\n"))))
}

/// `b` merged over `a` (maps deeply, the rest replaced), as Helm merges values files.
fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
    match (a, b) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

fn yaml_file(path: &Path) -> serde_json::Value {
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Every template rendered with `overrides` over values.yaml: the documents, parsed.
fn render(overrides: Option<&Path>) -> (serde_json::Value, Vec<serde_json::Value>) {
    let mut values = yaml_file(&chart().join("values.yaml"));
    if let Some(o) = overrides {
        merge(&mut values, yaml_file(o));
    }
    let meta = yaml_file(&chart().join("Chart.yaml"));
    let ctx = serde_json::json!({
        "Values": values,
        "Release": {"Name": "sluice", "Namespace": "data"},
        "Chart": {"Name": meta["name"], "Version": meta["version"], "AppVersion": meta["appVersion"]},
    });
    let mut docs = Vec::new();
    let mut names: Vec<PathBuf> = std::fs::read_dir(chart().join("templates"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    for path in names {
        let mut t = gtmpl::Template::default();
        t.add_funcs(&[
            ("default", default as gtmpl_value::Func),
            ("quote", quote as gtmpl_value::Func),
            ("toYaml", to_yaml as gtmpl_value::Func),
            ("nindent", nindent as gtmpl_value::Func),
        ]);
        t.parse(std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let out = t
            .render(&gtmpl::Context::from(to_tmpl(&ctx)))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for doc in out.split("\n---") {
            let v: serde_json::Value = serde_yaml::from_str(doc)
                .unwrap_or_else(|e| panic!("{}: not YAML: {e}\n{out}", path.display()));
            if !v.is_null() {
                docs.push(v);
            }
        }
    }
    (values, docs)
}

/// Runs python's jsonschema (which kubernetes-validate brings) on `values` against
/// values.schema.json.
fn schema_check(values: &serde_json::Value) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("values.json");
    std::fs::write(&path, values.to_string()).unwrap();
    let script = "import json,sys,jsonschema; jsonschema.validate(json.load(open(sys.argv[2])), json.load(open(sys.argv[1])))";
    std::process::Command::new("python3")
        .args(["-c", script])
        .arg(chart().join("values.schema.json"))
        .arg(&path)
        .output()
        .expect("python3")
}

fn check_values(values: &serde_json::Value) {
    let out = schema_check(values);
    assert!(
        out.status.success(),
        "values do not match values.schema.json: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs kubernetes-validate --strict on the core objects; returns the others.
fn validate(docs: &[serde_json::Value]) -> Vec<serde_json::Value> {
    let (custom, core): (Vec<_>, Vec<_>) = docs.iter().cloned().partition(|d| {
        let api = d["apiVersion"].as_str().unwrap_or_default();
        api.starts_with("sluice.io/") || api.starts_with("monitoring.coreos.com/")
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rendered.yaml");
    let text: String = core
        .iter()
        .map(|d| format!("---\n{}", serde_yaml::to_string(d).unwrap()))
        .collect();
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new("kubernetes-validate")
        .args(["--strict", "--quiet"])
        .arg(&path)
        .output()
        .expect("kubernetes-validate (scripts/test installs it)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    custom
}

fn kinds(docs: &[serde_json::Value]) -> Vec<String> {
    docs.iter()
        .map(|d| d["kind"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn the_chart_renders_valid_objects_with_its_default_values() {
    let (values, docs) = render(None);
    check_values(&values);
    assert_eq!(
        kinds(&docs),
        [
            "Deployment",
            "Service",
            "ClusterRole",
            "ClusterRoleBinding",
            "ServiceAccount"
        ]
    );
    assert!(validate(&docs).is_empty());
    let d = &docs[0];
    // Probes on the operator's health endpoints, the Service on its metrics port, and
    // the pod's name and namespace for the leader Lease.
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/livez");
    let env = c["env"].to_string();
    assert!(
        env.contains("POD_NAME") && env.contains("POD_NAMESPACE"),
        "{env}"
    );
    assert_eq!(docs[1]["spec"]["ports"][0]["port"], 8080);
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "ghcr.io/sluice-io/sluice:0.1.0"
    );
    assert_eq!(
        d["spec"]["template"]["spec"]["serviceAccountName"],
        "sluice"
    );
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"],
        "256Mi"
    );
    // Least privilege: status and finalizers of its own kinds, no wildcard.
    let rules = docs[2]["rules"].to_string();
    assert!(
        rules.contains("sluicetopics/status") && rules.contains("sluicetopics/finalizers"),
        "{rules}"
    );
    assert!(!rules.contains("\"*\""), "{rules}");
}

#[test]
fn the_chart_renders_every_optional_part_validly() {
    let (values, docs) = render(Some(&chart().join("ci/full-values.yaml")));
    check_values(&values);
    assert_eq!(
        kinds(&docs),
        [
            "Deployment",
            "Service",
            "ClusterRole",
            "ClusterRoleBinding",
            "ServiceAccount",
            "ServiceMonitor",
            "ServiceMonitor",
            "SluiceCluster"
        ]
    );
    let custom = validate(&docs);
    assert_eq!(
        docs[0]["spec"]["template"]["spec"]["containers"][0]["image"],
        "ghcr.io/sluice-io/sluice:0.1.0-test"
    );
    assert_eq!(docs[0]["spec"]["replicas"], 2);
    assert_eq!(docs[4]["metadata"]["name"], "sluice-op");
    assert_eq!(custom[0]["spec"]["endpoints"][0]["port"], "http");
    assert_eq!(
        custom[1]["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"],
        "sluice-operator"
    );
    let cluster: sluice_operator::SluiceCluster = serde_json::from_value(custom[2].clone())
        .unwrap_or_else(|e| panic!("the rendered SluiceCluster is not one: {e}\n{}", custom[2]));
    assert_eq!(cluster.spec.brokers, 5);
    assert_eq!(
        cluster.spec.storage.storage_class_name.as_deref(),
        Some("fast-ssd")
    );
    assert_eq!(cluster.spec.config["group_session_timeout"], "30s");
}

#[test]
fn values_the_schema_refuses_are_refused() {
    let (mut values, _) = render(None);
    values["cluster"]["brokers"] = serde_json::json!(0);
    let out = schema_check(&values);
    assert!(!out.status.success(), "brokers: 0 must be refused");
}
