//! Access control from Git: the `Role`, `RoleBinding` and `Team` documents
//! of a commit, compiled into [`AccessRules`] that say whether someone may
//! do something, and on which hosts.
//!
//! The rules in force are those of the deployed commit. They live in an
//! [`Access`] cell that request handlers read on every request and that the
//! reconciler replaces in the step that records a commit as deployed, so a
//! binding removed in Git stops working on the next deploy, for sessions
//! already open too: no decision is ever cached.
//!
//! Everything here is pure: which hosts a request targets, and their
//! labels, come from the caller, and group membership is computed by the
//! compiler's own targeting code ([`compile::targets_match`]), so a scope
//! covers exactly the hosts a policy for the same groups would reach.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, RwLock};

use muster_schemas::model::{
    ALL_PERMISSIONS, FleetModel, Permission, SCRIPT_RUN_PREFIX, Scope as ScopeSpec, Subject,
    Targets,
};

use crate::compile::{self, HostInput};

/// How many out-of-scope hosts a refusal names before it counts the rest.
const N_NAMED_HOSTS: usize = 10;

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Caller {
    /// A user, by login name. A user holds what bindings grant them and
    /// what they grant the teams the user is a member of.
    User(String),
    /// An API token, by the name it was created with. A token holds what
    /// bindings grant the token (`token: <name>`), not what its user holds,
    /// so that a token for CI can be given less than a person.
    Token(String),
    /// The break-glass admin (`muster user add --admin`): allowed anything,
    /// whatever the repo says, so that a broken RBAC commit cannot lock
    /// everyone out. The caller audits every use.
    BreakGlass(String),
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caller::User(name) => write!(f, "user `{name}`"),
            Caller::Token(name) => write!(f, "token `{name}`"),
            Caller::BreakGlass(name) => write!(f, "break-glass admin `{name}`"),
        }
    }
}

/// The RBAC subject an authenticated request acts as: a break-glass admin
/// as such, an API token by its name (not as its user), a session as its
/// user.
impl From<&crate::server::user_auth::Principal> for Caller {
    fn from(principal: &crate::server::user_auth::Principal) -> Self {
        use crate::server::user_auth::Via;
        match (&principal.via, principal.break_glass) {
            (_, true) => Caller::BreakGlass(principal.user.clone()),
            (Via::ApiToken { name }, false) => Caller::Token(name.clone()),
            (Via::Session, false) => Caller::User(principal.user.clone()),
        }
    }
}

/// One entry of a role's `permissions`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Grant {
    /// `*`: every permission, every script.
    All,
    /// One permission; [`Permission::ScriptsRun`] covers every script.
    Permission(Permission),
    /// `scripts:run:<name>`: running that one script.
    Script(String),
}

impl Grant {
    /// The grant a role's `permissions` entry names; `None` for anything
    /// validation would have refused.
    pub fn parse(text: &str) -> Option<Grant> {
        if text == ALL_PERMISSIONS {
            return Some(Grant::All);
        }
        if let Some(permission) = Permission::parse(text) {
            return Some(Grant::Permission(permission));
        }
        text.strip_prefix(SCRIPT_RUN_PREFIX)
            .filter(|script| !script.is_empty())
            .map(|script| Grant::Script(script.to_string()))
    }

    /// Whether holding this grant satisfies `need` (scope aside).
    pub fn covers(&self, need: &Need) -> bool {
        match (self, need) {
            (Grant::All, _) => true,
            (Grant::Permission(held), Need::Permission(wanted)) => held == wanted,
            (Grant::Permission(held), Need::RunScript(_)) => *held == Permission::ScriptsRun,
            (Grant::Script(held), Need::RunScript(wanted)) => held == wanted,
            (Grant::Script(_), Need::Permission(_)) => false,
        }
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Grant::All => f.write_str(ALL_PERMISSIONS),
            Grant::Permission(permission) => f.write_str(permission.as_str()),
            Grant::Script(script) => write!(f, "{SCRIPT_RUN_PREFIX}{script}"),
        }
    }
}

/// What an operation needs: a permission, or running one named script.
/// Typed, so that asking for a permission that does not exist does not
/// compile.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Need {
    Permission(Permission),
    /// `scripts:run:<name>`, which `scripts:run` and `*` also satisfy.
    RunScript(String),
}

impl Need {
    /// Whether only a binding with `scope: fleet` can satisfy it.
    pub fn is_fleet_wide(&self) -> bool {
        match self {
            Need::Permission(permission) => permission.is_fleet_wide(),
            Need::RunScript(_) => false,
        }
    }
}

impl From<Permission> for Need {
    fn from(permission: Permission) -> Self {
        Need::Permission(permission)
    }
}

impl fmt::Display for Need {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Need::Permission(permission) => f.write_str(permission.as_str()),
            Need::RunScript(script) => write!(f, "{SCRIPT_RUN_PREFIX}{script}"),
        }
    }
}

/// Where a grant applies.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// Every host, and fleet-wide permissions.
    Fleet,
    /// The hosts of these groups (never empty).
    Groups(BTreeSet<String>),
}

impl Scope {
    fn from_spec(spec: &ScopeSpec) -> Scope {
        match spec {
            ScopeSpec::Fleet => Scope::Fleet,
            ScopeSpec::Groups(groups) => Scope::Groups(groups.iter().cloned().collect()),
        }
    }

    /// Widens this scope to cover `other` too.
    fn extend(&mut self, other: &Scope) {
        match (&mut *self, other) {
            (Scope::Fleet, _) => {}
            (_, Scope::Fleet) => *self = Scope::Fleet,
            (Scope::Groups(mine), Scope::Groups(theirs)) => mine.extend(theirs.iter().cloned()),
        }
    }

    /// What `self` covers that `other` does not; `None` when nothing.
    fn minus(&self, other: Option<&Scope>) -> Option<Scope> {
        match (self, other) {
            (_, None) => Some(self.clone()),
            (_, Some(Scope::Fleet)) => None,
            (Scope::Fleet, Some(Scope::Groups(_))) => Some(Scope::Fleet),
            (Scope::Groups(mine), Some(Scope::Groups(theirs))) => {
                let left: BTreeSet<String> = mine.difference(theirs).cloned().collect();
                (!left.is_empty()).then_some(Scope::Groups(left))
            }
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Fleet => f.write_str("the fleet"),
            Scope::Groups(groups) => {
                let noun = if groups.len() == 1 { "group" } else { "groups" };
                let names: Vec<String> = groups.iter().map(|g| format!("`{g}`")).collect();
                write!(f, "{noun} {}", names.join(", "))
            }
        }
    }
}

/// Why a request was refused. Its message names the permission, and the
/// hosts or the scope that fell short, and nothing about anyone else's
/// access: which roles and bindings exist stays in the repo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    pub caller: Caller,
    pub need: Need,
    pub reason: Refusal,
}

/// The ways a request falls short.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No binding grants the permission to this caller at all.
    NotGranted,
    /// The permission is fleet-wide and is held on groups only.
    NeedsFleetScope { held_on: Scope },
    /// Some target hosts lie outside every group the permission is held on.
    OutOfScope {
        /// The hosts outside, by name, sorted.
        hosts: Vec<String>,
        held_on: Scope,
    },
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Denied { caller, need, .. } = self;
        match &self.reason {
            Refusal::NotGranted => write!(
                f,
                "{caller} does not have `{need}`; ask an administrator for a role binding that grants it"
            ),
            Refusal::NeedsFleetScope { held_on } => write!(
                f,
                "{caller} has `{need}` on {held_on} only, and `{need}` is fleet-wide; it needs a role binding with `scope: fleet`"
            ),
            Refusal::OutOfScope { hosts, held_on } => {
                let mut named = hosts
                    .iter()
                    .take(N_NAMED_HOSTS)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ");
                if hosts.len() > N_NAMED_HOSTS {
                    named.push_str(&format!(" and {} more", hosts.len() - N_NAMED_HOSTS));
                }
                write!(
                    f,
                    "{caller} has `{need}` on {held_on} only, not on {named}; leave those hosts out, or ask for a role binding that covers them"
                )
            }
        }
    }
}

impl std::error::Error for Denied {}

/// The RBAC of one commit, compiled: what every user and token holds,
/// teams resolved, and the model whose groups scopes refer to.
#[derive(Debug, Clone, Default)]
pub struct AccessRules {
    commit: Option<String>,
    model: Arc<FleetModel>,
    /// Users and tokens, and what they hold where. Users who hold nothing
    /// are absent, which is the same as holding nothing.
    held: BTreeMap<Caller, BTreeMap<Grant, Scope>>,
}

impl AccessRules {
    /// No rules: before the first deploy, only the break-glass admin gets in.
    pub fn none() -> AccessRules {
        AccessRules::default()
    }

    /// The rules of a validated model, at `commit`.
    pub fn compile(commit: impl Into<String>, model: Arc<FleetModel>) -> AccessRules {
        let mut held: BTreeMap<Caller, BTreeMap<Grant, Scope>> = BTreeMap::new();
        for binding in model.role_bindings.values() {
            // Validation guarantees the role exists and every permission
            // parses; should either not hold, the binding grants less,
            // never more.
            let Some(role) = model.roles.get(&binding.role) else {
                continue;
            };
            let grants: Vec<Grant> = role
                .permissions
                .iter()
                .filter_map(|text| Grant::parse(text))
                .collect();
            let scope = Scope::from_spec(&binding.scope);
            let mut holders = Vec::new();
            for subject in &binding.subjects {
                match subject {
                    Subject::User(user) => holders.push(Caller::User(user.clone())),
                    Subject::Token(token) => holders.push(Caller::Token(token.clone())),
                    Subject::Team(team) => holders.extend(
                        model
                            .teams
                            .get(team)
                            .into_iter()
                            .flat_map(|team| &team.members)
                            .map(|member| Caller::User(member.clone())),
                    ),
                }
            }
            for holder in holders {
                let holdings = held.entry(holder).or_default();
                for grant in &grants {
                    holdings
                        .entry(grant.clone())
                        .and_modify(|held_on| held_on.extend(&scope))
                        .or_insert_with(|| scope.clone());
                }
            }
        }
        AccessRules {
            commit: Some(commit.into()),
            model,
            held,
        }
    }

    /// The commit these rules come from; `None` before the first deploy.
    pub fn commit(&self) -> Option<&str> {
        self.commit.as_deref()
    }

    /// The model of that commit: its groups, hosts and scripts (script
    /// bodies inlined), so that a request resolves its targets against
    /// the same commit it is authorized by.
    pub fn model(&self) -> &Arc<FleetModel> {
        &self.model
    }

    /// Where `caller` holds something that satisfies `need`: the union
    /// of the scopes of every grant that covers it.
    fn scope_of(&self, caller: &Caller, need: &Need) -> Option<Scope> {
        if let Caller::BreakGlass(_) = caller {
            return Some(Scope::Fleet);
        }
        let mut scope: Option<Scope> = None;
        for (grant, held_on) in self.held.get(caller)? {
            if grant.covers(need) {
                match &mut scope {
                    Some(scope) => scope.extend(held_on),
                    None => scope = Some(held_on.clone()),
                }
            }
        }
        scope
    }

    /// Which hosts are in one of `groups`, decided as the compiler decides
    /// policy targets.
    fn membership(&self, groups: &BTreeSet<String>) -> impl Fn(&HostInput) -> bool + '_ {
        let targets = Targets {
            groups: groups.iter().cloned().collect(),
            ..Targets::default()
        };
        move |host| compile::targets_match(&self.model, &targets, host)
    }

    /// Whether `caller` may do what needs `need` on every one of
    /// `hosts` (the targets, with the labels they have now). A fleet-wide
    /// need ignores `hosts` and asks for a binding with `scope: fleet`. An
    /// action on no hosts still needs the permission on some scope.
    /// Targets outside the scope refuse the whole request: the handler
    /// reports the refusal rather than acting on the rest.
    pub fn authorize(
        &self,
        caller: &Caller,
        need: impl Into<Need>,
        hosts: &[HostInput],
    ) -> Result<(), Denied> {
        let need = need.into();
        let deny = |reason| Denied {
            caller: caller.clone(),
            need: need.clone(),
            reason,
        };
        let Some(scope) = self.scope_of(caller, &need) else {
            return Err(deny(Refusal::NotGranted));
        };
        let groups = match scope {
            Scope::Fleet => return Ok(()),
            Scope::Groups(_) if need.is_fleet_wide() => {
                return Err(deny(Refusal::NeedsFleetScope { held_on: scope }));
            }
            Scope::Groups(ref groups) => groups,
        };
        let in_scope = self.membership(groups);
        let outside: BTreeSet<&str> = hosts
            .iter()
            .filter(|host| !in_scope(host))
            .map(|host| host.name.as_str())
            .collect();
        if outside.is_empty() {
            return Ok(());
        }
        Err(deny(Refusal::OutOfScope {
            hosts: outside.into_iter().map(str::to_string).collect(),
            held_on: scope,
        }))
    }

    /// The hosts among `hosts` on which `caller` has `need`: for lists
    /// and reads, which show what is in scope. Actions use
    /// [`AccessRules::authorize`], which refuses instead of leaving hosts out.
    pub fn hosts_in_scope<'h>(
        &self,
        caller: &Caller,
        need: impl Into<Need>,
        hosts: &'h [HostInput],
    ) -> Vec<&'h HostInput> {
        let need = need.into();
        match self.scope_of(caller, &need) {
            None => Vec::new(),
            Some(Scope::Fleet) => hosts.iter().collect(),
            Some(Scope::Groups(_)) if need.is_fleet_wide() => Vec::new(),
            Some(Scope::Groups(groups)) => {
                let in_scope = self.membership(&groups);
                hosts.iter().filter(|host| in_scope(host)).collect()
            }
        }
    }

    /// What `caller` holds and where, in a stable order (`*` first,
    /// then permissions as the reference lists them, then scripts by
    /// name): for a `whoami` view.
    pub fn permissions_of(&self, caller: &Caller) -> Vec<(Grant, Scope)> {
        if let Caller::BreakGlass(_) = caller {
            return vec![(Grant::All, Scope::Fleet)];
        }
        self.held
            .get(caller)
            .map(|holdings| {
                holdings
                    .iter()
                    .map(|(grant, scope)| (grant.clone(), scope.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A change in what one user or token holds between two sets of rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub caller: Caller,
    pub grant: Grant,
    /// Where it was held before; `None` when it was not.
    pub before: Option<Scope>,
    /// Where it is held after; `None` when it is not.
    pub after: Option<Scope>,
}

impl Change {
    /// What the caller gains: the scope added, if any.
    pub fn gained(&self) -> Option<Scope> {
        self.after.as_ref()?.minus(self.before.as_ref())
    }

    /// What the caller loses: the scope taken away, if any.
    pub fn lost(&self) -> Option<Scope> {
        self.before.as_ref()?.minus(self.after.as_ref())
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Change { caller, grant, .. } = self;
        match (self.gained(), self.lost(), &self.before, &self.after) {
            (Some(gained), None, Some(before), _) => write!(
                f,
                "+ {caller} gains `{grant}` on {gained} (had it on {before})"
            ),
            (Some(gained), None, None, _) => write!(f, "+ {caller} gains `{grant}` on {gained}"),
            (None, Some(lost), _, Some(after)) => write!(
                f,
                "- {caller} loses `{grant}` on {lost} (keeps it on {after})"
            ),
            (None, Some(lost), _, None) => write!(f, "- {caller} loses `{grant}` on {lost}"),
            (Some(gained), Some(lost), _, _) => write!(
                f,
                "~ {caller} gains `{grant}` on {gained} and loses it on {lost}"
            ),
            (None, None, _, _) => write!(f, "= {caller} keeps `{grant}`"),
        }
    }
}

/// Who gains and who loses what between two sets of rules, per user and
/// token (teams resolved), one entry per grant whose scope changed. The
/// order is stable: users, then tokens, by name, then grants as
/// [`AccessRules::permissions_of`] lists them. Grants are compared as roles
/// list them: `*` is one grant, not expanded into every permission.
pub fn diff(before: &AccessRules, after: &AccessRules) -> Vec<Change> {
    let callers: BTreeSet<&Caller> = before.held.keys().chain(after.held.keys()).collect();
    let mut changes = Vec::new();
    let empty = BTreeMap::new();
    for caller in callers {
        let was = before.held.get(caller).unwrap_or(&empty);
        let is = after.held.get(caller).unwrap_or(&empty);
        let grants: BTreeSet<&Grant> = was.keys().chain(is.keys()).collect();
        for grant in grants {
            let (before, after) = (was.get(grant), is.get(grant));
            if before != after {
                changes.push(Change {
                    caller: caller.clone(),
                    grant: grant.clone(),
                    before: before.cloned(),
                    after: after.cloned(),
                });
            }
        }
    }
    changes
}

/// The rules in force, shared by every request handler and replaced by
/// the reconciler when a commit is deployed. Cloning shares the cell.
///
/// Readers take the current [`AccessRules`] (an `Arc`) under a read lock
/// held only for the clone, so a replacement never waits for a slow
/// request and a request never sees half of two commits.
#[derive(Debug, Clone, Default)]
pub struct Access(Arc<RwLock<Arc<AccessRules>>>);

impl Access {
    /// The rules in force now.
    pub fn current(&self) -> Arc<AccessRules> {
        Arc::clone(&self.0.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Puts `rules` in force for every later request.
    pub fn replace(&self, rules: AccessRules) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(rules);
    }

    /// [`AccessRules::authorize`] against the rules in force now.
    pub fn authorize(
        &self,
        caller: &Caller,
        need: impl Into<Need>,
        hosts: &[HostInput],
    ) -> Result<(), Denied> {
        self.current().authorize(caller, need, hosts)
    }

    /// [`AccessRules::permissions_of`] against the rules in force now.
    pub fn permissions_of(&self, caller: &Caller) -> Vec<(Grant, Scope)> {
        self.current().permissions_of(caller)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The RBAC of a small fleet: web and db groups by label, a canary
    /// group by name, a host that is in `web` through its `Host` document.
    const FLEET: &str = "
kind: Group
name: web
selector: {role: web}
---
kind: Group
name: db
selector: {role: db}
---
kind: Group
name: canary
hosts: [web-01]
---
kind: Host
name: web-01
---
kind: Host
name: web-09
labels: {role: web}
---
kind: Script
name: restart-service
body: systemctl restart nginx
---
kind: Script
name: log-cleanup
body: find /var/log -mtime +7 -delete
---
kind: Team
name: web-team
members: [bob, dave]
---
kind: Role
name: admin
permissions: [\"*\"]
---
kind: Role
name: operator
permissions: [hosts:read, jobs:read, scripts:run:restart-service, actions:service]
---
kind: Role
name: runner
permissions: [scripts:run]
---
kind: Role
name: auditor
permissions: [audit:read, tokens:manage]
---
kind: Role
name: viewer
permissions: [hosts:read, commits:read]
---
kind: RoleBinding
name: admins
role: admin
subjects: [{user: alice}]
scope: fleet
---
kind: RoleBinding
name: web-operators
role: operator
subjects: [{team: web-team}]
scope: {groups: [web]}
---
kind: RoleBinding
name: canary-operators
role: operator
subjects: [{user: frank}]
scope: {groups: [canary]}
---
kind: RoleBinding
name: db-runners
role: runner
subjects: [{token: ci}]
scope: {groups: [db]}
---
kind: RoleBinding
name: auditors
role: auditor
subjects: [{user: erin}]
scope: fleet
---
kind: RoleBinding
name: web-auditors
role: auditor
subjects: [{user: gina}]
scope: {groups: [web]}
---
kind: RoleBinding
name: viewers
role: viewer
subjects: [{user: carol}, {token: ci}]
scope: fleet
";

    /// A validated model from documents without their `apiVersion`.
    fn model(text: &str) -> Arc<FleetModel> {
        let text = text
            .trim_start()
            .split("---\n")
            .map(|doc| format!("apiVersion: muster/v1\n{doc}"))
            .collect::<Vec<_>>()
            .join("---\n");
        let validation =
            muster_schemas::load_repo([("fleet.yaml", text.as_bytes())], &BTreeSet::new());
        let errors: Vec<String> = validation
            .diagnostics
            .iter()
            .filter(|d| d.is_error())
            .map(ToString::to_string)
            .collect();
        Arc::new(validation.model.unwrap_or_else(|| panic!("{errors:#?}")))
    }

    fn rules(text: &str) -> AccessRules {
        AccessRules::compile("c0ffee", model(text))
    }

    /// A host as it enrolled: a name and the enrollment token's labels.
    fn host(name: &str) -> HostInput {
        let role = name.split('-').next().unwrap_or_default();
        let labels = match role {
            "web" | "db" if name != "web-09" => [("role".to_string(), role.to_string())].into(),
            _ => BTreeMap::new(),
        };
        HostInput {
            id: format!("id-{name}"),
            name: name.to_string(),
            labels,
            facts: serde_json::Map::new(),
        }
    }

    fn user(name: &str) -> Caller {
        Caller::User(name.into())
    }

    fn token(name: &str) -> Caller {
        Caller::Token(name.into())
    }

    fn script(name: &str) -> Need {
        Need::RunScript(name.into())
    }

    /// The verdict as text: `ok`, or the refusal's message.
    fn verdict(rules: &AccessRules, caller: &Caller, need: Need, hosts: &[&str]) -> String {
        let hosts: Vec<HostInput> = hosts.iter().map(|name| host(name)).collect();
        match rules.authorize(caller, need, &hosts) {
            Ok(()) => "ok".into(),
            Err(denied) => denied.to_string(),
        }
    }

    #[test]
    fn authorize() {
        use Permission::*;
        let rules = rules(FLEET);
        let cases: Vec<(&str, Caller, Need, &[&str], &str)> = vec![
            (
                "`*` grants fleet-wide permissions",
                user("alice"),
                TokensManage.into(),
                &[],
                "ok",
            ),
            (
                "`*` grants every script on every host",
                user("alice"),
                script("anything"),
                &["db-01", "other-01"],
                "ok",
            ),
            (
                "a team member holds what the team is bound to",
                user("bob"),
                ActionsService.into(),
                &["web-01", "web-02"],
                "ok",
            ),
            (
                "every team member does",
                user("dave"),
                HostsRead.into(),
                &["web-02"],
                "ok",
            ),
            (
                "group membership from a `Host` document's labels",
                user("dave"),
                HostsRead.into(),
                &["web-09"],
                "ok",
            ),
            (
                "targets outside the scope refuse the whole request, naming them",
                user("bob"),
                ActionsService.into(),
                &["web-01", "db-02", "db-01", "other-01"],
                "user `bob` has `actions:service` on group `web` only, not on db-01, db-02, other-01; leave those hosts out, or ask for a role binding that covers them",
            ),
            (
                "`scripts:run:<name>` grants that script",
                user("bob"),
                script("restart-service"),
                &["web-01"],
                "ok",
            ),
            (
                "`scripts:run:<name>` grants no other script",
                user("bob"),
                script("log-cleanup"),
                &["web-01"],
                "user `bob` does not have `scripts:run:log-cleanup`; ask an administrator for a role binding that grants it",
            ),
            (
                "`scripts:run:<name>` is not `scripts:run`",
                user("bob"),
                ScriptsRun.into(),
                &["web-01"],
                "user `bob` does not have `scripts:run`; ask an administrator for a role binding that grants it",
            ),
            (
                "permissions the role does not list are denied",
                user("bob"),
                JobsCancel.into(),
                &["web-01"],
                "user `bob` does not have `jobs:cancel`; ask an administrator for a role binding that grants it",
            ),
            (
                "a group listing hosts by name",
                user("frank"),
                script("restart-service"),
                &["web-01"],
                "ok",
            ),
            (
                "a group listing hosts by name, and a host it does not list",
                user("frank"),
                script("restart-service"),
                &["web-02"],
                "user `frank` has `scripts:run:restart-service` on group `canary` only, not on web-02; leave those hosts out, or ask for a role binding that covers them",
            ),
            (
                "`scripts:run` grants every script, in scope",
                token("ci"),
                script("log-cleanup"),
                &["db-01", "db-02"],
                "ok",
            ),
            (
                "`scripts:run` satisfies a need for `scripts:run`",
                token("ci"),
                ScriptsRun.into(),
                &["db-01"],
                "ok",
            ),
            (
                "`scripts:run` grants every script, out of scope",
                token("ci"),
                script("log-cleanup"),
                &["web-01"],
                "token `ci` has `scripts:run:log-cleanup` on group `db` only, not on web-01; leave those hosts out, or ask for a role binding that covers them",
            ),
            (
                "a token's other binding, fleet-wide",
                token("ci"),
                HostsRead.into(),
                &["web-01", "db-01", "other-01"],
                "ok",
            ),
            (
                "users and tokens are different subjects",
                user("ci"),
                HostsRead.into(),
                &["web-01"],
                "user `ci` does not have `hosts:read`; ask an administrator for a role binding that grants it",
            ),
            (
                "a fleet-wide permission on a fleet binding",
                user("erin"),
                AuditRead.into(),
                &[],
                "ok",
            ),
            (
                "a fleet-wide permission on a group binding",
                user("gina"),
                AuditRead.into(),
                &["web-01"],
                "user `gina` has `audit:read` on group `web` only, and `audit:read` is fleet-wide; it needs a role binding with `scope: fleet`",
            ),
            (
                "a fleet-wide permission not granted",
                user("bob"),
                CommitsRead.into(),
                &[],
                "user `bob` does not have `commits:read`; ask an administrator for a role binding that grants it",
            ),
            (
                "a fleet-wide permission through another binding",
                user("carol"),
                CommitsRead.into(),
                &[],
                "ok",
            ),
            (
                "deny by default: a user no binding names",
                user("mallory"),
                HostsRead.into(),
                &[],
                "user `mallory` does not have `hosts:read`; ask an administrator for a role binding that grants it",
            ),
            (
                "no targets still needs the permission",
                user("mallory"),
                ActionsService.into(),
                &[],
                "user `mallory` does not have `actions:service`; ask an administrator for a role binding that grants it",
            ),
            (
                "no targets, the permission held on some group",
                user("bob"),
                ActionsService.into(),
                &[],
                "ok",
            ),
            (
                "the break-glass admin is allowed anything",
                Caller::BreakGlass("root".into()),
                TokensManage.into(),
                &[],
                "ok",
            ),
            (
                "the break-glass admin, on any host",
                Caller::BreakGlass("root".into()),
                script("not-even-a-script"),
                &["other-01"],
                "ok",
            ),
        ];
        let mut failures = Vec::new();
        for (what, caller, need, hosts, expected) in cases {
            let actual = verdict(&rules, &caller, need, hosts);
            if actual != expected {
                failures.push(format!(
                    "{what}:\n  expected: {expected}\n  actual:   {actual}"
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn an_authenticated_request_acts_as_its_user_its_token_or_break_glass() {
        use crate::server::user_auth::{Principal, Via};
        let principal = |via: Via, break_glass: bool| Principal {
            user: "alice".into(),
            via,
            break_glass,
        };
        let token = || Via::ApiToken { name: "ci".into() };
        assert_eq!(Caller::from(&principal(Via::Session, false)), user("alice"));
        // A token holds what its own bindings grant, not its user's roles.
        assert_eq!(Caller::from(&principal(token(), false)), self::token("ci"));
        assert_eq!(
            Caller::from(&principal(Via::Session, true)),
            Caller::BreakGlass("alice".into())
        );
        assert_eq!(
            Caller::from(&principal(token(), true)),
            Caller::BreakGlass("alice".into())
        );
    }

    #[test]
    fn before_any_deploy_only_the_break_glass_admin_gets_in() {
        let rules = AccessRules::none();
        assert_eq!(rules.commit(), None);
        assert!(
            rules
                .authorize(&user("alice"), Permission::HostsRead, &[])
                .is_err()
        );
        assert!(
            rules
                .authorize(
                    &Caller::BreakGlass("root".into()),
                    Permission::HostsRead,
                    &[]
                )
                .is_ok()
        );
    }

    #[test]
    fn a_refusal_names_at_most_ten_hosts() {
        let rules = rules(FLEET);
        let names: Vec<String> = (1..=13).map(|n| format!("db-{n:02}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        assert_eq!(
            verdict(&rules, &user("bob"), Permission::HostsRead.into(), &names),
            "user `bob` has `hosts:read` on group `web` only, not on db-01, db-02, db-03, db-04, db-05, db-06, db-07, db-08, db-09, db-10 and 3 more; leave those hosts out, or ask for a role binding that covers them"
        );
        let Err(denied) = rules.authorize(
            &user("bob"),
            Permission::HostsRead,
            &names.iter().map(|name| host(name)).collect::<Vec<_>>(),
        ) else {
            panic!("refused")
        };
        let Refusal::OutOfScope { hosts, .. } = denied.reason else {
            panic!("out of scope")
        };
        assert_eq!(
            hosts.len(),
            13,
            "the refusal keeps every host for the caller"
        );
    }

    #[test]
    fn scopes_of_several_bindings_add_up() {
        let rules = rules(&format!(
            "{FLEET}---
kind: RoleBinding
name: bob-on-db
role: operator
subjects: [{{user: bob}}]
scope: {{groups: [db]}}
---
kind: RoleBinding
name: carol-ops
role: operator
subjects: [{{user: carol}}]
scope: {{groups: [db]}}
"
        ));
        assert_eq!(
            verdict(
                &rules,
                &user("bob"),
                Permission::ActionsService.into(),
                &["web-01", "db-01"]
            ),
            "ok"
        );
        // Held on the fleet through `viewers` and on `db` through
        // `carol-ops`: the fleet wins.
        assert_eq!(
            verdict(
                &rules,
                &user("carol"),
                Permission::HostsRead.into(),
                &["web-01"]
            ),
            "ok"
        );
        assert_eq!(
            verdict(
                &rules,
                &user("carol"),
                Permission::JobsRead.into(),
                &["web-01"]
            ),
            "user `carol` has `jobs:read` on group `db` only, not on web-01; leave those hosts out, or ask for a role binding that covers them"
        );
    }

    #[test]
    fn hosts_in_scope_filters_for_reads() {
        let rules = rules(FLEET);
        let hosts: Vec<HostInput> = ["web-01", "db-01", "web-09", "other-01"]
            .into_iter()
            .map(host)
            .collect();
        let names = |caller: &Caller, need: Permission| -> Vec<String> {
            rules
                .hosts_in_scope(caller, need, &hosts)
                .into_iter()
                .map(|host| host.name.clone())
                .collect()
        };
        assert_eq!(
            names(&user("bob"), Permission::HostsRead),
            ["web-01", "web-09"]
        );
        assert_eq!(names(&user("carol"), Permission::HostsRead).len(), 4);
        assert!(names(&user("mallory"), Permission::HostsRead).is_empty());
        assert!(names(&user("gina"), Permission::AuditRead).is_empty());
    }

    fn listing(rules: &AccessRules, caller: &Caller) -> Vec<String> {
        rules
            .permissions_of(caller)
            .into_iter()
            .map(|(grant, scope)| format!("{grant} on {scope}"))
            .collect()
    }

    #[test]
    fn permissions_of() {
        let rules = rules(FLEET);
        assert_eq!(
            listing(&rules, &user("bob")),
            [
                "hosts:read on group `web`",
                "jobs:read on group `web`",
                "actions:service on group `web`",
                "scripts:run:restart-service on group `web`",
            ]
        );
        assert_eq!(
            listing(&rules, &token("ci")),
            [
                "hosts:read on the fleet",
                "commits:read on the fleet",
                "scripts:run on group `db`",
            ]
        );
        assert_eq!(listing(&rules, &user("alice")), ["* on the fleet"]);
        assert_eq!(
            listing(&rules, &Caller::BreakGlass("root".into())),
            ["* on the fleet"]
        );
        assert!(listing(&rules, &user("mallory")).is_empty());
    }

    #[test]
    fn diff_lists_who_gains_and_loses_what_where() {
        let before = rules(FLEET);
        // Removes the `web-operators` binding's team member dave and the
        // `db-runners` binding, widens canary operators to db, narrows
        // carol from the fleet to `web`, and adds a member and a role line.
        let changed = FLEET
            .replace("members: [bob, dave]", "members: [bob, heidi]")
            .replace(
                "kind: RoleBinding\nname: db-runners\nrole: runner\nsubjects: [{token: ci}]\nscope: {groups: [db]}\n---\n",
                "",
            )
            .replace(
                "subjects: [{user: frank}]\nscope: {groups: [canary]}",
                "subjects: [{user: frank}]\nscope: {groups: [db, canary]}",
            )
            .replace(
                "permissions: [hosts:read, commits:read]",
                "permissions: [hosts:read, commits:read, alerts:read]",
            )
            .replace(
                "subjects: [{user: carol}, {token: ci}]\nscope: fleet",
                "subjects: [{token: ci}]\nscope: fleet\n---\nkind: RoleBinding\nname: carol\nrole: viewer\nsubjects: [{user: carol}]\nscope: {groups: [web]}",
            );
        assert_ne!(changed, FLEET);
        let after = rules(&changed);
        let lines: Vec<String> = diff(&before, &after)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            lines,
            [
                "- user `carol` loses `hosts:read` on the fleet (keeps it on group `web`)",
                "- user `carol` loses `commits:read` on the fleet (keeps it on group `web`)",
                "+ user `carol` gains `alerts:read` on group `web`",
                "- user `dave` loses `hosts:read` on group `web`",
                "- user `dave` loses `jobs:read` on group `web`",
                "- user `dave` loses `actions:service` on group `web`",
                "- user `dave` loses `scripts:run:restart-service` on group `web`",
                "+ user `frank` gains `hosts:read` on group `db` (had it on group `canary`)",
                "+ user `frank` gains `jobs:read` on group `db` (had it on group `canary`)",
                "+ user `frank` gains `actions:service` on group `db` (had it on group `canary`)",
                "+ user `frank` gains `scripts:run:restart-service` on group `db` (had it on group `canary`)",
                "+ user `heidi` gains `hosts:read` on group `web`",
                "+ user `heidi` gains `jobs:read` on group `web`",
                "+ user `heidi` gains `actions:service` on group `web`",
                "+ user `heidi` gains `scripts:run:restart-service` on group `web`",
                "- token `ci` loses `scripts:run` on group `db`",
                "+ token `ci` gains `alerts:read` on the fleet",
            ]
        );
        // The reverse diff is the mirror image, and nothing changes twice.
        let mirrored: Vec<Change> = diff(&after, &before)
            .into_iter()
            .map(|change| Change {
                before: change.after,
                after: change.before,
                ..change
            })
            .collect();
        assert_eq!(mirrored, diff(&before, &after));
        assert!(diff(&after, &after).is_empty());
        assert_eq!(diff(&before, &after), diff(&before, &rules(&changed)));
    }

    #[test]
    fn diff_of_moved_and_widened_scopes() {
        let web: Scope = Scope::Groups(["web".to_string()].into());
        let db: Scope = Scope::Groups(["db".to_string()].into());
        let change = |before: Option<&Scope>, after: Option<&Scope>| {
            Change {
                caller: user("bob"),
                grant: Grant::Permission(Permission::JobsRead),
                before: before.cloned(),
                after: after.cloned(),
            }
            .to_string()
        };
        assert_eq!(
            change(Some(&web), Some(&db)),
            "~ user `bob` gains `jobs:read` on group `db` and loses it on group `web`"
        );
        assert_eq!(
            change(Some(&web), Some(&Scope::Fleet)),
            "+ user `bob` gains `jobs:read` on the fleet (had it on group `web`)"
        );
        assert_eq!(
            change(None, Some(&Scope::Fleet)),
            "+ user `bob` gains `jobs:read` on the fleet"
        );
        assert_eq!(
            change(Some(&Scope::Fleet), None),
            "- user `bob` loses `jobs:read` on the fleet"
        );
    }

    #[test]
    fn the_order_of_documents_does_not_change_the_rules() {
        let documents: Vec<&str> = FLEET.trim_start().split("---\n").collect();
        let reversed: Vec<&str> = documents.iter().rev().copied().collect();
        let (a, b) = (rules(FLEET), rules(&reversed.join("---\n")));
        assert!(diff(&a, &b).is_empty());
        for name in ["alice", "bob", "carol", "dave", "erin", "frank", "gina"] {
            assert_eq!(listing(&a, &user(name)), listing(&b, &user(name)));
        }
    }

    #[test]
    fn a_replaced_rule_set_is_seen_by_every_holder_of_the_cell() {
        let access = Access::default();
        // A request handler's copy, as a live session would keep it.
        let session = access.clone();
        let web_01 = [host("web-01")];
        assert!(
            session
                .authorize(&user("bob"), Permission::ActionsService, &web_01)
                .is_err()
        );
        access.replace(rules(FLEET));
        assert_eq!(session.current().commit(), Some("c0ffee"));
        assert!(
            session
                .authorize(&user("bob"), Permission::ActionsService, &web_01)
                .is_ok()
        );
        access.replace(AccessRules::compile(
            "decaf",
            model(&FLEET.replace("subjects: [{team: web-team}]", "subjects: [{user: dave}]")),
        ));
        assert!(
            session
                .authorize(&user("bob"), Permission::ActionsService, &web_01)
                .is_err()
        );
        assert_eq!(
            session.permissions_of(&user("dave")).len(),
            4,
            "dave keeps the role"
        );
    }

    #[test]
    fn grants_parse_as_validation_accepts_them() {
        assert_eq!(Grant::parse("*"), Some(Grant::All));
        assert_eq!(
            Grant::parse("jobs:read"),
            Some(Grant::Permission(Permission::JobsRead))
        );
        assert_eq!(
            Grant::parse("scripts:run:x"),
            Some(Grant::Script("x".into()))
        );
        for rejected in ["", "scripts:run:", "jobs:write", "Jobs:Read", "**"] {
            assert_eq!(Grant::parse(rejected), None, "{rejected:?}");
        }
        for (text, _) in muster_schemas::model::PERMISSIONS {
            assert_eq!(
                Grant::parse(text).map(|g| g.to_string()).as_deref(),
                Some(*text)
            );
        }
    }
}
