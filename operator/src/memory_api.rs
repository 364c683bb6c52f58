//! An in-memory Kubernetes API server, for the operator's tests and benchmarks (there is no
//! API server on the machines this is built on). A real [`kube::Client`] talks to it over a
//! tower service, so reconcilers run their real API calls unchanged.
//!
//! What it models, and what it leaves out:
//! - objects by resource plural, namespace and name (the group and version are not part
//!   of the key: the operator's plurals are unique);
//! - `GET` of one object or of a list (with `labelSelector` of `k=v` terms), `POST`
//!   (create; 409 when it exists), `PUT` (replace; 409 on a stale `resourceVersion`),
//!   `DELETE` (an object with finalizers gets a `deletionTimestamp` instead, and goes once
//!   they are removed), `PATCH` as server-side apply (created when absent, else the patch
//!   merged in: objects field by field, lists and values replaced), JSON merge patch and
//!   JSON patch, each also on the `/status` subresource;
//! - `metadata.uid`, `resourceVersion` (bumped only by a change), `generation` (bumped by a
//!   spec change), `creationTimestamp`;
//! - not modelled: watches, field ownership (a field a manager stops applying is kept),
//!   admission, defaulting, validation, and the built-in controllers (a test plays the
//!   StatefulSet controller itself, with [`MemoryApi::put`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use parking_lot::Mutex;
use serde_json::{Value, json};

/// (plural, namespace or "", name)
type Key = (String, String, String);

/// One mutating call that changed something: (verb, plural, name).
pub type Write = (String, String, String);

#[derive(Debug, Default)]
struct State {
    objects: BTreeMap<Key, Value>,
    next_version: u64,
    writes: Vec<Write>,
}

/// The API server's state, shared with the tower service a client talks to.
#[derive(Debug, Clone, Default)]
pub struct MemoryApi {
    state: Arc<Mutex<State>>,
}

impl MemoryApi {
    /// A new empty API and a client of it whose default namespace is `default`.
    pub fn new() -> (MemoryApi, kube::Client) {
        let api = MemoryApi::default();
        let served = api.clone();
        let service = tower::service_fn(move |req: Request<Body>| {
            let api = served.clone();
            async move { Ok::<_, std::convert::Infallible>(api.serve(req).await) }
        });
        (api, kube::Client::new(service, "default"))
    }

    /// Stores `object` as given (its kind's plural, namespace and name from `plural` and
    /// its metadata), as a built-in controller would; bumps its resourceVersion.
    pub fn put(&self, plural: &str, mut object: Value) {
        let ns = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let mut s = self.state.lock();
        s.next_version += 1;
        object["metadata"]["resourceVersion"] = json!(s.next_version.to_string());
        if object["metadata"]["uid"].is_null() {
            object["metadata"]["uid"] = json!(format!("uid-{plural}-{ns}-{name}"));
        }
        s.objects.insert((plural.into(), ns, name), object);
    }

    /// The object, if there is one.
    pub fn get(&self, plural: &str, namespace: &str, name: &str) -> Option<Value> {
        self.state
            .lock()
            .objects
            .get(&(plural.into(), namespace.into(), name.into()))
            .cloned()
    }

    /// Every object of a kind, in every namespace, by namespace and name.
    pub fn list(&self, plural: &str) -> Vec<Value> {
        self.state
            .lock()
            .objects
            .iter()
            .filter(|((p, _, _), _)| p == plural)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Removes an object outright (as the garbage collector or a kubelet would).
    pub fn remove(&self, plural: &str, namespace: &str, name: &str) -> Option<Value> {
        self.state
            .lock()
            .objects
            .remove(&(plural.into(), namespace.into(), name.into()))
    }

    /// The mutating calls that changed an object so far, oldest first.
    pub fn writes(&self) -> Vec<Write> {
        self.state.lock().writes.clone()
    }

    /// Forgets the calls [`MemoryApi::writes`] returns.
    pub fn clear_writes(&self) {
        self.state.lock().writes.clear();
    }

    async fn serve(&self, req: Request<Body>) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let body = match body.collect_bytes().await {
            Ok(b) => b,
            Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", &e.to_string()),
        };
        let Some(path) = Path::parse(parts.uri.path()) else {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("no such path {}", parts.uri.path()),
            );
        };
        let query = parts.uri.query().unwrap_or_default();
        let content_type = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let parsed = || -> Result<Value, Failure> {
            if content_type.contains("yaml") {
                serde_yaml::from_slice(&body).map_err(|e| {
                    Failure::new(StatusCode::BAD_REQUEST, "BadRequest", &e.to_string())
                })
            } else {
                serde_json::from_slice(&body).map_err(|e| {
                    Failure::new(StatusCode::BAD_REQUEST, "BadRequest", &e.to_string())
                })
            }
        };
        let mut s = self.state.lock();
        let result = match (&parts.method, &path.name) {
            (&Method::GET, None) => Ok(s.list(&path, query)),
            (&Method::GET, Some(name)) => s
                .objects
                .get(&path.key(name))
                .cloned()
                .ok_or_else(|| not_found(&path, name)),
            (&Method::POST, None) => parsed().and_then(|o| s.create(&path, o)),
            (&Method::PUT, Some(name)) => parsed().and_then(|o| s.replace(&path, name, o)),
            (&Method::DELETE, Some(name)) => s.delete(&path, name),
            (&Method::PATCH, Some(name)) => {
                parsed().and_then(|p| s.patch(&path, name, &content_type, p))
            }
            (m, _) => Err(Failure::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                &format!("{m} {}", parts.uri.path()),
            )),
        };
        match result {
            Ok(v) => Response::builder()
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Body::from(serde_json::to_vec(&v).unwrap_or_default()))
                .unwrap_or_else(|_| Response::new(Body::empty())),
            Err(f) => f.response(),
        }
    }
}

/// A request path: `/api/v1/...` or `/apis/GROUP/VERSION/...`, then optionally
/// `namespaces/NS/`, the plural, a name and a subresource.
#[derive(Debug)]
struct Path {
    api_version: String,
    plural: String,
    namespace: String,
    name: Option<String>,
    subresource: Option<String>,
}

impl Path {
    fn parse(path: &str) -> Option<Path> {
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (api_version, rest) = match parts.as_slice() {
            ["api", v, rest @ ..] => (v.to_string(), rest),
            ["apis", g, v, rest @ ..] => (format!("{g}/{v}"), rest),
            _ => return None,
        };
        let (namespace, rest) = match rest {
            ["namespaces", ns, rest @ ..] if !rest.is_empty() => (ns.to_string(), rest),
            rest => (String::new(), rest),
        };
        let (plural, name, subresource) = match rest {
            [p] => (p, None, None),
            [p, n] => (p, Some(n.to_string()), None),
            [p, n, sub] => (p, Some(n.to_string()), Some(sub.to_string())),
            _ => return None,
        };
        Some(Path {
            api_version,
            plural: plural.to_string(),
            namespace,
            name,
            subresource,
        })
    }

    fn key(&self, name: &str) -> Key {
        (
            self.plural.clone(),
            self.namespace.clone(),
            name.to_string(),
        )
    }
}

/// A failed call: the API server's `Status` answer.
#[derive(Debug)]
struct Failure {
    code: StatusCode,
    reason: &'static str,
    message: String,
}

impl Failure {
    fn new(code: StatusCode, reason: &'static str, message: &str) -> Failure {
        Failure {
            code,
            reason,
            message: message.to_string(),
        }
    }

    fn response(&self) -> Response<Body> {
        status(self.code, self.reason, &self.message)
    }
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "reason": reason, "message": message, "code": code.as_u16(),
    });
    Response::builder()
        .status(code)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Body::from(serde_json::to_vec(&body).unwrap_or_default()))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

fn not_found(path: &Path, name: &str) -> Failure {
    Failure::new(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("{} \"{name}\" not found", path.plural),
    )
}

/// `labelSelector` terms `k=v` (and `k==v`), all of which must hold.
fn selects(selector: &str, labels: &Value) -> bool {
    selector.split(',').filter(|t| !t.is_empty()).all(|term| {
        let (k, v) = term
            .split_once("==")
            .or_else(|| term.split_once('='))
            .unwrap_or((term, ""));
        labels[k].as_str() == Some(v)
    })
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `patch` merged into `target` field by field; `null` removes a field (JSON merge patch).
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

impl State {
    fn list(&self, path: &Path, query: &str) -> Value {
        let selector = query_param(query, "labelSelector").unwrap_or_default();
        let items: Vec<Value> = self
            .objects
            .iter()
            .filter(|((p, ns, _), _)| {
                *p == path.plural && (path.namespace.is_empty() || *ns == path.namespace)
            })
            .filter(|(_, o)| selects(&selector, &o["metadata"]["labels"]))
            .map(|(_, o)| o.clone())
            .collect();
        json!({
            "apiVersion": path.api_version,
            "kind": "List",
            "metadata": {"resourceVersion": self.next_version.to_string()},
            "items": items,
        })
    }

    /// Stores `object` under `key` if it differs from what is there, with the server's
    /// metadata; records the write.
    fn store(&mut self, verb: &str, key: Key, mut object: Value) -> Value {
        let old = self.objects.get(&key).cloned();
        let meta = &mut object["metadata"];
        meta["name"] = json!(key.2);
        if !key.1.is_empty() {
            meta["namespace"] = json!(key.1);
        }
        match &old {
            Some(o) => {
                for f in ["uid", "creationTimestamp", "resourceVersion", "generation"] {
                    meta[f] = o["metadata"][f].clone();
                }
                if let Some(t) = o["metadata"].get("deletionTimestamp") {
                    meta["deletionTimestamp"] = t.clone();
                }
            }
            None => {
                meta["uid"] = json!(format!("uid-{}-{}-{}", key.0, key.1, key.2));
                meta["creationTimestamp"] = json!("2026-12-01T00:00:00Z");
                meta["generation"] = json!(1);
            }
        }
        if old.as_ref() == Some(&object) {
            return object;
        }
        if let Some(o) = &old
            && o.get("spec") != object.get("spec")
        {
            let g = o["metadata"]["generation"].as_i64().unwrap_or(1);
            object["metadata"]["generation"] = json!(g + 1);
        }
        self.next_version += 1;
        object["metadata"]["resourceVersion"] = json!(self.next_version.to_string());
        self.writes
            .push((verb.into(), key.0.clone(), key.2.clone()));
        // An object being deleted goes once its last finalizer is removed.
        let gone = object["metadata"].get("deletionTimestamp").is_some()
            && object["metadata"]["finalizers"]
                .as_array()
                .is_none_or(Vec::is_empty);
        if gone {
            self.objects.remove(&key);
        } else {
            self.objects.insert(key, object.clone());
        }
        object
    }

    fn create(&mut self, path: &Path, object: Value) -> Result<Value, Failure> {
        let name = object["metadata"]["name"]
            .as_str()
            .map(str::to_string)
            .or_else(|| {
                object["metadata"]["generateName"]
                    .as_str()
                    .map(|g| format!("{g}{}", self.next_version + 1))
            })
            .ok_or_else(|| {
                Failure::new(StatusCode::BAD_REQUEST, "Invalid", "metadata.name missing")
            })?;
        let key = path.key(&name);
        if self.objects.contains_key(&key) {
            return Err(Failure::new(
                StatusCode::CONFLICT,
                "AlreadyExists",
                &format!("{} \"{name}\" already exists", path.plural),
            ));
        }
        Ok(self.store("create", key, object))
    }

    fn replace(&mut self, path: &Path, name: &str, object: Value) -> Result<Value, Failure> {
        let key = path.key(name);
        let old = self
            .objects
            .get(&key)
            .ok_or_else(|| not_found(path, name))?;
        let given = object["metadata"]["resourceVersion"].as_str();
        if given.is_some_and(|v| Some(v) != old["metadata"]["resourceVersion"].as_str()) {
            return Err(Failure::new(
                StatusCode::CONFLICT,
                "Conflict",
                &format!(
                    "Operation cannot be fulfilled on {} \"{name}\": the object has been modified",
                    path.plural
                ),
            ));
        }
        let object = match path.subresource.as_deref() {
            Some("status") => {
                let mut o = old.clone();
                o["status"] = object["status"].clone();
                o
            }
            _ => object,
        };
        Ok(self.store("replace", key, object))
    }

    fn delete(&mut self, path: &Path, name: &str) -> Result<Value, Failure> {
        let key = path.key(name);
        let mut object = self
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| not_found(path, name))?;
        let finalized = object["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        if finalized {
            if object["metadata"].get("deletionTimestamp").is_none() {
                object["metadata"]["deletionTimestamp"] = json!("2026-12-01T00:00:01Z");
                return Ok(self.store("delete", key, object));
            }
            return Ok(object);
        }
        self.objects.remove(&key);
        self.writes
            .push(("delete".into(), path.plural.clone(), name.to_string()));
        Ok(object)
    }

    fn patch(
        &mut self,
        path: &Path,
        name: &str,
        content_type: &str,
        patch: Value,
    ) -> Result<Value, Failure> {
        let key = path.key(name);
        let old = self.objects.get(&key).cloned();
        let status_only = path.subresource.as_deref() == Some("status");
        let mut object = match (&old, content_type) {
            (Some(o), _) => o.clone(),
            (None, t) if t.contains("apply-patch") && !status_only => {
                json!({"apiVersion": patch["apiVersion"], "kind": patch["kind"], "metadata": {}})
            }
            (None, _) => return Err(not_found(path, name)),
        };
        if content_type.contains("json-patch") {
            // As the API server reads it: a missing field tests equal to null.
            let mut patch = patch;
            if let Some(ops) = patch.as_array_mut() {
                ops.retain(|op| {
                    let missing = op["path"]
                        .as_str()
                        .is_some_and(|p| object.pointer(p).is_none());
                    !(op["op"] == "test" && op["value"].is_null() && missing)
                });
            }
            let ops: json_patch::Patch = serde_json::from_value(patch)
                .map_err(|e| Failure::new(StatusCode::BAD_REQUEST, "BadRequest", &e.to_string()))?;
            json_patch::patch(&mut object, &ops).map_err(|e| {
                Failure::new(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", &e.to_string())
            })?;
        } else if status_only {
            merge(&mut object["status"], &patch["status"]);
        } else {
            let mut patch = patch;
            if let Some(p) = patch.as_object_mut() {
                p.remove("status");
            }
            merge(&mut object, &patch);
        }
        let verb = if old.is_some() { "patch" } else { "create" };
        Ok(self.store(verb, key, object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};

    #[tokio::test]
    async fn objects_are_created_patched_listed_and_deleted_as_an_api_server_does() {
        let (mem, client) = MemoryApi::new();
        let api: Api<ConfigMap> = Api::namespaced(client, "shop");
        let cm = |v: &str| {
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "c", "labels": {"app": "x"}}, "data": {"k": v}})
        };
        let pp = PatchParams::apply("test").force();
        let made = api.patch("c", &pp, &Patch::Apply(cm("1"))).await.unwrap();
        assert_eq!(made.metadata.namespace.as_deref(), Some("shop"));
        let v1 = made.metadata.resource_version.clone();
        // The same apply again changes nothing: no new version, no write.
        let again = api.patch("c", &pp, &Patch::Apply(cm("1"))).await.unwrap();
        assert_eq!(again.metadata.resource_version, v1);
        api.patch("c", &pp, &Patch::Apply(cm("2"))).await.unwrap();
        assert_eq!(
            mem.writes(),
            [
                ("create".into(), "configmaps".into(), "c".into()),
                ("patch".into(), "configmaps".into(), "c".into())
            ]
        );
        let listed = api
            .list(&ListParams::default().labels("app=x"))
            .await
            .unwrap();
        assert_eq!(listed.items.len(), 1);
        assert!(
            api.list(&ListParams::default().labels("app=y"))
                .await
                .unwrap()
                .items
                .is_empty()
        );
        // Create of an existing name is a conflict; replace with a stale version too.
        let err = api
            .create(
                &PostParams::default(),
                &serde_json::from_value(cm("3")).unwrap(),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, kube::Error::Api(ref s) if s.code == 409),
            "{err}"
        );
        let mut stale: ConfigMap = serde_json::from_value(cm("4")).unwrap();
        stale.metadata.resource_version = v1;
        let err = api
            .replace("c", &PostParams::default(), &stale)
            .await
            .unwrap_err();
        assert!(
            matches!(err, kube::Error::Api(ref s) if s.code == 409),
            "{err}"
        );
        api.delete("c", &DeleteParams::default()).await.unwrap();
        assert!(api.get_opt("c").await.unwrap().is_none());
    }

    #[test]
    fn percent_encoded_selectors_are_read() {
        assert_eq!(
            query_param("labelSelector=app%3Dx%2Cb%3Dc&limit=1", "labelSelector").as_deref(),
            Some("app=x,b=c")
        );
        assert!(selects("app=x,b==c", &json!({"app": "x", "b": "c"})));
        assert!(!selects("app=x", &json!({"app": "y"})));
    }
}
