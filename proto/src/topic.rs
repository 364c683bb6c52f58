//! Topic names and configuration, with Kafka's keys, defaults and meanings.
//!
//! Every key is validated here, once, for both `sluice apply`/`topics create` on the client
//! side and the broker: an unknown key or a bad value is refused with a message that names
//! the key and the accepted values.

use std::collections::BTreeMap;
use std::fmt;

use crate::batch::Compression;

/// Longest topic name (Kafka's limit, so names fit in file names with a partition suffix).
pub const MAX_TOPIC_NAME_LEN: usize = 249;

/// Checks a topic name: 1-249 characters of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn validate_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("topic name is empty".into());
    }
    if name.len() > MAX_TOPIC_NAME_LEN {
        return Err(format!(
            "topic name '{}…' is {} characters long; the limit is {MAX_TOPIC_NAME_LEN}",
            &name[..20],
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("topic name '{name}' is not allowed"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "topic name '{name}' contains '{c}'; use only ASCII letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(())
}

/// What to do with old segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CleanupPolicy {
    /// Delete whole segments past `retention.ms` / `retention.bytes`.
    Delete,
}

/// Which codec the broker stores batches with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompressionType {
    /// Keep whatever the producer sent.
    Producer,
    /// Re-encode every batch with this codec.
    Codec(Compression),
}

/// A topic's configuration, every key with its effective value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicConfig {
    /// `retention.ms`: delete segments whose newest record is older; -1 keeps them forever.
    pub retention_ms: i64,
    /// `retention.bytes`: delete the oldest segments while a partition is larger; -1: no limit.
    pub retention_bytes: i64,
    /// `segment.bytes`: roll to a new segment file at this size.
    pub segment_bytes: i32,
    /// `segment.ms`: roll a segment this old even if it is not full.
    pub segment_ms: i64,
    /// `cleanup.policy`.
    pub cleanup_policy: CleanupPolicy,
    /// `min.insync.replicas`: replicas that must hold a batch before `acks=all` succeeds.
    pub min_insync_replicas: i32,
    /// `max.message.bytes`: the largest record batch the topic accepts.
    pub max_message_bytes: i32,
    /// `compression.type`.
    pub compression_type: CompressionType,
}

/// One accepted key: name, default, and the accepted range for messages.
struct Key {
    name: &'static str,
    accepted: &'static str,
}

const KEYS: &[Key] = &[
    Key {
        name: "cleanup.policy",
        accepted: "delete (compact is not supported yet)",
    },
    Key {
        name: "compression.type",
        accepted: "producer, uncompressed, lz4 or zstd",
    },
    Key {
        name: "max.message.bytes",
        accepted: "an integer in [1, 2147483647]",
    },
    Key {
        name: "min.insync.replicas",
        accepted: "an integer in [1, replication factor]",
    },
    Key {
        name: "retention.bytes",
        accepted: "-1 (no limit) or an integer in [0, 9223372036854775807]",
    },
    Key {
        name: "retention.ms",
        accepted: "-1 (forever) or an integer in [0, 9223372036854775807]",
    },
    Key {
        name: "segment.bytes",
        accepted: "an integer in [1024, 2147483647]",
    },
    Key {
        name: "segment.ms",
        accepted: "an integer in [1, 9223372036854775807]",
    },
];

impl Default for TopicConfig {
    fn default() -> Self {
        TopicConfig {
            retention_ms: 7 * 24 * 60 * 60 * 1000,
            retention_bytes: -1,
            segment_bytes: 1024 * 1024 * 1024,
            segment_ms: 7 * 24 * 60 * 60 * 1000,
            cleanup_policy: CleanupPolicy::Delete,
            min_insync_replicas: 1,
            max_message_bytes: 1024 * 1024 + 12,
            compression_type: CompressionType::Producer,
        }
    }
}

/// A rejected configuration: which key, what was given, what is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for ConfigError {}

impl TopicConfig {
    /// Every key this build accepts.
    pub fn keys() -> impl Iterator<Item = &'static str> {
        KEYS.iter().map(|k| k.name)
    }

    /// Defaults overridden by `overrides`, checked against `replication_factor`.
    pub fn from_map(
        overrides: &BTreeMap<String, String>,
        replication_factor: i32,
    ) -> Result<Self, ConfigError> {
        let mut config = TopicConfig::default();
        for (key, value) in overrides {
            config.set(key, value)?;
        }
        if config.min_insync_replicas > replication_factor {
            return Err(ConfigError {
                key: "min.insync.replicas".into(),
                message: format!(
                    "invalid value '{}' for min.insync.replicas: it exceeds the replication factor {replication_factor}, so acks=all writes could never succeed; accepted: {}",
                    config.min_insync_replicas,
                    accepted("min.insync.replicas")
                ),
            });
        }
        Ok(config)
    }

    /// Sets one key from its string form.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let bad = || ConfigError {
            key: key.to_string(),
            message: format!(
                "invalid value '{value}' for {key}; accepted: {}",
                accepted(key)
            ),
        };
        let v = value.trim();
        match key {
            "retention.ms" => self.retention_ms = parse_int(v, -1, i64::MAX).ok_or_else(bad)?,
            "retention.bytes" => {
                self.retention_bytes = parse_int(v, -1, i64::MAX).ok_or_else(bad)?
            }
            "segment.bytes" => {
                self.segment_bytes = parse_int(v, 1024, i32::MAX as i64).ok_or_else(bad)? as i32
            }
            "segment.ms" => self.segment_ms = parse_int(v, 1, i64::MAX).ok_or_else(bad)?,
            "min.insync.replicas" => {
                self.min_insync_replicas = parse_int(v, 1, i32::MAX as i64).ok_or_else(bad)? as i32
            }
            "max.message.bytes" => {
                self.max_message_bytes = parse_int(v, 1, i32::MAX as i64).ok_or_else(bad)? as i32
            }
            "cleanup.policy" => match v {
                "delete" => self.cleanup_policy = CleanupPolicy::Delete,
                _ => return Err(bad()),
            },
            "compression.type" => {
                self.compression_type = match v {
                    "producer" => CompressionType::Producer,
                    other => CompressionType::Codec(Compression::parse(other).ok_or_else(bad)?),
                }
            }
            _ => {
                let known: Vec<_> = Self::keys().collect();
                return Err(ConfigError {
                    key: key.to_string(),
                    message: format!(
                        "unknown topic config key '{key}'; accepted keys: {}",
                        known.join(", ")
                    ),
                });
            }
        }
        Ok(())
    }

    /// Every key with its value, for describing a topic and for storing it.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        m.insert("cleanup.policy".into(), "delete".into());
        m.insert(
            "compression.type".into(),
            match self.compression_type {
                CompressionType::Producer => "producer".into(),
                CompressionType::Codec(c) => c.name().into(),
            },
        );
        m.insert(
            "max.message.bytes".into(),
            self.max_message_bytes.to_string(),
        );
        m.insert(
            "min.insync.replicas".into(),
            self.min_insync_replicas.to_string(),
        );
        m.insert("retention.bytes".into(), self.retention_bytes.to_string());
        m.insert("retention.ms".into(), self.retention_ms.to_string());
        m.insert("segment.bytes".into(), self.segment_bytes.to_string());
        m.insert("segment.ms".into(), self.segment_ms.to_string());
        m
    }
}

fn accepted(key: &str) -> &'static str {
    KEYS.iter()
        .find(|k| k.name == key)
        .map(|k| k.accepted)
        .unwrap_or("")
}

fn parse_int(v: &str, min: i64, max: i64) -> Option<i64> {
    v.parse::<i64>().ok().filter(|n| (min..=max).contains(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_kafkas() {
        let c = TopicConfig::from_map(&BTreeMap::new(), 1).unwrap();
        assert_eq!(c.retention_ms, 604_800_000);
        assert_eq!(c.segment_bytes, 1_073_741_824);
        assert_eq!(c.max_message_bytes, 1_048_588);
        assert_eq!(c.to_map().len(), TopicConfig::keys().count());
    }

    #[test]
    fn every_key_round_trips_through_its_string_form() {
        let c = TopicConfig::from_map(
            &map(&[
                ("retention.ms", "-1"),
                ("compression.type", "zstd"),
                ("segment.bytes", "2048"),
            ]),
            1,
        )
        .unwrap();
        assert_eq!(TopicConfig::from_map(&c.to_map(), 1).unwrap(), c);
    }

    #[test]
    fn bad_values_name_the_key_and_the_range() {
        let e = TopicConfig::from_map(&map(&[("retention.ms", "-5")]), 1).unwrap_err();
        assert_eq!(e.key, "retention.ms");
        assert!(
            e.message.contains("'-5'") && e.message.contains("-1 (forever)"),
            "{e}"
        );
        let e = TopicConfig::from_map(&map(&[("segment.bytes", "10")]), 1).unwrap_err();
        assert!(e.message.contains("[1024, 2147483647]"), "{e}");
        let e = TopicConfig::from_map(&map(&[("retention.mss", "1")]), 1).unwrap_err();
        assert!(
            e.message
                .contains("unknown topic config key 'retention.mss'"),
            "{e}"
        );
        assert!(e.message.contains("retention.ms"), "{e}");
        let e = TopicConfig::from_map(&map(&[("compression.type", "gzip")]), 1).unwrap_err();
        assert!(
            e.message.contains("producer, uncompressed, lz4 or zstd"),
            "{e}"
        );
        let e = TopicConfig::from_map(&map(&[("min.insync.replicas", "2")]), 1).unwrap_err();
        assert!(e.message.contains("replication factor 1"), "{e}");
    }

    #[test]
    fn topic_names() {
        assert!(validate_topic_name("orders.v1_eu-west").is_ok());
        for bad in ["", ".", "..", "a/b", "naïve", &"x".repeat(250)] {
            assert!(validate_topic_name(bad).is_err(), "{bad:?} accepted");
        }
    }
}
