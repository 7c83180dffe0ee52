//! Benchmark for the budget "load + validate a fleet repo of 2,000 YAML files: under 1 s".
//!
//! It generates a realistic fleet repo of exactly 2,000 YAML files (hosts,
//! groups, policies with 5–25 resources, scripts, alerting and RBAC, plus
//! the repo files that `source` fields name) into a fresh temporary
//! directory, checks that it validates without a single diagnostic, and
//! then times `repo::read_dir` + `Snapshot::validate` end to end, the way
//! `muster validate` runs them.
//!
//! `cargo bench -p muster-controller --bench validate` runs one warm-up and
//! ten measured runs and prints min / median / max. Run without `--bench`
//! (as `cargo test --all-targets` does), it generates and validates once,
//! as a smoke test of the generator.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use muster_controller::repo;

/// The size the budget speaks of.
const N_YAML_FILES: usize = 2_000;

const N_WARM_UP_RUNS: usize = 1;
const N_MEASURED_RUNS: usize = 10;

/// The budget from DESIGN.md §10, for the verdict line.
const BUDGET: Duration = Duration::from_secs(1);

// The repo's shape; the counts add up to `N_YAML_FILES`, one document a file.
const N_HOSTS: usize = 600;
const N_POLICIES: usize = 1_000;
const N_SCRIPTS: usize = 150;
/// Scripts that policies use as check remediations: they take a `service`.
const N_REMEDIATION_SCRIPTS: usize = 10;
const N_ALERT_RULES: usize = 100;
const N_CHANNELS: usize = 20;
const N_WINDOWS: usize = 30;
const N_ROLES: usize = 20;
const N_BINDINGS: usize = 20;
const N_TEAMS: usize = 9;
/// The `Group` count comes from the group layout in `write_groups`.
const N_GROUPS: usize = 50;

const ROLES: [&str; 12] = [
    "web", "api", "db", "cache", "queue", "search", "worker", "lb", "monitor", "log", "bastion",
    "ci",
];
const DATACENTERS: [&str; 5] = ["fra1", "ams1", "nyc1", "sfo1", "sgp1"];
const TIME_ZONES: [&str; 5] = [
    "UTC",
    "Europe/Berlin",
    "Europe/Amsterdam",
    "America/New_York",
    "Asia/Singapore",
];
/// Software that policies install and configure: (package, service, user).
const APPS: [(&str, &str, &str); 20] = [
    ("nginx", "nginx", "www-data"),
    ("haproxy", "haproxy", "haproxy"),
    ("postgresql-16", "postgresql", "postgres"),
    ("redis-server", "redis-server", "redis"),
    ("rabbitmq-server", "rabbitmq-server", "rabbitmq"),
    ("opensearch", "opensearch", "opensearch"),
    ("memcached", "memcached", "memcache"),
    (
        "prometheus-node-exporter",
        "prometheus-node-exporter",
        "prometheus",
    ),
    ("chrony", "chrony", "chrony"),
    ("rsyslog", "rsyslog", "syslog"),
    ("fail2ban", "fail2ban", "fail2ban"),
    ("containerd.io", "containerd", "containerd"),
    ("telegraf", "telegraf", "telegraf"),
    ("consul", "consul", "consul"),
    ("vector", "vector", "vector"),
    ("postfix", "postfix", "postfix"),
    ("bind9", "named", "bind"),
    ("unbound", "unbound", "unbound"),
    ("grafana-agent", "grafana-agent", "grafana-agent"),
    ("pgbouncer", "pgbouncer", "pgbouncer"),
];
/// Per app, plain configuration files and templates that `source` fields name.
const N_SOURCE_FILES_PER_APP: usize = 8;
const N_SOURCE_TEMPLATES_PER_APP: usize = 4;
const USERS: [&str; 12] = [
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory",
    "oscar",
];
const SSH_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGbVDaVpqc/lwvbqPE5uHQZLF2wG5GnaXv2ur1HmDtuI";

/// `writeln!` into a `String`, which cannot fail.
macro_rules! w {
    ($out:expr, $($arg:tt)*) => {{
        let _ = writeln!($out, $($arg)*);
    }};
}

fn main() {
    let full = std::env::args().any(|arg| arg == "--bench");
    let repo_dir = TempDir::create();
    let shape = generate(repo_dir.path());
    assert_eq!(
        shape.n_yaml_files, N_YAML_FILES,
        "the generator's counts drift"
    );

    let n_runs = if full {
        N_WARM_UP_RUNS + N_MEASURED_RUNS
    } else {
        1
    };
    let mut runs = Vec::new();
    let mut n_documents = 0;
    for run in 0..n_runs {
        let started = Instant::now();
        let snapshot = repo::read_dir(repo_dir.path()).expect("the generated repo is readable");
        let read = started.elapsed();
        let validation = snapshot.validate();
        let total = started.elapsed();
        if !validation.diagnostics.is_empty() {
            for diagnostic in validation.diagnostics.iter().take(20) {
                eprintln!("{diagnostic}");
            }
            panic!(
                "the generated repo has {} diagnostics: it must validate cleanly",
                validation.diagnostics.len()
            );
        }
        assert!(validation.model.is_some());
        assert_eq!(validation.n_files, N_YAML_FILES);
        n_documents = validation.n_documents;
        // The measured work ends with the result in hand; freeing it is not
        // part of what `muster validate` waits for.
        drop(validation);
        if run >= n_runs - N_MEASURED_RUNS.min(n_runs) {
            runs.push(Run {
                read,
                validate: total - read,
                total,
            });
        }
    }

    println!("load + validate a fleet repo of {N_YAML_FILES} YAML files");
    println!(
        "repo: {} YAML files, {} documents, {} bytes ({:.1} MiB) of YAML; \
         {} other files ({} bytes)",
        shape.n_yaml_files,
        n_documents,
        shape.n_yaml_bytes,
        shape.n_yaml_bytes as f64 / (1024.0 * 1024.0),
        shape.n_other_files,
        shape.n_other_bytes,
    );
    println!(
        "shape: 1 fleet, {N_GROUPS} groups, {N_HOSTS} hosts, {N_POLICIES} policies \
         ({} resources, {} checks), {N_SCRIPTS} scripts ({} scheduled), \
         {N_ALERT_RULES} alert rules, {N_CHANNELS} channels, {N_WINDOWS} windows, \
         {N_ROLES} roles, {N_BINDINGS} role bindings, {N_TEAMS} teams",
        shape.n_resources, shape.n_checks, shape.n_scheduled_scripts,
    );
    if !full {
        println!("ok: validated once (run with `cargo bench` to measure)");
        return;
    }
    println!("runs: {N_WARM_UP_RUNS} warm-up + {N_MEASURED_RUNS} measured (page cache warm)");
    println!(
        "{:<26} {:>10} {:>10} {:>10}",
        "", "min ms", "median ms", "max ms"
    );
    let phases = [
        (
            "read + parse (read_dir)",
            Stats::of(runs.iter().map(|run| run.read).collect()),
        ),
        (
            "cross-document validate",
            Stats::of(runs.iter().map(|run| run.validate).collect()),
        ),
        (
            "total",
            Stats::of(runs.iter().map(|run| run.total).collect()),
        ),
    ];
    for (label, stats) in &phases {
        println!(
            "{label:<26} {:>10.1} {:>10.1} {:>10.1}",
            millis(stats.min),
            millis(stats.median),
            millis(stats.max),
        );
    }
    let total = &phases[2].1;
    let verdict = if total.median < BUDGET {
        "within budget"
    } else {
        "OVER BUDGET"
    };
    println!(
        "budget: under {:.0} ms; median {:.1} ms: {verdict}",
        millis(BUDGET),
        millis(total.median),
    );
}

struct Run {
    read: Duration,
    validate: Duration,
    total: Duration,
}

struct Stats {
    min: Duration,
    median: Duration,
    max: Duration,
}

impl Stats {
    fn of(mut samples: Vec<Duration>) -> Stats {
        samples.sort();
        let n = samples.len();
        let median = if n % 2 == 1 {
            samples[n / 2]
        } else {
            (samples[n / 2 - 1] + samples[n / 2]) / 2
        };
        Stats {
            min: samples[0],
            median,
            max: samples[n - 1],
        }
    }
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// A fresh directory under the system's temporary directory, removed on drop
/// (also when the benchmark panics).
struct TempDir(PathBuf);

impl TempDir {
    fn create() -> TempDir {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos());
        let path = std::env::temp_dir().join(format!(
            "muster-bench-validate-{}-{nanos}",
            std::process::id()
        ));
        fs::create_dir(&path).expect("cannot create the benchmark's temporary directory");
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A small deterministic generator (SplitMix64), so that every run of the
/// benchmark sees the same repo.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// What was written, for the report.
#[derive(Default)]
struct Shape {
    n_yaml_files: usize,
    n_yaml_bytes: usize,
    n_other_files: usize,
    n_other_bytes: usize,
    n_resources: usize,
    n_checks: usize,
    n_scheduled_scripts: usize,
}

/// Writes the repo's files and keeps count.
struct Writer<'a> {
    root: &'a Path,
    shape: Shape,
}

impl Writer<'_> {
    fn write(&mut self, relative: &str, text: &str) {
        let path = self.root.join(relative);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).expect("cannot create a directory of the repo");
        }
        fs::write(&path, text).expect("cannot write a file of the repo");
        if relative.ends_with(".yaml") || relative.ends_with(".yml") {
            self.shape.n_yaml_files += 1;
            self.shape.n_yaml_bytes += text.len();
        } else {
            self.shape.n_other_files += 1;
            self.shape.n_other_bytes += text.len();
        }
    }
}

/// Document header: schema comment, `apiVersion`, `kind`, `name`, `description`.
fn header(out: &mut String, schema: &str, kind: &str, name: &str, description: &str) {
    w!(
        out,
        "# yaml-language-server: $schema=../../schemas/json/{schema}.json"
    );
    w!(out, "apiVersion: muster/v1");
    w!(out, "kind: {kind}");
    w!(out, "name: {name}");
    w!(out, "description: {description}");
}

struct Host {
    name: String,
    role: &'static str,
    datacenter: &'static str,
}

/// Names the later documents refer to.
struct Names {
    hosts: Vec<Host>,
    groups: Vec<String>,
    scripts: Vec<String>,
    checks: Vec<String>,
    channels: Vec<String>,
    roles: Vec<String>,
    teams: Vec<String>,
}

fn generate(root: &Path) -> Shape {
    let mut writer = Writer {
        root,
        shape: Shape::default(),
    };
    let mut rng = Rng(0x6d75_7374_6572);
    writer.write(
        "README.md",
        "# Fleet repo\n\nGenerated for the `validate` benchmark.\n",
    );
    write_fleet(&mut writer);
    let mut names = Names {
        hosts: write_hosts(&mut writer),
        groups: Vec::new(),
        scripts: Vec::new(),
        checks: Vec::new(),
        channels: Vec::new(),
        roles: Vec::new(),
        teams: Vec::new(),
    };
    names.groups = write_groups(&mut writer, &names.hosts);
    write_source_files(&mut writer);
    names.scripts = write_scripts(&mut writer, &mut rng);
    names.checks = write_policies(&mut writer, &mut rng, &names);
    names.channels = write_channels(&mut writer);
    write_alert_rules(&mut writer, &mut rng, &names);
    write_windows(&mut writer);
    names.teams = write_teams(&mut writer);
    names.roles = write_roles(&mut writer, &names);
    write_bindings(&mut writer, &mut rng, &names);
    writer.shape
}

fn write_fleet(writer: &mut Writer<'_>) {
    let mut out = String::new();
    w!(
        out,
        "# yaml-language-server: $schema=../schemas/json/fleet.json"
    );
    w!(out, "# Fleet-wide settings: one Fleet document per repo.");
    w!(out, "apiVersion: muster/v1");
    w!(out, "kind: Fleet");
    w!(out, "name: bench");
    w!(
        out,
        "description: A fleet of {N_HOSTS} named hosts in {} datacenters.",
        DATACENTERS.len()
    );
    w!(out, "agent:");
    w!(out, "  interval: 60s");
    w!(out, "  splay: 10s");
    w!(out, "  metrics_interval: 30s");
    w!(out, "  offline_after: 5m");
    w!(out, "bundles:");
    w!(out, "  expiry: 7d");
    w!(out, "enrollment:");
    w!(out, "  approval: manual");
    w!(out, "commit_signatures:");
    w!(out, "  required: true");
    w!(out, "  allowed_signers:");
    for user in &USERS[..4] {
        w!(out, "    - name: {user}");
        w!(out, "      key: {SSH_KEY} {user}@example.com");
    }
    w!(out, "rollout:");
    w!(out, "  max_parallel: \"25%\"");
    w!(out, "  failure_threshold: 2");
    writer.write("fleet.yaml", &out);
}

fn env_of(i: usize) -> &'static str {
    match i % 10 {
        0..=6 => "prod",
        7 | 8 => "staging",
        _ => "dev",
    }
}

fn write_hosts(writer: &mut Writer<'_>) -> Vec<Host> {
    let mut hosts = Vec::with_capacity(N_HOSTS);
    for i in 0..N_HOSTS {
        let role = ROLES[i % ROLES.len()];
        let datacenter = DATACENTERS[(i / ROLES.len()) % DATACENTERS.len()];
        let number = i / (ROLES.len() * DATACENTERS.len()) + 1;
        let name = format!("{role}-{datacenter}-{number:02}");
        let env = env_of(i);
        let mut out = String::new();
        header(
            &mut out,
            "host",
            "Host",
            &name,
            &format!("{role} host {number} in {datacenter} ({env})."),
        );
        w!(out, "labels:");
        w!(out, "  role: {role}");
        w!(out, "  env: {env}");
        w!(out, "  dc: {datacenter}");
        w!(out, "  rack: r{:02}", i % 24 + 1);
        w!(out, "  team: team-{}", i % N_TEAMS + 1);
        w!(out, "  example.com/cost-center: cc-{}", 1000 + i % 37);
        w!(out, "vars:");
        w!(out, "  server_name: {name}.{datacenter}.example.internal");
        w!(out, "  listen_port: {}", 8000 + i % 100);
        w!(
            out,
            "  upstream: \"10.{}.{}.{}:8080\"",
            i % 5,
            i / 256 % 256,
            i % 256
        );
        w!(out, "  max_connections: {}", 256 << (i % 4));
        w!(out, "  log_level: {}", ["info", "debug", "warn"][i % 3]);
        w!(out, "  backups: {}", i % 2 == 0);
        w!(out, "  dns_servers: [\"10.0.0.2\", \"10.0.0.3\"]");
        writer.write(&format!("hosts/{datacenter}/{name}.yaml"), &out);
        hosts.push(Host {
            name,
            role,
            datacenter,
        });
    }
    hosts
}

fn write_groups(writer: &mut Writer<'_>, hosts: &[Host]) -> Vec<String> {
    let mut groups = Vec::new();
    let mut group = |writer: &mut Writer<'_>, name: String, description: String, body: &str| {
        let mut out = String::new();
        header(&mut out, "group", "Group", &name, &description);
        out.push_str(body);
        writer.write(&format!("groups/{name}.yaml"), &out);
        groups.push(name);
    };
    group(
        writer,
        "all".into(),
        "Every enrolled host.".into(),
        "selector: {}\n",
    );
    for role in ROLES {
        group(
            writer,
            role.into(),
            format!("Every {role} host."),
            &format!("selector:\n  role: {role}\n"),
        );
    }
    for datacenter in DATACENTERS {
        group(
            writer,
            format!("dc-{datacenter}"),
            format!("Every host in {datacenter}."),
            &format!("selector:\n  dc: {datacenter}\n"),
        );
    }
    for env in ["prod", "staging", "dev"] {
        group(
            writer,
            format!("env-{env}"),
            format!("Every {env} host."),
            &format!("selector:\n  env: {env}\n"),
        );
    }
    for role in ROLES {
        group(
            writer,
            format!("{role}-prod"),
            format!("Production {role} hosts."),
            &format!("selector:\n  role: {role}\n  env: prod\n"),
        );
        group(
            writer,
            format!("{role}-nonprod"),
            format!("Staging and development {role} hosts."),
            &format!("selector:\n  role: {role}\n  env: [staging, dev]\n"),
        );
    }
    for datacenter in DATACENTERS {
        let mut body = String::from("hosts:\n");
        for host in hosts
            .iter()
            .filter(|host| host.datacenter == datacenter)
            .step_by(29)
        {
            w!(body, "  - {}", host.name);
        }
        group(
            writer,
            format!("canary-{datacenter}"),
            format!("Hosts in {datacenter} that get changes first."),
            &body,
        );
    }
    assert_eq!(groups.len(), N_GROUPS, "the group layout drifts");
    groups
}

fn source_file(app: &str, k: usize) -> String {
    format!("files/{app}/conf.d/{k:02}-base.conf")
}

fn source_template(app: &str, k: usize) -> String {
    format!("files/{app}/templates/{k:02}-site.conf.tmpl")
}

/// The repo files that `source` fields of file resources name.
fn write_source_files(writer: &mut Writer<'_>) {
    for (package, service, _) in APPS {
        for k in 0..N_SOURCE_FILES_PER_APP {
            let mut out = String::new();
            w!(
                out,
                "# Managed by muster: {service} base settings, part {k}."
            );
            for line in 0..20 {
                w!(out, "setting_{k}_{line} = {}", line * 17 % 101);
            }
            writer.write(&source_file(package, k), &out);
        }
        for k in 0..N_SOURCE_TEMPLATES_PER_APP {
            let mut out = String::new();
            w!(
                out,
                "# Managed by muster for {{{{ facts.hostname }}}} ({service}, site {k})."
            );
            w!(out, "listen {{{{ vars.listen_port }}}};");
            w!(out, "server_name {{{{ vars.server_name }}}};");
            w!(out, "upstream {{{{ vars.upstream }}}};");
            w!(out, "max_connections {{{{ vars.max_connections }}}};");
            w!(out, "log_level {{{{ vars.log_level }}}};");
            writer.write(&source_template(package, k), &out);
        }
    }
}

fn write_scripts(writer: &mut Writer<'_>, rng: &mut Rng) -> Vec<String> {
    const VERBS: [&str; 10] = [
        "rotate", "cleanup", "backup", "restore", "rebuild", "flush", "reindex", "vacuum",
        "collect", "renew",
    ];
    const OBJECTS: [&str; 8] = [
        "logs",
        "cache",
        "database",
        "index",
        "certs",
        "tmp",
        "queues",
        "snapshots",
    ];
    let mut names = Vec::with_capacity(N_SCRIPTS);
    for s in 0..N_SCRIPTS {
        let remediation = s < N_REMEDIATION_SCRIPTS;
        let name = if remediation {
            format!("restart-service-{s:02}")
        } else {
            format!(
                "{}-{}-{s:03}",
                VERBS[s % VERBS.len()],
                OBJECTS[s % OBJECTS.len()]
            )
        };
        let scheduled = !remediation && s % 3 == 0;
        let mut out = String::new();
        let description = if remediation {
            "Restart one systemd service and show its status.".to_string()
        } else {
            format!(
                "{} the {} of the hosts in scope.",
                capitalize(VERBS[s % VERBS.len()]),
                OBJECTS[s % OBJECTS.len()]
            )
        };
        header(&mut out, "script", "Script", &name, &description);
        w!(
            out,
            "interpreter: {}",
            ["/bin/sh", "/bin/bash", "/usr/bin/python3"][s % 3]
        );
        if s % 2 == 0 && !remediation {
            let source = format!("scripts/{name}.sh");
            let mut body = String::from("#!/bin/sh\nset -eu\n");
            for line in 0..15 {
                w!(body, "echo \"step {line} of {name}\"");
            }
            writer.write(&source, &body);
            w!(out, "source: {source}");
        } else {
            w!(out, "body: |");
            w!(out, "  set -eu");
            w!(
                out,
                "  # Parameters arrive in the environment, never in the text."
            );
            if remediation {
                w!(out, "  systemctl restart -- \"$MUSTER_PARAM_SERVICE\"");
                w!(out, "  sleep \"$MUSTER_PARAM_WAIT_SECONDS\"");
                w!(
                    out,
                    "  systemctl --no-pager status -- \"$MUSTER_PARAM_SERVICE\""
                );
            } else {
                for line in 0..8 {
                    w!(out, "  echo \"{name}: step {line}\"");
                }
            }
        }
        w!(out, "parameters:");
        if remediation {
            w!(out, "  - name: service");
            w!(out, "    type: string");
            w!(out, "    description: The unit to restart, such as nginx.");
            w!(out, "    required: true");
            w!(out, "  - name: wait_seconds");
            w!(out, "    type: integer");
            w!(
                out,
                "    description: Seconds to wait before showing the status."
            );
            w!(out, "    default: 5");
        } else {
            w!(out, "  - name: max_age_days");
            w!(out, "    type: integer");
            w!(
                out,
                "    description: Leave anything younger than this alone."
            );
            w!(out, "    default: {}", 7 + s % 30);
            if s % 4 != 1 {
                w!(out, "  - name: dry_run");
                w!(out, "    type: boolean");
                w!(out, "    default: false");
            }
            if s % 5 == 2 {
                w!(out, "  - name: level");
                w!(out, "    type: enum");
                w!(out, "    values: [quick, normal, thorough]");
                w!(out, "    default: normal");
            }
            if !scheduled && s % 7 == 3 {
                w!(out, "  - name: reason");
                w!(out, "    type: string");
                w!(
                    out,
                    "    description: Why the script runs, for the audit log."
                );
                w!(out, "    required: true");
            }
        }
        w!(out, "timeout: {}m", 2 + s % 28);
        w!(
            out,
            "run_as: {}",
            if s % 6 == 5 { "backup" } else { "root" }
        );
        if scheduled {
            writer.shape.n_scheduled_scripts += 1;
            w!(
                out,
                "schedule: \"{} {} * * {}\"",
                rng.below(60),
                rng.below(24),
                ["*", "1-5", "0", "sat"][s % 4]
            );
            w!(out, "timezone: {}", TIME_ZONES[s % TIME_ZONES.len()]);
            w!(out, "splay: {}m", 5 + s % 20);
        }
        w!(out, "targets:");
        w!(out, "  groups: [{}]", ROLES[s % ROLES.len()]);
        if s % 4 == 0 {
            w!(out, "  exclude:");
            w!(
                out,
                "    groups: [canary-{}]",
                DATACENTERS[s % DATACENTERS.len()]
            );
        }
        if scheduled {
            w!(out, "rollout:");
            w!(out, "  max_parallel: \"{}%\"", 10 + s % 40);
            w!(out, "  failure_threshold: {}", 1 + s % 5);
        }
        writer.write(&format!("scripts/{name}.yaml"), &out);
        names.push(name);
    }
    names
}

fn capitalize(word: &str) -> String {
    let mut chars = word.chars();
    chars
        .next()
        .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
        .unwrap_or_default()
}

/// Writes the policies and returns the names of their checks.
fn write_policies(writer: &mut Writer<'_>, rng: &mut Rng, names: &Names) -> Vec<String> {
    let mut check_names = Vec::new();
    for p in 0..N_POLICIES {
        let role = ROLES[p % ROLES.len()];
        let (package, service, user) = APPS[(p / ROLES.len()) % APPS.len()];
        let name = format!("{service}-{role}-{p:04}");
        let dir = format!("{service}-{p:04}");
        let n_resources = 5 + rng.below(21);
        let mut out = String::new();
        header(
            &mut out,
            "policy",
            "Policy",
            &name,
            &format!("{service} as the {role} hosts run it, configured and supervised."),
        );
        if p % 7 == 0 {
            w!(out, "mode: audit");
        }
        w!(out, "targets:");
        match p % 5 {
            0 => w!(out, "  groups: [{role}]"),
            1 => {
                w!(out, "  groups: [{role}-prod]");
                w!(out, "  exclude:");
                w!(out, "    hosts: [{}]", rng.pick(&names.hosts).name);
            }
            2 => {
                w!(out, "  selector:");
                w!(out, "    role: {role}");
                w!(out, "    env: [prod, staging]");
            }
            3 => {
                w!(
                    out,
                    "  groups: [{role}-nonprod, canary-{}]",
                    DATACENTERS[p % DATACENTERS.len()]
                );
            }
            _ => {
                let matching: Vec<&Host> = names
                    .hosts
                    .iter()
                    .filter(|host| host.role == role)
                    .collect();
                w!(out, "  groups: [dc-{}]", DATACENTERS[p % DATACENTERS.len()]);
                let first = rng.below(matching.len());
                let second = (first + 1 + rng.below(matching.len() - 1)) % matching.len();
                w!(
                    out,
                    "  hosts: [{}, {}]",
                    matching[first].name,
                    matching[second].name
                );
                w!(out, "  selector:");
                w!(out, "    role: {role}");
                w!(out, "  exclude:");
                w!(out, "    selector:");
                w!(out, "      env: dev");
            }
        }
        if p % 3 == 0 {
            w!(out, "vars:");
            w!(out, "  listen_port: {}", 8000 + p % 1000);
            w!(out, "  server_name: {service}.{role}.example.internal");
            w!(out, "  upstream: \"127.0.0.1:{}\"", 9000 + p % 1000);
            w!(out, "  max_connections: 1024");
            w!(out, "  log_level: info");
        }

        // Resources: package, directory, optional account and state
        // directory, files, an init command, and the service last.
        w!(out, "resources:");
        let with_account = n_resources >= 9;
        let with_extra_package = n_resources >= 14;
        let n_optional = usize::from(with_account) * 3 + usize::from(with_extra_package);
        let n_files = n_resources - 4 - n_optional;
        let owner = if with_account { user } else { "root" };
        w!(out, "  - package:");
        w!(out, "      name: {package}");
        if p % 4 == 0 {
            w!(out, "      ensure: latest");
        }
        if with_extra_package {
            w!(out, "  - package:");
            w!(out, "      name: {package}-doc");
            w!(out, "      ensure: absent");
        }
        if with_account {
            w!(out, "  - group:");
            w!(out, "      name: {user}");
            w!(out, "      system: true");
            w!(out, "  - user:");
            w!(out, "      name: {user}");
            w!(out, "      group: {user}");
            w!(out, "      system: true");
            w!(out, "      home: /var/lib/{dir}");
            w!(out, "      shell: /usr/sbin/nologin");
            w!(out, "      comment: {service} service account");
            w!(out, "      authorized_keys:");
            w!(out, "        - {SSH_KEY} deploy@example.com");
            w!(out, "      depends_on: [\"group:{user}\"]");
        }
        w!(out, "  - directory:");
        w!(out, "      path: /etc/{dir}");
        w!(out, "      mode: \"0755\"");
        w!(out, "      owner: root");
        w!(out, "      group: root");
        w!(out, "      depends_on: [\"package:{package}\"]");
        if with_account {
            w!(out, "  - directory:");
            w!(out, "      path: /var/lib/{dir}");
            w!(out, "      mode: \"0750\"");
            w!(out, "      owner: {user}");
            w!(out, "      group: {user}");
            w!(out, "      depends_on: [\"user:{user}\"]");
        }
        let mut file_ids = Vec::with_capacity(n_files);
        for j in 0..n_files {
            let path = format!(
                "/etc/{dir}/conf.d/{j:02}-{}.conf",
                ["main", "site", "tuning", "logging"][j % 4]
            );
            w!(out, "  - file:");
            w!(out, "      path: {path}");
            match (j + p) % 4 {
                0 => {
                    w!(out, "      content: |");
                    w!(
                        out,
                        "        # Managed by muster (policy {name}): local edits are reverted."
                    );
                    for line in 0..1 + rng.below(6) {
                        w!(out, "        option_{line} = {}", rng.below(1000));
                    }
                }
                1 => {
                    w!(
                        out,
                        "      source: {}",
                        source_file(package, rng.below(N_SOURCE_FILES_PER_APP))
                    );
                }
                2 => {
                    w!(out, "      template: true");
                    w!(out, "      content: |");
                    w!(out, "        # {name} on {{{{ facts.hostname }}}}");
                    w!(out, "        listen = {{{{ vars.listen_port }}}}");
                    w!(out, "        server_name = {{{{ vars.server_name }}}}");
                }
                _ => {
                    w!(out, "      template: true");
                    w!(
                        out,
                        "      source: {}",
                        source_template(package, rng.below(N_SOURCE_TEMPLATES_PER_APP))
                    );
                }
            }
            w!(out, "      mode: \"{}\"", ["0644", "0640", "0600"][j % 3]);
            w!(out, "      owner: {owner}");
            w!(out, "      group: {owner}");
            if j % 5 == 4 {
                w!(out, "      secret: true");
            }
            w!(out, "      depends_on: [\"directory:/etc/{dir}\"]");
            file_ids.push(format!("file:{path}"));
        }
        let exec = format!("{service}-{p:04}-init");
        w!(out, "  - exec:");
        w!(out, "      name: {exec}");
        if p % 2 == 0 {
            w!(
                out,
                "      command: [\"/usr/local/sbin/{service}-setup\", \"--config\", \"/etc/{dir}\"]"
            );
            w!(out, "      creates: /var/lib/{dir}/.initialized");
        } else {
            w!(
                out,
                "      command: [\"{service}-setup --config /etc/{dir} && touch /etc/{dir}/.ok\"]"
            );
            w!(out, "      shell: true");
            w!(out, "      unless: [\"test\", \"-f\", \"/etc/{dir}/.ok\"]");
        }
        w!(out, "      timeout: {}m", 1 + p % 10);
        w!(out, "      env:");
        w!(out, "        APP_ENV: production");
        w!(out, "        APP_DIR: /etc/{dir}");
        if with_account {
            w!(out, "      run_as: {user}");
        }
        w!(out, "      depends_on: [\"package:{package}\"]");
        w!(out, "  - service:");
        w!(out, "      name: {service}");
        w!(out, "      state: running");
        w!(out, "      enabled: true");
        w!(out, "      restart_on:");
        for id in file_ids.iter().take(6) {
            w!(out, "        - {id}");
        }
        w!(out, "      depends_on: [\"exec:{exec}\"]");
        writer.shape.n_resources += n_resources;

        w!(out, "checks:");
        let n_checks = 1 + rng.below(3);
        for c in 0..n_checks {
            let check = format!("{service}-{p:04}-{}", ["active", "config", "port"][c]);
            w!(out, "  - name: {check}");
            match c {
                0 => {
                    w!(out, "    description: The {service} service runs.");
                    w!(
                        out,
                        "    command: [\"systemctl\", \"is-active\", \"{service}\"]"
                    );
                    w!(out, "    expect_output: active");
                    w!(out, "    severity: high");
                    w!(out, "    remediation:");
                    w!(
                        out,
                        "      script: {}",
                        names.scripts[p % N_REMEDIATION_SCRIPTS]
                    );
                    w!(out, "      params:");
                    w!(out, "        service: {service}");
                    if p % 2 == 0 {
                        w!(out, "        wait_seconds: 10");
                    }
                }
                1 => {
                    w!(
                        out,
                        "    description: The configuration directory is not world-writable."
                    );
                    w!(
                        out,
                        "    command: [\"test -z \\\"$(find /etc/{dir} -perm -o+w)\\\"\"]"
                    );
                    w!(out, "    shell: true");
                    w!(out, "    severity: medium");
                }
                _ => {
                    w!(out, "    command: [\"ss\", \"-ltn\"]");
                    w!(out, "    expect_output: \":{}\"", 8000 + p % 1000);
                    w!(out, "    timeout: 10s");
                    w!(out, "    severity: low");
                }
            }
            check_names.push(check);
        }
        writer.shape.n_checks += n_checks;
        writer.write(&format!("policies/{role}/{name}.yaml"), &out);
    }
    check_names
}

fn write_channels(writer: &mut Writer<'_>) -> Vec<String> {
    let mut names = Vec::with_capacity(N_CHANNELS);
    for c in 0..N_CHANNELS {
        let mut out = String::new();
        let name = match c % 3 {
            0 => format!("webhook-{c:02}"),
            1 => format!("slack-{c:02}"),
            _ => format!("email-{c:02}"),
        };
        header(
            &mut out,
            "channel",
            "Channel",
            &name,
            &format!("Notifications for on-call rotation {c}."),
        );
        match c % 3 {
            0 => {
                w!(out, "webhook:");
                w!(out, "  url: https://alerts.example.internal/muster/{c}");
                w!(out, "  secret_env: MUSTER_WEBHOOK_SECRET_{c}");
                w!(out, "  headers:");
                w!(out, "    X-Rotation: rotation-{c}");
            }
            1 => {
                w!(out, "slack:");
                w!(out, "  webhook_url_env: SLACK_WEBHOOK_URL_{c}");
                w!(out, "  channel: \"#ops-{c}\"");
            }
            _ => {
                w!(out, "email:");
                w!(out, "  to: [oncall-{c}@example.com, ops@example.com]");
                w!(out, "  from: muster@example.com");
                w!(out, "  smtp_host: smtp.example.com");
                w!(out, "  smtp_port: 587");
                w!(out, "  username_env: SMTP_USERNAME");
                w!(out, "  password_env: SMTP_PASSWORD");
            }
        }
        writer.write(&format!("alerts/channels/{name}.yaml"), &out);
        names.push(name);
    }
    names
}

fn write_alert_rules(writer: &mut Writer<'_>, rng: &mut Rng, names: &Names) {
    for r in 0..N_ALERT_RULES {
        let role = ROLES[r % ROLES.len()];
        let condition = [
            "cpu",
            "memory",
            "disk",
            "load",
            "offline",
            "drift",
            "check-failing",
            "job-failed",
        ][r % 8];
        let name = format!("{role}-{condition}-{r:03}");
        let mut out = String::new();
        header(
            &mut out,
            "alert-rule",
            "AlertRule",
            &name,
            &format!("The {condition} alert of the {role} hosts; see the runbook."),
        );
        match r % 8 {
            0 => w!(out, "condition:\n  cpu: {{above: {}}}", 80 + r % 15),
            1 => w!(out, "condition:\n  memory: {{above: {}}}", 85 + r % 10),
            2 => w!(out, "condition:\n  disk: {{above: 85, mount: /var}}"),
            3 => w!(out, "condition:\n  load: {{above: {}.5}}", 1 + r % 4),
            4 => w!(out, "condition: offline"),
            5 => w!(out, "condition: drift"),
            6 => w!(
                out,
                "condition:\n  check_failing: {{check: {}}}",
                rng.pick(&names.checks)
            ),
            _ => w!(
                out,
                "condition:\n  job_failed: {{script: {}}}",
                rng.pick(&names.scripts)
            ),
        }
        w!(out, "for: {}m", 1 + r % 15);
        w!(out, "severity: {}", ["info", "warning", "critical"][r % 3]);
        w!(out, "targets:");
        w!(out, "  groups: [{role}-prod]");
        if r % 4 == 0 {
            w!(out, "  exclude:");
            w!(
                out,
                "    groups: [canary-{}]",
                DATACENTERS[r % DATACENTERS.len()]
            );
        }
        w!(
            out,
            "channels: [{}, {}]",
            names.channels[r % N_CHANNELS],
            names.channels[(r + 7) % N_CHANNELS]
        );
        if r % 2 == 0 {
            w!(out, "repeat_every: 4h");
        }
        writer.write(&format!("alerts/rules/{name}.yaml"), &out);
    }
}

fn write_windows(writer: &mut Writer<'_>) {
    for i in 0..N_WINDOWS {
        let role = ROLES[i % ROLES.len()];
        let name = format!("maintenance-{role}-{i:02}");
        let mut out = String::new();
        header(
            &mut out,
            "window",
            "Window",
            &name,
            &format!("Weekly maintenance of the {role} hosts."),
        );
        w!(out, "schedule: \"0 {} * * {}\"", i % 6, i % 7);
        w!(out, "duration: {}h", 1 + i % 3);
        w!(out, "timezone: {}", TIME_ZONES[i % TIME_ZONES.len()]);
        w!(out, "targets:");
        w!(out, "  groups: [{role}]");
        w!(out, "  selector:");
        w!(out, "    dc: {}", DATACENTERS[i % DATACENTERS.len()]);
        w!(out, "silence_alerts: true");
        w!(out, "hold_rollouts: {}", i % 2 == 0);
        writer.write(&format!("alerts/windows/{name}.yaml"), &out);
    }
}

fn write_teams(writer: &mut Writer<'_>) -> Vec<String> {
    let mut names = Vec::with_capacity(N_TEAMS);
    for t in 0..N_TEAMS {
        let name = format!("team-{}", t + 1);
        let mut out = String::new();
        header(
            &mut out,
            "team",
            "Team",
            &name,
            &format!("Engineering team {}.", t + 1),
        );
        w!(
            out,
            "members: [{}, {}, {}]",
            USERS[t % USERS.len()],
            USERS[(t + 1) % USERS.len()],
            USERS[(t + 5) % USERS.len()]
        );
        writer.write(&format!("rbac/teams/{name}.yaml"), &out);
        names.push(name);
    }
    names
}

fn write_roles(writer: &mut Writer<'_>, names: &Names) -> Vec<String> {
    // Operator roles are bound to groups, so they list no fleet-wide
    // permission (validation warns about those).
    const BASE: [&str; 8] = [
        "hosts:read",
        "jobs:read",
        "alerts:read",
        "alerts:ack",
        "jobs:cancel",
        "actions:service",
        "hosts:approve",
        "actions:reboot",
    ];
    let mut roles = Vec::with_capacity(N_ROLES);
    for r in 0..N_ROLES {
        // Two fleet-wide roles, then one operator role per host role, then
        // on-call roles for some of them.
        let name = match r {
            0 => "admin".to_string(),
            1 => "viewer".to_string(),
            _ if r - 2 < ROLES.len() => format!("operator-{}", ROLES[r - 2]),
            _ => format!("oncall-{}", ROLES[r - 2 - ROLES.len()]),
        };
        let mut out = String::new();
        header(
            &mut out,
            "role",
            "Role",
            &name,
            "Access for the people who run these hosts.",
        );
        match r {
            0 => w!(out, "permissions: [\"*\"]"),
            1 => w!(
                out,
                "permissions: [hosts:read, commits:read, jobs:read, alerts:read]"
            ),
            _ => {
                w!(out, "permissions:");
                for permission in &BASE[..3 + r % 6] {
                    w!(out, "  - {permission}");
                }
                for k in 0..4 {
                    w!(
                        out,
                        "  - scripts:run:{}",
                        names.scripts[(r * 7 + k * 13) % N_SCRIPTS]
                    );
                }
            }
        }
        writer.write(&format!("rbac/roles/{name}.yaml"), &out);
        roles.push(name);
    }
    roles
}

fn write_bindings(writer: &mut Writer<'_>, rng: &mut Rng, names: &Names) {
    for b in 0..N_BINDINGS {
        let role = &names.roles[b % N_ROLES];
        let name = format!("{role}-binding-{b:02}");
        let mut out = String::new();
        header(
            &mut out,
            "role-binding",
            "RoleBinding",
            &name,
            &format!("Who holds `{role}`."),
        );
        w!(out, "role: {role}");
        w!(out, "subjects:");
        w!(out, "  - team: {}", names.teams[b % N_TEAMS]);
        w!(out, "  - user: {}", rng.pick(&USERS));
        if b % 3 == 0 {
            w!(out, "  - token: ci-{b:02}");
        }
        if b < 2 {
            w!(out, "scope: fleet");
        } else {
            w!(out, "scope:");
            w!(
                out,
                "  groups: [{}, dc-{}]",
                ROLES[b % ROLES.len()],
                DATACENTERS[b % DATACENTERS.len()]
            );
        }
        writer.write(&format!("rbac/bindings/{name}.yaml"), &out);
    }
}
