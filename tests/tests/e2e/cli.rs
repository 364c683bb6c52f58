//! The real `sluice` binary against a real broker.

use std::time::Duration;

use nix::sys::signal::Signal;
use sluice_tests::{
    Broker, CliProcess, Cluster, data_dir, free_port, run_cli, unread_bytes_at, wait_until,
};

/// How long a CLI process may take to do what a test waits for.
const CLI_DEADLINE: Duration = Duration::from_secs(30);

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

/// Records stored in `topic` (the sum of its partitions' high watermarks).
fn stored(broker: &Broker, topic: &str) -> i64 {
    let out = broker.cli(&["topics", "describe", topic, "-o", "json"], "");
    serde_json::from_str::<serde_json::Value>(&stdout(&out))
        .ok()
        .and_then(|d| {
            d["partitions"]
                .as_array()?
                .iter()
                .map(|p| p["high_watermark"].as_i64())
                .sum()
        })
        .unwrap_or(0)
}

/// The records produced and not acknowledged, from the summary line on stderr.
fn summary_counts(stderr: &str) -> Option<(u64, u64)> {
    let line = stderr.lines().find(|l| l.contains("Produced "))?;
    let produced = line
        .split("Produced ")
        .nth(1)?
        .split(' ')
        .next()?
        .parse()
        .ok()?;
    let not = line
        .split("; ")
        .nth(1)?
        .strip_suffix(" NOT acknowledged")?
        .parse()
        .ok()?;
    Some((produced, not))
}

/// Ctrl-C on `produce` stops reading, waits for the records already read to be acknowledged
/// and says how many were: it used to end the process at once, without a word.
#[test]
fn ctrl_c_on_produce_delivers_what_was_read_and_says_so() {
    let (_tmp, dir) = data_dir();
    let broker = Broker::start(&dir, &[]);
    assert!(
        broker
            .cli(&["topics", "create", "typed"], "")
            .status
            .success()
    );
    let mut produce = CliProcess::spawn(&broker.address, &["produce", "typed"]);
    produce.write("one\ntwo\nthree\n");
    wait_until("the three typed records stored", CLI_DEADLINE, || {
        (stored(&broker, "typed") == 3).then_some(())
    });
    produce.signal(Signal::SIGINT);
    let (status, _, err) = produce.wait(CLI_DEADLINE);
    assert!(status.success(), "{status:?}: {err}");
    assert!(
        err.contains("Interrupted. Produced 3 records") && err.contains("; 0 NOT acknowledged"),
        "{err}"
    );
}

/// A second Ctrl-C stops waiting for answers that do not come (the broker is stopped):
/// the records without one are counted as not acknowledged, and the exit status says so.
#[test]
fn a_second_ctrl_c_stops_waiting_and_counts_the_unanswered() {
    let (_tmp, dir) = data_dir();
    let broker = Broker::start(&dir, &[]);
    assert!(
        broker
            .cli(&["topics", "create", "stuck"], "")
            .status
            .success()
    );
    let mut produce = CliProcess::spawn(&broker.address, &["produce", "stuck"]);
    produce.write("first\n");
    wait_until("the first record stored", CLI_DEADLINE, || {
        (stored(&broker, "stuck") == 1).then_some(())
    });
    broker.signal(Signal::SIGSTOP);
    let line = "x".repeat(8_000);
    produce.write(&format!("{line}\n{line}\n"));
    let port: u16 = broker
        .address
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .expect("the broker's address has a port");
    // The produce request reached the stopped broker's socket: both lines were read.
    wait_until(
        "the stopped broker sent the new records",
        CLI_DEADLINE,
        || (unread_bytes_at(port) >= 8_000).then_some(()),
    );
    produce.signal(Signal::SIGINT);
    produce.wait_for_output("the first Ctrl-C noticed", CLI_DEADLINE, |_, err| {
        err.contains("Interrupted: no more input is read")
    });
    produce.signal(Signal::SIGINT);
    let (status, _, err) = produce.wait(CLI_DEADLINE);
    broker.signal(Signal::SIGCONT);
    assert_eq!(status.code(), Some(1), "{err}");
    // The first record's answer may have been on its way when the broker stopped.
    let (produced, not) = summary_counts(&err).unwrap_or_else(|| panic!("no summary: {err}"));
    assert!(produced + not == 3 && not >= 2, "{err}");
    assert!(
        err.contains(&format!(
            "error: {not} of 3 records were not acknowledged by 'stuck'"
        )),
        "{err}"
    );
}

/// With `-o json|yaml` a failure is a structured error on stderr, with the Kafka error
/// name where there is one; tables keep `error: ...`.
#[test]
fn errors_are_structured_for_scripts() {
    let (_tmp, dir) = data_dir();
    let broker = Broker::start(&dir, &[]);
    let json_error = |out: &std::process::Output| -> serde_json::Value {
        let err = stderr(out);
        serde_json::from_str(err.trim()).unwrap_or_else(|e| panic!("{e}: {err}"))
    };

    let out = broker.cli(&["topics", "describe", "nope", "-o", "json"], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));
    let e = json_error(&out);
    assert_eq!(e["error"]["code"], "UNKNOWN_TOPIC_OR_PARTITION", "{e}");
    let message = e["error"]["message"].as_str().unwrap();
    assert!(message.contains("describing topic 'nope'"), "{e}");

    let out = broker.cli(
        &[
            "topics",
            "create",
            "t",
            "--config",
            "retention.ms",
            "-o",
            "json",
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(json_error(&out)["error"]["code"], "INVALID_ARGUMENT");

    // A mistake clap finds, before the command runs.
    let out = broker.cli(&["-o", "json", "produce", "t", "--acks", "7"], "");
    assert_eq!(out.status.code(), Some(2));
    let e = json_error(&out);
    assert_eq!(e["error"]["code"], "INVALID_ARGUMENT", "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("'7'"),
        "{e}"
    );

    let refused = format!("127.0.0.1:{}", free_port());
    let out = run_cli(&refused, &["topics", "list", "-o", "yaml"], "");
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with("error:\n") && err.contains("  code: CONNECTION_FAILED\n"),
        "{err}"
    );

    let out = broker.cli(&["topics", "describe", "nope"], "");
    let err = stderr(&out);
    assert!(
        err.starts_with("error: describing topic 'nope': UNKNOWN_TOPIC_OR_PARTITION"),
        "{err}"
    );
}

/// A refused connection says that no broker answers there; `--bootstrap` takes
/// `http://host:port` and refuses an entry without a port, naming it.
#[test]
fn bootstrap_errors_say_what_is_wrong() {
    let refused = format!("127.0.0.1:{}", free_port());
    let out = run_cli(&refused, &["topics", "list"], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!(
            "cannot reach broker at {refused}: connection refused (is a broker running there?)"
        )),
        "{}",
        stderr(&out)
    );

    let (_tmp, dir) = data_dir();
    let broker = Broker::start(&dir, &[]);
    let out = run_cli(
        &format!("http://{}", broker.address),
        &["topics", "list"],
        "",
    );
    assert!(out.status.success(), "{}", stderr(&out));

    for bad in ["localhost", "127.0.0.1:port"] {
        let out = run_cli(bad, &["topics", "list"], "");
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let err = stderr(&out);
        assert!(
            err.contains(&format!("broker '{bad}'")) && err.contains("e.g. 127.0.0.1:9092"),
            "{bad}: {err}"
        );
    }
}

/// `--acks -1` is Kafka's spelling of `all`, on produce and bench produce alike.
#[test]
fn acks_minus_one_means_all() {
    let (_tmp, dir) = data_dir();
    let broker = Broker::start(&dir, &[]);
    assert!(broker.cli(&["topics", "create", "a"], "").status.success());
    for acks in ["-1", "0", "1", "all"] {
        let out = broker.cli(&["produce", "a", "--acks", acks], "x\n");
        assert!(out.status.success(), "--acks {acks}: {}", stderr(&out));
    }
    let out = broker.cli(
        &[
            "bench",
            "produce",
            "--topic",
            "a",
            "--records",
            "100",
            "--acks",
            "-1",
            "-o",
            "json",
        ],
        "",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert!(
        report["workload"].as_str().unwrap().contains("acks=All"),
        "{report}"
    );
}

/// `--header KEY=VALUE` (repeatable) puts headers on every record; one without `=` is
/// refused by name.
#[test]
fn produce_sets_headers() {
    let (_tmp, dir) = data_dir();
    let broker = Broker::start(&dir, &[]);
    assert!(broker.cli(&["topics", "create", "h"], "").status.success());
    let out = broker.cli(
        &[
            "produce",
            "h",
            "--header",
            "source=web",
            "--header",
            "trace=a=b",
        ],
        "x\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = broker.cli(
        &[
            "consume",
            "h",
            "--from-beginning",
            "--max-messages",
            "1",
            "--timeout",
            "10s",
            "-o",
            "json",
        ],
        "",
    );
    let record: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(
        record["headers"],
        serde_json::json!([["source", "web"], ["trace", "a=b"]]),
        "{record}"
    );

    let out = broker.cli(&["produce", "h", "--header", "novalue"], "x\n");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("header 'novalue'"),
        "{}",
        stderr(&out)
    );
}

/// `bench consume` reports the records it read, and its workload line claims no other
/// count: it used to name the offsets up to the end (control batches included) as records.
#[tokio::test(flavor = "multi_thread")]
async fn bench_consume_reports_the_records_it_read() {
    let cluster = Cluster::start(3);
    cluster.wait_ready().await;
    let bootstrap = cluster.bootstrap();
    let cli = |args: &[&str], stdin: &str| run_cli(&bootstrap, args, stdin);
    let out = cli(
        &[
            "topics",
            "create",
            "replicated",
            "--partitions",
            "3",
            "--replication-factor",
            "3",
        ],
        "",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let input: String = (0..92).map(|i| format!("record {i}\n")).collect();
    let out = cli(&["produce", "replicated"], &input);
    assert!(out.status.success(), "{}", stderr(&out));

    let report = |args: &[&str]| -> (String, u64) {
        let mut all = vec!["bench", "consume", "--topic", "replicated", "-o", "json"];
        all.extend_from_slice(args);
        let out = cli(&all, "");
        assert!(out.status.success(), "{}", stderr(&out));
        let r: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
        (
            r["workload"].as_str().unwrap().to_string(),
            r["records"].as_u64().unwrap(),
        )
    };
    // The numbers a workload line gives as a count of records.
    let counts = |workload: &str| -> Vec<u64> {
        let words: Vec<&str> = workload.split_whitespace().collect();
        words
            .windows(2)
            .filter(|w| w[1].starts_with("records"))
            .filter_map(|w| w[0].parse().ok())
            .collect()
    };
    let (workload, records) = report(&[]);
    assert_eq!(records, 92, "{workload}");
    assert!(
        counts(&workload).iter().all(|&n| n == records),
        "{workload} beside {records} records"
    );
    // A poll returns more than 10 records here: only the ten asked for count.
    let (workload, records) = report(&["--records", "10"]);
    assert_eq!(records, 10, "{workload}");
    assert_eq!(counts(&workload), vec![10], "{workload}");
}

/// README's tour and `sluice dev`'s hints run the CLI one way, the release build that
/// `sluice dev` itself runs as (a debug build would be a second, slower one).
#[test]
fn readme_and_dev_run_the_cli_the_same_way() {
    const RELEASE_CLI: &str = "cargo run -q --release --bin sluice --";
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("read README.md");
    let cargo_runs = |text: &str| -> Vec<String> {
        text.match_indices("cargo run")
            .map(|(i, _)| {
                let rest = &text[i..];
                let end = rest
                    .find("sluice --")
                    .map_or(rest.len(), |e| e + "sluice --".len());
                rest[..end].to_string()
            })
            .collect()
    };
    for run in cargo_runs(&readme) {
        assert!(
            run.contains("--release"),
            "README.md: `{run}` is a debug build"
        );
    }
    assert!(
        readme.contains(RELEASE_CLI),
        "README.md does not show {RELEASE_CLI}"
    );

    let (tmp, _) = data_dir();
    // Broker 1 of `sluice dev` takes PORT and PORT+10000.
    let port = wait_until("a free port pair", CLI_DEADLINE, || {
        let p = free_port();
        std::net::TcpListener::bind(("127.0.0.1", p.checked_add(10_000)?))
            .is_ok()
            .then_some(p)
    });
    let data = tmp.path().join("dev");
    let dev = CliProcess::spawn(
        "127.0.0.1:9092",
        &[
            "dev",
            "--brokers",
            "1",
            "--port",
            &port.to_string(),
            "--http-port",
            "0",
            "--data-dir",
            data.to_str().expect("utf-8 temp path"),
        ],
    );
    dev.wait_for_output("sluice dev's hints", CLI_DEADLINE, |out, _| {
        out.contains("Press Ctrl-C")
    });
    let (out, _) = dev.output();
    let runs = cargo_runs(&out);
    assert!(!runs.is_empty(), "{out}");
    for run in runs {
        assert_eq!(run, RELEASE_CLI, "{out}");
    }
    assert!(
        out.contains(&format!("--bootstrap 127.0.0.1:{port}")),
        "{out}"
    );
    dev.signal(Signal::SIGINT);
    let (status, _, err) = dev.wait(CLI_DEADLINE);
    assert!(status.success(), "{err}");
}

/// `bench sweep` holds each target rate for its window and reports the rate achieved and
/// its latencies, with where the time went on the brokers (`--breakdown`, their /metrics);
/// `--json`, `--csv` and `--svg` write the same steps, and `bench plot` draws two runs on
/// one chart from their JSON.
#[tokio::test(flavor = "multi_thread")]
async fn bench_sweep_reports_each_rate_with_its_breakdown_and_draws_them() {
    let cluster = Cluster::start(3);
    cluster.wait_ready().await;
    let bootstrap = cluster.bootstrap();
    let http: Vec<String> = cluster
        .brokers
        .iter()
        .map(|b| b.http_url().trim_start_matches("http://").to_string())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let (json, csv, svg) = (file("a.json"), file("a.csv"), file("a.svg"));
    let args = [
        "bench",
        "sweep",
        "--topic",
        "sweep",
        "--partitions",
        "3",
        "--replication-factor",
        "3",
        "--min-insync-replicas",
        "2",
        "--linger",
        "0ms",
        "--record-size",
        "100",
        "--rates",
        "200,600",
        "--warmup",
        "500ms",
        "--duration",
        "2s",
        "--label",
        "before",
        "--breakdown",
        &http.join(","),
        "--json",
        &json,
        "--csv",
        &csv,
        "--svg",
        &svg,
        "-o",
        "json",
    ];
    let out = run_cli(&bootstrap, &args, "");
    assert!(out.status.success(), "{}", stderr(&out));
    let run: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let steps = run["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2, "{run}");
    for (step, target) in steps.iter().zip([200.0, 600.0]) {
        assert_eq!(step["target_rate"].as_f64(), Some(target), "{step}");
        let achieved = step["achieved_rate"].as_f64().unwrap();
        // A rate this low is kept to, within the window's edges.
        assert!(
            (achieved - target).abs() <= target * 0.1,
            "achieved {achieved} for {target}: {step}"
        );
        assert_eq!(step["failed"], 0, "{step}");
        let l = &step["latency_ms"];
        let (p50, p99, max) = (
            l["p50"].as_f64().unwrap(),
            l["p99"].as_f64().unwrap(),
            l["max"].as_f64().unwrap(),
        );
        assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{step}");
        // Every write in the window was fsynced by its leader and a follower and went
        // through a replication round trip; the stages are the brokers' own counts.
        let stages: std::collections::HashMap<&str, &serde_json::Value> = step["breakdown"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s["stage"].as_str().unwrap(), s))
            .collect();
        for stage in [
            "produce_request",
            "leader_fsync",
            "replication_round_trip",
            "follower_fsync",
            "committed",
        ] {
            let s = stages
                .get(stage)
                .unwrap_or_else(|| panic!("no {stage} in {step}"));
            assert!(s["count"].as_u64().unwrap() > 0, "{step}");
            assert!(s["mean_ms"].as_f64().unwrap() > 0.0, "{step}");
        }
        // At most one produce request per record (linger 0; a slow broker gets several
        // records per request), a few more counted at the window's edges at most: the
        // figures are the window's, not everything since the brokers started.
        let requests = stages["produce_request"]["count"].as_f64().unwrap();
        let records = target * 2.0;
        assert!(
            requests <= records * 1.2,
            "{requests} produce requests for {records} records: {step}"
        );
    }
    // The files hold the same run.
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(saved["steps"], run["steps"]);
    let csv_text = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(csv_text.lines().count(), 3, "{csv_text}");
    assert!(csv_text.lines().nth(1).unwrap().starts_with("before,200,"));
    let chart = std::fs::read_to_string(&svg).unwrap();
    assert_eq!(chart.matches(r#"class="series""#).count(), 2, "{chart}");

    // A second run, drawn with the first.
    let mut after = saved.clone();
    after["label"] = "after".into();
    let after_json = file("b.json");
    std::fs::write(&after_json, after.to_string()).unwrap();
    let both = file("both.svg");
    let out = run_cli(
        &bootstrap,
        &["bench", "plot", &json, &after_json, "--svg", &both],
        "",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("2 run(s): before, after"),
        "{}",
        stdout(&out)
    );
    let chart = std::fs::read_to_string(&both).unwrap();
    assert_eq!(chart.matches(r#"class="series""#).count(), 4);
    assert!(chart.contains(r#"data-run="after""#));

    // A file that is not a sweep is named.
    let out = run_cli(&bootstrap, &["bench", "plot", &csv, "--svg", &both], "");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("a.csv: not a sweep result"),
        "{}",
        stderr(&out)
    );
}
