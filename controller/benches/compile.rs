//! Benchmark for the budget "compile + sign for 10,000 hosts × 25 resources:
//! under 2 s; a commit that touches one policy re-signs only the hosts it
//! affects".
//!
//! It builds a fleet model of 20 policies (templates on some files, repo
//! `source` files, checks, overlapping identical resources) that gives each
//! of 10,000 hosts exactly 25 resources, then times:
//!
//! - **full**: `compile_all` for every host, the content hash of each
//!   desired state, and signing every bundle (generation 1);
//! - **one policy changed**: a variable of the policy for one role (10 % of
//!   the hosts) changes; `compile_all` for every host again, comparing
//!   content hashes with the previous ones, and signing only the changed
//!   bundles (generation 2).
//!
//! `cargo bench -p muster-controller --bench compile` runs one warm-up and
//! seven measured runs and prints min / median / max. Run without `--bench`
//! (as `cargo test --all-targets` does), it runs once on 300 hosts as a
//! smoke test, checking the results but not timing them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use muster_controller::compile::{HostInput, compile_all};
use muster_controller::signing::SigningKey;
use muster_schemas::FleetModel;
use muster_schemas::bundle::{self, Bundle, Desired, SignedBundle};

/// The size the budget speaks of.
const N_HOSTS: usize = 10_000;
/// Hosts in a smoke-test run.
const N_SMOKE_HOSTS: usize = 300;
const N_RESOURCES_PER_HOST: usize = 25;
const N_POLICIES: usize = 20;

const N_WARM_UP_RUNS: usize = 1;
const N_MEASURED_RUNS: usize = 7;

/// The budget from DESIGN.md §10, for the verdict line.
const BUDGET: Duration = Duration::from_secs(2);

/// Ten roles, one policy each, every role 10 % of the hosts.
const ROLES: [&str; 10] = [
    "web", "api", "db", "cache", "queue", "search", "worker", "lb", "monitor", "log",
];
const OSES: [(&str, &str); 3] = [("debian", "12"), ("ubuntu", "24.04"), ("rocky", "9.4")];
const DATACENTERS: [&str; 5] = ["fra1", "ams1", "nyc1", "sfo1", "sgp1"];
/// Hosts with a `Host` document (vars and labels of their own).
const N_HOST_DOCUMENTS: usize = 200;

/// The role whose policy the second measurement changes.
const CHANGED_ROLE: &str = "api";

const SSHD_CONFIG: &str = "# Managed by muster: changes here are overwritten.
Include /etc/ssh/sshd_config.d/*.conf
Port 22
AddressFamily any
ListenAddress 0.0.0.0
HostKey /etc/ssh/ssh_host_ed25519_key
HostKey /etc/ssh/ssh_host_rsa_key
SyslogFacility AUTH
LogLevel VERBOSE
LoginGraceTime 30
PermitRootLogin no
StrictModes yes
MaxAuthTries 3
MaxSessions 10
PubkeyAuthentication yes
AuthorizedKeysFile .ssh/authorized_keys
HostbasedAuthentication no
IgnoreRhosts yes
PasswordAuthentication no
PermitEmptyPasswords no
KbdInteractiveAuthentication no
UsePAM yes
AllowAgentForwarding no
AllowTcpForwarding no
X11Forwarding no
PrintMotd no
TCPKeepAlive yes
ClientAliveInterval 300
ClientAliveCountMax 2
UseDNS no
Ciphers chacha20-poly1305@openssh.com,aes256-gcm@openssh.com,aes128-gcm@openssh.com
MACs hmac-sha2-512-etm@openssh.com,hmac-sha2-256-etm@openssh.com
KexAlgorithms sntrup761x25519-sha512@openssh.com,curve25519-sha256
AcceptEnv LANG LC_*
Subsystem sftp /usr/lib/openssh/sftp-server
";

const MOTD_TEMPLATE: &str =
    "Welcome to {{ facts.hostname }} ({{ facts.os }} {{ facts.os_version }}, {{ facts.arch }}).
Role: {{ labels.role }} in {{ labels.dc }} ({{ labels.env }}).
This host is managed by muster; local changes are reverted.
Contact: {{ vars.contact }}
";

const EXPORTER_TEMPLATE: &str = "# node exporter for {{ facts.hostname }}
ARGS=\"--web.listen-address=:{{ vars.port }} --collector.systemd --collector.textfile.directory=/var/lib/node_exporter\"
{% for collector in vars.disabled %}ARGS=\"$ARGS --no-collector.{{ collector }}\"
{% endfor %}LABELS=\"dc={{ labels.dc }},role={{ labels.role }}\"
";

const ROLE_TEMPLATE: &str = "# {{ vars.service }} on {{ facts.hostname }}: managed by muster
listen = \"0.0.0.0:{{ vars.port }}\"
workers = {{ vars.workers }}
datacenter = \"{{ labels.dc }}\"
environment = \"{{ labels.env }}\"
log_level = \"{{ vars.log_level }}\"
{% for peer in vars.peers %}peer = \"{{ peer }}.{{ labels.dc }}.internal:{{ vars.port }}\"
{% endfor %}memory_limit_mb = {{ vars.memory_mb }}
";

const ENV_TEMPLATE: &str = "# /etc/environment for {{ labels.env }}: managed by muster
MUSTER_ENV={{ labels.env }}
MUSTER_DC={{ labels.dc }}
http_proxy={{ vars.proxy }}
https_proxy={{ vars.proxy }}
no_proxy=localhost,127.0.0.1,.internal
";

/// A generated fleet: its model, its repo files, and its hosts.
struct Fleet {
    model: FleetModel,
    sources: BTreeMap<String, Vec<u8>>,
    hosts: Vec<HostInput>,
}

fn generate(n_hosts: usize) -> Fleet {
    let mut documents: Vec<(String, String)> = Vec::new();
    let mut doc = |path: &str, text: String| {
        documents.push((path.to_string(), format!("apiVersion: muster/v1\n{text}")));
    };
    doc(
        "fleet.yaml",
        "kind: Fleet\nname: bench\nagent: {interval: 5m, splay: 30s, metrics_interval: 1m}\nbundles: {expiry: 7d}\n".into(),
    );
    for env in ["prod", "staging"] {
        doc(
            &format!("groups/{env}.yaml"),
            format!("kind: Group\nname: {env}\nselector: {{env: {env}}}\n"),
        );
    }
    doc(
        "groups/all.yaml",
        "kind: Group\nname: all\nselector: {}\n".into(),
    );
    for i in 0..N_HOST_DOCUMENTS.min(n_hosts) {
        doc(
            &format!("hosts/{}.yaml", host_name(i)),
            format!(
                "kind: Host\nname: {}\nlabels: {{canary: \"true\"}}\nvars: {{contact: canary-team@example.com, log_level: debug}}\n",
                host_name(i)
            ),
        );
    }

    // base (5) + ssh (3) + monitoring (4) + os-* (3) + role-* (6) + env-* (4)
    // = 25 resources per host; `legacy-tools` repeats two of them
    // identically and `lab` targets no host.
    doc(
        "policies/base.yaml",
        "kind: Policy
name: base
targets: {groups: [all]}
vars: {contact: ops@example.com}
resources:
  - package: {name: curl}
  - package: {name: htop}
  - group: {name: admins, gid: 1500}
  - user: {name: admin, uid: 1500, group: admins, shell: /bin/bash, authorized_keys: [\"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH0s8ZXGq3K2pHcXz3e2q7N1J4gWlD2cvb8ZC6kq9Hq admin@example.com\"], depends_on: [\"group:admins\"]}
  - file: {path: /etc/motd, source: files/motd.tmpl, template: true, mode: \"0644\"}
checks:
  - {name: curl-present, command: [curl, --version]}
"
        .into(),
    );
    doc(
        "policies/ssh.yaml",
        "kind: Policy
name: ssh
targets: {groups: [all]}
resources:
  - package: {name: openssh-server}
  - file: {path: /etc/ssh/sshd_config, source: files/sshd_config, mode: \"0600\", depends_on: [\"package:openssh-server\"]}
  - service: {name: ssh, state: running, enabled: true, restart_on: [\"file:/etc/ssh/sshd_config\"]}
checks:
  - {name: no-root-login, command: [sshd, -T], expect_output: permitrootlogin no, severity: high}
"
        .into(),
    );
    doc(
        "policies/monitoring.yaml",
        "kind: Policy
name: monitoring
targets: {selector: {}}
vars: {port: 9100, disabled: [wifi, infiniband, nfs]}
resources:
  - package: {name: prometheus-node-exporter}
  - directory: {path: /var/lib/node_exporter, mode: \"0755\"}
  - file: {path: /etc/default/prometheus-node-exporter, source: files/node-exporter.tmpl, template: true, depends_on: [\"package:prometheus-node-exporter\"]}
  - service: {name: prometheus-node-exporter, state: running, enabled: true, restart_on: [\"file:/etc/default/prometheus-node-exporter\"]}
"
        .into(),
    );
    for (os, _) in OSES {
        doc(
            &format!("policies/os-{os}.yaml"),
            format!(
                "kind: Policy
name: os-{os}
targets: {{selector: {{os: {os}}}}}
resources:
  - file: {{path: /etc/{os}-release.muster, content: \"managed {os}\\n\"}}
  - package: {{name: unattended-upgrades-{os}}}
  - exec: {{name: refresh-{os}, command: [/usr/bin/true], creates: /var/lib/muster/{os}-refreshed}}
"
            ),
        );
    }
    for (i, role) in ROLES.iter().enumerate() {
        let peers: Vec<String> = (1..=3).map(|p| format!("{role}-{p:02}")).collect();
        doc(
            &format!("policies/role-{role}.yaml"),
            format!(
                "kind: Policy
name: role-{role}
targets: {{selector: {{role: {role}}}, exclude: {{selector: {{state: decommissioned}}}}}}
vars: {{service: {role}d, port: {port}, workers: {workers}, log_level: info, memory_mb: 2048, peers: [{peers}]}}
resources:
  - package: {{name: {role}-server}}
  - directory: {{path: /etc/{role}, mode: \"0755\"}}
  - file: {{path: /etc/{role}/{role}.toml, source: files/role.toml.tmpl, template: true, mode: \"0640\", depends_on: [\"directory:/etc/{role}\"]}}
  - file: {{path: /etc/{role}/README, content: \"This directory is managed by muster (policy role-{role}).\\nEdit the fleet repo instead.\\n\"}}
  - symlink: {{path: /etc/{role}/current, target: /etc/{role}/{role}.toml}}
  - service: {{name: {role}d, state: running, enabled: true, restart_on: [\"file:/etc/{role}/{role}.toml\"]}}
checks:
  - {{name: {role}-listening, command: [ss, -ltn], expect_output: \":{port}\"}}
",
                port = 8000 + i,
                workers = 4 + i % 4,
                peers = peers.join(", "),
            ),
        );
    }
    for (env, proxy) in [
        ("prod", "http://proxy.prod.internal:3128"),
        ("staging", "http://proxy.staging.internal:3128"),
    ] {
        doc(
            &format!("policies/env-{env}.yaml"),
            format!(
                "kind: Policy
name: env-{env}
targets: {{groups: [{env}]}}
vars: {{proxy: \"{proxy}\"}}
resources:
  - file: {{path: /etc/environment, source: files/environment.tmpl, template: true, mode: \"0644\"}}
  - file: {{path: /etc/apt/apt.conf.d/95proxy, content: \"Acquire::http::Proxy \\\"{proxy}\\\";\\n\"}}
  - directory: {{path: /srv/{env}, mode: \"0750\", owner: admin, group: admins}}
  - package: {{name: {env}-ca-certificates}}
"
            ),
        );
    }
    doc(
        "policies/legacy-tools.yaml",
        "kind: Policy
name: legacy-tools
mode: audit
targets: {groups: [all]}
resources:
  - package: {name: curl}
  - package: {name: htop}
"
        .into(),
    );
    doc(
        "policies/lab.yaml",
        "kind: Policy
name: lab
targets: {selector: {hostname: \"lab-*\"}}
resources:
  - package: {name: lab-tools}
"
        .into(),
    );

    let sources: BTreeMap<String, Vec<u8>> = [
        ("files/sshd_config", SSHD_CONFIG),
        ("files/motd.tmpl", MOTD_TEMPLATE),
        ("files/node-exporter.tmpl", EXPORTER_TEMPLATE),
        ("files/role.toml.tmpl", ROLE_TEMPLATE),
        ("files/environment.tmpl", ENV_TEMPLATE),
    ]
    .into_iter()
    .map(|(path, text)| (path.to_string(), text.as_bytes().to_vec()))
    .collect();
    let repo_files: BTreeSet<String> = documents
        .iter()
        .map(|(path, _)| path.clone())
        .chain(sources.keys().cloned())
        .collect();
    let validation = muster_schemas::load_repo(
        documents
            .iter()
            .map(|(path, text)| (path.as_str(), text.as_bytes())),
        &repo_files,
    );
    if !validation.diagnostics.is_empty() {
        for diagnostic in validation.diagnostics.iter().take(20) {
            eprintln!("{diagnostic}");
        }
        panic!("the generated fleet must validate cleanly");
    }
    let model = validation.model.expect("a model");
    assert_eq!(
        model.policies.len(),
        N_POLICIES,
        "the generator's counts drift"
    );

    let hosts = (0..n_hosts)
        .map(|i| {
            let (os, os_version) = OSES[i % OSES.len()];
            let facts = serde_json::json!({
                "os": os,
                "os_version": os_version,
                "arch": if i % 4 == 0 { "aarch64" } else { "x86_64" },
                "kernel": "6.1.0-28-amd64",
                "cpus": 2 + i % 30,
                "memory_mb": 4096 * (1 + i % 8),
            });
            let serde_json::Value::Object(facts) = facts else {
                unreachable!()
            };
            HostInput {
                id: format!("{:016x}", i * 7_919 + 1),
                name: host_name(i),
                labels: [
                    ("role", ROLES[i % ROLES.len()]),
                    ("dc", DATACENTERS[(i / ROLES.len()) % DATACENTERS.len()]),
                    ("env", if i % 5 == 0 { "staging" } else { "prod" }),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
                facts,
            }
        })
        .collect();
    Fleet {
        model,
        sources,
        hosts,
    }
}

fn host_name(i: usize) -> String {
    format!("node-{i:05}")
}

/// Picks one phase's timing out of a run.
type Phase = fn(&Run) -> Duration;

/// Timings of one run of both measurements.
#[derive(Debug, Clone, Copy)]
struct Run {
    full_compile: Duration,
    full_hash: Duration,
    full_sign: Duration,
    full_total: Duration,
    change_compile: Duration,
    change_diff: Duration,
    change_sign: Duration,
    change_total: Duration,
    n_resigned: usize,
}

const NOW: i64 = 1_800_000_000;
const EXPIRY_SECS: i64 = 7 * 86_400;

/// Bundles for the given hosts' desired states.
fn bundles(
    desired: impl IntoIterator<Item = (String, Desired, String)>,
    names: &BTreeMap<&str, &str>,
    generation: u64,
    commit: &str,
) -> Vec<Bundle> {
    desired
        .into_iter()
        .map(|(host_id, desired, content_hash)| Bundle {
            host_name: names[host_id.as_str()].to_string(),
            host_id,
            generation,
            commit: commit.to_string(),
            issued_at: NOW,
            expires_at: NOW + EXPIRY_SECS,
            content_hash,
            desired,
        })
        .collect()
}

fn run_once(
    fleet: &Fleet,
    changed: &FleetModel,
    key: &SigningKey,
) -> (Run, Vec<SignedBundle>, Vec<SignedBundle>) {
    let names: BTreeMap<&str, &str> = fleet
        .hosts
        .iter()
        .map(|h| (h.id.as_str(), h.name.as_str()))
        .collect();

    // Full: compile, hash and sign every host.
    let started = Instant::now();
    let compiled =
        compile_all(&fleet.model, &fleet.sources, &fleet.hosts).expect("the fleet compiles");
    let full_compile = started.elapsed();
    let hashed: Vec<(String, Desired, String)> = compiled
        .into_iter()
        .map(|(id, desired)| {
            let hash = desired.content_hash();
            (id, desired, hash)
        })
        .collect();
    let full_hash = started.elapsed() - full_compile;
    let previous: BTreeMap<String, String> = hashed
        .iter()
        .map(|(id, _, hash)| (id.clone(), hash.clone()))
        .collect();
    let full_bundles = bundles(
        hashed,
        &names,
        1,
        "c0ffee0000000000000000000000000000000001",
    );
    let full_signed = key.sign_all(&full_bundles);
    let full_total = started.elapsed();
    let full_sign = full_total - full_compile - full_hash;
    drop(full_bundles);

    // One policy changed: compile everything, sign what changed.
    let started = Instant::now();
    let compiled = compile_all(changed, &fleet.sources, &fleet.hosts).expect("the fleet compiles");
    let change_compile = started.elapsed();
    let changed_hosts: Vec<(String, Desired, String)> = compiled
        .into_iter()
        .filter_map(|(id, desired)| {
            let hash = desired.content_hash();
            (previous.get(&id) != Some(&hash)).then_some((id, desired, hash))
        })
        .collect();
    let change_diff = started.elapsed() - change_compile;
    let n_resigned = changed_hosts.len();
    let change_bundles = bundles(
        changed_hosts,
        &names,
        2,
        "c0ffee0000000000000000000000000000000002",
    );
    let change_signed = key.sign_all(&change_bundles);
    let change_total = started.elapsed();
    let change_sign = change_total - change_compile - change_diff;

    let run = Run {
        full_compile,
        full_hash,
        full_sign,
        full_total,
        change_compile,
        change_diff,
        change_sign,
        change_total,
        n_resigned,
    };
    (run, full_signed, change_signed)
}

/// Checks what a run produced: every host has 25 resources, bundles verify,
/// and the change re-signed exactly the changed role's hosts.
fn check(fleet: &Fleet, key: &SigningKey, full: &[SignedBundle], change: &[SignedBundle]) {
    assert_eq!(full.len(), fleet.hosts.len());
    let by_id: BTreeMap<&str, &HostInput> =
        fleet.hosts.iter().map(|h| (h.id.as_str(), h)).collect();
    let public_key = key.public_key();
    for (i, signed) in full.iter().enumerate() {
        // Verifying is the agent's work: a sample is enough here.
        if i % 97 != 0 {
            continue;
        }
        let host_id = serde_json::from_str::<Bundle>(&signed.bundle)
            .expect("a bundle")
            .host_id;
        let bundle = bundle::verify(&public_key, signed, &host_id, 0, NOW).expect("verifies");
        assert_eq!(
            bundle.desired.resources.len(),
            N_RESOURCES_PER_HOST,
            "{}",
            bundle.host_name
        );
        assert!(by_id.contains_key(host_id.as_str()));
    }
    let expected: usize = fleet
        .hosts
        .iter()
        .filter(|h| h.labels["role"] == CHANGED_ROLE)
        .count();
    assert_eq!(
        change.len(),
        expected,
        "only the changed role's hosts are re-signed"
    );
    for signed in change {
        let host_id = serde_json::from_str::<Bundle>(&signed.bundle)
            .expect("a bundle")
            .host_id;
        assert_eq!(by_id[host_id.as_str()].labels["role"], CHANGED_ROLE);
        let bundle = bundle::verify(&public_key, signed, &host_id, 1, NOW).expect("verifies");
        assert_eq!(bundle.generation, 2);
    }
}

fn main() {
    let full = std::env::args().any(|arg| arg == "--bench");
    let n_hosts = if full { N_HOSTS } else { N_SMOKE_HOSTS };
    let fleet = generate(n_hosts);
    let mut changed = fleet.model.clone();
    changed
        .policies
        .get_mut(&format!("role-{CHANGED_ROLE}"))
        .expect("the changed role's policy")
        .vars
        .insert("workers".into(), serde_json::json!(32));
    let key = SigningKey::generate().expect("a signing key");

    let n_runs = if full {
        N_WARM_UP_RUNS + N_MEASURED_RUNS
    } else {
        1
    };
    let mut runs = Vec::new();
    for run in 0..n_runs {
        let (timings, full_signed, change_signed) = run_once(&fleet, &changed, &key);
        if run == 0 {
            check(&fleet, &key, &full_signed, &change_signed);
            let bytes: usize = full_signed.iter().map(|s| s.bundle.len()).sum();
            println!(
                "fleet: {} hosts × {N_RESOURCES_PER_HOST} resources through {N_POLICIES} policies; bundles {:.1} KiB on average ({:.1} MiB in all)",
                fleet.hosts.len(),
                bytes as f64 / fleet.hosts.len() as f64 / 1024.0,
                bytes as f64 / (1 << 20) as f64,
            );
        }
        if run >= n_runs - N_MEASURED_RUNS.min(n_runs) {
            runs.push(timings);
        }
    }
    if !full {
        println!(
            "ok: compiled and signed {n_hosts} hosts once (run with `cargo bench` to measure)"
        );
        return;
    }

    let phases: [(&str, Phase); 8] = [
        ("full: compile_all", |r| r.full_compile),
        ("full: content hashes", |r| r.full_hash),
        ("full: sign", |r| r.full_sign),
        ("full: total", |r| r.full_total),
        ("one policy: compile_all", |r| r.change_compile),
        ("one policy: hashes + diff", |r| r.change_diff),
        ("one policy: sign changed", |r| r.change_sign),
        ("one policy: total", |r| r.change_total),
    ];
    let mut table = String::new();
    let _ = writeln!(
        table,
        "{:<28} {:>10} {:>10} {:>10}",
        "phase", "min", "median", "max"
    );
    let mut medians = BTreeMap::new();
    for (name, phase) in phases {
        let mut values: Vec<Duration> = runs.iter().map(phase).collect();
        values.sort();
        let median = values[values.len() / 2];
        medians.insert(name, median);
        let _ = writeln!(
            table,
            "{name:<28} {:>10} {:>10} {:>10}",
            millis(values[0]),
            millis(median),
            millis(values[values.len() - 1]),
        );
    }
    print!("{table}");
    println!(
        "re-signed after the change: {} of {} hosts",
        runs[0].n_resigned,
        fleet.hosts.len()
    );
    let total = medians["full: total"];
    let verdict = if total < BUDGET { "within" } else { "OVER" };
    println!(
        "verdict: compile + sign {} hosts: median {}, {verdict} the budget of {} ms",
        fleet.hosts.len(),
        millis(total),
        BUDGET.as_millis()
    );
}

fn millis(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1e3)
}
