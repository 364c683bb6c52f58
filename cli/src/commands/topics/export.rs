//! `sluice topics export`: existing topics as manifests (SluiceTopic documents), so a
//! cluster made by hand can be managed with `sluice apply` from then on.

use std::collections::BTreeMap;

use anyhow::Context as _;
use sluice_client::Admin;
use sluice_manifest::{
    APPLIED_CONFIG_ANNOTATION, ConfigValue, MANAGED_BY_LABEL, TopicManifest, TopicSpec,
};

use crate::commands::Context;
use crate::output::{Format, invalid};

/// The manifests of `names` (every topic but the internal ones when empty).
pub(crate) async fn manifests(
    admin: &Admin,
    names: &[String],
) -> anyhow::Result<Vec<TopicManifest>> {
    let topics = admin.list_topics().await.context("listing topics")?;
    let by_name: BTreeMap<&str, _> = topics.iter().map(|t| (t.name.as_str(), t)).collect();
    let wanted: Vec<&str> = if names.is_empty() {
        by_name
            .keys()
            .copied()
            .filter(|n| !n.starts_with("__"))
            .collect()
    } else {
        let missing: Vec<&str> = names
            .iter()
            .map(String::as_str)
            .filter(|n| !by_name.contains_key(n))
            .collect();
        if !missing.is_empty() {
            return Err(invalid(format!(
                "no such topic(s): {}; `sluice topics list` shows the topics there are",
                missing.join(", ")
            )));
        }
        names.iter().map(String::as_str).collect()
    };
    Ok(wanted
        .into_iter()
        .map(|name| {
            let t = by_name[name];
            let mut m = TopicManifest::new(
                name,
                TopicSpec {
                    partitions: Some(t.partitions),
                    replication_factor: Some(t.replication_factor),
                    config: t
                        .config
                        .iter()
                        .map(|(k, v)| (k.clone(), ConfigValue(v.clone())))
                        .collect(),
                    ..TopicSpec::default()
                },
            );
            // Apply's own bookkeeping is not part of what the user declares.
            m.metadata.labels = t
                .labels
                .iter()
                .filter(|(k, _)| k.as_str() != MANAGED_BY_LABEL)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            m.metadata.annotations = t
                .annotations
                .iter()
                .filter(|(k, _)| k.as_str() != APPLIED_CONFIG_ANNOTATION)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            m
        })
        .collect())
}

/// Prints the manifests: YAML documents (also for the table format), or a JSON `List`.
pub(crate) async fn run(ctx: &Context, admin: &Admin, names: &[String]) -> anyhow::Result<()> {
    let ms = manifests(admin, names).await?;
    match ctx.output {
        Format::Json => {
            let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": ms});
            outln!("{}", serde_json::to_string_pretty(&list)?);
        }
        Format::Table | Format::Yaml => {
            for m in &ms {
                out!("---\n{}", serde_yaml::to_string(m)?);
            }
        }
    }
    Ok(())
}
