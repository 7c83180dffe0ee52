//! Long-poll fan-out: agents waiting for a newer bundle are woken the
//! moment one is published for their host, and agents waiting for jobs the
//! moment one is queued for their host.
//!
//! Job wake-ups come from this process (an action created here, a result
//! that moved a rollout on) and from the job sweep
//! (`crate::jobs::run_sweep`), which finds jobs queued by anyone else
//! (another replica, the CLI) in the database every second.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::{broadcast, watch};

/// One watch channel per host that someone waits on, carrying the newest
/// published generation.
#[derive(Debug, Default)]
pub struct Hub {
    hosts: Mutex<HashMap<String, watch::Sender<u64>>>,
    /// Per host waiting for jobs, a counter of wake-ups.
    jobs: Mutex<HashMap<String, watch::Sender<u64>>>,
    /// Set on shutdown: waits end and the job sweep stops.
    closed: AtomicBool,
    /// Whether the job sweep was started.
    sweeping: AtomicBool,
    /// What changed, for the dashboard's live regions.
    pub ui: UiEvents,
}

/// A kind of change the dashboard shows: live regions name the topics
/// they depend on, and re-render when one is announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topic {
    /// A host reported, was enrolled, approved, rejected or removed.
    Hosts,
    /// A commit was deployed or rejected.
    Commits,
    /// An action was created, or a job started, ended or was cancelled.
    Jobs,
    /// Pending hosts or enrollment tokens changed.
    Enrollment,
    /// An audit record was written.
    Audit,
}

impl Topic {
    pub const ALL: [Topic; 5] = [
        Topic::Hosts,
        Topic::Commits,
        Topic::Jobs,
        Topic::Enrollment,
        Topic::Audit,
    ];

    /// The event name on the stream, as `hx-trigger="sse:NAME"` names it.
    pub fn name(self) -> &'static str {
        match self {
            Topic::Hosts => "hosts",
            Topic::Commits => "commits",
            Topic::Jobs => "jobs",
            Topic::Enrollment => "enrollment",
            Topic::Audit => "audit",
        }
    }
}

/// The dashboard's change announcements: a broadcast that nobody needs to
/// drain. A slow subscriber that falls behind only misses repeats of
/// topics it will re-render anyway.
#[derive(Debug)]
pub struct UiEvents {
    sender: broadcast::Sender<Topic>,
    /// Whether the poller that notices other replicas' changes runs.
    polling: AtomicBool,
}

impl Default for UiEvents {
    fn default() -> Self {
        UiEvents {
            sender: broadcast::channel(256).0,
            polling: AtomicBool::new(false),
        }
    }
}

impl UiEvents {
    /// Announces a change; free when no dashboard is open.
    pub fn notify(&self, topic: Topic) {
        let _ = self.sender.send(topic);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Topic> {
        self.sender.subscribe()
    }

    /// How many dashboards listen.
    pub fn n_listeners(&self) -> usize {
        self.sender.receiver_count()
    }

    /// True the first time it is called: whoever gets true starts the
    /// poller, so that there is one per hub.
    pub fn start_polling(&self) -> bool {
        !self.polling.swap(true, Ordering::SeqCst)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
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

    /// A receiver that changes when a job is queued for `host_id`.
    /// Subscribe *before* looking for jobs, as with bundles.
    pub fn subscribe_jobs(&self, host_id: &str) -> watch::Receiver<u64> {
        lock(&self.jobs)
            .entry(host_id.to_string())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// Wakes the agents waiting for jobs on these hosts.
    pub fn notify_jobs<'a>(&self, host_ids: impl IntoIterator<Item = &'a str>) {
        let mut jobs = lock(&self.jobs);
        for host_id in host_ids {
            if let Some(sender) = jobs.get(host_id) {
                sender.send_modify(|n| *n = n.wrapping_add(1));
            }
        }
        jobs.retain(|_, sender| sender.receiver_count() > 0);
    }

    /// The hosts whose agents wait for jobs now.
    pub fn waiting_for_jobs(&self) -> Vec<String> {
        let mut jobs = lock(&self.jobs);
        jobs.retain(|_, sender| sender.receiver_count() > 0);
        jobs.keys().cloned().collect()
    }

    /// True the first time it is called: whoever gets true starts the job
    /// sweep, so that there is one per hub.
    pub fn start_job_sweep(&self) -> bool {
        !self.sweeping.swap(true, Ordering::SeqCst)
    }

    /// Whether [`close_all`](Self::close_all) was called.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Ends every wait: on shutdown, long polls answer at once.
    pub fn close_all(&self) {
        self.closed.store(true, Ordering::SeqCst);
        lock(&self.hosts).clear();
        lock(&self.jobs).clear();
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

    #[tokio::test]
    async fn queued_jobs_wake_only_that_host() {
        let hub = Hub::default();
        let mut a = hub.subscribe_jobs("a");
        let b = hub.subscribe_jobs("b");
        let mut bundles = hub.subscribe("a");
        let mut dashboards = hub.ui.subscribe();
        hub.notify_jobs(["a"]);
        // Waking agents is no change to show: the job sweep wakes them
        // every second.
        assert!(dashboards.try_recv().is_err(), "a wake-up is not news");
        a.changed().await.unwrap();
        assert!(!b.has_changed().unwrap());
        assert!(!bundles.has_changed().unwrap(), "jobs are not bundles");
        drop(b);
        assert_eq!(hub.waiting_for_jobs(), vec!["a".to_string()]);
        assert!(hub.start_job_sweep());
        assert!(!hub.start_job_sweep(), "one sweep per hub");
        hub.close_all();
        assert!(hub.is_closed());
        assert!(a.changed().await.is_err(), "closing ends the wait");
        assert!(bundles.changed().await.is_err());
    }
}
