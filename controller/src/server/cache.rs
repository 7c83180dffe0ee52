//! In-memory views of hot rows, so that the agent request path usually
//! needs no database round trip: hosts' keys and states for
//! authentication, and each host's signed bundle, serialized once, for
//! bundle requests.
//!
//! The database stays the source of truth. The reconciler refreshes both
//! views on every sweep (a few seconds), which also picks up changes made
//! outside this process: approvals and removals by the CLI, bundles
//! published by another replica. Until then a cached entry may be a few
//! seconds old, never wrong for longer.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use axum::body::Bytes;
use muster_schemas::bundle::SignedBundle;
use muster_schemas::protocol::HostState;

use crate::store::{BundleHead, BundleRecord, HostKey, HostRecord};

/// What authentication needs to know of a host.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedHost {
    pub id: String,
    pub key: Vec<u8>,
    pub state: HostState,
}

impl CachedHost {
    pub fn from_record(host: &HostRecord) -> Option<CachedHost> {
        Self::new(&host.id, &host.key, host.state)
    }

    fn new(id: &str, key_hex: &str, state: HostState) -> Option<CachedHost> {
        Some(CachedHost {
            id: id.to_string(),
            key: hex::decode(key_hex).ok()?,
            state,
        })
    }
}

/// A host's bundle as the API answers it.
#[derive(Debug)]
pub struct CachedBundle {
    pub generation: u64,
    /// The JSON of the `SignedBundle` response.
    pub body: Bytes,
}

impl CachedBundle {
    pub fn from_record(record: &BundleRecord) -> CachedBundle {
        let signed = SignedBundle {
            bundle: record.bundle.clone(),
            signature: record.signature.clone(),
        };
        CachedBundle {
            generation: record.generation,
            body: Bytes::from(serde_json::to_vec(&signed).unwrap_or_default()),
        }
    }
}

#[derive(Debug, Default)]
pub struct Caches {
    hosts: RwLock<HashMap<String, Arc<CachedHost>>>,
    bundles: RwLock<HashMap<String, Arc<CachedBundle>>>,
}

impl Caches {
    pub fn host(&self, id: &str) -> Option<Arc<CachedHost>> {
        self.hosts.read().ok()?.get(id).cloned()
    }

    pub fn put_host(&self, host: CachedHost) {
        if let Ok(mut hosts) = self.hosts.write() {
            hosts.insert(host.id.clone(), Arc::new(host));
        }
    }

    /// Replaces every cached host with the database's current list.
    pub fn replace_hosts(&self, hosts: &[HostKey]) {
        let fresh: HashMap<String, Arc<CachedHost>> = hosts
            .iter()
            .filter_map(|host| CachedHost::new(&host.id, &host.key, host.state))
            .map(|host| (host.id.clone(), Arc::new(host)))
            .collect();
        if let Ok(mut hosts) = self.hosts.write() {
            *hosts = fresh;
        }
    }

    pub fn bundle(&self, host_id: &str) -> Option<Arc<CachedBundle>> {
        self.bundles.read().ok()?.get(host_id).cloned()
    }

    pub fn put_bundles<'a>(&self, records: impl IntoIterator<Item = &'a BundleRecord>) {
        let fresh: Vec<(String, Arc<CachedBundle>)> = records
            .into_iter()
            .map(|record| {
                (
                    record.host_id.clone(),
                    Arc::new(CachedBundle::from_record(record)),
                )
            })
            .collect();
        if let Ok(mut bundles) = self.bundles.write() {
            for (host_id, bundle) in fresh {
                // Never replace a newer bundle with an older one.
                match bundles.get(&host_id) {
                    Some(cached) if cached.generation >= bundle.generation => {}
                    _ => {
                        bundles.insert(host_id, bundle);
                    }
                }
            }
        }
    }

    /// Drops cached bundles that the database no longer has at that
    /// generation (another replica published, or the host is gone).
    pub fn retain_current_bundles(&self, heads: &HashMap<String, BundleHead>) {
        if let Ok(mut bundles) = self.bundles.write() {
            bundles.retain(|host_id, cached| {
                heads
                    .get(host_id)
                    .is_some_and(|head| head.generation == cached.generation)
            });
        }
    }
}
