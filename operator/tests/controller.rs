//! The controller's wiring against a mocked Kubernetes API (kube's client over tower-test)
//! and a real broker: a SluiceTopic that carries the finalizer is reconciled and its status
//! written with server-side apply; one being deleted gets its topic deleted (policy Delete)
//! and the finalizer removed.

use std::sync::Arc;

use http::{Method, Request, Response};
use kube::client::Body;
use sluice_manifest::SluiceTopic;
use sluice_operator::controller::{Context, FINALIZER, MANAGER, reconcile};
use sluice_tests::{Broker, data_dir};

fn object(deleting: bool) -> SluiceTopic {
    let deletion = if deleting {
        "  deletionTimestamp: 2026-12-01T00:00:00Z\n"
    } else {
        ""
    };
    serde_yaml::from_str(&format!(
        "apiVersion: sluice.io/v1alpha1\nkind: SluiceTopic\nmetadata:\n  name: orders\n  namespace: shop\n  uid: 3e0c\n  generation: 4\n  resourceVersion: \"7\"\n  finalizers: [{FINALIZER}]\n{deletion}spec:\n  clusterRef: {{name: main}}\n  partitions: 2\n  deletionPolicy: Delete\n"
    ))
    .unwrap()
}

/// Answers the next API call with `answer`, returning the request (method, path, query, body).
async fn next_call(
    handle: &mut tower_test::mock::Handle<Request<Body>, Response<Body>>,
    answer: &SluiceTopic,
) -> (Method, String, String, serde_json::Value) {
    let (req, send) = handle.next_request().await.expect("an API call");
    let (method, uri) = (req.method().clone(), req.uri().clone());
    let body = req.into_body().collect_bytes().await.unwrap();
    let json = if body.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&body).unwrap()
    };
    send.send_response(
        Response::builder()
            .body(Body::from(serde_json::to_vec(answer).unwrap()))
            .unwrap(),
    );
    (
        method,
        uri.path().to_string(),
        uri.query().unwrap_or_default().to_string(),
        json,
    )
}

/// The reconcile's end; a call to the API nobody answers would hold it, so it is bounded.
async fn done(
    run: tokio::task::JoinHandle<
        Result<kube::runtime::controller::Action, sluice_operator::controller::Error>,
    >,
) {
    tokio::time::timeout(std::time::Duration::from_secs(30), run)
        .await
        .expect("the reconcile made no API call beyond those answered")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_topic_is_reconciled_its_status_applied_and_its_deletion_cleaned_up() {
    let (_tmp, dir) = data_dir();
    let broker = Broker::start(&dir, &[]);
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let ctx = Arc::new(Context::new(client, Some(broker.address.clone())));

    let t = object(false);
    let run = tokio::spawn(reconcile(Arc::new(t.clone()), ctx.clone()));
    let (method, path, query, body) = next_call(&mut handle, &t).await;
    assert_eq!(method, Method::PATCH);
    assert_eq!(
        path,
        "/apis/sluice.io/v1alpha1/namespaces/shop/sluicetopics/orders/status"
    );
    assert!(
        query.contains(&format!("fieldManager={MANAGER}")) && query.contains("force=true"),
        "{query}"
    );
    let status = &body["status"];
    assert_eq!(status["conditions"][0]["type"], "Ready");
    assert_eq!(status["conditions"][0]["status"], "True", "{status}");
    assert_eq!(status["observedGeneration"], 4);
    assert_eq!(status["partitions"], 2);
    done(run).await;
    assert_eq!(
        broker
            .admin()
            .describe_topic("orders")
            .await
            .unwrap()
            .partitions
            .len(),
        2
    );

    // Deleted with deletionPolicy: Delete: the topic goes, then the finalizer.
    let t = object(true);
    let run = tokio::spawn(reconcile(Arc::new(t.clone()), ctx.clone()));
    let mut gone = t.clone();
    gone.metadata.finalizers = None;
    let (method, path, _, body) = next_call(&mut handle, &gone).await;
    assert_eq!(method, Method::PATCH);
    assert_eq!(
        path,
        "/apis/sluice.io/v1alpha1/namespaces/shop/sluicetopics/orders"
    );
    assert!(
        body.to_string().contains(FINALIZER),
        "the finalizer is removed: {body}"
    );
    done(run).await;
    assert!(
        broker.admin().describe_topic("orders").await.is_err(),
        "the topic was deleted first"
    );
}
