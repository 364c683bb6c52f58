//! The real `sluice` binary against a real broker.

use sluice_tests::{Broker, data_dir};

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn topics_produce_consume_round_trip() {
    let (_tmp, dir) = data_dir();
    let broker = Broker::start(&dir, &[]);
    let out = broker.cli(
        &[
            "topics",
            "create",
            "orders",
            "--partitions",
            "3",
            "--config",
            "retention.ms=3600000",
        ],
        "",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("Created topic 'orders' with 3 partitions"),
        "{}",
        stdout(&out)
    );

    let out = broker.cli(&["topics", "list", "-o", "json"], "");
    let list: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(list[0]["name"], "orders");
    assert_eq!(list[0]["partitions"], 3);

    let out = broker.cli(
        &["produce", "orders", "--key-separator", ":"],
        "alice:one\nbob:two\nalice:three\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("Produced 3 records"),
        "{}",
        stderr(&out)
    );

    let out = broker.cli(
        &[
            "consume",
            "orders",
            "--from-beginning",
            "--max-messages",
            "3",
            "--timeout",
            "10s",
            "--format",
            "{key}={value}",
        ],
        "",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let mut lines: Vec<_> = stdout(&out).lines().map(String::from).collect();
    // Per key, order is kept; across partitions it is not defined.
    let alice: Vec<_> = lines
        .iter()
        .filter(|l| l.starts_with("alice="))
        .cloned()
        .collect();
    assert_eq!(alice, vec!["alice=one", "alice=three"]);
    lines.sort();
    assert_eq!(lines, vec!["alice=one", "alice=three", "bob=two"]);

    let out = broker.cli(
        &[
            "consume",
            "orders",
            "--from-beginning",
            "--timeout",
            "2s",
            "-o",
            "json",
        ],
        "",
    );
    let records: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 3);
    assert!(
        records
            .iter()
            .all(|r| r["topic"] == "orders" && r["offset"].is_i64())
    );

    let out = broker.cli(&["topics", "describe", "orders", "-o", "json"], "");
    let d: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let total: i64 = d["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["log_end_offset"].as_i64().unwrap())
        .sum();
    assert_eq!(total, 3);
    assert_eq!(d["config"]["retention.ms"], "3600000");

    let out = broker.cli(&["topics", "delete", "orders"], "");
    assert!(out.status.success(), "{}", stderr(&out));
    let out = broker.cli(&["topics", "describe", "orders"], "");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("UNKNOWN_TOPIC_OR_PARTITION"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn bad_input_fails_with_a_message_that_names_it() {
    let (_tmp, dir) = data_dir();
    let broker = Broker::start(&dir, &[]);
    let out = broker.cli(
        &["topics", "create", "t", "--config", "segment.bytes=12"],
        "",
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("INVALID_CONFIG")
            && err.contains("segment.bytes")
            && err.contains("[1024, 2147483647]"),
        "{err}"
    );

    let out = broker.cli(&["topics", "create", "t", "--partitions", "0"], "");
    assert!(
        stderr(&out).contains("INVALID_PARTITIONS"),
        "{}",
        stderr(&out)
    );

    let out = broker.cli(&["produce", "missing"], "x\n");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("unknown topic 'missing'"),
        "{}",
        stderr(&out)
    );

    broker.cli(&["topics", "create", "t"], "");
    let out = broker.cli(
        &["produce", "t", "--key-separator", ":"],
        "k:v\nno separator here\n",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("line 2 has no key separator ':'"),
        "{}",
        stderr(&out)
    );
}

/// `bench produce --warmup-records` reports the whole run and, apart, the records after the
/// warm-up (Kafka's producer-perf-test flag); a warm-up that leaves nothing is refused.
#[test]
fn bench_reports_the_steady_state_after_its_warm_up() {
    let (_tmp, dir) = data_dir();
    let broker = Broker::start(&dir, &[]);
    let out = broker.cli(
        &[
            "bench",
            "produce",
            "--topic",
            "warm",
            "--records",
            "3000",
            "--record-size",
            "100",
            "--warmup-records",
            "1000",
            "-o",
            "json",
        ],
        "",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(report["records"], 3000, "{report}");
    let steady = &report["steady_state"];
    assert_eq!(steady["warmup_records"], 1000, "{report}");
    assert_eq!(steady["records"], 2000, "{report}");
    let (p50, max) = (
        steady["latency_ms"]["p50"].as_f64().unwrap(),
        steady["latency_ms"]["max"].as_f64().unwrap(),
    );
    assert!(p50 > 0.0 && p50 <= max, "{report}");
    assert!(
        steady["seconds"].as_f64().unwrap() <= report["seconds"].as_f64().unwrap(),
        "{report}"
    );

    let out = broker.cli(
        &[
            "bench",
            "produce",
            "--topic",
            "warm",
            "--records",
            "100",
            "--warmup-records",
            "100",
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("--warmup-records 100") && err.contains("--records 100"),
        "{err}"
    );
}
