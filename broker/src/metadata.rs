//! The broker's durable metadata in sled: topics with their config overrides, and the
//! identity of the data directory (node id, cluster id).
//!
//! sled calls block, so callers run them on the blocking pool.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A topic as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicRecord {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i32,
    /// Only the keys that were set; defaults are filled in when read.
    pub config: BTreeMap<String, String>,
    pub created_ms: i64,
}

#[derive(Debug, Clone)]
pub struct MetadataStore {
    db: sled::Db,
    topics: sled::Tree,
}

impl MetadataStore {
    /// Opens the store and checks that `data_dir` belongs to `node_id`.
    pub fn open(data_dir: &Path, node_id: i32, cache_bytes: u64) -> Result<(Self, String)> {
        let path = data_dir.join("metadata");
        let db = sled::Config::new()
            .path(&path)
            .cache_capacity(cache_bytes)
            .open()
            .map_err(|e| {
                Error::Internal(format!(
                    "cannot open the metadata store at {}: {e}",
                    path.display()
                ))
            })?;
        match db.get("node_id")? {
            Some(v) => {
                let stored = i32::from_be_bytes(v.as_ref().try_into().map_err(|_| {
                    Error::Internal(format!(
                        "metadata store at {} has a damaged node_id",
                        path.display()
                    ))
                })?);
                if stored != node_id {
                    return Err(Error::Internal(format!(
                        "data directory {} belongs to node {stored}, but this broker is configured as node {node_id}; \
                         use --node-id {stored} or a different --data-dir",
                        data_dir.display()
                    )));
                }
            }
            None => {
                db.insert("node_id", &node_id.to_be_bytes())?;
            }
        }
        let cluster_id = match db.get("cluster_id")? {
            Some(v) => String::from_utf8_lossy(&v).into_owned(),
            None => {
                let id = new_cluster_id();
                db.insert("cluster_id", id.as_bytes())?;
                id
            }
        };
        db.flush()?;
        let topics = db.open_tree("topics")?;
        Ok((MetadataStore { db, topics }, cluster_id))
    }

    pub fn topics(&self) -> Result<Vec<TopicRecord>> {
        let mut out = Vec::new();
        for item in self.topics.iter() {
            let (key, value) = item?;
            let record: TopicRecord = serde_json::from_slice(&value).map_err(|e| {
                Error::Internal(format!(
                    "stored topic '{}' is unreadable: {e}",
                    String::from_utf8_lossy(&key)
                ))
            })?;
            out.push(record);
        }
        Ok(out)
    }

    /// Stores a topic durably (flushed before returning).
    pub fn put_topic(&self, record: &TopicRecord) -> Result<()> {
        let value = serde_json::to_vec(record).map_err(|e| Error::Internal(e.to_string()))?;
        self.topics.insert(record.name.as_bytes(), value)?;
        self.db.flush()?;
        Ok(())
    }

    pub fn delete_topic(&self, name: &str) -> Result<()> {
        self.topics.remove(name.as_bytes())?;
        self.db.flush()?;
        Ok(())
    }

    pub fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }
}

fn new_cluster_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}
