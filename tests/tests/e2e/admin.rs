//! Admin calls while the controller quorum is lost: they fail without effect, or say that
//! the outcome is unknown, never "failed" for a change that happens later.

use std::time::Duration;

use sluice_tests::{Cluster, eventually, run_cli};

fn cli(address: &str, args: &[&str]) -> (bool, String, String) {
    let out = run_cli(address, args, "");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `cluster status -o json`'s controller leader (None: the status names none).
fn controller_leader(address: &str) -> Option<i64> {
    let (ok, stdout, stderr) = cli(address, &["cluster", "status", "-o", "json"]);
    assert!(ok, "cluster status: {stderr}");
    let status: serde_json::Value = serde_json::from_str(&stdout).expect("status is JSON");
    status["controller_leader"].as_i64()
}

/// The controller leader's broker alone: it still believes it leads, but no quorum
/// confirms anything. `cluster status` names no leader, and a create says that the topic
/// may have been created (the leader keeps it in its log); once the quorum is back, it is
/// there and creating it again answers TOPIC_ALREADY_EXISTS.
#[tokio::test]
async fn a_create_on_a_leader_without_quorum_says_it_may_have_happened() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_ready().await.controller_id;
    for id in 1..=3 {
        if id != leader {
            cluster.node(id).kill();
        }
    }
    let address = cluster.node(leader).address.clone();
    eventually(
        "cluster status naming no controller leader",
        Duration::from_secs(10),
        || async { controller_leader(&address).is_none().then_some(()) },
    )
    .await;

    let (ok, _, stderr) = cli(&address, &["topics", "create", "x9", "--partitions", "1"]);
    assert!(!ok, "{stderr}");
    assert!(stderr.contains("REQUEST_TIMED_OUT"), "{stderr}");
    assert!(
        stderr.contains("topic 'x9' may have been created"),
        "{stderr}"
    );

    for id in 1..=3 {
        if id != leader {
            cluster.node(id).restart();
        }
    }
    cluster.wait_ready().await;
    eventually(
        "cluster status naming the controller leader again",
        Duration::from_secs(10),
        || async { controller_leader(&address).map(|_| ()) },
    )
    .await;
    let (ok, _, stderr) = cli(&address, &["topics", "create", "x9", "--partitions", "1"]);
    assert!(
        !ok && stderr.contains("TOPIC_ALREADY_EXISTS"),
        "the first create was kept by the leader and committed once the quorum returned: {stderr}"
    );
    let (ok, stdout, stderr) = cli(&address, &["topics", "describe", "x9"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("x9"), "{stdout}");
}

/// A follower alone: the leader is gone and no election can succeed. A create fails,
/// saying that nothing was changed, and indeed nothing was: once the quorum is back the
/// topic does not exist and creating it succeeds.
#[tokio::test]
async fn a_create_on_a_follower_without_quorum_fails_without_effect() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_ready().await.controller_id;
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    for id in 1..=3 {
        if id != follower {
            cluster.node(id).kill();
        }
    }
    let address = cluster.node(follower).address.clone();
    eventually(
        "cluster status naming no controller leader",
        Duration::from_secs(10),
        || async { controller_leader(&address).is_none().then_some(()) },
    )
    .await;

    let (ok, _, stderr) = cli(&address, &["topics", "create", "x8", "--partitions", "1"]);
    assert!(!ok, "{stderr}");
    assert!(stderr.contains("topic 'x8' was not created"), "{stderr}");
    assert!(stderr.contains("nothing was changed"), "{stderr}");

    for id in 1..=3 {
        if id != follower {
            cluster.node(id).restart();
        }
    }
    cluster.wait_ready().await;
    let (ok, _, stderr) = cli(&address, &["topics", "describe", "x8"]);
    assert!(
        !ok && stderr.contains("UNKNOWN_TOPIC_OR_PARTITION"),
        "{stderr}"
    );
    let (ok, _, stderr) = cli(&address, &["topics", "create", "x8", "--partitions", "1"]);
    assert!(ok, "creating it again succeeds: {stderr}");
}
