//! `sluice apply` / `sluice diff` with real manifests against real brokers.

use std::path::Path;

use sluice_tests::{Broker, Cluster, data_dir, run_cli};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn topic(name: &str, partitions: i32, rf: Option<i32>, config: &[(&str, &str)]) -> String {
    let mut s = format!(
        "apiVersion: sluice.io/v1alpha1\nkind: SluiceTopic\nmetadata:\n  name: {name}\n  labels: {{team: payments}}\nspec:\n  partitions: {partitions}\n"
    );
    if let Some(rf) = rf {
        s.push_str(&format!("  replicationFactor: {rf}\n"));
    }
    if !config.is_empty() {
        s.push_str("  config:\n");
        for (k, v) in config {
            s.push_str(&format!("    {k}: \"{v}\"\n"));
        }
    }
    s
}

/// Whether a line of `table` starts with these words (columns are padded).
fn has_row(table: &str, words: &[&str]) -> bool {
    table.lines().any(|l| {
        l.split_whitespace()
            .take(words.len())
            .eq(words.iter().copied())
    })
}

fn write(dir: &Path, name: &str, docs: &[String]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, docs.join("---\n")).unwrap();
    path.display().to_string()
}

/// A topic's partitions, factor, overrides and labels as `topics list -o json` shows them.
fn listed(address: &str, name: &str) -> Option<serde_json::Value> {
    let out = run_cli(address, &["topics", "list", "-o", "json"], "");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let all: serde_json::Value = serde_json::from_str(&text(&out.stdout)).unwrap();
    all.as_array()?.iter().find(|t| t["name"] == name).cloned()
}

fn describe(address: &str, name: &str) -> serde_json::Value {
    let out = run_cli(address, &["topics", "describe", name, "-o", "json"], "");
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_str(&text(&out.stdout)).unwrap()
}

#[test]
fn apply_creates_changes_refuses_and_prunes_as_declared() {
    let (tmp, dir) = data_dir();
    let mut broker = Broker::start(&dir, &[]);
    let addr = broker.address.clone();
    let cli = |args: &[&str]| run_cli(&addr, args, "");
    let orders = |p, cfg: &[(&str, &str)]| topic("orders", p, None, cfg);
    let f = write(
        tmp.path(),
        "topics.yaml",
        &[
            orders(3, &[("retention.ms", "3600000"), ("segment.ms", "600000")]),
            topic("clicks", 2, Some(1), &[]),
        ],
    );

    // diff before anything: changes (exit 1); apply creates both, labelled.
    let out = cli(&["diff", "-f", &f]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        has_row(&text(&out.stdout), &["orders", "create"]),
        "{}",
        text(&out.stdout)
    );
    let out = cli(&["apply", "-f", &f]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("Applied: 2 to create"),
        "{}",
        text(&out.stdout)
    );
    let d = describe(&addr, "orders");
    assert_eq!(d["partitions"].as_array().unwrap().len(), 3);
    assert_eq!(d["config"]["retention.ms"], "3600000");
    assert_eq!(d["labels"]["team"], "payments");
    assert_eq!(d["labels"]["app.kubernetes.io/managed-by"], "sluice");

    // A second apply changes nothing, and diff says so with 0.
    let out = cli(&["apply", "-f", &f]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("No changes: 2 topic(s) are as declared."),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(cli(&["diff", "-f", &f]).status.code(), Some(0));

    // A key set by hand is not the manifest's: apply leaves it alone.
    let out = cli(&[
        "topics",
        "alter",
        "orders",
        "--config",
        "max.message.bytes=2048",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // More partitions, a changed key, a removed key (back to the default): planned old -> new.
    let f2 = write(
        tmp.path(),
        "topics2.yaml",
        &[
            orders(6, &[("retention.ms", "7200000")]),
            topic("clicks", 2, Some(1), &[]),
        ],
    );
    let out = cli(&["diff", "-f", &f2, "-o", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let plan: serde_json::Value = serde_json::from_str(&text(&out.stdout)).unwrap();
    let o = &plan["topics"][0];
    assert_eq!(o["action"], "change");
    assert_eq!(o["partitions"], serde_json::json!([3, 6]));
    assert_eq!(
        o["config"],
        serde_json::json!([
            {"key": "retention.ms", "old": "3600000", "new": "7200000"},
            {"key": "segment.ms", "old": "600000"}
        ])
    );
    let out = cli(&["apply", "-f", &f2, "--dry-run"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        listed(&addr, "orders").unwrap()["partitions"],
        3,
        "--dry-run changes nothing"
    );
    let out = cli(&["apply", "-f", &f2]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let l = listed(&addr, "orders").unwrap();
    assert_eq!(l["partitions"], 6);
    let d = describe(&addr, "orders");
    assert_eq!(d["config"]["retention.ms"], "7200000");
    assert_eq!(
        d["config"]["max.message.bytes"], "2048",
        "set by hand: kept"
    );
    assert!(
        !d["overrides"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k == "segment.ms"),
        "removed from the manifest: back to the default: {d}"
    );

    // Fewer partitions: refused, with why, and nothing else in the file is applied either.
    let f3 = write(
        tmp.path(),
        "topics3.yaml",
        &[
            orders(2, &[("retention.ms", "7200000")]),
            topic("clicks", 4, Some(1), &[]),
        ],
    );
    let out = cli(&["apply", "-f", &f3]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("partitions 6 -> 2")
            && err.contains("cannot be removed")
            && err.contains("nothing was applied"),
        "{err}"
    );
    assert_eq!(
        listed(&addr, "clicks").unwrap()["partitions"],
        2,
        "the valid change waits too"
    );
    assert_eq!(cli(&["diff", "-f", &f3]).status.code(), Some(2));

    // A malformed document among good ones: every problem reported with file, document,
    // field and line; nothing applied.
    let bad = write(
        tmp.path(),
        "bad.yaml",
        &[
            topic("fresh", 1, None, &[]),
            "apiVersion: sluice.io/v1alpha1\nkind: SluiceTopic\nmetadata: {name: broken}\nspec:\n  partitions: 1\n  replicationFactr: 3\n  config:\n    retention.msx: \"1\"\n".to_string(),
            topic("other", 1, None, &[("retention.ms", "soon")]),
        ],
    );
    let out = cli(&["apply", "-f", &bad]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("bad.yaml:14:3: document 2 (broken), spec.replicationFactr: unknown field 'replicationFactr'; did you mean 'replicationFactor'?"), "{err}");
    assert!(
        err.contains("document 3 (other), spec.config[\"retention.ms\"]: invalid value 'soon'"),
        "{err}"
    );
    assert!(listed(&addr, "fresh").is_none(), "nothing applied");
    let out = cli(&["apply", "-f", &bad, "-o", "json"]);
    let e: serde_json::Value = serde_json::from_str(&text(&out.stderr)).unwrap();
    assert_eq!(e["error"]["code"], "INVALID_MANIFEST");
    assert_eq!(e["error"]["problems"][0]["line"], 14);
    let unknown_key = write(
        tmp.path(),
        "key.yaml",
        &[topic("fresh", 1, None, &[("retention.msx", "1")])],
    );
    let err = text(&cli(&["apply", "-f", &unknown_key]).stderr);
    assert!(
        err.contains("unknown topic config key 'retention.msx'")
            && err.contains("did you mean 'retention.ms'"),
        "{err}"
    );

    // Prune: only topics apply manages and the manifests no longer declare; never a topic
    // made by hand. Without a terminal to ask on, it wants --yes.
    assert!(cli(&["topics", "create", "by-hand"]).status.success());
    let only_orders = write(
        tmp.path(),
        "orders.yaml",
        &[orders(6, &[("retention.ms", "7200000")])],
    );
    let out = cli(&["diff", "-f", &only_orders, "--prune"]);
    assert!(
        has_row(&text(&out.stdout), &["clicks", "delete"]),
        "{}",
        text(&out.stdout)
    );
    let out = cli(&["apply", "-f", &only_orders, "--prune"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("add --yes"),
        "{}",
        text(&out.stderr)
    );
    assert!(listed(&addr, "clicks").is_some());
    let out = cli(&["apply", "-f", &only_orders, "--prune", "--yes"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(listed(&addr, "clicks").is_none(), "pruned");
    assert!(
        listed(&addr, "by-hand").is_some(),
        "never pruned: not managed by apply"
    );
    assert!(listed(&addr, "orders").is_some());

    // Export round trip: what export writes applies as "no changes"; a hand-made topic is
    // adopted once (the label), then unchanged.
    let out = cli(&["topics", "export"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let exported = tmp.path().join("exported.yaml");
    std::fs::write(&exported, out.stdout).unwrap();
    let exported = exported.display().to_string();
    let out = cli(&["apply", "-f", &exported]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let o = text(&out.stdout);
    assert!(
        has_row(&o, &["orders", "unchanged"]) && has_row(&o, &["by-hand", "change", "label"]),
        "{o}"
    );
    assert!(
        o.contains("app.kubernetes.io/managed-by: set sluice"),
        "{o}"
    );
    let out = cli(&["diff", "-f", &exported]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    // Standard input works too.
    let out = run_cli(
        &addr,
        &["diff", "-f", "-"],
        &std::fs::read_to_string(&exported).unwrap(),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );

    // Labels, annotations and the keys apply owns are metadata: they survive a restart.
    broker.terminate();
    broker.restart_in_place();
    let d = describe(&addr, "orders");
    assert_eq!(d["labels"]["app.kubernetes.io/managed-by"], "sluice", "{d}");
    assert_eq!(
        d["annotations"]["sluice.io/applied-config"], "max.message.bytes,retention.ms",
        "{d}"
    );
    let out = cli(&["diff", "-f", &exported]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
}

#[tokio::test]
async fn apply_changes_the_replication_factor() {
    let cluster = Cluster::start(3);
    cluster.wait_ready().await;
    let tmp = tempfile::tempdir().unwrap();
    let addr = cluster.bootstrap();
    let f = write(
        tmp.path(),
        "t.yaml",
        &[topic("orders", 3, Some(2), &[("min.insync.replicas", "2")])],
    );
    let out = run_cli(&addr, &["apply", "-f", &f], "");
    assert!(out.status.success(), "{}", text(&out.stderr));
    // A factor the cluster cannot give is refused before anything changes.
    let f = write(
        tmp.path(),
        "t.yaml",
        &[topic("orders", 3, Some(5), &[("min.insync.replicas", "2")])],
    );
    let out = run_cli(&addr, &["apply", "-f", &f], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("the cluster refuses it"),
        "{}",
        text(&out.stderr)
    );
    let f = write(
        tmp.path(),
        "t.yaml",
        &[topic("orders", 3, Some(3), &[("min.insync.replicas", "2")])],
    );
    let out = run_cli(&addr, &["apply", "-f", &f], "");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("replication factor 2 -> 3"),
        "{}",
        text(&out.stdout)
    );
    let d = describe(&addr, "orders");
    assert_eq!(d["replication_factor"], 3);
    for p in d["partitions"].as_array().unwrap() {
        assert_eq!(
            p["replicas"].as_array().unwrap().len(),
            3,
            "moved before apply returned: {p}"
        );
    }
    let out = run_cli(&addr, &["diff", "-f", &f], "");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
}
