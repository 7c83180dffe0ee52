//! The compiler: a validated fleet model and one host's facts and labels in,
//! the host's desired state ([`Desired`]) out.
//!
//! Compiling is a pure function: no I/O, no clock, no commit id. Repo files
//! named by `source:` come through [`SourceFiles`]. The same model and host
//! always give the same [`Desired`], byte for byte in canonical JSON, so a
//! host whose desired state did not change keeps its content hash and is not
//! re-signed.
//!
//! Work that does not depend on the host (reading and checking `source`
//! files, parsing templates, resolving static resources) is done once in
//! [`Compiler::new`]; compiling a host then only matches targets, renders
//! templates and merges resources.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::num::NonZeroUsize;

use minijinja::{AutoEscape, Environment, UndefinedBehavior, Value};
use muster_schemas::bundle::{BundleAgentSettings, BundleCheck, BundleResource, Desired};
use muster_schemas::model::{
    FileSpec, FleetModel, GroupSpec, HostSpec, Kind, PolicyMode, PolicySpec, Resource, Selector,
    Targets, glob_match,
};
use muster_schemas::yaml::Location;
use muster_schemas::{Diagnostic, diagnostic};

/// What the compiler knows about one enrolled host.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HostInput {
    /// The id the controller assigned at enrollment.
    pub id: String,
    /// The host's name (its hostname unless enrolled otherwise); `Host`
    /// documents and target `hosts` lists refer to it.
    pub name: String,
    /// Labels from the enrollment token.
    pub labels: BTreeMap<String, String>,
    /// Facts the agent reported: `os`, `os_version`, `arch`, `kernel`, …
    pub facts: serde_json::Map<String, serde_json::Value>,
}

/// Files of the fleet repo at the commit being compiled, by path relative
/// to the repo root, for `source:` fields.
pub trait SourceFiles {
    /// The file's bytes, or `None` when the repo has no such file.
    fn read(&self, path: &str) -> Option<Vec<u8>>;
}

impl SourceFiles for BTreeMap<String, Vec<u8>> {
    fn read(&self, path: &str) -> Option<Vec<u8>> {
        self.get(path).cloned()
    }
}

impl SourceFiles for HashMap<String, Vec<u8>> {
    fn read(&self, path: &str) -> Option<Vec<u8>> {
        self.get(path).cloned()
    }
}

/// Facts that become labels, so that selectors can match them.
pub const LABEL_FACTS: [&str; 4] = ["os", "os_version", "arch", "kernel"];

/// Fuel for one template render: about one unit per instruction. Real
/// configuration templates use a few thousand; the bound stops a runaway
/// loop in a pull request from stalling the controller.
const TEMPLATE_FUEL: u64 = 1_000_000;

/// Largest rendered template, so a template cannot blow up a bundle.
const MAX_RENDERED_BYTES: usize = 16 << 20;

/// Below this many hosts, one thread compiles them all: starting threads
/// would cost more than it saves.
const MIN_HOSTS_PER_THREAD: usize = 256;

/// How much of a failing template line an error quotes.
const MAX_QUOTED_CHARS: usize = 120;

/// How many host names a deduplicated error lists.
const N_SAMPLE_HOSTS: usize = 3;

/// A host's labels as selectors see them: `hostname` and the facts `os`,
/// `os_version`, `arch` and `kernel` when reported, then the enrollment
/// token's labels, then the labels of the host's `Host` document. Later
/// sources win.
pub fn effective_labels(model: &FleetModel, host: &HostInput) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    labels.insert("hostname".to_string(), host.name.clone());
    for fact in LABEL_FACTS {
        let value = match host.facts.get(fact) {
            Some(serde_json::Value::String(text)) => text.clone(),
            Some(value @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
                value.to_string()
            }
            _ => continue,
        };
        labels.insert(fact.to_string(), value);
    }
    for (key, value) in &host.labels {
        labels.insert(key.clone(), value.clone());
    }
    if let Some(spec) = model.hosts.get(&host.name) {
        for (key, value) in &spec.labels {
            labels.insert(key.clone(), value.clone());
        }
    }
    labels
}

/// Whether `targets` select `host`: the union of its groups, hosts and
/// selector, minus its exclusions. A group holds the hosts its selector
/// matches and the hosts it names.
pub fn targets_match(model: &FleetModel, targets: &Targets, host: &HostInput) -> bool {
    let labels = effective_labels(model, host);
    targets_contain(model, targets, &host.name, &labels)
}

fn targets_contain(
    model: &FleetModel,
    targets: &Targets,
    name: &str,
    labels: &BTreeMap<String, String>,
) -> bool {
    let in_group = |group: &String| {
        model
            .groups
            .get(group)
            .is_some_and(|group| group_contains(group, name, labels))
    };
    let included = targets.groups.iter().any(in_group)
        || targets.hosts.iter().any(|host| host == name)
        || targets
            .selector
            .as_ref()
            .is_some_and(|selector| selector_matches(selector, labels));
    let excluded = targets.exclude.as_ref().is_some_and(|exclude| {
        exclude.groups.iter().any(in_group)
            || exclude.hosts.iter().any(|host| host == name)
            || exclude
                .selector
                .as_ref()
                .is_some_and(|selector| selector_matches(selector, labels))
    });
    included && !excluded
}

/// Whether the group named `group` holds `host`; `false` when there is no
/// such group.
pub fn in_group(model: &FleetModel, group: &str, host: &HostInput) -> bool {
    let labels = effective_labels(model, host);
    model
        .groups
        .get(group)
        .is_some_and(|spec| group_contains(spec, &host.name, &labels))
}

fn group_contains(group: &GroupSpec, name: &str, labels: &BTreeMap<String, String>) -> bool {
    group.hosts.iter().any(|host| host == name)
        || group
            .selector
            .as_ref()
            .is_some_and(|selector| selector_matches(selector, labels))
}

/// [`Selector::matches`], with plain values compared directly: most
/// selector values have no wildcard, and this runs for every host and
/// policy.
fn selector_matches(selector: &Selector, labels: &BTreeMap<String, String>) -> bool {
    selector.0.iter().all(|(key, wanted)| {
        labels.get(key).is_some_and(|value| {
            wanted.patterns().iter().any(|pattern| {
                if pattern.contains(['*', '?']) {
                    glob_match(pattern, value)
                } else {
                    pattern == value
                }
            })
        })
    })
}

/// Compiles one host. For many hosts, build a [`Compiler`] once, or call
/// [`compile_all`].
pub fn compile_host(
    model: &FleetModel,
    sources: &dyn SourceFiles,
    host: &HostInput,
) -> Result<Desired, Vec<CompileError>> {
    Compiler::new(model, sources).compile(host)
}

/// Compiles every host, on all cores. Either every host compiles, or the
/// result is every problem of every host as diagnostics; an error that
/// several hosts share is reported once, with how many hosts and a few of
/// their names.
pub fn compile_all(
    model: &FleetModel,
    sources: &dyn SourceFiles,
    hosts: &[HostInput],
) -> Result<BTreeMap<String, Desired>, Vec<Diagnostic>> {
    Compiler::new(model, sources).compile_all(hosts)
}

/// Why a host's desired state could not be compiled. Errors carry no host
/// name, so that the same problem on many hosts is one error.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CompileError {
    /// A `source:` file is not in the repo at this commit.
    MissingSource {
        policy: String,
        /// Where in the policy document, such as `resources[2].file.source`.
        path: String,
        resource_id: String,
        source: String,
    },
    /// A `source:` file is not UTF-8 text.
    BinarySource {
        policy: String,
        path: String,
        resource_id: String,
        source: String,
    },
    /// A template did not parse, or did not render for this host.
    Template {
        policy: String,
        path: String,
        resource_id: String,
        /// The template's repo file, or `inline content`.
        template: String,
        /// 1-based line in the template, when known.
        line: Option<usize>,
        /// That line's text, trimmed.
        line_text: Option<String>,
        message: String,
        hint: Option<String>,
    },
    /// Two policies manage one resource on one host with different desired
    /// state.
    Conflict {
        resource_id: String,
        first_policy: String,
        /// Where the first policy is declared, `file:line:column`.
        first_origin: String,
        second_policy: String,
        second_origin: String,
        /// Where in the second policy, such as `resources[0]`.
        path: String,
        /// The resource's fields whose values differ.
        differences: Vec<String>,
    },
}

impl CompileError {
    /// The policy a diagnostic points at (the second one, for conflicts).
    pub fn policy(&self) -> &str {
        match self {
            CompileError::MissingSource { policy, .. }
            | CompileError::BinarySource { policy, .. }
            | CompileError::Template { policy, .. } => policy,
            CompileError::Conflict { second_policy, .. } => second_policy,
        }
    }

    /// Where in the policy document, as a YAML path.
    pub fn path(&self) -> &str {
        match self {
            CompileError::MissingSource { path, .. }
            | CompileError::BinarySource { path, .. }
            | CompileError::Template { path, .. }
            | CompileError::Conflict { path, .. } => path,
        }
    }

    /// What is wrong, without the policy and path that a diagnostic shows
    /// on its own.
    pub fn message(&self) -> String {
        match self {
            CompileError::MissingSource {
                resource_id,
                source,
                ..
            } => format!("`{resource_id}`: source `{source}` is not in the repo"),
            CompileError::BinarySource {
                resource_id,
                source,
                ..
            } => format!(
                "`{resource_id}`: source `{source}` is not UTF-8 text; binary files are not supported yet"
            ),
            CompileError::Template {
                resource_id,
                template,
                line,
                line_text,
                message,
                ..
            } => {
                let mut text = format!("`{resource_id}`: template {template}");
                if let Some(line) = line {
                    text.push_str(&format!(" line {line}"));
                }
                text.push_str(&format!(": {message}"));
                if let Some(line_text) = line_text {
                    text.push_str(&format!(" in `{line_text}`"));
                }
                text
            }
            CompileError::Conflict {
                resource_id,
                first_policy,
                first_origin,
                second_policy,
                second_origin,
                differences,
                ..
            } => {
                let mut text = format!(
                    "resource `{resource_id}` is declared differently by policy `{first_policy}` ({first_origin}) and policy `{second_policy}` ({second_origin})"
                );
                if !differences.is_empty() {
                    let fields: Vec<String> =
                        differences.iter().map(|f| format!("`{f}`")).collect();
                    text.push_str(&format!("; they differ in {}", fields.join(", ")));
                }
                text
            }
        }
    }

    /// What to do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            CompileError::MissingSource { .. } => {
                Some("add the file to the repo, or correct the path".into())
            }
            CompileError::BinarySource { .. } => {
                Some("ship text files only for now".into())
            }
            CompileError::Template { hint, .. } => hint.clone(),
            CompileError::Conflict { .. } => Some(
                "manage the resource in one policy only, declare it identically in both, or make their targets disjoint"
                    .into(),
            ),
        }
    }

    /// The error as a diagnostic at the policy's document.
    pub fn to_diagnostic(&self, model: &FleetModel) -> Diagnostic {
        let origin = model
            .origins
            .get(&(Kind::Policy, self.policy().to_string()));
        let (file, location) = match origin {
            Some(origin) => (origin.file.as_str(), origin.location),
            None => ("", Location::new(1, 1)),
        };
        Diagnostic::error(file, location, self.path(), self.message()).with_hint(self.hint())
    }
}

impl fmt::Display for CompileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "policy `{}`", self.policy())?;
        if !self.path().is_empty() {
            write!(f, ", {}", self.path())?;
        }
        write!(f, ": {}", self.message())
    }
}

impl std::error::Error for CompileError {}

/// A fleet model prepared for compiling many hosts.
pub struct Compiler<'m> {
    model: &'m FleetModel,
    settings: BundleAgentSettings,
    /// In name order, the order policies apply in.
    policies: Vec<PreparedPolicy<'m>>,
    /// Every template of the model, parsed once.
    templates: Environment<'static>,
}

impl fmt::Debug for Compiler<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Compiler")
            .field("n_policies", &self.policies.len())
            .field("n_templates", &self.templates.templates().count())
            .finish()
    }
}

struct PreparedPolicy<'m> {
    name: &'m str,
    spec: &'m PolicySpec,
    resources: Vec<PreparedResource>,
    checks: Vec<BundleCheck>,
    /// The policy's `vars` as a template value, for hosts without vars of
    /// their own.
    vars: Value,
}

struct PreparedResource {
    id: String,
    /// Index in the policy's `resources`, for diagnostics.
    index: usize,
    body: Body,
}

enum Body {
    /// The same on every host: cloned as it is.
    Ready(Resource),
    /// A file whose content is rendered per host.
    Template {
        /// The file without content, source or template flag.
        base: FileSpec,
        /// The template's name in the environment.
        name: String,
        /// The template as people know it: its repo file, or `inline content`.
        label: String,
        /// YAML path of the template text, for diagnostics.
        path: String,
    },
    /// Broken whatever the host: reported on every host the policy targets.
    Broken(CompileError),
}

/// Per-host values every template of the host sees.
struct HostContext {
    facts: Value,
    labels: Value,
    /// The `Host` document's vars, converted once.
    vars: Option<BTreeMap<String, Value>>,
}

impl<'m> Compiler<'m> {
    /// Prepares `model`: reads `source` files, parses templates, and
    /// resolves every resource that does not depend on the host.
    pub fn new(model: &'m FleetModel, sources: &dyn SourceFiles) -> Self {
        let mut templates = Environment::new();
        // An undefined variable is an error wherever its value is used
        // (printed, iterated, passed to a filter), so a typo never ships an
        // empty setting; only `{% if vars.x %}` may test one, so optional
        // settings need no `is defined` guard.
        templates.set_undefined_behavior(UndefinedBehavior::SemiStrict);
        templates.set_fuel(Some(TEMPLATE_FUEL));
        // Bundles carry configuration files, not HTML: a template named
        // `index.html` must not be escaped.
        templates.set_auto_escape_callback(|_| AutoEscape::None);
        let mut syntax = minijinja::syntax::SyntaxConfig::builder();
        syntax.keep_trailing_newline(true);
        if let Ok(syntax) = syntax.build() {
            templates.set_syntax(syntax);
        }
        let mut preparer = Preparer {
            sources,
            read: HashMap::new(),
            parsed: HashMap::new(),
            templates,
        };
        let policies = model
            .policies
            .iter()
            .map(|(name, spec)| preparer.policy(name, spec))
            .collect();
        let agent = &model.fleet.agent;
        Compiler {
            model,
            settings: BundleAgentSettings {
                interval_secs: agent.interval.as_secs(),
                splay_secs: agent.splay.as_secs(),
                metrics_interval_secs: agent.metrics_interval.as_secs(),
            },
            policies,
            templates: preparer.templates,
        }
    }

    /// Compiles one host: the policies that target it in name order, each
    /// one's resources in declaration order, identical duplicates merged.
    pub fn compile(&self, host: &HostInput) -> Result<Desired, Vec<CompileError>> {
        let labels = effective_labels(self.model, host);
        let host_spec = self.model.hosts.get(&host.name);
        let mut context: Option<HostContext> = None;
        let mut desired = Desired {
            settings: self.settings,
            resources: Vec::new(),
            checks: Vec::new(),
        };
        // Resource id → position in `desired.resources`.
        let mut seen: HashMap<&str, usize> = HashMap::new();
        let mut errors = Vec::new();
        for policy in &self.policies {
            if !targets_contain(self.model, &policy.spec.targets, &host.name, &labels) {
                continue;
            }
            let mut vars: Option<Value> = None;
            for prepared in &policy.resources {
                let resource = match &prepared.body {
                    Body::Ready(resource) => Cow::Borrowed(resource),
                    Body::Broken(error) => {
                        errors.push(error.clone());
                        continue;
                    }
                    Body::Template {
                        base,
                        name,
                        label,
                        path,
                    } => {
                        let context = context
                            .get_or_insert_with(|| HostContext::new(host, host_spec, &labels));
                        let vars = vars.get_or_insert_with(|| policy.vars_for(context));
                        match self.render(name, vars, context) {
                            Ok(content) => Cow::Owned(Resource::File(FileSpec {
                                content: Some(content),
                                ..base.clone()
                            })),
                            Err(error) => {
                                let source = self.templates.get_template(name).ok();
                                errors.push(template_error(
                                    policy.name,
                                    path,
                                    &prepared.id,
                                    label,
                                    &error,
                                    source.as_ref().map(|template| template.source()),
                                ));
                                continue;
                            }
                        }
                    }
                };
                match seen.get(prepared.id.as_str()) {
                    Some(&position) => {
                        let kept = &mut desired.resources[position];
                        if kept.resource == *resource {
                            // The same desired state twice: one entry, and
                            // it is repaired if either policy repairs it.
                            if policy.spec.mode == PolicyMode::Enforce {
                                kept.mode = PolicyMode::Enforce;
                            }
                        } else {
                            errors.push(self.conflict(kept, policy, prepared, &resource));
                        }
                    }
                    None => {
                        seen.insert(&prepared.id, desired.resources.len());
                        desired.resources.push(BundleResource {
                            id: prepared.id.clone(),
                            policy: policy.name.to_string(),
                            mode: policy.spec.mode,
                            resource: resource.into_owned(),
                        });
                    }
                }
            }
            desired.checks.extend(policy.checks.iter().cloned());
        }
        if errors.is_empty() {
            Ok(desired)
        } else {
            Err(errors)
        }
    }

    /// Compiles every host, on all cores; see [`compile_all`].
    pub fn compile_all(
        &self,
        hosts: &[HostInput],
    ) -> Result<BTreeMap<String, Desired>, Vec<Diagnostic>> {
        let n_threads = std::thread::available_parallelism()
            .map_or(1, NonZeroUsize::get)
            .min(hosts.len().div_ceil(MIN_HOSTS_PER_THREAD))
            .max(1);
        let chunk_size = hosts.len().div_ceil(n_threads).max(1);
        let results: Vec<Vec<Result<Desired, Vec<CompileError>>>> = std::thread::scope(|scope| {
            let workers: Vec<_> = hosts
                .chunks(chunk_size)
                .map(|chunk| scope.spawn(move || chunk.iter().map(|h| self.compile(h)).collect()))
                .collect();
            workers
                .into_iter()
                .map(|worker| match worker.join() {
                    Ok(results) => results,
                    Err(panic) => std::panic::resume_unwind(panic),
                })
                .collect()
        });
        let mut compiled = BTreeMap::new();
        let mut failures: BTreeMap<CompileError, (usize, Vec<&str>)> = BTreeMap::new();
        for (host, result) in hosts.iter().zip(results.into_iter().flatten()) {
            match result {
                Ok(desired) => {
                    compiled.insert(host.id.clone(), desired);
                }
                Err(errors) => {
                    for error in errors {
                        let (count, sample) = failures.entry(error).or_default();
                        *count += 1;
                        if sample.len() < N_SAMPLE_HOSTS && !sample.contains(&host.name.as_str()) {
                            sample.push(&host.name);
                        }
                    }
                }
            }
        }
        if failures.is_empty() {
            return Ok(compiled);
        }
        let mut diagnostics: Vec<Diagnostic> = failures
            .iter()
            .map(|(error, (count, sample))| {
                let mut diagnostic = error.to_diagnostic(self.model);
                diagnostic.message.push_str(&on_hosts(*count, sample));
                diagnostic
            })
            .collect();
        diagnostic::sort(&mut diagnostics);
        Err(diagnostics)
    }

    fn render(
        &self,
        name: &str,
        vars: &Value,
        context: &HostContext,
    ) -> Result<String, minijinja::Error> {
        let template = self.templates.get_template(name)?;
        let rendered = template.render(minijinja::context! {
            vars => vars.clone(),
            facts => context.facts.clone(),
            labels => context.labels.clone(),
        })?;
        if rendered.len() > MAX_RENDERED_BYTES {
            return Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                format!("renders to more than {} MiB", MAX_RENDERED_BYTES >> 20),
            ));
        }
        Ok(rendered)
    }

    fn conflict(
        &self,
        kept: &BundleResource,
        policy: &PreparedPolicy<'_>,
        prepared: &PreparedResource,
        resource: &Resource,
    ) -> CompileError {
        let origin = |name: &str| {
            self.model
                .origins
                .get(&(Kind::Policy, name.to_string()))
                .map_or_else(String::new, ToString::to_string)
        };
        CompileError::Conflict {
            resource_id: prepared.id.clone(),
            first_policy: kept.policy.clone(),
            first_origin: origin(&kept.policy),
            second_policy: policy.name.to_string(),
            second_origin: origin(policy.name),
            path: format!("resources[{}]", prepared.index),
            differences: differences(&kept.resource, resource),
        }
    }
}

impl PreparedPolicy<'_> {
    /// The policy's vars overridden by the host's (key by key).
    fn vars_for(&self, context: &HostContext) -> Value {
        let Some(host_vars) = &context.vars else {
            return self.vars.clone();
        };
        let mut vars: BTreeMap<String, Value> = self
            .spec
            .vars
            .iter()
            .map(|(key, value)| (key.clone(), json_to_value(value)))
            .collect();
        for (key, value) in host_vars {
            vars.insert(key.clone(), value.clone());
        }
        Value::from(vars)
    }
}

impl HostContext {
    fn new(host: &HostInput, spec: Option<&HostSpec>, labels: &BTreeMap<String, String>) -> Self {
        let mut facts: BTreeMap<String, Value> = host
            .facts
            .iter()
            .map(|(key, value)| (key.clone(), json_to_value(value)))
            .collect();
        facts.insert("hostname".to_string(), Value::from(host.name.as_str()));
        let labels: BTreeMap<String, Value> = labels
            .iter()
            .map(|(key, value)| (key.clone(), Value::from(value.as_str())))
            .collect();
        let vars = spec.filter(|spec| !spec.vars.is_empty()).map(|spec| {
            spec.vars
                .iter()
                .map(|(key, value)| (key.clone(), json_to_value(value)))
                .collect()
        });
        HostContext {
            facts: Value::from(facts),
            labels: Value::from(labels),
            vars,
        }
    }
}

/// State used while preparing a model: source files read so far and
/// templates parsed so far, so that a file many policies share is read
/// and parsed once.
struct Preparer<'s> {
    sources: &'s dyn SourceFiles,
    read: HashMap<String, Result<String, SourceProblem>>,
    /// Template name → its parse error, if it has one.
    parsed: HashMap<String, Option<minijinja::Error>>,
    templates: Environment<'static>,
}

#[derive(Clone, Copy)]
enum SourceProblem {
    Missing,
    Binary,
}

impl Preparer<'_> {
    fn policy<'m>(&mut self, name: &'m str, spec: &'m PolicySpec) -> PreparedPolicy<'m> {
        let resources = spec
            .resources
            .iter()
            .enumerate()
            .map(|(index, resource)| PreparedResource {
                id: resource.id(),
                index,
                body: self.resource(name, index, resource),
            })
            .collect();
        let checks = spec
            .checks
            .iter()
            .map(|check| {
                let mut check = check.clone();
                if let Some(remediation) = &mut check.remediation {
                    remediation.params.values_mut().for_each(sort_objects);
                }
                BundleCheck {
                    policy: name.to_string(),
                    check,
                }
            })
            .collect();
        let vars: BTreeMap<String, Value> = spec
            .vars
            .iter()
            .map(|(key, value)| (key.clone(), json_to_value(value)))
            .collect();
        PreparedPolicy {
            name,
            spec,
            resources,
            checks,
            vars: Value::from(vars),
        }
    }

    fn resource(&mut self, policy: &str, index: usize, resource: &Resource) -> Body {
        let Resource::File(file) = resource else {
            return Body::Ready(resource.clone());
        };
        let id = resource.id();
        let here = format!("resources[{index}].file");
        let text = match &file.source {
            Some(source) => match self.read(source) {
                Ok(text) => Some(text),
                Err(problem) => {
                    let path = format!("{here}.source");
                    let (policy, resource_id, source) = (policy.to_string(), id, source.clone());
                    return Body::Broken(match problem {
                        SourceProblem::Missing => CompileError::MissingSource {
                            policy,
                            path,
                            resource_id,
                            source,
                        },
                        SourceProblem::Binary => CompileError::BinarySource {
                            policy,
                            path,
                            resource_id,
                            source,
                        },
                    });
                }
            },
            None => file.content.clone(),
        };
        let base = FileSpec {
            content: None,
            source: None,
            template: false,
            ..file.clone()
        };
        let text = match text {
            Some(text) if file.template => text,
            // Validation rejects `template: true` without text to render.
            text => {
                return Body::Ready(Resource::File(FileSpec {
                    content: text,
                    ..base
                }));
            }
        };
        // A repo file used as a template by several policies is parsed once,
        // under its path; inline templates are named after where they are.
        let (name, label, path) = match &file.source {
            Some(source) => (source.clone(), source.clone(), format!("{here}.source")),
            None => (
                format!("{policy}#{here}.content"),
                "inline content".to_string(),
                format!("{here}.content"),
            ),
        };
        let parse_error = self.parsed.entry(name.clone()).or_insert_with(|| {
            self.templates
                .add_template_owned(name.clone(), text.clone())
                .err()
        });
        if let Some(error) = parse_error {
            return Body::Broken(template_error(
                policy,
                &path,
                &id,
                &label,
                error,
                Some(&text),
            ));
        }
        Body::Template {
            base,
            name,
            label,
            path,
        }
    }

    fn read(&mut self, source: &str) -> Result<String, SourceProblem> {
        let sources = self.sources;
        self.read
            .entry(source.to_string())
            .or_insert_with(|| match sources.read(source) {
                None => Err(SourceProblem::Missing),
                Some(bytes) => String::from_utf8(bytes).map_err(|_| SourceProblem::Binary),
            })
            .clone()
    }
}

fn template_error(
    policy: &str,
    path: &str,
    resource_id: &str,
    label: &str,
    error: &minijinja::Error,
    source: Option<&str>,
) -> CompileError {
    let kind = error.kind();
    let message = match error.detail() {
        Some(detail) => format!("{kind}: {detail}"),
        None => kind.to_string(),
    };
    // Without minijinja's `debug` feature the error does not point into the
    // template text: quote the failing line, so people see what failed.
    let line = error.line();
    let line_text = line
        .zip(source)
        .and_then(|(line, source)| source.lines().nth(line.checked_sub(1)?))
        .map(|text| {
            let text = text.trim();
            match text.char_indices().nth(MAX_QUOTED_CHARS) {
                Some((end, _)) => format!("{}…", &text[..end]),
                None => text.to_string(),
            }
        })
        .filter(|text| !text.is_empty());
    let hint = match kind {
        minijinja::ErrorKind::UndefinedError => Some(
            "define the variable in the policy's `vars` or the host's `Host` document, or guard it with `is defined`"
                .to_string(),
        ),
        minijinja::ErrorKind::OutOfFuel => {
            Some("the template runs too long: simplify its loops".to_string())
        }
        _ => None,
    };
    CompileError::Template {
        policy: policy.to_string(),
        path: path.to_string(),
        resource_id: resource_id.to_string(),
        template: label.to_string(),
        line,
        line_text,
        message,
        hint,
    }
}

/// ` (on host web-01)` or ` (on 120 hosts, such as web-01, web-02, web-03)`.
fn on_hosts(count: usize, sample: &[&str]) -> String {
    match sample {
        [only] if count == 1 => format!(" (on host {only})"),
        _ => format!(" (on {count} hosts, such as {})", sample.join(", ")),
    }
}

/// The names of the fields in which two resources differ, for conflict
/// messages: `content`, `mode`, … (or `type` when they are of different
/// kinds, which their equal ids rule out today).
fn differences(a: &Resource, b: &Resource) -> Vec<String> {
    let fields = |resource: &Resource| match serde_json::to_value(resource) {
        Ok(serde_json::Value::Object(outer)) => outer
            .into_iter()
            .next()
            .and_then(|(_, inner)| match inner {
                serde_json::Value::Object(fields) => Some(fields),
                _ => None,
            })
            .unwrap_or_default(),
        _ => serde_json::Map::new(),
    };
    if a.resource_type() != b.resource_type() {
        return vec!["type".to_string()];
    }
    let (a, b) = (fields(a), fields(b));
    let mut names: Vec<String> = a
        .keys()
        .chain(b.keys())
        .filter(|key| a.get(*key) != b.get(*key))
        .cloned()
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Converts a JSON value (policy vars, facts) to a template value.
fn json_to_value(value: &serde_json::Value) -> Value {
    match value {
        serde_json::Value::Null => Value::from(()),
        serde_json::Value::Bool(flag) => Value::from(*flag),
        serde_json::Value::Number(number) => {
            if let Some(int) = number.as_i64() {
                Value::from(int)
            } else if let Some(int) = number.as_u64() {
                Value::from(int)
            } else {
                Value::from(number.as_f64().unwrap_or(f64::NAN))
            }
        }
        serde_json::Value::String(text) => Value::from(text.as_str()),
        serde_json::Value::Array(items) => {
            Value::from(items.iter().map(json_to_value).collect::<Vec<_>>())
        }
        serde_json::Value::Object(map) => Value::from(
            map.iter()
                .map(|(key, value)| (key.clone(), json_to_value(value)))
                .collect::<BTreeMap<String, Value>>(),
        ),
    }
}

/// Sorts the keys of every object in a JSON value, so that free-form values
/// in bundles (remediation parameters) serialize the same way whatever
/// order the YAML gave them in.
fn sort_objects(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            map.sort_keys();
            map.values_mut().for_each(sort_objects);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(sort_objects),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::json;

    use super::*;

    /// Repo files for `source:` fields.
    type Sources = BTreeMap<String, Vec<u8>>;

    fn sources(files: &[(&str, &str)]) -> Sources {
        files
            .iter()
            .map(|(path, text)| (path.to_string(), text.as_bytes().to_vec()))
            .collect()
    }

    /// A validated model from `(path, yaml)` pairs; every document gets
    /// its `apiVersion`. `sources` are repo files too.
    fn model(files: &[(&str, &str)], sources: &Sources) -> FleetModel {
        let texts: Vec<(String, String)> = files
            .iter()
            .map(|(path, text)| {
                let text = text
                    .split("---\n")
                    .map(|doc| format!("apiVersion: muster/v1\n{doc}"))
                    .collect::<Vec<_>>()
                    .join("---\n");
                (path.to_string(), text)
            })
            .collect();
        let repo_files: BTreeSet<String> = texts
            .iter()
            .map(|(path, _)| path.clone())
            .chain(sources.keys().cloned())
            .collect();
        let validation = muster_schemas::load_repo(
            texts
                .iter()
                .map(|(path, text)| (path.as_str(), text.as_bytes())),
            &repo_files,
        );
        assert!(
            validation.diagnostics.is_empty(),
            "{}",
            validation
                .diagnostics
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        );
        validation.model.expect("a valid model")
    }

    fn host(name: &str, labels: &[(&str, &str)], facts: serde_json::Value) -> HostInput {
        let serde_json::Value::Object(facts) = facts else {
            panic!("facts are an object")
        };
        HostInput {
            id: format!("id-{name}"),
            name: name.to_string(),
            labels: labels
                .iter()
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect(),
            facts,
        }
    }

    fn ids(desired: &Desired) -> Vec<(&str, &str)> {
        desired
            .resources
            .iter()
            .map(|r| (r.id.as_str(), r.policy.as_str()))
            .collect()
    }

    fn content<'d>(desired: &'d Desired, id: &str) -> &'d str {
        let resource = desired
            .resources
            .iter()
            .find(|r| r.id == id)
            .unwrap_or_else(|| panic!("no {id}"));
        let Resource::File(file) = &resource.resource else {
            panic!("{id} is not a file")
        };
        assert!(file.source.is_none() && !file.template, "{file:?}");
        file.content.as_deref().expect("content")
    }

    fn one_error(result: Result<Desired, Vec<CompileError>>) -> CompileError {
        let mut errors = result.expect_err("an error");
        assert_eq!(errors.len(), 1, "{errors:#?}");
        errors.remove(0)
    }

    const GROUPS: &str = "kind: Group
name: web
selector: {role: web}
---
kind: Group
name: canaries
hosts: [db-09]
---
kind: Host
name: db-09
---
kind: Host
name: web-02
";

    fn targeted(targets: &str) -> Vec<&'static str> {
        let policy = format!(
            "kind: Policy\nname: p\ntargets: {targets}\nresources:\n  - package: {{name: x}}\n"
        );
        let model = model(
            &[("groups.yaml", GROUPS), ("p.yaml", &policy)],
            &Sources::new(),
        );
        let hosts = [
            host("web-01", &[("role", "web"), ("env", "prod")], json!({})),
            host("web-02", &[("role", "web"), ("env", "staging")], json!({})),
            host(
                "db-01",
                &[("role", "db"), ("env", "prod")],
                json!({"os": "debian"}),
            ),
            host(
                "db-09",
                &[("role", "db"), ("env", "dev")],
                json!({"os": "rocky"}),
            ),
        ];
        let names = ["web-01", "web-02", "db-01", "db-09"];
        let targets = &model.policies["p"].targets;
        hosts
            .iter()
            .zip(names)
            .filter(|(host, _)| targets_match(&model, targets, host))
            .map(|(_, name)| name)
            .collect()
    }

    #[test]
    fn targets_are_groups_hosts_and_selectors_minus_exclusions() {
        assert_eq!(targeted("{groups: [web]}"), ["web-01", "web-02"]);
        assert_eq!(targeted("{groups: [canaries]}"), ["db-09"]);
        assert_eq!(targeted("{hosts: [web-02]}"), ["web-02"]);
        assert_eq!(
            targeted("{groups: [web, canaries]}"),
            ["web-01", "web-02", "db-09"]
        );
        assert_eq!(
            targeted("{selector: {hostname: \"db-*\"}}"),
            ["db-01", "db-09"]
        );
        assert_eq!(
            targeted("{selector: {hostname: \"web-0?\", env: prod}}"),
            ["web-01"]
        );
        assert_eq!(
            targeted("{selector: {env: [prod, staging]}}"),
            ["web-01", "web-02", "db-01"]
        );
        assert_eq!(targeted("{selector: {os: rocky}}"), ["db-09"]);
        assert_eq!(
            targeted("{selector: {}}"),
            ["web-01", "web-02", "db-01", "db-09"]
        );
        assert_eq!(
            targeted("{groups: [web], hosts: [db-09], exclude: {hosts: [web-02]}}"),
            ["web-01", "db-09"]
        );
        assert_eq!(
            targeted("{selector: {}, exclude: {groups: [web, canaries]}}"),
            ["db-01"]
        );
        assert_eq!(
            targeted("{selector: {}, exclude: {selector: {env: \"*o*\"}}}"),
            ["web-02", "db-09"]
        );
    }

    #[test]
    fn host_documents_win_over_token_labels_which_win_over_facts() {
        let model = model(
            &[(
                "hosts.yaml",
                "kind: Host\nname: web-01\nlabels: {tier: gold, os: custom-os}\n",
            )],
            &Sources::new(),
        );
        let web = host(
            "web-01",
            &[
                ("tier", "silver"),
                ("arch", "arm64-token"),
                ("team", "shop"),
            ],
            json!({"os": "debian", "os_version": "12", "arch": "x86_64", "kernel": "6.1.0", "cpus": 4, "uptime": "1d"}),
        );
        let labels = effective_labels(&model, &web);
        let expected: BTreeMap<String, String> = [
            ("arch", "arm64-token"),
            ("hostname", "web-01"),
            ("kernel", "6.1.0"),
            ("os", "custom-os"),
            ("os_version", "12"),
            ("team", "shop"),
            ("tier", "gold"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(labels, expected, "only the label facts become labels");
        // A number as os_version still becomes a label.
        let other = host("db-01", &[], json!({"os_version": 12}));
        assert_eq!(effective_labels(&model, &other)["os_version"], "12");
    }

    const TEMPLATE_REPO: &str = "kind: Policy
name: site
targets: {selector: {}}
vars: {port: 80, server: shop.internal, tags: [a, b]}
resources:
  - file:
      path: /etc/site.conf
      source: files/site.conf.tmpl
      template: true
  - file:
      path: /var/www/index.html
      content: \"<p>{{ facts.hostname }} & {{ labels.role }}</p>\\n\"
      template: true
---
kind: Host
name: web-01
vars: {server: shop.example.com}
";

    const SITE_TEMPLATE: &str =
        "# {{ facts.hostname }} on {{ facts.os }} {{ facts.cpu.cores }} cores
listen {{ vars.port }};
server_name {{ vars.server }};
{% for tag in vars.tags %}tag {{ tag }}
{% endfor %}{% if vars.debug %}debug on
{% endif %}";

    #[test]
    fn templates_see_vars_facts_and_labels_with_host_vars_winning() {
        let files = sources(&[("files/site.conf.tmpl", SITE_TEMPLATE)]);
        let model = model(&[("site.yaml", TEMPLATE_REPO)], &files);
        let facts = json!({"os": "debian", "cpu": {"cores": 8}});
        let web = compile_host(
            &model,
            &files,
            &host("web-01", &[("role", "web")], facts.clone()),
        )
        .expect("compiles");
        assert_eq!(
            content(&web, "file:/etc/site.conf"),
            "# web-01 on debian 8 cores\nlisten 80;\nserver_name shop.example.com;\ntag a\ntag b\n",
            "host vars win; the trailing newline is kept; an undefined var may be tested"
        );
        assert_eq!(
            content(&web, "file:/var/www/index.html"),
            "<p>web-01 & web</p>\n",
            "no HTML escaping, even for .html files"
        );
        let other = compile_host(&model, &files, &host("web-02", &[("role", "web")], facts))
            .expect("compiles");
        assert!(content(&other, "file:/etc/site.conf").contains("server_name shop.internal;"));
    }

    #[test]
    fn undefined_variables_are_errors_naming_the_template_and_line() {
        let files = sources(&[("files/site.conf.tmpl", SITE_TEMPLATE)]);
        let model = model(&[("site.yaml", TEMPLATE_REPO)], &files);
        // No `os` fact: line 1 of the template fails.
        let error = one_error(compile_host(
            &model,
            &files,
            &host("web-01", &[("role", "web")], json!({"cpu": {"cores": 2}})),
        ));
        let CompileError::Template { line, template, .. } = &error else {
            panic!("{error:?}")
        };
        assert_eq!(
            (template.as_str(), *line),
            ("files/site.conf.tmpl", Some(1))
        );
        assert_eq!(
            error.to_string(),
            "policy `site`, resources[0].file.source: `file:/etc/site.conf`: template files/site.conf.tmpl line 1: undefined value in `# {{ facts.hostname }} on {{ facts.os }} {{ facts.cpu.cores }} cores`"
        );
        let diagnostic = error.to_diagnostic(&model);
        assert_eq!(
            (diagnostic.file.as_str(), diagnostic.line),
            ("site.yaml", 1)
        );
        assert!(diagnostic.hint.expect("a hint").contains("`vars`"));
        // An inline template without `labels.role`.
        let error = one_error(compile_host(
            &model,
            &files,
            &host("web-01", &[], json!({"os": "debian", "cpu": {"cores": 2}})),
        ));
        assert_eq!(error.path(), "resources[1].file.content");
        assert!(
            error
                .message()
                .contains("template inline content line 1: undefined value"),
            "{error}"
        );
    }

    #[test]
    fn broken_templates_are_reported_with_their_line() {
        let files = sources(&[("files/bad.tmpl", "ok\n{% for x in %}\n")]);
        let model = model(
            &[(
                "p.yaml",
                "kind: Policy\nname: p\ntargets: {selector: {}}\nresources:\n  - file: {path: /etc/bad, source: files/bad.tmpl, template: true}\n",
            )],
            &files,
        );
        let error = one_error(compile_host(&model, &files, &host("h", &[], json!({}))));
        let CompileError::Template {
            line, line_text, ..
        } = &error
        else {
            panic!("{error:?}")
        };
        assert_eq!(*line, Some(2));
        assert_eq!(line_text.as_deref(), Some("{% for x in %}"));
        assert!(error.message().contains("syntax error"), "{error}");
    }

    #[test]
    fn runaway_templates_run_out_of_fuel() {
        let model = model(
            &[(
                "p.yaml",
                "kind: Policy\nname: p\ntargets: {selector: {}}\nresources:\n  - file:\n      path: /etc/big\n      template: true\n      content: \"{% for i in range(10000) %}{% for j in range(10000) %}x{% endfor %}{% endfor %}\"\n",
            )],
            &Sources::new(),
        );
        let error = one_error(compile_host(
            &model,
            &Sources::new(),
            &host("h", &[], json!({})),
        ));
        assert!(error.message().contains("fuel"), "{error}");
        assert!(error.hint().expect("a hint").contains("loops"));
    }

    const SOURCE_REPO: &str = "kind: Policy
name: motd
targets: {selector: {}}
resources:
  - file: {path: /etc/motd, source: files/motd, mode: \"0644\"}
  - file: {path: /etc/issue, content: \"{{ not a template }}\"}
  - file: {path: /etc/gone, ensure: absent}
";

    #[test]
    fn sources_are_inlined_and_only_templates_render() {
        let files = sources(&[("files/motd", "Welcome {{ facts.hostname }}\n")]);
        let model = model(&[("motd.yaml", SOURCE_REPO)], &files);
        let desired = compile_host(&model, &files, &host("h", &[], json!({}))).expect("compiles");
        assert_eq!(
            content(&desired, "file:/etc/motd"),
            "Welcome {{ facts.hostname }}\n"
        );
        assert_eq!(content(&desired, "file:/etc/issue"), "{{ not a template }}");
        let Resource::File(gone) = &desired.resources[2].resource else {
            panic!()
        };
        assert!(gone.content.is_none() && gone.source.is_none());
    }

    #[test]
    fn binary_and_missing_sources_are_errors() {
        let listed = sources(&[("files/motd", "x")]);
        let model = model(&[("motd.yaml", SOURCE_REPO)], &listed);
        let mut binary = Sources::new();
        binary.insert("files/motd".into(), vec![0xff, 0xfe, 0]);
        let error = one_error(compile_host(&model, &binary, &host("h", &[], json!({}))));
        assert!(
            matches!(error, CompileError::BinarySource { .. }),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            "policy `motd`, resources[0].file.source: `file:/etc/motd`: source `files/motd` is not UTF-8 text; binary files are not supported yet"
        );
        let error = one_error(compile_host(
            &model,
            &Sources::new(),
            &host("h", &[], json!({})),
        ));
        assert!(
            matches!(error, CompileError::MissingSource { .. }),
            "{error:?}"
        );
    }

    const OVERLAP_REPO: &[(&str, &str)] = &[
        (
            "policies/base.yaml",
            "kind: Policy
name: base
targets: {selector: {}}
resources:
  - package: {name: curl}
  - file: {path: /etc/motd, content: \"base\\n\", mode: \"0644\"}
checks:
  - name: curl-present
    command: [curl, --version]
",
        ),
        (
            "policies/web.yaml",
            "kind: Policy
name: web
mode: audit
targets: {selector: {role: web}}
resources:
  - package: {name: nginx}
  - package: {name: curl}
  - file: {path: /etc/motd, content: \"web\\n\", mode: \"0600\"}
",
        ),
        (
            "policies/zz-audit.yaml",
            "kind: Policy
name: zz-audit
mode: audit
targets: {selector: {}}
resources:
  - package: {name: curl}
  - service: {name: cron, state: running}
checks:
  - name: cron-running
    command: [systemctl, is-active, cron]
    remediation: {script: fix, params: {unit: cron, count: 3}}
---
kind: Script
name: fix
body: \"systemctl restart \\\"$MUSTER_PARAM_UNIT\\\"\"
parameters:
  - {name: unit, type: string}
  - {name: count, type: integer, default: 1}
",
        ),
    ];

    #[test]
    fn conflicting_resources_name_both_policies_and_files() {
        let model = model(OVERLAP_REPO, &Sources::new());
        let error = one_error(compile_host(
            &model,
            &Sources::new(),
            &host("web-01", &[("role", "web")], json!({})),
        ));
        assert_eq!(
            error.message(),
            "resource `file:/etc/motd` is declared differently by policy `base` (policies/base.yaml:1:1) and policy `web` (policies/web.yaml:1:1); they differ in `content`, `mode`"
        );
        let hosts: Vec<HostInput> = (1..=5)
            .map(|i| host(&format!("web-{i:02}"), &[("role", "web")], json!({})))
            .chain([host("db-01", &[], json!({}))])
            .collect();
        let diagnostics =
            compile_all(&model, &Sources::new(), &hosts).expect_err("web hosts conflict");
        assert_eq!(
            diagnostics.len(),
            1,
            "one diagnostic for five hosts: {diagnostics:#?}"
        );
        let diagnostic = &diagnostics[0];
        assert_eq!(
            (diagnostic.file.as_str(), diagnostic.path.as_str()),
            ("policies/web.yaml", "resources[2]")
        );
        assert!(
            diagnostic
                .message
                .ends_with("(on 5 hosts, such as web-01, web-02, web-03)"),
            "{diagnostic}"
        );
        assert!(
            diagnostic
                .hint
                .as_deref()
                .is_some_and(|h| h.contains("one policy only"))
        );
    }

    #[test]
    fn identical_duplicates_merge_and_modes_and_checks_are_carried() {
        let model = model(OVERLAP_REPO, &Sources::new());
        let desired = compile_host(&model, &Sources::new(), &host("db-01", &[], json!({})))
            .expect("compiles");
        assert_eq!(
            ids(&desired),
            [
                ("package:curl", "base"),
                ("file:/etc/motd", "base"),
                ("service:cron", "zz-audit"),
            ],
            "policies by name, resources in order, duplicates once"
        );
        let modes: Vec<PolicyMode> = desired.resources.iter().map(|r| r.mode).collect();
        assert_eq!(
            modes,
            [PolicyMode::Enforce, PolicyMode::Enforce, PolicyMode::Audit],
            "an enforced duplicate stays enforced"
        );
        let checks: Vec<(&str, &str)> = desired
            .checks
            .iter()
            .map(|c| (c.policy.as_str(), c.check.name.as_str()))
            .collect();
        assert_eq!(
            checks,
            [("base", "curl-present"), ("zz-audit", "cron-running")]
        );
        let params = serde_json::to_string(
            &desired.checks[1]
                .check
                .remediation
                .as_ref()
                .expect("remediation")
                .params,
        )
        .expect("json");
        assert_eq!(params, r#"{"count":3,"unit":"cron"}"#);
        assert_eq!(
            desired.settings,
            BundleAgentSettings {
                interval_secs: 300,
                splay_secs: 30,
                metrics_interval_secs: 60
            }
        );
    }

    #[test]
    fn free_form_values_are_sorted_at_every_depth() {
        let mut value = json!({"z": 1, "a": [{"y": 2, "b": {"d": 0, "c": 1}}]});
        sort_objects(&mut value);
        assert_eq!(
            serde_json::to_string(&value).expect("json"),
            r#"{"a":[{"b":{"c":1,"d":0},"y":2}],"z":1}"#
        );
    }

    #[test]
    fn settings_come_from_the_fleet_document() {
        let model = model(
            &[(
                "fleet.yaml",
                "kind: Fleet\nname: prod\nagent: {interval: 2m, splay: 10s, metrics_interval: 15s}\n",
            )],
            &Sources::new(),
        );
        let desired =
            compile_host(&model, &Sources::new(), &host("h", &[], json!({}))).expect("compiles");
        assert_eq!(
            desired,
            Desired {
                settings: BundleAgentSettings {
                    interval_secs: 120,
                    splay_secs: 10,
                    metrics_interval_secs: 15
                },
                resources: vec![],
                checks: vec![],
            }
        );
    }

    #[test]
    fn output_is_deterministic_and_hashes_are_stable() {
        let files = sources(&[("files/site.conf.tmpl", SITE_TEMPLATE)]);
        let mut repo: Vec<(&str, &str)> = OVERLAP_REPO[..1].to_vec();
        repo.push(("site.yaml", TEMPLATE_REPO));
        let model = model(&repo, &files);
        // Enough hosts for several threads.
        let hosts: Vec<HostInput> = (0..3 * MIN_HOSTS_PER_THREAD)
            .map(|i| {
                host(
                    &format!("web-{i:04}"),
                    &[("role", "web")],
                    json!({"os": "debian", "cpu": {"cores": i % 7}}),
                )
            })
            .collect();
        let first = compile_all(&model, &files, &hosts).expect("compiles");
        let mut reversed = hosts.clone();
        reversed.reverse();
        let second = compile_all(&model, &files, &reversed).expect("compiles");
        assert_eq!(first, second);
        assert_eq!(first.len(), hosts.len());
        for host in &hosts[..5] {
            let alone = compile_host(&model, &files, host).expect("compiles");
            assert_eq!(
                alone.to_canonical_json(),
                first[&host.id].to_canonical_json()
            );
        }
        // Hosts with the same inputs share a hash; different cores, not.
        let hash = |i: usize| first[&hosts[i].id].content_hash();
        assert_eq!(
            content(&first[&hosts[7].id], "file:/etc/site.conf"),
            "# web-0007 on debian 0 cores\nlisten 80;\nserver_name shop.internal;\ntag a\ntag b\n"
        );
        assert_ne!(hash(0), hash(1));
        assert_eq!(
            hash(0),
            compile_host(&model, &files, &hosts[0])
                .expect("compiles")
                .content_hash()
        );
        // A change to one policy's target set changes only its hosts.
        let mut changed = model.clone();
        changed
            .policies
            .get_mut("base")
            .expect("base")
            .targets
            .selector = Some(Selector(
            [(
                "hostname".to_string(),
                muster_schemas::model::LabelMatch::One("web-000*".into()),
            )]
            .into(),
        ));
        let after = compile_all(&changed, &files, &hosts).expect("compiles");
        let n_changed = hosts
            .iter()
            .filter(|h| first[&h.id].content_hash() != after[&h.id].content_hash())
            .count();
        assert_eq!(n_changed, hosts.len() - 10);
    }
}
