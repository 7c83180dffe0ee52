//! Facts (inventory) and metrics of the host, from `sysinfo`.
//!
//! Facts are what the controller targets on and shows: hostname, OS, kernel,
//! architecture, CPUs, memory, disks and network interfaces. Metrics are the
//! resource use at report time: CPU, memory, fullest disk, load.

use std::collections::BTreeMap;

use muster_schemas::protocol::Metrics;
use serde_json::{Map, Value, json};
use sysinfo::{Disks, Networks, System};

/// The host's facts.
pub fn facts() -> Map<String, Value> {
    let mut facts = Map::new();
    let text = |result: Result<String, sysinfo::Error>| result.map_or(Value::Null, Value::String);
    facts.insert("hostname".into(), text(System::host_name()));
    facts.insert("os".into(), Value::String(System::distribution_id()));
    facts.insert("os_name".into(), text(System::name()));
    facts.insert("os_version".into(), text(System::os_version()));
    facts.insert("arch".into(), Value::String(System::cpu_arch()));
    facts.insert("kernel".into(), text(System::kernel_version()));
    if let Ok(mut system) = System::new() {
        system.refresh_memory();
        facts.insert("memory_bytes".into(), json!(system.total_memory()));
    }
    facts.insert(
        "cpus".into(),
        json!(std::thread::available_parallelism().map_or(1, |n| n.get())),
    );
    if let Ok(disks) = Disks::new_with_refreshed_list() {
        let disks: Vec<Value> = disks
            .iter()
            .map(|disk| {
                json!({
                    "mount_point": disk.mount_point().to_string_lossy(),
                    "total_bytes": disk.total_space(),
                    "available_bytes": disk.available_space(),
                })
            })
            .collect();
        facts.insert("disks".into(), Value::Array(disks));
    }
    if let Ok(networks) = Networks::new_with_refreshed_list() {
        let mut interfaces: Vec<(String, Value)> = networks
            .iter()
            .map(|(name, data)| {
                let addresses: Vec<String> = data
                    .ip_networks()
                    .iter()
                    .map(|net| format!("{}/{}", net.addr, net.prefix))
                    .collect();
                (
                    name.to_string_lossy().into_owned(),
                    json!({ "mac": data.mac_address().to_string(), "addresses": addresses }),
                )
            })
            .collect();
        interfaces.sort_by(|a, b| a.0.cmp(&b.0));
        facts.insert(
            "interfaces".into(),
            Value::Object(interfaces.into_iter().collect()),
        );
    }
    facts
}

/// Samples metrics. It keeps one `System`, so that CPU use is measured
/// between two samples (the last report and this one) rather than over a
/// short sleep.
#[derive(Debug, Default)]
pub struct MetricsSampler {
    system: Option<System>,
}

impl MetricsSampler {
    pub fn new() -> MetricsSampler {
        MetricsSampler::default()
    }

    /// The host's metrics now.
    pub fn sample(&mut self) -> Metrics {
        if self.system.is_none() {
            // The first CPU sample needs a previous one to compare with.
            self.system = System::new().ok().map(|mut system| {
                system.refresh_cpu_usage();
                std::thread::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL);
                system
            });
        }
        let mut metrics = Metrics::default();
        if let Some(system) = self.system.as_mut() {
            system.refresh_cpu_usage();
            system.refresh_memory();
            metrics.cpu_percent = f64::from(system.global_cpu_usage());
            if system.total_memory() > 0 {
                metrics.memory_percent = percent(system.used_memory(), system.total_memory());
            }
        }
        if let Ok(load) = System::load_average() {
            metrics.load1 = load.one;
        }
        if let Ok(disks) = Disks::new_with_refreshed_list() {
            let mut per_mount = BTreeMap::new();
            for disk in disks.iter().filter(|disk| disk.total_space() > 0) {
                let used = disk.total_space().saturating_sub(disk.available_space());
                per_mount.insert(
                    disk.mount_point().to_string_lossy().into_owned(),
                    percent(used, disk.total_space()),
                );
            }
            metrics.disk_percent = per_mount.values().copied().fold(0.0, f64::max);
            metrics.disks = per_mount;
        }
        metrics
    }
}

fn percent(part: u64, whole: u64) -> f64 {
    // Precision beyond 2^53 bytes does not matter for a percentage.
    #[allow(clippy::cast_precision_loss)]
    let ratio = part as f64 / whole as f64;
    (ratio * 1000.0).round() / 10.0
}
