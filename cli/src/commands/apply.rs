//! `sluice apply -f` and `sluice diff -f`: topics declared in manifests (the same files
//! `kubectl apply` takes), planned against the cluster and applied. Every document is
//! checked first, and every planned change is validated by the brokers before any is made:
//! a problem anywhere applies nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use futures::StreamExt;
use serde::Serialize;
use sluice_client::{Admin, declarative};
use sluice_manifest::{Loaded, Manifests};

use super::Context;
use crate::output;
use sluice_manifest::plan::{self, Action, Live, TopicPlan};

/// Topic changes made at once.
const CONCURRENT_CHANGES: usize = 8;

/// Where the manifests are.
#[derive(Debug, Args)]
pub(crate) struct Files {
    /// A manifest file, a directory of them (.yaml, .yml, .json), or - for standard input;
    /// repeat for several.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<PathBuf>,
    /// Read directories' sub-directories too.
    #[arg(short = 'R', long)]
    recursive: bool,
}

#[derive(Debug, Args)]
pub(crate) struct DiffArgs {
    #[command(flatten)]
    files: Files,
    /// Also list the topics --prune would delete.
    #[arg(long)]
    prune: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ApplyArgs {
    #[command(flatten)]
    files: Files,
    /// Show the plan and check it with the brokers, changing nothing.
    #[arg(long)]
    dry_run: bool,
    /// Delete topics that an earlier apply created (label app.kubernetes.io/managed-by:
    /// sluice) and the manifests no longer declare. Never other topics, never internal ones.
    #[arg(long)]
    prune: bool,
    /// Do not ask before --prune deletes topics.
    #[arg(long)]
    yes: bool,
    /// Return once replication factor changes are committed, without waiting for the
    /// replicas to move.
    #[arg(long)]
    no_wait: bool,
    /// How long to wait for replicas to move after a replication factor change.
    #[arg(long, default_value = "10m")]
    wait_timeout: humantime::Duration,
}

#[derive(Debug, Serialize)]
struct Summary {
    create: usize,
    change: usize,
    unchanged: usize,
    delete: usize,
    refused: usize,
}

#[derive(Debug, Serialize)]
struct PlanView {
    topics: Vec<TopicPlan>,
    summary: Summary,
    /// Whether the changes were made (apply without --dry-run).
    applied: bool,
}

impl PlanView {
    fn new(topics: Vec<TopicPlan>, applied: bool) -> Self {
        let count = |a: Action| topics.iter().filter(|t| t.action == a).count();
        let summary = Summary {
            create: count(Action::Create),
            change: count(Action::Change),
            unchanged: count(Action::Unchanged),
            delete: count(Action::Delete),
            refused: count(Action::Refused),
        };
        PlanView {
            topics,
            summary,
            applied,
        }
    }

    fn changes(&self) -> bool {
        self.topics.iter().any(TopicPlan::changes)
    }
}

fn print_plan(v: &PlanView) {
    let rows: Vec<Vec<String>> = v.topics.iter().flat_map(rows).collect();
    outln!("{}", output::table(&["topic", "action", "change"], rows));
    let s = &v.summary;
    let verb = if v.applied { "Applied" } else { "Plan" };
    if !v.changes() && s.refused == 0 {
        outln!("No changes: {} topic(s) are as declared.", s.unchanged);
    } else {
        outln!(
            "{verb}: {} to create, {} to change, {} unchanged, {} to delete{}.",
            s.create,
            s.change,
            s.unchanged,
            s.delete,
            if s.refused > 0 {
                format!(", {} refused", s.refused)
            } else {
                String::new()
            }
        );
    }
}

/// Reads and checks every manifest.
pub(crate) fn load(files: &Files) -> anyhow::Result<Manifests> {
    let inputs = sluice_manifest::read_inputs(&files.files, files.recursive)?;
    let m = sluice_manifest::parse(&inputs)?;
    for (source, kind) in &m.skipped {
        eprintln!(
            "note: {source}: kind {kind} is the Kubernetes operator's; sluice apply skips it"
        );
    }
    Ok(m)
}

/// Every topic of the cluster as the plan sees it.
async fn live_topics(admin: &Admin) -> anyhow::Result<BTreeMap<String, Live>> {
    declarative::live_topics(admin)
        .await
        .context("listing the cluster's topics")
}

/// Makes (or, with `validate_only`, checks with the brokers) one planned change.
async fn execute(admin: &Admin, p: &TopicPlan, validate_only: bool) -> anyhow::Result<()> {
    let what = match p.action {
        Action::Create => format!("creating topic '{}' ({})", p.topic, p.source),
        Action::Delete => format!("deleting topic '{}' (--prune)", p.topic),
        _ => format!("changing topic '{}' ({})", p.topic, p.source),
    };
    declarative::execute(admin, p, validate_only)
        .await
        .context(what)
}

/// Runs `f` over the plans that change something, a few at once; every error.
async fn for_changes(
    admin: &Admin,
    plans: &[TopicPlan],
    validate_only: bool,
) -> Vec<(String, anyhow::Error)> {
    futures::stream::iter(plans.iter().filter(|p| p.writes()))
        .map(|p| async move {
            execute(admin, p, validate_only)
                .await
                .err()
                .map(|e| (p.topic.clone(), e))
        })
        .buffer_unordered(CONCURRENT_CHANGES)
        .filter_map(|r| async move { r })
        .collect()
        .await
}

/// The plan for `m`, checked with the brokers: a change they would refuse is marked
/// refused with their reason.
async fn plan(admin: &Admin, m: &Manifests, prune: bool) -> anyhow::Result<Vec<TopicPlan>> {
    let live = live_topics(admin).await?;
    let mut plans: Vec<TopicPlan> = m
        .topics
        .iter()
        .map(|l: &Loaded| {
            let source = format!("{}:{}", l.source.file, l.source.line);
            plan::plan_topic(&l.manifest, &source, live.get(l.manifest.topic_name()))
        })
        .collect();
    if prune {
        let declared: BTreeSet<String> = m
            .topics
            .iter()
            .map(|l| l.manifest.topic_name().to_string())
            .collect();
        plans.extend(plan::prune(&live, &declared));
    }
    for (topic, e) in for_changes(admin, &plans, true).await {
        if let Some(p) = plans.iter_mut().find(|p| p.topic == topic) {
            p.refused.push(format!("the cluster refuses it: {e:#}"));
            p.action = Action::Refused;
        }
    }
    Ok(plans)
}

/// `sluice diff`: exit 0 when the cluster is as declared, 1 when applying would change it.
pub(crate) async fn diff(ctx: &Context, args: DiffArgs) -> anyhow::Result<()> {
    let m = load(&args.files)?;
    let admin = Admin::new(ctx.client())?;
    let view = PlanView::new(plan(&admin, &m, args.prune).await?, false);
    output::print(ctx.output, &view, print_plan)?;
    if view.summary.refused > 0 {
        return Err(output::Exit(2).into());
    }
    if view.changes() {
        return Err(output::Exit(1).into());
    }
    Ok(())
}

/// `sluice apply`.
pub(crate) async fn apply(ctx: &Context, args: ApplyArgs) -> anyhow::Result<()> {
    let m = load(&args.files)?;
    let admin = Admin::new(ctx.client())?;
    let options = Options {
        dry_run: args.dry_run,
        prune: args.prune,
        yes: args.yes,
        wait: (!args.no_wait).then_some(args.wait_timeout.into()),
        stdin_used: args.files.files.iter().any(|f| f.as_os_str() == "-"),
    };
    apply_loaded(ctx, &admin, &m, &options).await
}

/// How [`apply_loaded`] goes about it.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub dry_run: bool,
    pub prune: bool,
    pub yes: bool,
    /// How long to wait for replicas to move after a replication factor change (`None`:
    /// do not wait).
    pub wait: Option<std::time::Duration>,
    /// Whether the manifests came on standard input (no asking there).
    pub stdin_used: bool,
}

/// Plans `m`, checks the plan with the brokers, and (unless a dry run) applies it; prints
/// the plan, or the problems, in `ctx`'s format.
pub(crate) async fn apply_loaded(
    ctx: &Context,
    admin: &Admin,
    m: &Manifests,
    options: &Options,
) -> anyhow::Result<()> {
    let plans = plan(admin, m, options.prune).await?;
    let refused: Vec<&TopicPlan> = plans
        .iter()
        .filter(|p| p.action == Action::Refused)
        .collect();
    if !refused.is_empty() {
        let view = PlanView::new(plans.clone(), false);
        if ctx.output == output::Format::Table {
            print_plan(&view);
        }
        let reasons: Vec<String> = refused
            .iter()
            .flat_map(|p| {
                p.refused
                    .iter()
                    .map(move |r| format!("  topic '{}' ({}): {r}", p.topic, p.source))
            })
            .collect();
        return Err(output::invalid(format!(
            "{} topic(s) cannot be changed as declared; nothing was applied:\n{}",
            refused.len(),
            reasons.join("\n")
        )));
    }
    if options.dry_run {
        let view = PlanView::new(plans, false);
        return output::print(ctx.output, &view, print_plan);
    }
    let deletes: Vec<&str> = plans
        .iter()
        .filter(|p| p.action == Action::Delete)
        .map(|p| p.topic.as_str())
        .collect();
    if !deletes.is_empty() && !options.yes {
        confirm_prune(&deletes, options.stdin_used)?;
    }
    let failed = for_changes(admin, &plans, false).await;
    let view = PlanView::new(plans, true);
    if !failed.is_empty() {
        if ctx.output == output::Format::Table {
            print_plan(&view);
        }
        let failed_names: BTreeSet<&str> = failed.iter().map(|(t, _)| t.as_str()).collect();
        let lines: Vec<String> = failed.iter().map(|(_, e)| format!("  {e:#}")).collect();
        anyhow::bail!(
            "{} of {} change(s) failed (the others were made; run `sluice diff` to see where the cluster stands, and apply again once the cause is fixed):\n{}",
            failed_names.len(),
            view.topics.iter().filter(|p| p.changes()).count(),
            lines.join("\n")
        );
    }
    if let Some(timeout) = options.wait {
        for p in view
            .topics
            .iter()
            .filter(|p| p.action == Action::Change && p.replication_factor.is_some())
        {
            let live = admin
                .describe_topic(&p.topic)
                .await
                .with_context(|| format!("describing topic '{}'", p.topic))?;
            let moving = live.partitions.len() as u64;
            super::topics::await_replicas(ctx, admin, &p.topic, moving, timeout).await?;
        }
    }
    output::print(ctx.output, &view, print_plan)
}

/// Asks on the terminal before `--prune` deletes topics.
fn confirm_prune(deletes: &[&str], stdin_used: bool) -> anyhow::Result<()> {
    use std::io::{BufRead, IsTerminal, Write};
    if stdin_used || !std::io::stdin().is_terminal() {
        return Err(output::invalid(format!(
            "--prune would delete {} topic(s) ({}) with their records; add --yes to confirm (there is no terminal to ask on); nothing was applied",
            deletes.len(),
            deletes.join(", ")
        )));
    }
    eprint!(
        "--prune deletes {} topic(s) and their records: {}\nDelete them? [y/N] ",
        deletes.len(),
        deletes.join(", ")
    );
    std::io::stderr().flush().ok();
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(output::invalid("not confirmed; nothing was applied"))
    }
}

/// One line per change of a plan, for the table: (topic, action, change).
fn rows(plan: &TopicPlan) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut row = |what: String| {
        out.push(vec![
            plan.topic.clone(),
            plan.action.word().to_string(),
            what,
        ]);
    };
    match plan.action {
        Action::Create => {
            let (_, p) = plan.partitions.unwrap_or_default();
            let rf = match plan.replication_factor {
                Some((_, rf)) if rf > 0 => rf.to_string(),
                _ => "cluster default".to_string(),
            };
            row(format!("partitions {p}, replication factor {rf}"));
            for c in &plan.config {
                row(format!(
                    "config {}={}",
                    c.key,
                    c.new.as_deref().unwrap_or_default()
                ));
            }
        }
        Action::Unchanged if plan.bookkeeping => {
            row("(records that the manifest now sets its config keys)".into())
        }
        Action::Unchanged => row(String::new()),
        Action::Delete => row("delete: managed by sluice apply and no longer declared".into()),
        Action::Change | Action::Refused => {
            for r in &plan.refused {
                row(r.clone());
            }
            if let Some((a, b)) = plan.partitions {
                row(format!("partitions {a} -> {b}"));
            }
            if let Some((a, b)) = plan.replication_factor {
                row(format!("replication factor {a} -> {b}"));
            }
            for c in &plan.config {
                row(match (&c.old, &c.new) {
                    (None, Some(n)) => format!("config {}: set {n}", c.key),
                    (Some(o), Some(n)) => format!("config {}: {o} -> {n}", c.key),
                    (Some(o), None) => {
                        format!("config {}: removed ({o} -> cluster default)", c.key)
                    }
                    (None, None) => format!("config {}", c.key),
                });
            }
            for c in &plan.labels {
                row(match (&c.old, &c.new) {
                    (None, Some(n)) => format!("label {}: set {n}", c.key),
                    (Some(o), Some(n)) => format!("label {}: {o} -> {n}", c.key),
                    (Some(o), None) => format!("label {}: removed ({o})", c.key),
                    (None, None) => format!("label {}", c.key),
                });
            }
        }
    }
    out
}
