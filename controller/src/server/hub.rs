//! Long-poll fan-out: agents waiting for a newer bundle are woken the
//! moment one is published for their host.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::watch;

/// One watch channel per host that someone waits on, carrying the newest
/// published generation.
#[derive(Debug, Default)]
pub struct Hub {
    hosts: Mutex<HashMap<String, watch::Sender<u64>>>,
}

impl Hub {
    /// A receiver that changes when a bundle is published for `host_id`.
    /// Subscribe *before* reading the current bundle, so that a publication
    /// between the read and the wait is not missed.
    pub fn subscribe(&self, host_id: &str) -> watch::Receiver<u64> {
        let mut hosts = self
            .hosts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        hosts
            .entry(host_id.to_string())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// Wakes everyone waiting on these hosts.
    pub fn publish<'a>(&self, published: impl IntoIterator<Item = (&'a str, u64)>) {
        let mut hosts = self
            .hosts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for (host_id, generation) in published {
            if let Some(sender) = hosts.get(host_id) {
                sender.send_replace(generation);
            }
        }
        // Channels nobody waits on any more are dropped here, so the map
        // holds only hosts with a live long poll.
        hosts.retain(|_, sender| sender.receiver_count() > 0);
    }

    /// Ends every wait: on shutdown, long polls answer at once.
    pub fn close_all(&self) {
        self.hosts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clear();
    }

    /// How many hosts have a waiting request, for metrics.
    pub fn n_waiting_hosts(&self) -> usize {
        self.hosts.lock().map(|hosts| hosts.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn publishing_wakes_only_that_host() {
        let hub = Hub::default();
        let mut a = hub.subscribe("a");
        let b = hub.subscribe("b");
        hub.publish([("a", 7)]);
        a.changed().await.unwrap();
        assert_eq!(*a.borrow(), 7);
        assert!(!b.has_changed().unwrap());
        drop(b);
        hub.publish([("b", 1)]);
        assert_eq!(hub.n_waiting_hosts(), 1);
    }
}
