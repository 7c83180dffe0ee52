//! Validation of a whole fleet repo: every check that needs more than one
//! value at a time (references between documents, duplicate names, rules
//! between fields), on top of the structural problems found while parsing.
//! All problems are collected; nothing stops at the first.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use crate::diagnostic::{self, Diagnostic, Severity};
use crate::load::{ParsedDocument, ParsedFile};
use crate::model::*;
use crate::suggest;
use crate::yaml::{Location, Node, Value};

/// The outcome of validating a repo.
#[derive(Debug)]
pub struct Validation {
    /// The model, when there are no errors.
    pub model: Option<FleetModel>,
    /// Every problem, sorted by file and position.
    pub diagnostics: Vec<Diagnostic>,
    /// Fleet files read, and documents found in them.
    pub n_files: usize,
    pub n_documents: usize,
}

impl Validation {
    pub fn n_errors(&self) -> usize {
        self.diagnostics.iter().filter(|d| d.is_error()).count()
    }
}

/// Validates parsed fleet files. `repo_files` lists every file of the repo
/// (relative paths with `/`), for checking `source` references.
///
/// Files that documents use as a `source` (a YAML configuration file
/// shipped to hosts, say) are content, not fleet documents: they are left
/// out, along with anything their parsing reported.
pub fn validate(mut files: Vec<ParsedFile>, repo_files: &BTreeSet<String>) -> Validation {
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let sources = referenced_sources(&files);
    // A file that holds Muster documents stays a fleet file even when named
    // as a source; the reference to it is the error (see `check_repo_file`).
    let fleet_sources: BTreeSet<String> = files
        .iter()
        .filter(|file| sources.contains(&file.path) && holds_documents(file))
        .map(|file| file.path.clone())
        .collect();
    files.retain(|file| !sources.contains(&file.path) || fleet_sources.contains(&file.path));

    let mut diagnostics: Vec<Diagnostic> = files
        .iter()
        .flat_map(|f| f.diagnostics.iter().cloned())
        .collect();
    let n_files = files.len();
    let n_documents = files.iter().map(|f| f.documents.len()).sum();

    let mut index = Index::build(&files, &mut diagnostics);
    index.fleet_sources = fleet_sources;
    let mut model = FleetModel::default();
    for file in &files {
        for document in &file.documents {
            let mut ctx = DocCtx {
                file: &file.path,
                document,
                out: &mut diagnostics,
            };
            if let Some(spec) = &document.spec {
                check_document(&mut ctx, spec, &index, repo_files);
            }
        }
    }

    diagnostic::sort(&mut diagnostics);
    let valid = !diagnostics.iter().any(Diagnostic::is_error);
    if valid {
        let mut seen_fleet = false;
        for file in files {
            for document in file.documents {
                let origin = Origin {
                    file: file.path.clone(),
                    location: document.location(),
                };
                if let Some(spec) = document.spec {
                    seen_fleet |= spec.kind() == Kind::Fleet;
                    model.insert(spec, origin);
                }
            }
        }
        if !seen_fleet {
            model.fleet.name = "fleet".into();
        }
    }
    Validation {
        model: valid.then_some(model),
        diagnostics,
        n_files,
        n_documents,
    }
}

fn holds_documents(file: &ParsedFile) -> bool {
    file.documents
        .iter()
        .any(|document| document.node.get("apiVersion").and_then(Node::as_str) == Some(API_VERSION))
}

/// Repo files named by `source` fields of file resources and scripts.
fn referenced_sources(files: &[ParsedFile]) -> BTreeSet<String> {
    let mut sources = BTreeSet::new();
    for document in files.iter().flat_map(|f| &f.documents) {
        match &document.spec {
            Some(Spec::Policy(policy)) => {
                for resource in &policy.resources {
                    if let Resource::File(FileSpec {
                        source: Some(source),
                        ..
                    }) = resource
                    {
                        sources.insert(source.clone());
                    }
                }
            }
            Some(Spec::Script(ScriptSpec {
                source: Some(source),
                ..
            })) => {
                sources.insert(source.clone());
            }
            _ => {}
        }
    }
    sources
}

/// Names declared in the repo, for reference checks.
struct Index<'a> {
    names: HashMap<Kind, BTreeMap<&'a str, Origin>>,
    /// Some fleet file could not be parsed at all, so names may be missing.
    incomplete: bool,
    /// Repo files named as `source` that hold fleet documents themselves.
    fleet_sources: BTreeSet<String>,
    scripts: BTreeMap<&'a str, &'a ScriptSpec>,
    roles: BTreeMap<&'a str, &'a RoleSpec>,
    checks: BTreeSet<&'a str>,
}

impl<'a> Index<'a> {
    fn build(files: &'a [ParsedFile], diagnostics: &mut Vec<Diagnostic>) -> Self {
        let mut index = Index {
            names: HashMap::new(),
            incomplete: files
                .iter()
                .any(|f| f.documents.is_empty() && f.diagnostics.iter().any(Diagnostic::is_error)),
            fleet_sources: BTreeSet::new(),
            scripts: BTreeMap::new(),
            roles: BTreeMap::new(),
            checks: BTreeSet::new(),
        };
        for file in files {
            for document in &file.documents {
                let (Some(kind), Some(name)) = (
                    document.kind.or(document.assumed_kind),
                    document.name.as_deref(),
                ) else {
                    continue;
                };
                let location = document
                    .node
                    .get("name")
                    .map_or(document.location(), |node| node.location);
                let origin = Origin {
                    file: file.path.clone(),
                    location,
                };
                let declared = index.names.entry(kind).or_default();
                if kind == Kind::Fleet
                    && let Some(first) = declared.values().next()
                {
                    diagnostics.push(
                        Diagnostic::error(
                            &file.path,
                            document.location(),
                            "",
                            format!("more than one Fleet document (the first is at {first})"),
                        )
                        .with_hint(Some("keep one Fleet document with all fleet settings")),
                    );
                    continue;
                }
                match declared.get(name) {
                    Some(first) => diagnostics.push(
                        Diagnostic::error(
                            &file.path,
                            location,
                            "name",
                            format!("duplicate {kind} `{name}`: also declared at {first}"),
                        )
                        .with_hint(Some(format!("rename one of them; {kind} names are unique"))),
                    ),
                    None => {
                        declared.insert(name, origin);
                    }
                }
                match &document.spec {
                    Some(Spec::Script(script)) => {
                        index.scripts.entry(name).or_insert(script);
                    }
                    Some(Spec::Role(role)) => {
                        index.roles.entry(name).or_insert(role);
                    }
                    Some(Spec::Policy(policy)) => {
                        index
                            .checks
                            .extend(policy.checks.iter().map(|c| c.name.as_str()));
                    }
                    _ => {}
                }
            }
        }
        index
    }

    fn has(&self, kind: Kind, name: &str) -> bool {
        self.names
            .get(&kind)
            .is_some_and(|names| names.contains_key(name))
    }

    fn names(&self, kind: Kind) -> impl Iterator<Item = &str> {
        self.names
            .get(&kind)
            .into_iter()
            .flat_map(|names| names.keys().copied())
    }
}

/// A path into a document, such as `resources[2].file.mode`.
#[derive(Debug, Clone, Default)]
struct YPath(Vec<Seg>);

#[derive(Debug, Clone)]
enum Seg {
    Key(String),
    Index(usize),
}

impl YPath {
    fn key(&self, key: &str) -> YPath {
        let mut path = self.clone();
        path.0.push(Seg::Key(key.to_string()));
        path
    }

    fn index(&self, index: usize) -> YPath {
        let mut path = self.clone();
        path.0.push(Seg::Index(index));
        path
    }

    fn parent(&self) -> Option<YPath> {
        let mut path = self.clone();
        path.0.pop()?;
        Some(path)
    }

    /// The node at exactly this path.
    fn node<'n>(&self, root: &'n Node) -> Option<&'n Node> {
        let mut node = root;
        for seg in &self.0 {
            node = match (seg, &node.value) {
                (Seg::Key(key), Value::Map(_)) => node.get(key)?,
                (Seg::Index(index), Value::Seq(items)) => items.get(*index)?,
                _ => return None,
            };
        }
        Some(node)
    }

    /// The node at this path, or the deepest ancestor that exists.
    fn locate(&self, root: &Node) -> Location {
        let mut node = root;
        for seg in &self.0 {
            let next = match (seg, &node.value) {
                (Seg::Key(key), Value::Map(_)) => node.get(key),
                (Seg::Index(index), Value::Seq(items)) => items.get(*index),
                _ => None,
            };
            match next {
                Some(next) => node = next,
                None => break,
            }
        }
        node.location
    }
}

impl fmt::Display for YPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(key) if i == 0 => write!(f, "{key}")?,
                Seg::Key(key) => write!(f, ".{key}")?,
                Seg::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

/// Where a document's diagnostics go.
struct DocCtx<'a, 'o> {
    file: &'a str,
    document: &'a ParsedDocument,
    out: &'o mut Vec<Diagnostic>,
}

impl DocCtx<'_, '_> {
    fn error(&mut self, path: &YPath, message: impl Into<String>, hint: Option<String>) {
        self.report(Severity::Error, path, message, hint);
    }

    /// A problem that does not make the repo invalid: something that works,
    /// but not as its author likely meant.
    fn warning(&mut self, path: &YPath, message: impl Into<String>, hint: Option<String>) {
        self.report(Severity::Warning, path, message, hint);
    }

    fn report(
        &mut self,
        severity: Severity,
        path: &YPath,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        let path_text = path.to_string();
        if self.is_broken(&path_text) {
            return;
        }
        let location = path.locate(&self.document.node);
        let mut diagnostic =
            Diagnostic::error(self.file, location, path_text, message).with_hint(hint);
        diagnostic.severity = severity;
        self.out.push(diagnostic);
    }

    /// Whether a structural problem was already reported at or above `path`
    /// (or below it: a placeholder there would give a false report).
    fn is_broken(&self, path: &str) -> bool {
        self.document.broken_paths.iter().any(|broken| {
            broken.is_empty()
                || path == broken
                || is_beneath(path, broken)
                || is_beneath(broken, path)
        })
    }

    fn reference(&mut self, index: &Index<'_>, kind: Kind, path: &YPath, name: &str) {
        // When a file could not be read at all, its names are unknown:
        // reporting every use of them would bury the real problem.
        if index.has(kind, name) || index.incomplete {
            return;
        }
        // Names already listed beside this one are no useful suggestion.
        let siblings: Vec<&str> = path
            .parent()
            .and_then(|parent| parent.node(&self.document.node))
            .map(|list| match &list.value {
                Value::Seq(items) => items.iter().filter_map(Node::as_str).collect(),
                _ => Vec::new(),
            })
            .unwrap_or_default();
        let candidates = index
            .names(kind)
            .filter(|candidate| !siblings.contains(candidate));
        let hint = suggest::did_you_mean(name, candidates).or_else(|| match kind {
            Kind::Host => Some("declare it with a `Host` document, or select it by label: `selector: {hostname: ...}`".into()),
            _ => Some(format!("declare it with a `{kind}` document")),
        });
        self.error(
            path,
            format!("{} `{name}` does not exist", kind_noun(kind)),
            hint,
        );
    }
}

impl DocCtx<'_, '_> {
    /// Whether any structural problem lies beneath the top-level `key`.
    fn has_broken_beneath(&self, key: &str) -> bool {
        self.document
            .broken_paths
            .iter()
            .any(|broken| is_beneath(broken, key))
    }
}

fn is_beneath(path: &str, ancestor: &str) -> bool {
    if ancestor.is_empty() {
        return !path.is_empty();
    }
    path.strip_prefix(ancestor)
        .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
}

fn kind_noun(kind: Kind) -> &'static str {
    match kind {
        Kind::Fleet => "fleet",
        Kind::Host => "host",
        Kind::Group => "group",
        Kind::Policy => "policy",
        Kind::Script => "script",
        Kind::AlertRule => "alert rule",
        Kind::Channel => "channel",
        Kind::Window => "window",
        Kind::Role => "role",
        Kind::RoleBinding => "role binding",
        Kind::Team => "team",
    }
}

fn check_document(
    ctx: &mut DocCtx<'_, '_>,
    spec: &Spec,
    index: &Index<'_>,
    repo_files: &BTreeSet<String>,
) {
    let root = YPath::default();
    check_name(ctx, &root.key("name"), spec.name(), "name");
    match spec {
        Spec::Fleet(fleet) => check_fleet(ctx, fleet),
        Spec::Host(host) => {
            for key in host.labels.keys() {
                check_label_key(ctx, &root.key("labels").key(key), key);
            }
        }
        Spec::Group(group) => {
            if group.selector.is_none() && group.hosts.is_empty() {
                if ctx.document.node.get("selector").is_some() {
                    ctx.error(
                        &root.key("selector"),
                        "selector is empty",
                        Some(
                            "write `selector: {}` to select every host, or list labels to match"
                                .into(),
                        ),
                    );
                } else {
                    ctx.error(
                        &root,
                        "group selects no hosts",
                        Some(
                            "add a `selector` (`{}` selects every host) or a list of `hosts`"
                                .into(),
                        ),
                    );
                }
            }
            if let Some(selector) = &group.selector {
                check_selector(ctx, &root.key("selector"), selector);
            }
            for (i, host) in group.hosts.iter().enumerate() {
                ctx.reference(index, Kind::Host, &root.key("hosts").index(i), host);
            }
        }
        Spec::Policy(policy) => check_policy(ctx, policy, index, repo_files),
        Spec::Script(script) => check_script(ctx, script, index, repo_files),
        Spec::AlertRule(rule) => check_alert_rule(ctx, rule, index),
        Spec::Channel(channel) => check_channel(ctx, channel),
        Spec::Window(window) => {
            if window.duration.as_secs() == 0 {
                ctx.error(
                    &root.key("duration"),
                    "a window must last longer than 0s",
                    None,
                );
            }
            if !window.silence_alerts && !window.hold_rollouts {
                ctx.error(
                    &root.key("silence_alerts"),
                    "window does nothing: neither `silence_alerts` nor `hold_rollouts` is true",
                    Some("set `silence_alerts: true` or `hold_rollouts: true`".into()),
                );
            }
            check_targets(ctx, &root.key("targets"), &window.targets, index, true);
        }
        Spec::Role(role) => check_role(ctx, role, index),
        Spec::RoleBinding(binding) => check_role_binding(ctx, binding, index),
        Spec::Team(team) => {
            let mut seen = BTreeSet::new();
            for (i, member) in team.members.iter().enumerate() {
                let path = root.key("members").index(i);
                check_name(ctx, &path, member, "user name");
                if !seen.insert(member) {
                    ctx.error(&path, format!("`{member}` is listed twice"), None);
                }
            }
        }
    }
}

/// Names: letters, digits, `.`, `_`, `-`; starting with a letter or digit.
fn check_name(ctx: &mut DocCtx<'_, '_>, path: &YPath, name: &str, what: &str) {
    let valid_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    let valid_start = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    if name.is_empty() {
        ctx.error(path, format!("{what} is empty"), None);
    } else if !valid_chars || !valid_start || name.len() > 253 {
        ctx.error(
            path,
            format!("invalid {what} `{name}`"),
            Some("use letters, digits, `.`, `_` and `-`, starting with a letter or digit (at most 253)".into()),
        );
    }
}

fn check_label_key(ctx: &mut DocCtx<'_, '_>, path: &YPath, key: &str) {
    let valid = !key.is_empty()
        && key.len() <= 253
        && key
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'));
    if !valid {
        ctx.error(
            path,
            format!("invalid label key `{key}`"),
            Some(
                "use letters, digits, `.`, `_`, `-` and `/`, starting with a letter or digit"
                    .into(),
            ),
        );
    }
}

fn check_selector(ctx: &mut DocCtx<'_, '_>, path: &YPath, selector: &Selector) {
    for (key, wanted) in &selector.0 {
        check_label_key(ctx, &path.key(key), key);
        if wanted.patterns().is_empty() {
            ctx.error(
                &path.key(key),
                format!("label `{key}` lists no values"),
                Some("list at least one value, or use \"*\"".into()),
            );
        }
    }
}

fn check_targets(
    ctx: &mut DocCtx<'_, '_>,
    path: &YPath,
    targets: &Targets,
    index: &Index<'_>,
    required: bool,
) {
    if required && targets.is_empty() {
        ctx.error(
            path,
            "targets select no hosts",
            Some("add `groups`, `hosts` or a `selector`".into()),
        );
    }
    for (i, group) in targets.groups.iter().enumerate() {
        ctx.reference(index, Kind::Group, &path.key("groups").index(i), group);
    }
    for (i, host) in targets.hosts.iter().enumerate() {
        ctx.reference(index, Kind::Host, &path.key("hosts").index(i), host);
    }
    if let Some(selector) = &targets.selector {
        check_selector(ctx, &path.key("selector"), selector);
    }
    if let Some(exclude) = &targets.exclude {
        let path = path.key("exclude");
        for (i, group) in exclude.groups.iter().enumerate() {
            ctx.reference(index, Kind::Group, &path.key("groups").index(i), group);
        }
        for (i, host) in exclude.hosts.iter().enumerate() {
            ctx.reference(index, Kind::Host, &path.key("hosts").index(i), host);
        }
        if let Some(selector) = &exclude.selector {
            check_selector(ctx, &path.key("selector"), selector);
        }
    }
}

fn check_fleet(ctx: &mut DocCtx<'_, '_>, fleet: &FleetSpec) {
    let root = YPath::default();
    let agent = root.key("agent");
    if fleet.agent.interval.as_secs() < 10 {
        ctx.error(
            &agent.key("interval"),
            "agent interval must be at least 10s",
            None,
        );
    }
    if fleet.agent.offline_after <= fleet.agent.interval {
        ctx.error(
            &agent.key("offline_after"),
            format!(
                "offline_after ({}) must be longer than the agent interval ({})",
                fleet.agent.offline_after, fleet.agent.interval
            ),
            Some("hosts would be reported offline between two regular check-ins".into()),
        );
    }
    if fleet.bundles.expiry.as_secs() < 3600 {
        ctx.error(
            &root.key("bundles").key("expiry"),
            "bundle expiry must be at least 1h",
            Some("hosts that miss a few check-ins would stop applying their bundle".into()),
        );
    }
    let signatures = root.key("commit_signatures");
    if fleet.commit_signatures.required && fleet.commit_signatures.allowed_signers.is_empty() {
        ctx.error(
            &signatures.key("allowed_signers"),
            "commit signatures are required, but no signer is allowed",
            Some("list the OpenSSH public keys allowed to sign commits".into()),
        );
    }
    for (i, signer) in fleet.commit_signatures.allowed_signers.iter().enumerate() {
        let path = signatures.key("allowed_signers").index(i);
        if let Err(message) = check_ssh_public_key(&signer.key) {
            ctx.error(
                &path.key("key"),
                message,
                Some("paste one line of an OpenSSH `.pub` file".into()),
            );
        }
    }
    check_rollout(ctx, &root.key("rollout"), &fleet.rollout);
}

fn check_rollout(ctx: &mut DocCtx<'_, '_>, path: &YPath, rollout: &RolloutSpec) {
    if rollout.max_parallel == Some(Amount::Count(0)) {
        ctx.error(
            &path.key("max_parallel"),
            "max_parallel must be at least 1",
            None,
        );
    }
}

const SSH_KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// A light shape check of an OpenSSH public key line; the key itself is
/// decoded where it is used.
fn check_ssh_public_key(line: &str) -> Result<(), String> {
    let mut parts = line.split_whitespace();
    let (Some(key_type), Some(data)) = (parts.next(), parts.next()) else {
        return Err("not an OpenSSH public key: expected `<type> <base64> [comment]`".into());
    };
    if !SSH_KEY_TYPES.contains(&key_type) {
        return Err(format!("unsupported SSH key type `{key_type}`"));
    }
    let base64 = data.len() >= 16
        && data
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='));
    if !base64 {
        return Err("the key data is not base64".into());
    }
    Ok(())
}

fn check_repo_file(
    ctx: &mut DocCtx<'_, '_>,
    path: &YPath,
    source: &str,
    index: &Index<'_>,
    repo_files: &BTreeSet<String>,
) {
    if index.fleet_sources.contains(source) {
        ctx.error(
            path,
            format!("`{source}` holds fleet documents and cannot be used as content"),
            Some("name a plain file, such as one under `files/`".into()),
        );
        return;
    }
    if source.starts_with('/') {
        ctx.error(
            path,
            format!("source `{source}` is absolute"),
            Some("name the file relative to the fleet repo's root, such as `files/motd`".into()),
        );
        return;
    }
    if source
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        ctx.error(
            path,
            format!("source `{source}` is not a plain relative path"),
            Some("remove `..`, `.` and doubled slashes; sources stay inside the repo".into()),
        );
        return;
    }
    if !repo_files.contains(source) {
        let hint =
            suggest::did_you_mean(source, repo_files.iter().map(String::as_str)).or_else(|| {
                Some("add the file to the repo, or fix the path (relative to the repo root)".into())
            });
        ctx.error(
            path,
            format!("file `{source}` does not exist in the repo"),
            hint,
        );
    }
}

fn check_command(ctx: &mut DocCtx<'_, '_>, path: &YPath, command: &[String], shell: bool) {
    if command.is_empty() || command[0].is_empty() {
        ctx.error(
            path,
            "command is empty",
            Some(
                "give the program and its arguments, such as [\"systemctl\", \"daemon-reload\"]"
                    .into(),
            ),
        );
    } else if shell && command.len() > 1 {
        ctx.error(
            path,
            "with `shell: true`, the command is one string of shell script",
            Some(
                "join the words into one string, or drop `shell: true` to run an argument vector"
                    .into(),
            ),
        );
    }
}

fn check_env_name(ctx: &mut DocCtx<'_, '_>, path: &YPath, name: &str) {
    let valid = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        ctx.error(
            path,
            format!("invalid environment variable name `{name}`"),
            Some("use letters, digits and `_`, not starting with a digit".into()),
        );
    }
}

fn check_policy(
    ctx: &mut DocCtx<'_, '_>,
    policy: &PolicySpec,
    index: &Index<'_>,
    repo_files: &BTreeSet<String>,
) {
    let root = YPath::default();
    check_targets(ctx, &root.key("targets"), &policy.targets, index, true);
    if policy.resources.is_empty() && policy.checks.is_empty() {
        ctx.error(
            &root,
            "policy declares no resources and no checks",
            Some("add `resources` or `checks`".into()),
        );
    }
    let mut declared: BTreeMap<String, usize> = BTreeMap::new();
    for (i, resource) in policy.resources.iter().enumerate() {
        let type_name = resource.resource_type().as_str();
        let path = root.key("resources").index(i).key(type_name);
        let id = resource.id();
        if let Some(first) = declared.get(&id) {
            ctx.error(
                &path,
                format!(
                    "resource `{id}` is declared twice in this policy (first at resources[{first}])"
                ),
                Some("merge the two declarations into one".into()),
            );
        } else {
            check_resource(ctx, &path, resource, index, repo_files);
        }
        let check_ids = |ctx: &mut DocCtx<'_, '_>, field: &str, ids: &[String]| {
            for (j, wanted) in ids.iter().enumerate() {
                // A resource whose path or name was broken has no usable id:
                // references to it were reported through that problem.
                if declared.contains_key(wanted) || ctx.has_broken_beneath("resources") {
                    continue;
                }
                let later = policy.resources[i + 1..].iter().any(|r| r.id() == *wanted);
                let (message, hint) = if later {
                    (
                        format!("`{wanted}` is declared after this resource"),
                        Some("resources apply in order: move it above this one".into()),
                    )
                } else if *wanted == id {
                    (format!("resource `{id}` refers to itself"), None)
                } else {
                    let ids: Vec<String> = policy.resources.iter().map(Resource::id).collect();
                    (
                        format!("no resource `{wanted}` in this policy"),
                        suggest::did_you_mean(wanted, ids.iter().map(String::as_str))
                            .or_else(|| Some("refer to resources by id, such as `file:/etc/motd` or `package:nginx`".into())),
                    )
                };
                ctx.error(&path.key(field).index(j), message, hint);
            }
        };
        check_ids(ctx, "depends_on", resource.depends_on());
        if let Resource::Service(service) = resource {
            check_ids(ctx, "restart_on", &service.restart_on);
        }
        declared.entry(id).or_insert(i);
    }
    let mut check_names = BTreeMap::new();
    for (i, check) in policy.checks.iter().enumerate() {
        let path = root.key("checks").index(i);
        check_name(ctx, &path.key("name"), &check.name, "check name");
        if let Some(first) = check_names.insert(check.name.as_str(), i) {
            ctx.error(
                &path.key("name"),
                format!(
                    "check `{}` is declared twice in this policy (first at checks[{first}])",
                    check.name
                ),
                None,
            );
        }
        check_command(ctx, &path.key("command"), &check.command, check.shell);
        if check.timeout.as_secs() == 0 {
            ctx.error(&path.key("timeout"), "timeout must be longer than 0s", None);
        }
        if let Some(remediation) = &check.remediation {
            let path = path.key("remediation");
            match index.scripts.get(remediation.script.as_str()) {
                None => ctx.reference(
                    index,
                    Kind::Script,
                    &path.key("script"),
                    &remediation.script,
                ),
                Some(script) => check_params(ctx, &path.key("params"), script, &remediation.params),
            }
        }
    }
}

fn check_resource(
    ctx: &mut DocCtx<'_, '_>,
    path: &YPath,
    resource: &Resource,
    index: &Index<'_>,
    repo_files: &BTreeSet<String>,
) {
    match resource {
        Resource::File(file) => {
            if file.content.is_some() && file.source.is_some() {
                ctx.error(path, "set either `content` or `source`, not both", None);
            }
            if file.ensure == Presence::Absent
                && (file.content.is_some() || file.source.is_some() || file.template)
            {
                ctx.error(
                    path,
                    "an absent file takes no `content`, `source` or `template`",
                    None,
                );
            }
            if file.template && file.content.is_none() && file.source.is_none() {
                ctx.error(
                    &path.key("template"),
                    "`template: true` needs `content` or `source` to render",
                    None,
                );
            }
            if let Some(source) = &file.source {
                check_repo_file(ctx, &path.key("source"), source, index, repo_files);
            }
            check_owner(ctx, path, file.owner.as_deref(), file.group.as_deref());
        }
        Resource::Directory(directory) => {
            if directory.path.as_str() == "/" {
                ctx.error(
                    &path.key("path"),
                    "the root directory cannot be managed",
                    None,
                );
            }
            check_owner(
                ctx,
                path,
                directory.owner.as_deref(),
                directory.group.as_deref(),
            );
        }
        Resource::Symlink(symlink) => match (&symlink.target, symlink.ensure) {
            (None, Presence::Present) => {
                ctx.error(
                    path,
                    "missing field `target`",
                    Some("name what the link points to".into()),
                );
            }
            (Some(target), _) if target.is_empty() || target.contains('\0') => {
                ctx.error(&path.key("target"), "invalid link target", None);
            }
            _ => {}
        },
        Resource::Package(package) => {
            check_package_name(ctx, &path.key("name"), &package.name);
            if package.version.is_some() && package.ensure != PackageEnsure::Present {
                ctx.error(
                    &path.key("version"),
                    "a version can be held only with `ensure: present`",
                    None,
                );
            }
        }
        Resource::Service(service) => {
            check_package_name(ctx, &path.key("name"), &service.name);
            if service.state.is_none() && service.enabled.is_none() && service.restart_on.is_empty()
            {
                ctx.error(
                    path,
                    format!("service `{}` manages nothing", service.name),
                    Some("set `state`, `enabled` or `restart_on`".into()),
                );
            }
        }
        Resource::Exec(exec) => {
            check_name(ctx, &path.key("name"), &exec.name, "exec name");
            check_command(ctx, &path.key("command"), &exec.command, exec.shell);
            for (field, guard) in [("unless", &exec.unless), ("only_if", &exec.only_if)] {
                if let Some(guard) = guard {
                    check_command(ctx, &path.key(field), guard, false);
                }
            }
            if exec.timeout.as_secs() == 0 {
                ctx.error(&path.key("timeout"), "timeout must be longer than 0s", None);
            }
            for key in exec.env.keys() {
                check_env_name(ctx, &path.key("env").key(key), key);
            }
            if let Some(user) = &exec.run_as {
                check_name(ctx, &path.key("run_as"), user, "user name");
            }
        }
        Resource::User(user) => {
            check_name(ctx, &path.key("name"), &user.name, "user name");
            for (i, group) in user.groups.iter().enumerate() {
                check_name(ctx, &path.key("groups").index(i), group, "group name");
            }
            for (i, key) in user.authorized_keys.iter().enumerate() {
                if let Err(message) = check_ssh_public_key(key) {
                    ctx.error(&path.key("authorized_keys").index(i), message, None);
                }
            }
        }
        Resource::Group(group) => check_name(ctx, &path.key("name"), &group.name, "group name"),
    }
}

fn check_owner(ctx: &mut DocCtx<'_, '_>, path: &YPath, owner: Option<&str>, group: Option<&str>) {
    if let Some(owner) = owner {
        check_name(ctx, &path.key("owner"), owner, "user name");
    }
    if let Some(group) = group {
        check_name(ctx, &path.key("group"), group, "group name");
    }
}

fn check_package_name(ctx: &mut DocCtx<'_, '_>, path: &YPath, name: &str) {
    let valid = !name.is_empty()
        && !name.starts_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+' | '@' | ':'));
    if !valid {
        ctx.error(
            path,
            format!("invalid name `{name}`"),
            Some("use letters, digits and `.`, `_`, `-`, `+`, `@`, `:`".into()),
        );
    }
}

fn check_script(
    ctx: &mut DocCtx<'_, '_>,
    script: &ScriptSpec,
    index: &Index<'_>,
    repo_files: &BTreeSet<String>,
) {
    let root = YPath::default();
    match (&script.body, &script.source) {
        (None, None) => ctx.error(
            &root,
            "script has no `body` and no `source`",
            Some("give the script inline in `body`, or as a repo file in `source`".into()),
        ),
        (Some(_), Some(_)) => ctx.error(&root, "set either `body` or `source`, not both", None),
        (None, Some(source)) => {
            check_repo_file(ctx, &root.key("source"), source, index, repo_files)
        }
        (Some(body), None) if body.trim().is_empty() => {
            ctx.error(&root.key("body"), "script body is empty", None)
        }
        (Some(_), None) => {}
    }
    if let Some(user) = &script.run_as {
        check_name(ctx, &root.key("run_as"), user, "user name");
    }
    if script.timeout.as_secs() == 0 {
        ctx.error(&root.key("timeout"), "timeout must be longer than 0s", None);
    }
    let mut seen = BTreeMap::new();
    for (i, parameter) in script.parameters.iter().enumerate() {
        let path = root.key("parameters").index(i);
        let valid_name = parameter
            .name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase())
            && parameter
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !valid_name {
            ctx.error(
                &path.key("name"),
                format!("invalid parameter name `{}`", parameter.name),
                Some("use lowercase letters, digits and `_`, starting with a letter".into()),
            );
        }
        if let Some(first) = seen.insert(parameter.name.as_str(), i) {
            ctx.error(
                &path.key("name"),
                format!(
                    "parameter `{}` is declared twice (first at parameters[{first}])",
                    parameter.name
                ),
                None,
            );
        }
        match (parameter.kind, parameter.values.is_empty()) {
            (ParameterType::Enum, true) => {
                ctx.error(&path, "an `enum` parameter needs `values`", None)
            }
            (ParameterType::Enum, false) => {}
            (_, false) => ctx.error(
                &path.key("values"),
                "only `enum` parameters take `values`",
                None,
            ),
            (_, true) => {}
        }
        if let Some(default) = &parameter.default
            && !parameter.kind.accepts(default, &parameter.values)
        {
            ctx.error(
                &path.key("default"),
                format!(
                    "default `{}` is not {}",
                    plain(default),
                    expected_value(parameter.kind, &parameter.values)
                ),
                None,
            );
        }
        if script.schedule.is_some() && parameter.required && parameter.default.is_none() {
            ctx.error(
                &path,
                format!(
                    "scheduled script needs a default for required parameter `{}`",
                    parameter.name
                ),
                Some("scheduled runs have no one to ask: give the parameter a `default`".into()),
            );
        }
    }
    if script.schedule.is_some() && script.targets.is_none() {
        ctx.error(
            &root.key("schedule"),
            "a scheduled script needs `targets`",
            Some("say which hosts the scheduled runs go to".into()),
        );
    }
    if let Some(targets) = &script.targets {
        check_targets(ctx, &root.key("targets"), targets, index, true);
    }
    if let Some(rollout) = &script.rollout {
        check_rollout(ctx, &root.key("rollout"), rollout);
    }
}

/// A JSON value as a user wrote it: strings without their quotes.
fn plain(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// What a parameter of this type accepts, for messages.
fn expected_value(kind: ParameterType, values: &[String]) -> String {
    match kind {
        ParameterType::String => "one line of text".into(),
        ParameterType::Integer => "a whole number".into(),
        ParameterType::Boolean => "true or false".into(),
        ParameterType::Enum => {
            let values: Vec<&str> = values.iter().map(String::as_str).collect();
            format!("one of {}", suggest::one_of(&values))
        }
    }
}

/// Parameters given to a script (by a remediation) against its declaration.
fn check_params(
    ctx: &mut DocCtx<'_, '_>,
    path: &YPath,
    script: &ScriptSpec,
    params: &BTreeMap<String, serde_json::Value>,
) {
    let declared = || script.parameters.iter().map(|p| p.name.as_str());
    // A misspelt name is reported once, as the unknown parameter.
    let misspelt: Vec<&str> = params
        .keys()
        .filter(|name| !declared().any(|p| p == name.as_str()))
        .filter_map(|name| suggest::closest(name, declared()))
        .collect();
    for (name, value) in params {
        match script.parameters.iter().find(|p| p.name == *name) {
            None => ctx.error(
                &path.key(name),
                format!("script `{}` has no parameter `{name}`", script.name),
                suggest::did_you_mean(name, declared()),
            ),
            Some(parameter) if !parameter.kind.accepts(value, &parameter.values) => ctx.error(
                &path.key(name),
                format!(
                    "`{}` is not {} (parameter `{name}`)",
                    plain(value),
                    expected_value(parameter.kind, &parameter.values)
                ),
                None,
            ),
            Some(_) => {}
        }
    }
    for parameter in &script.parameters {
        if parameter.required
            && parameter.default.is_none()
            && !params.contains_key(&parameter.name)
            && !misspelt.contains(&parameter.name.as_str())
        {
            ctx.error(
                path,
                format!(
                    "missing required parameter `{}` of script `{}`",
                    parameter.name, script.name
                ),
                Some(format!("add `{}:` to `params`", parameter.name)),
            );
        }
    }
}

fn check_alert_rule(ctx: &mut DocCtx<'_, '_>, rule: &AlertRuleSpec, index: &Index<'_>) {
    let root = YPath::default();
    let condition = root.key("condition").key(rule.condition.name());
    let percent = |ctx: &mut DocCtx<'_, '_>, above: f64| {
        if above >= 100.0 {
            ctx.error(
                &condition.key("above"),
                format!("a threshold of {above} percent can never be exceeded"),
                Some("use a value below 100".into()),
            );
        } else if above < 0.0 {
            ctx.error(
                &condition.key("above"),
                format!("threshold {above} is out of range 0-100 (percent)"),
                None,
            );
        }
    };
    match &rule.condition {
        Condition::Cpu(threshold) | Condition::Memory(threshold) => percent(ctx, threshold.above),
        Condition::Disk(disk) => percent(ctx, disk.above),
        Condition::Load(threshold) => {
            if threshold.above <= 0.0 {
                ctx.error(
                    &condition.key("above"),
                    "load threshold must be above 0",
                    None,
                );
            }
        }
        Condition::CheckFailing(CheckFailing { check: Some(check) }) => {
            if !index.checks.contains(check.as_str()) {
                ctx.error(
                    &condition.key("check"),
                    format!("no policy declares a check `{check}`"),
                    suggest::did_you_mean(check, index.checks.iter().copied()),
                );
            }
        }
        Condition::JobFailed(JobFailed {
            script: Some(script),
        }) => {
            ctx.reference(index, Kind::Script, &condition.key("script"), script);
        }
        Condition::Offline
        | Condition::Drift
        | Condition::CheckFailing(_)
        | Condition::JobFailed(_) => {}
    }
    check_targets(ctx, &root.key("targets"), &rule.targets, index, true);
    for (i, channel) in rule.channels.iter().enumerate() {
        ctx.reference(
            index,
            Kind::Channel,
            &root.key("channels").index(i),
            channel,
        );
    }
}

fn check_channel(ctx: &mut DocCtx<'_, '_>, channel: &ChannelSpec) {
    let root = YPath::default();
    let n_destinations = usize::from(channel.webhook.is_some())
        + usize::from(channel.slack.is_some())
        + usize::from(channel.email.is_some());
    if n_destinations == 0 {
        ctx.error(
            &root,
            "channel has no destination",
            Some("add one of `webhook`, `slack` or `email`".into()),
        );
    } else if n_destinations > 1 {
        let second = ["webhook", "slack", "email"]
            .into_iter()
            .filter(|key| ctx.document.node.get(key).is_some())
            .nth(1)
            .unwrap_or_default();
        ctx.error(
            &root.key(second),
            format!("a channel has one destination; this one has {n_destinations}"),
            Some("declare one channel per destination".into()),
        );
    }
    if let Some(webhook) = &channel.webhook {
        let path = root.key("webhook");
        match (&webhook.url, &webhook.url_env) {
            (Some(url), None) => check_url(ctx, &path.key("url"), url),
            (None, Some(env)) => check_env_name(ctx, &path.key("url_env"), env),
            _ => ctx.error(&path, "set exactly one of `url` and `url_env`", None),
        }
        if let Some(env) = &webhook.secret_env {
            check_env_name(ctx, &path.key("secret_env"), env);
        }
        for name in webhook.headers.keys() {
            let lower = name.to_ascii_lowercase();
            if lower == "authorization"
                || lower.contains("token")
                || lower.contains("secret")
                || lower.contains("key")
            {
                ctx.error(
                    &path.key("headers").key(name),
                    format!("header `{name}` looks like it carries a secret, and secrets are never written in the repo"),
                    Some("sign requests with `secret_env` instead".into()),
                );
            }
        }
    }
    if let Some(slack) = &channel.slack {
        check_env_name(
            ctx,
            &root.key("slack").key("webhook_url_env"),
            &slack.webhook_url_env,
        );
    }
    if let Some(email) = &channel.email {
        let path = root.key("email");
        if email.to.is_empty() {
            ctx.error(&path.key("to"), "no recipients", None);
        }
        for (i, address) in email.to.iter().enumerate() {
            if !looks_like_address(address) {
                ctx.error(
                    &path.key("to").index(i),
                    format!("`{address}` is not a mail address"),
                    None,
                );
            }
        }
        if !looks_like_address(&email.from) {
            ctx.error(
                &path.key("from"),
                format!("`{}` is not a mail address", email.from),
                None,
            );
        }
        for (field, env) in [
            ("username_env", &email.username_env),
            ("password_env", &email.password_env),
        ] {
            if let Some(env) = env {
                check_env_name(ctx, &path.key(field), env);
            }
        }
    }
}

fn looks_like_address(address: &str) -> bool {
    address.split_once('@').is_some_and(|(local, domain)| {
        !local.is_empty() && domain.contains('.') && !address.contains(char::is_whitespace)
    })
}

fn check_url(ctx: &mut DocCtx<'_, '_>, path: &YPath, url: &str) {
    let Some(rest) = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
    else {
        ctx.error(path, format!("`{url}` is not an http(s) URL"), None);
        return;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        ctx.error(
            path,
            "the URL carries credentials, and secrets are never written in the repo",
            Some("put the whole URL in an environment variable and name it in `url_env`".into()),
        );
    } else if authority.is_empty() {
        ctx.error(path, format!("`{url}` has no host"), None);
    }
}

fn check_role(ctx: &mut DocCtx<'_, '_>, role: &RoleSpec, index: &Index<'_>) {
    let root = YPath::default();
    if role.permissions.is_empty() {
        ctx.error(&root.key("permissions"), "role grants no permissions", None);
    }
    let known: Vec<&str> = PERMISSIONS.iter().map(|(name, _)| *name).collect();
    let mut seen = BTreeSet::new();
    for (i, permission) in role.permissions.iter().enumerate() {
        let path = root.key("permissions").index(i);
        if !seen.insert(permission) {
            ctx.error(&path, format!("`{permission}` is listed twice"), None);
            continue;
        }
        if known.contains(&permission.as_str()) {
            continue;
        }
        if let Some(script) = permission.strip_prefix(SCRIPT_RUN_PREFIX) {
            if script.is_empty() {
                ctx.error(
                    &path,
                    format!("`{permission}` names no script"),
                    Some(format!(
                        "write `{SCRIPT_RUN_PREFIX}<script>` for one script, or `{}` for every script",
                        Permission::ScriptsRun
                    )),
                );
            } else {
                ctx.reference(index, Kind::Script, &path, script);
            }
            continue;
        }
        let hint = suggest::did_you_mean(permission, known.iter().copied()).or_else(|| {
            Some(format!(
                "expected one of {}, or `scripts:run:<script>`",
                suggest::one_of(&known)
            ))
        });
        ctx.error(&path, format!("unknown permission `{permission}`"), hint);
    }
}

fn check_role_binding(ctx: &mut DocCtx<'_, '_>, binding: &RoleBindingSpec, index: &Index<'_>) {
    let root = YPath::default();
    ctx.reference(index, Kind::Role, &root.key("role"), &binding.role);
    if binding.subjects.is_empty() {
        ctx.error(&root.key("subjects"), "binding has no subjects", None);
    }
    let mut seen = BTreeSet::new();
    for (i, subject) in binding.subjects.iter().enumerate() {
        let path = root.key("subjects").index(i);
        let (key, name) = match subject {
            Subject::User(name) => ("user", name),
            Subject::Team(name) => ("team", name),
            Subject::Token(name) => ("token", name),
        };
        if !seen.insert(subject) {
            ctx.error(
                &path.key(key),
                format!("{key} `{name}` is listed twice"),
                None,
            );
            continue;
        }
        match subject {
            Subject::User(user) => check_name(ctx, &path.key("user"), user, "user name"),
            Subject::Token(token) => check_name(ctx, &path.key("token"), token, "token name"),
            Subject::Team(team) => ctx.reference(index, Kind::Team, &path.key("team"), team),
        }
    }
    if let Scope::Groups(groups) = &binding.scope {
        let path = root.key("scope").key("groups");
        if groups.is_empty() {
            ctx.error(
                &path,
                "scope lists no groups",
                Some("list groups, or write `scope: fleet` for every host".into()),
            );
        }
        let mut seen = BTreeSet::new();
        for (i, group) in groups.iter().enumerate() {
            if seen.insert(group) {
                ctx.reference(index, Kind::Group, &path.index(i), group);
            } else {
                ctx.error(
                    &path.index(i),
                    format!("group `{group}` is listed twice"),
                    None,
                );
            }
        }
        // Fleet-wide permissions act on the controller, not on hosts, so a
        // binding scoped to groups cannot grant them: the role works, but
        // less than its author probably meant. `*` is exempt: binding it to
        // groups is the way to say "everything on these hosts".
        if let Some(role) = index.roles.get(binding.role.as_str()) {
            let fleet_wide: BTreeSet<Permission> = role
                .permissions
                .iter()
                .filter_map(|p| Permission::parse(p))
                .filter(|p| p.is_fleet_wide())
                .collect();
            if !fleet_wide.is_empty() {
                let names: Vec<String> = fleet_wide.iter().map(|p| format!("`{p}`")).collect();
                let listed = match names.split_last() {
                    Some((last, rest)) if !rest.is_empty() => {
                        format!("{} and {last}", rest.join(", "))
                    }
                    _ => names.concat(),
                };
                ctx.warning(
                    &root.key("scope"),
                    format!(
                        "role `{}` grants fleet-wide {listed}, which a binding scoped to groups does not grant",
                        binding.role,
                    ),
                    Some(
                        "grant fleet-wide permissions in a binding with `scope: fleet`, or remove them from the role"
                            .into(),
                    ),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use crate::{Severity, load_repo};

    const RBAC: &str = "apiVersion: muster/v1
kind: Group
name: web
selector: {role: web}
---
apiVersion: muster/v1
kind: Role
name: operator
permissions: [hosts:read, commits:read, \"*\"]
---
apiVersion: muster/v1
kind: RoleBinding
name: web-operators
role: operator
subjects: [{user: bob}]
scope: {groups: [web]}
---
apiVersion: muster/v1
kind: RoleBinding
name: operators
role: operator
subjects: [{user: carol}]
scope: fleet
";

    #[test]
    fn fleet_wide_permission_in_a_group_binding_is_a_warning_not_an_error() {
        let validation = load_repo([("rbac.yaml", RBAC.as_bytes())], &BTreeSet::new());
        assert!(validation.model.is_some(), "{:#?}", validation.diagnostics);
        let reported: Vec<(Severity, &str, u32)> = validation
            .diagnostics
            .iter()
            .map(|d| (d.severity, d.message.as_str(), d.line))
            .collect();
        // Only the group-scoped binding; `*` does not count as listing them.
        assert_eq!(
            reported,
            [(
                Severity::Warning,
                "role `operator` grants fleet-wide `commits:read`, which a binding scoped to groups does not grant",
                16
            )]
        );
    }
}
