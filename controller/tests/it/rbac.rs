//! Access rules follow the deployed commit: a real controller following a
//! real Git repo grants, revokes and keeps permissions as commits deploy
//! or are rejected, and loads the rules of the commit in force at start.

use muster_controller::compile::HostInput;
use muster_controller::rbac::{Access, Caller, Refusal};
use muster_controller::reconcile::host_input;
use muster_controller::store::CommitState;
use muster_schemas::model::Permission;

use crate::backends;
use crate::db::TestDb;
use crate::harness::{Harness, WEBHOOK_SECRET, eventually};

const BINDINGS: &str = "rbac/bindings.yaml";

/// The first document after which a new binding is inserted.
const VIEWERS: &str = "apiVersion: muster/v1\nkind: RoleBinding\nname: viewers\n";

/// A binding that makes `olga` an operator of the `web` hosts.
const OLGA_ON_WEB: &str = "apiVersion: muster/v1
kind: RoleBinding
name: olga-operates-web
role: operator
subjects:
  - user: olga
scope:
  groups: [web]
---
";

fn olga() -> Caller {
    Caller::User("olga".into())
}

/// Waits until the rules in force are those of `commit`.
async fn rules_of(access: &Access, commit: &str) {
    eventually(&format!("the access rules of {commit}"), || async {
        (access.current().commit() == Some(commit)).then_some(())
    })
    .await;
}

/// The hosts as the controller knows them now, by name.
async fn hosts(harness: &Harness, names: &[&str]) -> Vec<HostInput> {
    let all = harness.store.hosts().await.unwrap();
    names
        .iter()
        .map(|name| {
            let host = all
                .iter()
                .find(|host| host.name == *name)
                .unwrap_or_else(|| panic!("{name} is enrolled"));
            host_input(host)
        })
        .collect()
}

backends!(
    access_rules_switch_with_the_deployed_commit,
    |db: TestDb| {
        async move {
            let mut harness = Harness::start(db).await;
            let first = eventually("the example to deploy", || async {
                harness.store.deployed_commit().await.unwrap()
            })
            .await;
            // A request handler's copy of the cell, as a live session uses it
            // for every request: it must follow every deploy.
            let session = harness.access();
            rules_of(&session, &first.id).await;
            let web_token = harness.token(5, true, &[("role", "web")], 3600).await;
            let db_token = harness.token(5, true, &[("role", "db")], 3600).await;
            harness.enroll(&web_token, "web-01").await;
            harness.enroll(&web_token, "web-02").await;
            harness.enroll(&db_token, "db-01").await;
            let web = hosts(&harness, &["web-01", "web-02"]).await;
            let web_and_db = hosts(&harness, &["web-01", "db-01"]).await;
            let restart = || muster_controller::rbac::Need::RunScript("restart-service".into());

            // Not granted by the example: refused.
            let denied = session.authorize(&olga(), restart(), &web).unwrap_err();
            assert_eq!(denied.reason, Refusal::NotGranted);

            // A commit grants olga the operator role on `web`.
            harness
                .repo
                .edit(BINDINGS, VIEWERS, &format!("{OLGA_ON_WEB}{VIEWERS}"));
            let granted = harness.repo.commit_all("Let olga operate the web hosts");
            assert_eq!(
                harness.commit_state(&granted).await.state,
                CommitState::Deployed
            );
            rules_of(&session, &granted).await;
            session
                .authorize(&olga(), restart(), &web)
                .expect("olga may restart services on web hosts");
            session
                .authorize(&olga(), Permission::ActionsService, &web)
                .expect("and act on their services");
            let denied = session
                .authorize(&olga(), restart(), &web_and_db)
                .unwrap_err();
            assert_eq!(
                denied.reason,
                Refusal::OutOfScope {
                    hosts: vec!["db-01".into()],
                    held_on: muster_controller::rbac::Scope::Groups(["web".to_string()].into()),
                },
                "the db host is refused, and named: {denied}"
            );
            assert!(denied.to_string().contains("not on db-01;"), "{denied}");
            let denied = session
                .authorize(&olga(), Permission::TokensManage, &[])
                .unwrap_err();
            assert_eq!(denied.reason, Refusal::NotGranted);

            // A later commit removes the binding: refused once it deploys.
            harness.repo.edit(BINDINGS, OLGA_ON_WEB, "");
            let revoked = harness.repo.commit_all("olga moves to another team");
            assert_eq!(
                harness.commit_state(&revoked).await.state,
                CommitState::Deployed
            );
            rules_of(&session, &revoked).await;
            let denied = session.authorize(&olga(), restart(), &web).unwrap_err();
            assert_eq!(denied.reason, Refusal::NotGranted);
            // The rest of the example's rules are untouched: bob operates web
            // through the web team.
            let bob = Caller::User("bob".into());
            session
                .authorize(&bob, restart(), &web)
                .expect("bob still operates the web hosts");

            // A rejected commit, which would have granted olga again, changes
            // nothing.
            harness.repo.edit(
                BINDINGS,
                VIEWERS,
                &format!(
                    "{}{VIEWERS}",
                    OLGA_ON_WEB.replace("role: operator", "role: operatr")
                ),
            );
            let rejected = harness.repo.commit_all("Give olga back her access (typo)");
            assert_eq!(
                harness.commit_state(&rejected).await.state,
                CommitState::Rejected
            );
            assert_eq!(session.current().commit(), Some(revoked.as_str()));
            assert_eq!(
                session
                    .authorize(&olga(), restart(), &web)
                    .unwrap_err()
                    .reason,
                Refusal::NotGranted
            );
            assert!(session.permissions_of(&olga()).is_empty());

            // A restart loads the rules of the commit in force (not the
            // rejected tip) before serving: no waiting for a reconciler run.
            harness.stop_controller().await;
            harness.restart_controller().await;
            let restarted = harness.access();
            assert_eq!(restarted.current().commit(), Some(revoked.as_str()));
            restarted
                .authorize(&bob, restart(), &web)
                .expect("bob operates the web hosts after a restart");
            assert_eq!(
                restarted
                    .authorize(&bob, restart(), &web_and_db)
                    .unwrap_err()
                    .reason,
                Refusal::OutOfScope {
                    hosts: vec!["db-01".into()],
                    held_on: muster_controller::rbac::Scope::Groups(["web".to_string()].into()),
                }
            );
            assert_eq!(
                restarted
                    .authorize(&olga(), restart(), &web)
                    .unwrap_err()
                    .reason,
                Refusal::NotGranted
            );
            harness.stop().await;
        }
    }
);

backends!(
    a_commit_deployed_within_a_second_of_the_previous_is_the_one_in_force,
    |db: TestDb| {
        async move {
            // Deploy times are whole seconds: two deploys in one second used
            // to tie, and the store could name the older commit as the one
            // in force, so that a sweep brought back its access rules.
            // Commits pushed with a webhook make such ties likely.
            let harness = Harness::start(db).await;
            let mut last = eventually("the example to deploy", || async {
                harness.store.deployed_commit().await.unwrap()
            })
            .await;
            // A host given a bundle of the deployed commit rewrites its
            // record, which on PostgreSQL put it last among equals.
            let token = harness.token(1, true, &[("role", "web")], 3600).await;
            let host = harness.enroll(&token, "web-01").await;
            harness.stored_bundle(&host.host_id, 0).await;
            for n in 0..4 {
                let (from, to) = if n % 2 == 0 {
                    (VIEWERS.to_string(), format!("{OLGA_ON_WEB}{VIEWERS}"))
                } else {
                    (OLGA_ON_WEB.to_string(), String::new())
                };
                harness.repo.edit(BINDINGS, &from, &to);
                let id = harness.repo.commit_all(&format!("Change {n}"));
                // A webhook runs the reconciler now, not at its next sweep.
                let hook = harness
                    .http
                    .post(format!("{}/hooks/gitlab", harness.url))
                    .header("x-gitlab-token", WEBHOOK_SECRET)
                    .body("{}")
                    .send()
                    .await
                    .unwrap();
                assert_eq!(hook.status(), 202);
                let deployed = harness.commit_state(&id).await;
                assert_eq!(deployed.state, CommitState::Deployed);
                assert!(
                    deployed.deployed_at > last.deployed_at,
                    "deploy {n} is stamped after the one before"
                );
                let in_force = harness.store.deployed_commit().await.unwrap().unwrap();
                assert_eq!(in_force.id, id, "deploy {n} is the one in force");
                rules_of(&harness.access(), &id).await;
                last = deployed;
            }
            harness.stop().await;
        }
    }
);
