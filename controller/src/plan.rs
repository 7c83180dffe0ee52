//! `muster plan`'s engine: what a change to the fleet repo will do, host by
//! host, before it is merged.
//!
//! Both revisions are loaded with [`reconcile::load_commit`] and compiled
//! with [`compile::compile_all`], the functions the reconciler deploys
//! with, for every host of an [`Inventory`]; the plan is the difference.
//! Apart from reading the two trees, building a plan is pure: the clock
//! (for the next run times of schedules) is a parameter.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use muster_schemas::bundle::{BundleResource, Desired};
use muster_schemas::model::{FleetModel, Resource, ScriptSpec};
use muster_schemas::{Diagnostic, Severity};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use similar::TextDiff;

use crate::compile::{self, HostInput};
use crate::rbac::{self, AccessRules};
use crate::reconcile::{self, SourceMap};
use crate::source::{CommitInfo, GitSource, SourceError};

/// The version of the inventory file and of the JSON plan.
pub const FORMAT_VERSION: u32 = 1;

/// What a secret file's diff says instead of its content (as the agent's
/// reports say it).
pub const REDACTED: &str = "(secret content: diff redacted)";

/// How many next run times a schedule change shows.
const N_NEXT_RUNS: usize = 3;

/// `similar` falls back to a coarser diff after this long, so that a
/// pathological file cannot stall a plan.
const DIFF_TIMEOUT: Duration = Duration::from_millis(200);

/// The hosts a plan compiles for: what `muster hosts export` writes.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inventory {
    /// The format version, 1.
    pub version: u32,
    /// Every approved host, by name.
    pub hosts: Vec<InventoryHost>,
}

/// One host of an [`Inventory`]: the compiler's inputs.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InventoryHost {
    pub name: String,
    pub id: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub facts: serde_json::Map<String, Value>,
}

impl Inventory {
    /// Parses an inventory file, refusing versions this build does not know.
    pub fn from_json(text: &str) -> Result<Inventory, String> {
        let inventory: Inventory = serde_json::from_str(text)
            .map_err(|err| format!("the inventory is not valid: {err}"))?;
        if inventory.version != FORMAT_VERSION {
            return Err(format!(
                "the inventory has version {}, this muster reads version {FORMAT_VERSION}: export it again with `muster hosts export`",
                inventory.version
            ));
        }
        Ok(inventory)
    }

    fn inputs(&self) -> Vec<HostInput> {
        let mut inputs: Vec<HostInput> = self
            .hosts
            .iter()
            .map(|host| HostInput {
                id: host.id.clone(),
                name: host.name.clone(),
                labels: host.labels.clone(),
                facts: host.facts.clone(),
            })
            .collect();
        inputs.sort_by(|a, b| a.name.cmp(&b.name));
        inputs
    }
}

/// Why there is no plan.
#[derive(Debug)]
pub enum PlanError {
    /// A revision cannot be found or read.
    Source(SourceError),
    /// The head does not validate: every diagnostic.
    InvalidHead(Vec<Diagnostic>),
    /// The head validates but does not compile for some host (a resource
    /// conflict, a failing template): the controller would reject it.
    HeadDoesNotCompile(Vec<Diagnostic>),
}

impl From<SourceError> for PlanError {
    fn from(err: SourceError) -> Self {
        PlanError::Source(err)
    }
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanError::Source(err) => write!(f, "{err}"),
            PlanError::InvalidHead(diagnostics) | PlanError::HeadDoesNotCompile(diagnostics) => {
                let what = if matches!(self, PlanError::InvalidHead(_)) {
                    "the head does not validate"
                } else {
                    "the head does not compile for every host; the controller would reject it"
                };
                for diagnostic in diagnostics {
                    writeln!(f, "{diagnostic}")?;
                }
                let n_errors = diagnostics.iter().filter(|d| d.is_error()).count();
                let noun = if n_errors == 1 { "error" } else { "errors" };
                write!(f, "error: {what} ({n_errors} {noun})")
            }
        }
    }
}

impl std::error::Error for PlanError {}

/// A commit a plan compares.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Revision {
    pub id: String,
    pub summary: String,
}

/// What a change does: the plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    /// [`FORMAT_VERSION`].
    pub version: u32,
    pub base: Revision,
    pub head: Revision,
    /// Warnings about the head, and notes about the base (one that did not
    /// validate or compile is compared as an empty fleet).
    pub notes: Vec<String>,
    pub summary: Summary,
    /// Hosts grouped by identical change, most hosts first.
    pub host_changes: Vec<HostChangeGroup>,
    /// Changes that are not per host.
    pub fleet_changes: Vec<FleetChange>,
    /// Who gains or loses which permission where.
    pub rbac: Vec<RbacChange>,
}

/// The blast radius.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Summary {
    pub hosts_total: usize,
    pub hosts_affected: usize,
    /// Per group of the head (and groups the head removed).
    pub groups: Vec<GroupImpact>,
    /// Distinct resource ids added, changed and removed on at least one
    /// host each.
    pub resources_added: usize,
    pub resources_changed: usize,
    pub resources_removed: usize,
    /// Per policy, hosts it newly applies to and hosts it no longer does.
    pub targeting: Vec<TargetingChange>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupImpact {
    pub group: String,
    pub hosts_affected: usize,
    pub hosts_total: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetingChange {
    pub policy: String,
    pub newly_targeted: Vec<String>,
    pub no_longer_targeted: Vec<String>,
}

/// Hosts that receive the same changes: the same items, fields and
/// changed lines. Their diffs may differ in context lines (a template that
/// names the host above the changed line); `changes` are then those of
/// `context_from`, the first host of the group.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostChangeGroup {
    pub hosts: Vec<String>,
    pub changes: Vec<ItemChange>,
    /// The host whose diffs are shown, when the hosts' diffs differ in
    /// context lines only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context_from: Option<String>,
}

/// Whether an item is new, gone or different.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Added,
    Changed,
    Removed,
}

impl ChangeKind {
    pub fn sign(self) -> char {
        match self {
            ChangeKind::Added => '+',
            ChangeKind::Changed => '~',
            ChangeKind::Removed => '-',
        }
    }
}

/// One resource, check or setting of a host, or one fleet-wide document.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct ItemChange {
    /// `file:/etc/motd`, `check:ssh-hardening/root-login`, `agent settings`,
    /// `script:log-cleanup`, …
    pub id: String,
    pub kind: ChangeKind,
    /// Fields that differ, as JSON text, before and after (`null` on the
    /// side where the item or the field is absent).
    pub fields: Vec<FieldChange>,
    /// A unified diff of the content (file content, script body).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
    /// Next run times before → after, for a schedule change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_runs: Option<NextRuns>,
}

impl ItemChange {
    /// The change without its diff's context: only the lines removed and
    /// added, in order, without positions. Two hosts whose changes are
    /// equal this way receive the same change.
    fn without_context(&self) -> ItemChange {
        // The `---`/`+++` header comes before the first hunk; a removed
        // line may itself start with `--`, so it is skipped by place.
        let diff = self.diff.as_ref().map(|diff| {
            diff.lines()
                .skip_while(|line| !line.starts_with("@@"))
                .filter(|line| line.starts_with('+') || line.starts_with('-'))
                .collect::<Vec<_>>()
                .join("\n")
        });
        ItemChange {
            diff,
            ..self.clone()
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct FieldChange {
    pub field: String,
    pub before: Option<String>,
    pub after: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct NextRuns {
    pub before: Vec<String>,
    pub after: Vec<String>,
}

/// A change that is not per host: a script, alert rule, channel, window,
/// group or host document, fleet settings.
pub type FleetChange = ItemChange;

/// One line of the RBAC section.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RbacChange {
    /// `user alice`, `token ci`.
    pub who: String,
    pub permission: String,
    /// The scope gained, if any.
    pub gains: Option<String>,
    /// The scope lost, if any.
    pub loses: Option<String>,
    /// The line as the text format shows it.
    pub text: String,
}

impl Plan {
    /// Whether the change does anything at all.
    pub fn has_changes(&self) -> bool {
        !self.host_changes.is_empty() || !self.fleet_changes.is_empty() || !self.rbac.is_empty()
    }
}

/// One side of the plan, loaded and compiled.
struct Side {
    model: Option<FleetModel>,
    desired: BTreeMap<String, Desired>,
}

/// Builds the plan from `base` to `head` (revisions as `git rev-parse`
/// takes them) of `source`, for the hosts of `inventory`; schedules' next
/// runs are counted from `now`.
pub fn build(
    source: &GitSource,
    base: &str,
    head: &str,
    inventory: &Inventory,
    now: DateTime<Utc>,
) -> Result<Plan, PlanError> {
    let base_info = source.resolve(base)?;
    let hosts = inventory.inputs();
    let mut notes = Vec::new();
    let compiled = compile_revision(source, head, inventory)?;
    let head_info = compiled.commit;
    for diagnostic in &compiled.diagnostics {
        if diagnostic.severity == Severity::Warning {
            notes.push(format!("head: {diagnostic}"));
        }
    }
    let head_side = Side {
        model: Some(compiled.model),
        desired: compiled.desired,
    };

    // A base without the fleet repo (the pull request that adds it) is
    // an empty fleet, as is one that does not validate.
    let base_loaded = match reconcile::load_commit(source, &base_info.id) {
        Ok((Some(loaded), _)) => Ok(loaded),
        Ok((None, _)) => Err("the base does not validate: it is compared as an empty fleet"),
        Err(SourceError::MissingSubdir { .. }) => {
            Err("the base has no fleet repo at the path: it is compared as an empty fleet")
        }
        Err(err) => return Err(err.into()),
    };
    let base_side = match base_loaded {
        Err(note) => {
            notes.push(note.to_string());
            Side {
                model: None,
                desired: BTreeMap::new(),
            }
        }
        Ok((model, sources)) => {
            let desired = compile_or_note(&model, &sources, &hosts, &mut notes);
            Side {
                model: Some(model),
                desired,
            }
        }
    };

    let empty = FleetModel::default();
    let base_model = base_side.model.as_ref().unwrap_or(&empty);
    let head_model = head_side.model.as_ref().unwrap_or(&empty);

    // Per host changes, then hosts with identical changes together.
    let no_desired = Desired::default();
    let mut per_host: BTreeMap<&str, Vec<ItemChange>> = BTreeMap::new();
    for host in &hosts {
        let before = base_side.desired.get(&host.id).unwrap_or(&no_desired);
        let after = head_side.desired.get(&host.id).unwrap_or(&no_desired);
        let changes = desired_changes(before, after);
        if !changes.is_empty() {
            per_host.insert(&host.name, changes);
        }
    }
    // Grouped by the changed lines, not the whole diff: 400 web hosts whose
    // nginx file names each host above the changed line get one entry.
    let mut grouped: BTreeMap<Vec<ItemChange>, Vec<(&str, &[ItemChange])>> = BTreeMap::new();
    for (name, changes) in &per_host {
        grouped
            .entry(changes.iter().map(ItemChange::without_context).collect())
            .or_default()
            .push((name, changes.as_slice()));
    }
    let mut host_changes: Vec<HostChangeGroup> = grouped
        .into_values()
        .map(|members| {
            let (first, shown) = members[0];
            let context_differs = members.iter().any(|(_, changes)| *changes != shown);
            HostChangeGroup {
                hosts: members
                    .iter()
                    .map(|(name, _)| (*name).to_string())
                    .collect(),
                changes: shown.to_vec(),
                context_from: context_differs.then(|| first.to_string()),
            }
        })
        .collect();
    host_changes.sort_by(|a, b| {
        b.hosts
            .len()
            .cmp(&a.hosts.len())
            .then_with(|| a.hosts.cmp(&b.hosts))
    });

    let summary = summarize(
        &hosts,
        base_model,
        head_model,
        &base_side.desired,
        &head_side.desired,
        &per_host,
    );
    let fleet_changes = fleet_changes(base_model, head_model, now);
    let rbac = rbac_changes(base_model, head_model, &base_info.id, &head_info.id);

    Ok(Plan {
        version: FORMAT_VERSION,
        base: Revision {
            id: base_info.id,
            summary: base_info.summary,
        },
        head: Revision {
            id: head_info.id,
            summary: head_info.summary,
        },
        notes,
        summary,
        host_changes,
        fleet_changes,
        rbac,
    })
}

/// A revision loaded, validated and compiled for every host.
#[derive(Debug)]
pub struct CompiledRevision {
    pub commit: CommitInfo,
    pub model: FleetModel,
    /// The desired state of each host, by host id.
    pub desired: BTreeMap<String, Desired>,
    /// Warnings (a revision with errors is a [`PlanError`]).
    pub diagnostics: Vec<Diagnostic>,
}

/// Loads `revision` with [`reconcile::load_commit`] and compiles it with
/// [`compile::compile_all`] for every host of `inventory`: the plan's head,
/// exactly as the controller would deploy it.
pub fn compile_revision(
    source: &GitSource,
    revision: &str,
    inventory: &Inventory,
) -> Result<CompiledRevision, PlanError> {
    let commit = source.resolve(revision)?;
    let (loaded, diagnostics) = reconcile::load_commit(source, &commit.id)?;
    let Some((model, sources)) = loaded else {
        return Err(PlanError::InvalidHead(diagnostics));
    };
    let desired = compile::compile_all(&model, &sources, &inventory.inputs())
        .map_err(PlanError::HeadDoesNotCompile)?;
    Ok(CompiledRevision {
        commit,
        model,
        desired,
        diagnostics,
    })
}

fn compile_or_note(
    model: &FleetModel,
    sources: &SourceMap,
    hosts: &[HostInput],
    notes: &mut Vec<String>,
) -> BTreeMap<String, Desired> {
    match compile::compile_all(model, sources, hosts) {
        Ok(desired) => desired,
        Err(diagnostics) => {
            notes.push(format!(
                "the base does not compile for every host ({} problems): it is compared as an empty fleet",
                diagnostics.len()
            ));
            BTreeMap::new()
        }
    }
}

/// The resources, checks and settings that differ between two desired
/// states of one host, in id order.
fn desired_changes(before: &Desired, after: &Desired) -> Vec<ItemChange> {
    let mut changes = Vec::new();
    if before.settings != after.settings
        && !(before.resources.is_empty() && after.resources.is_empty())
    {
        let fields = field_changes(
            Some(&to_value(&before.settings)),
            Some(&to_value(&after.settings)),
            &[],
        );
        changes.push(item("agent settings", ChangeKind::Changed, fields));
    }
    let resources = |desired: &'_ Desired| -> BTreeMap<String, BundleResource> {
        desired
            .resources
            .iter()
            .map(|r| (r.id.clone(), r.clone()))
            .collect()
    };
    let (was, is) = (resources(before), resources(after));
    let ids: BTreeSet<&String> = was.keys().chain(is.keys()).collect();
    for id in ids {
        if let Some(change) = resource_change(id, was.get(id), is.get(id)) {
            changes.push(change);
        }
    }
    let checks = |desired: &'_ Desired| -> BTreeMap<String, Value> {
        desired
            .checks
            .iter()
            .map(|c| {
                (
                    format!("check:{}/{}", c.policy, c.check.name),
                    to_value(&c.check),
                )
            })
            .collect()
    };
    let (was, is) = (checks(before), checks(after));
    let ids: BTreeSet<&String> = was.keys().chain(is.keys()).collect();
    for id in ids {
        let (old, new) = (was.get(id), is.get(id));
        if old != new {
            changes.push(item(id, kind_of(old, new), field_changes(old, new, &[])));
        }
    }
    changes
}

fn resource_change(
    id: &str,
    before: Option<&BundleResource>,
    after: Option<&BundleResource>,
) -> Option<ItemChange> {
    if before == after {
        return None;
    }
    let flat = |r: &BundleResource| -> Value {
        let mut fields = match to_value(&r.resource) {
            // Externally tagged: `{"file": {…}}`.
            Value::Object(tagged) => tagged
                .into_iter()
                .next()
                .map_or(Value::Null, |(_, inner)| inner),
            other => other,
        };
        if let Value::Object(map) = &mut fields {
            map.insert("policy".into(), Value::String(r.policy.clone()));
            map.insert("enforcement".into(), to_value(&r.mode));
        }
        fields
    };
    let (old, new) = (before.map(flat), after.map(flat));
    let mut change = item(
        id,
        kind_of(old.as_ref(), new.as_ref()),
        field_changes(old.as_ref(), new.as_ref(), &["content"]),
    );
    let file = |r: Option<&BundleResource>| match r.map(|r| &r.resource) {
        Some(Resource::File(file)) => Some(file.clone()),
        _ => None,
    };
    let (old_file, new_file) = (file(before), file(after));
    if old_file.is_some() || new_file.is_some() {
        let content = |f: &Option<muster_schemas::model::FileSpec>| {
            f.as_ref().and_then(|f| f.content.clone())
        };
        let (old_content, new_content) = (content(&old_file), content(&new_file));
        if old_content != new_content {
            let secret = old_file.as_ref().is_some_and(|f| f.secret)
                || new_file.as_ref().is_some_and(|f| f.secret);
            let path = id.strip_prefix("file:").unwrap_or(id);
            change.diff = Some(unified_diff(
                path,
                old_content.as_deref(),
                new_content.as_deref(),
                secret,
            ));
        }
    }
    Some(change)
}

fn item(id: &str, kind: ChangeKind, fields: Vec<FieldChange>) -> ItemChange {
    ItemChange {
        id: id.to_string(),
        kind,
        fields,
        diff: None,
        next_runs: None,
    }
}

fn kind_of<T>(before: Option<T>, after: Option<T>) -> ChangeKind {
    match (before, after) {
        (None, _) => ChangeKind::Added,
        (_, None) => ChangeKind::Removed,
        _ => ChangeKind::Changed,
    }
}

fn to_value<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// Top-level fields of two JSON objects that differ, except `skip`, in
/// field order; values as compact JSON.
fn field_changes(before: Option<&Value>, after: Option<&Value>, skip: &[&str]) -> Vec<FieldChange> {
    let object = |value: Option<&Value>| -> BTreeMap<String, Value> {
        match value {
            Some(Value::Object(map)) => map
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            _ => BTreeMap::new(),
        }
    };
    let (was, is) = (object(before), object(after));
    let keys: BTreeSet<&String> = was.keys().chain(is.keys()).collect();
    keys.into_iter()
        .filter(|key| !skip.contains(&key.as_str()))
        .filter(|key| was.get(*key) != is.get(*key))
        .map(|key| FieldChange {
            field: key.clone(),
            before: was.get(key).map(Value::to_string),
            after: is.get(key).map(Value::to_string),
        })
        .collect()
}

/// A unified diff of text content, or the redaction for secrets.
fn unified_diff(path: &str, before: Option<&str>, after: Option<&str>, secret: bool) -> String {
    let old_label = if before.is_some() { path } else { "/dev/null" };
    let new_label = if after.is_some() { path } else { "/dev/null" };
    if secret {
        return format!("--- {old_label}\n+++ {new_label}\n{REDACTED}\n");
    }
    let diff = TextDiff::configure()
        .timeout(DIFF_TIMEOUT)
        .diff_lines(before.unwrap_or(""), after.unwrap_or(""));
    let mut text = diff
        .unified_diff()
        .context_radius(3)
        .header(old_label, new_label)
        .to_string();
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text
}

fn policies_of(desired: Option<&Desired>) -> BTreeSet<String> {
    desired.map_or_else(BTreeSet::new, |d| {
        d.resources
            .iter()
            .map(|r| r.policy.clone())
            .chain(d.checks.iter().map(|c| c.policy.clone()))
            .collect()
    })
}

fn summarize(
    hosts: &[HostInput],
    base_model: &FleetModel,
    head_model: &FleetModel,
    base: &BTreeMap<String, Desired>,
    head: &BTreeMap<String, Desired>,
    per_host: &BTreeMap<&str, Vec<ItemChange>>,
) -> Summary {
    let mut summary = Summary {
        hosts_total: hosts.len(),
        hosts_affected: per_host.len(),
        ..Summary::default()
    };
    let group_names: BTreeSet<&String> = head_model
        .groups
        .keys()
        .chain(base_model.groups.keys())
        .collect();
    for group in group_names {
        let model = if head_model.groups.contains_key(group) {
            head_model
        } else {
            base_model
        };
        let members: Vec<&HostInput> = hosts
            .iter()
            .filter(|host| compile::in_group(model, group, host))
            .collect();
        summary.groups.push(GroupImpact {
            group: group.clone(),
            hosts_affected: members
                .iter()
                .filter(|host| per_host.contains_key(host.name.as_str()))
                .count(),
            hosts_total: members.len(),
        });
    }
    let mut kinds: BTreeMap<&str, BTreeSet<ChangeKind>> = BTreeMap::new();
    for changes in per_host.values() {
        for change in changes {
            if change.id.contains(':') && !change.id.starts_with("check:") {
                kinds.entry(&change.id).or_default().insert(change.kind);
            }
        }
    }
    // A resource added on some hosts and removed from others (a selector
    // change) counts in both.
    for kinds in kinds.values() {
        summary.resources_added += usize::from(kinds.contains(&ChangeKind::Added));
        summary.resources_changed += usize::from(kinds.contains(&ChangeKind::Changed));
        summary.resources_removed += usize::from(kinds.contains(&ChangeKind::Removed));
    }
    let mut targeting: BTreeMap<String, TargetingChange> = BTreeMap::new();
    for host in hosts {
        let was = policies_of(base.get(&host.id));
        let is = policies_of(head.get(&host.id));
        for policy in is.difference(&was) {
            targeting_change(&mut targeting, policy)
                .newly_targeted
                .push(host.name.clone());
        }
        for policy in was.difference(&is) {
            targeting_change(&mut targeting, policy)
                .no_longer_targeted
                .push(host.name.clone());
        }
    }
    summary.targeting = targeting.into_values().collect();
    summary
}

fn targeting_change<'t>(
    targeting: &'t mut BTreeMap<String, TargetingChange>,
    policy: &str,
) -> &'t mut TargetingChange {
    targeting
        .entry(policy.to_string())
        .or_insert_with(|| TargetingChange {
            policy: policy.to_string(),
            newly_targeted: Vec::new(),
            no_longer_targeted: Vec::new(),
        })
}

/// Documents that are not per host, compared field by field.
fn fleet_changes(base: &FleetModel, head: &FleetModel, now: DateTime<Utc>) -> Vec<FleetChange> {
    let mut changes = Vec::new();
    for name in keys(&base.scripts, &head.scripts) {
        let (old, new) = (base.scripts.get(name), head.scripts.get(name));
        if old == new {
            continue;
        }
        let (old_value, new_value) = (old.map(to_value), new.map(to_value));
        let mut change = item(
            &format!("script:{name}"),
            kind_of(old, new),
            field_changes(old_value.as_ref(), new_value.as_ref(), &["body"]),
        );
        let body = |s: Option<&ScriptSpec>| s.and_then(|s| s.body.clone());
        if body(old) != body(new) {
            change.diff = Some(unified_diff(
                &format!("script {name}"),
                body(old).as_deref(),
                body(new).as_deref(),
                false,
            ));
        }
        let schedule =
            |s: Option<&ScriptSpec>| s.and_then(|s| s.schedule.clone().map(|c| (c, s.timezone)));
        if schedule(old) != schedule(new) {
            let runs = |s: Option<&ScriptSpec>| {
                schedule(s).map_or_else(Vec::new, |(cron, timezone)| {
                    muster_schemas::cron::next_runs(&cron, timezone.tz(), now, N_NEXT_RUNS)
                        .into_iter()
                        .map(|at| at.format("%a %Y-%m-%d %H:%M %Z").to_string())
                        .collect()
                })
            };
            change.next_runs = Some(NextRuns {
                before: runs(old),
                after: runs(new),
            });
        }
        changes.push(change);
    }
    compare_documents(
        &mut changes,
        "alert-rule",
        &base.alert_rules,
        &head.alert_rules,
        &[],
    );
    compare_documents(&mut changes, "channel", &base.channels, &head.channels, &[]);
    compare_documents(&mut changes, "window", &base.windows, &head.windows, &[]);
    compare_documents(&mut changes, "group", &base.groups, &head.groups, &[]);
    // A host document's resources show in its host's changes, where file
    // content is diffed and secrets are redacted; here they would not be.
    compare_documents(
        &mut changes,
        "host",
        &base.hosts,
        &head.hosts,
        &["resources"],
    );
    changes
}

fn keys<'a, A, B>(a: &'a BTreeMap<String, A>, b: &'a BTreeMap<String, B>) -> BTreeSet<&'a String> {
    a.keys().chain(b.keys()).collect()
}

fn compare_documents<T: Serialize + PartialEq>(
    changes: &mut Vec<FleetChange>,
    kind: &str,
    base: &BTreeMap<String, T>,
    head: &BTreeMap<String, T>,
    skip: &[&str],
) {
    for name in keys(base, head) {
        let (old, new) = (base.get(name), head.get(name));
        if old == new {
            continue;
        }
        let (old_value, new_value) = (old.map(to_value), new.map(to_value));
        changes.push(item(
            &format!("{kind}:{name}"),
            kind_of(old, new),
            field_changes(old_value.as_ref(), new_value.as_ref(), skip),
        ));
    }
}

fn rbac_changes(
    base: &FleetModel,
    head: &FleetModel,
    base_id: &str,
    head_id: &str,
) -> Vec<RbacChange> {
    let before = AccessRules::compile(base_id, Arc::new(base.clone()));
    let after = AccessRules::compile(head_id, Arc::new(head.clone()));
    rbac::diff(&before, &after)
        .into_iter()
        .map(|change| RbacChange {
            who: change.caller.to_string(),
            permission: change.grant.to_string(),
            gains: change.gained().map(|scope| scope.to_string()),
            loses: change.lost().map(|scope| scope.to_string()),
            text: change.to_string(),
        })
        .collect()
}
