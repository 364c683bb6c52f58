//! What the SluiceCluster reconciler asks a cluster's brokers: whether one may stop now
//! (`/ready-to-stop`, before a rolling restart deletes its pod), the controller leader and
//! under-replicated partitions (for the status: `/metrics` of each broker), and draining
//! the brokers a scale-down removes (the `DrainBrokers` admin call). [`Brokers`] is a trait
//! so the reconciler's tests can script the answers; [`LiveBrokers`] asks real brokers.

use std::collections::HashMap;
use std::time::Duration;

use futures::future::BoxFuture;
use kube::ResourceExt;
use sluice_client::{Admin, ClientConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cluster::SluiceCluster;
use crate::resources::{CLIENT_PORT, HTTP_PORT};

/// How long one broker may take to answer an HTTP probe.
const HTTP_TIMEOUT: Duration = Duration::from_secs(3);
/// Most bytes read of one HTTP answer (a `/metrics` page of a large cluster included).
const HTTP_MAX_BYTES: usize = 16 << 20;

/// A drain's progress: replicas left on the drained brokers, partitions moving.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Drain {
    pub replicas_left: i32,
    pub moving: i32,
}

/// The cluster as its brokers report it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    pub controller_leader: Option<i32>,
    pub under_replicated: i32,
}

/// Calls to a SluiceCluster's brokers. Broker ids are pod ordinal + 1.
pub trait Brokers: Send + Sync {
    /// Ok when stopping `broker` now leaves every partition it holds with a leader and
    /// its `min.insync.replicas`; Err says why not (or that it could not be asked).
    fn ready_to_stop<'a>(
        &'a self,
        c: &'a SluiceCluster,
        broker: i32,
    ) -> BoxFuture<'a, Result<(), String>>;
    /// Makes `brokers` exactly the drained set (empty: none) and reports the progress.
    fn drain<'a>(
        &'a self,
        c: &'a SluiceCluster,
        brokers: &'a [i32],
    ) -> BoxFuture<'a, Result<Drain, String>>;
    /// The controller leader and under-replicated partitions, from the `ready` brokers.
    fn health<'a>(
        &'a self,
        c: &'a SluiceCluster,
        ready: &'a [i32],
    ) -> BoxFuture<'a, Result<Health, String>>;
}

/// Where the brokers of a cluster are, when not at their Kubernetes DNS names (the
/// operator running outside the cluster, or tests with local brokers).
pub type Locator = Box<dyn Fn(&SluiceCluster, i32) -> Option<String> + Send + Sync>;

/// Asks real brokers: HTTP at `<pod>.<cluster>-brokers.<ns>.svc:9644`, the admin API at
/// the cluster's client Service, unless overridden.
pub struct LiveBrokers {
    /// Brokers for the admin API of every cluster (as `run --bootstrap`).
    bootstrap: Option<String>,
    /// Base URL (`http://host:port`) of a broker's HTTP listener.
    http: Option<Locator>,
    admins: parking_lot::Mutex<HashMap<String, Admin>>,
}

impl std::fmt::Debug for LiveBrokers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveBrokers")
            .field("bootstrap", &self.bootstrap)
            .finish_non_exhaustive()
    }
}

impl LiveBrokers {
    pub fn new(bootstrap: Option<String>, http: Option<Locator>) -> Self {
        LiveBrokers {
            bootstrap,
            http,
            admins: Default::default(),
        }
    }

    fn base_url(&self, c: &SluiceCluster, broker: i32) -> String {
        if let Some(url) = self.http.as_ref().and_then(|f| f(c, broker)) {
            return url;
        }
        let name = c.name_any();
        let ns = c.namespace().unwrap_or_else(|| "default".into());
        let port = c
            .spec
            .listeners
            .as_ref()
            .and_then(|l| l.http)
            .unwrap_or(HTTP_PORT);
        format!(
            "http://{name}-{}.{name}-brokers.{ns}.svc:{port}",
            broker - 1
        )
    }

    fn admin(&self, c: &SluiceCluster) -> Result<Admin, String> {
        let bootstrap = self.bootstrap.clone().unwrap_or_else(|| {
            let port = c
                .spec
                .listeners
                .as_ref()
                .and_then(|l| l.client)
                .unwrap_or(CLIENT_PORT);
            format!(
                "{}.{}.svc:{port}",
                c.name_any(),
                c.namespace().unwrap_or_else(|| "default".into())
            )
        });
        let mut admins = self.admins.lock();
        if let Some(a) = admins.get(&bootstrap) {
            return Ok(a.clone());
        }
        let admin = Admin::new(ClientConfig::new(&bootstrap))
            .map_err(|e| format!("brokers at {bootstrap}: {e}"))?;
        admins.insert(bootstrap, admin.clone());
        Ok(admin)
    }
}

impl Brokers for LiveBrokers {
    fn ready_to_stop<'a>(
        &'a self,
        c: &'a SluiceCluster,
        broker: i32,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let url = self.base_url(c, broker);
            match http_get(&url, "/ready-to-stop").await {
                Ok((200, _)) => Ok(()),
                Ok((code, body)) => Err(format!("broker {broker}: {code} {}", body.trim())),
                Err(e) => Err(format!("broker {broker} ({url}): {e}")),
            }
        })
    }

    fn drain<'a>(
        &'a self,
        c: &'a SluiceCluster,
        brokers: &'a [i32],
    ) -> BoxFuture<'a, Result<Drain, String>> {
        Box::pin(async move {
            let r = self
                .admin(c)?
                .drain_brokers(brokers)
                .await
                .map_err(|e| e.to_string())?;
            Ok(Drain {
                replicas_left: r.brokers.iter().map(|b| b.replicas).sum(),
                moving: r.partitions_moving,
            })
        })
    }

    fn health<'a>(
        &'a self,
        c: &'a SluiceCluster,
        ready: &'a [i32],
    ) -> BoxFuture<'a, Result<Health, String>> {
        Box::pin(async move {
            let mut health = Health::default();
            let mut errors = Vec::new();
            for &b in ready {
                let url = self.base_url(c, b);
                match http_get(&url, "/metrics").await {
                    Ok((200, text)) => {
                        let (leader, under) = read_metrics(&text);
                        health.controller_leader = health.controller_leader.or(leader);
                        health.under_replicated += under;
                    }
                    Ok((code, _)) => errors.push(format!("broker {b}: /metrics answered {code}")),
                    Err(e) => errors.push(format!("broker {b}: {e}")),
                }
            }
            if errors.is_empty() {
                Ok(health)
            } else {
                Err(errors.join("; "))
            }
        })
    }
}

/// `sluice_controller_leader` and `sluice_under_replicated_partitions` from a broker's
/// `/metrics` page (the latter counts the partitions it leads).
pub fn read_metrics(text: &str) -> (Option<i32>, i32) {
    let value = |name: &str| {
        text.lines().find_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix(' ')?;
            rest.split_whitespace().next()?.parse::<f64>().ok()
        })
    };
    let leader = value("sluice_controller_leader")
        .filter(|v| *v > 0.0)
        .map(|v| v as i32);
    let under = value("sluice_under_replicated_partitions").unwrap_or(0.0) as i32;
    (leader, under)
}

/// GET `base` + `path` (plain HTTP/1.1, one request per connection), bounded in time and
/// size: the status code and body.
pub async fn http_get(base: &str, path: &str) -> Result<(u16, String), String> {
    let authority = base
        .strip_prefix("http://")
        .ok_or_else(|| format!("{base}: only http:// URLs are supported"))?
        .trim_end_matches('/');
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(authority)
            .await
            .map_err(|e| format!("connecting to {authority}: {e}"))?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("{authority}: {e}"))?;
        let mut buf = Vec::new();
        (&mut stream)
            .take(HTTP_MAX_BYTES as u64)
            .read_to_end(&mut buf)
            .await
            .map_err(|e| format!("{authority}: {e}"))?;
        let text = String::from_utf8_lossy(&buf);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("{authority}{path}: not an HTTP answer"))?;
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("{authority}{path}: no status code"))?;
        let chunked = head.lines().any(|l| {
            l.to_ascii_lowercase()
                .starts_with("transfer-encoding: chunked")
        });
        let body = if chunked {
            dechunk(body)
        } else {
            body.to_string()
        };
        Ok((code, body))
    };
    tokio::time::timeout(HTTP_TIMEOUT, fetch)
        .await
        .map_err(|_| format!("{authority}{path}: no answer within {HTTP_TIMEOUT:?}"))?
}

/// A chunked HTTP body's data.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_figures_are_read_from_a_metrics_page() {
        let page = "# TYPE sluice_controller_leader gauge\nsluice_controller_leader 2\nsluice_under_replicated_partitions 3\nsluice_under_replicated_partitions_x 9\n# EOF\n";
        assert_eq!(read_metrics(page), (Some(2), 3));
        assert_eq!(read_metrics("sluice_controller_leader 0\n"), (None, 0));
    }

    #[test]
    fn a_chunked_body_is_joined() {
        assert_eq!(
            dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            "hello world"
        );
    }
}
