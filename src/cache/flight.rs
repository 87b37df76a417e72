//! Single flight: of identical requests that miss at once, the first goes upstream (the leader)
//! and the others wait for its answer, each at most the model's `single_flight.max_wait`.
//!
//! A flight is a `watch` channel in a sharded map (no global lock). The leader publishes the
//! entry it wrote; a leader that ends without one (an error, a broken stream, a client gone)
//! removes its flight, which wakes the followers to go upstream themselves, as does their own
//! timeout.

use std::sync::Arc;
use std::time::Duration;

use dashmap::mapref::entry::Entry as MapEntry;
use dashmap::DashMap;
use tokio::sync::watch;

use super::{Entry, Key};

type Slot = Arc<watch::Sender<Option<Arc<Entry>>>>;

#[derive(Default)]
pub(super) struct Flights {
    map: Arc<DashMap<Key, Slot>>,
}

pub(super) enum Joined {
    Leader(Leader),
    Follower(watch::Receiver<Option<Arc<Entry>>>),
}

/// The first request of a flight; dropping it ends the flight.
pub(super) struct Leader {
    key: Key,
    slot: Slot,
    map: Arc<DashMap<Key, Slot>>,
}

impl Flights {
    pub(super) fn join(&self, key: Key) -> Joined {
        match self.map.entry(key) {
            MapEntry::Occupied(o) => Joined::Follower(o.get().subscribe()),
            MapEntry::Vacant(v) => {
                let slot: Slot = Arc::new(watch::channel(None).0);
                v.insert(slot.clone());
                Joined::Leader(Leader {
                    key,
                    slot,
                    map: self.map.clone(),
                })
            }
        }
    }
}

impl Leader {
    /// Hand the answer to every follower.
    pub(super) fn done(&self, entry: Arc<Entry>) {
        self.slot.send_replace(Some(entry));
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        self.map
            .remove_if(&self.key, |_, s| Arc::ptr_eq(s, &self.slot));
    }
}

/// Wait for the leader's answer: `None` when it ended without one or `max_wait` passed.
pub(super) async fn wait(
    mut rx: watch::Receiver<Option<Arc<Entry>>>,
    max_wait: Duration,
) -> Option<Arc<Entry>> {
    match tokio::time::timeout(max_wait, rx.wait_for(Option::is_some)).await {
        Ok(Ok(v)) => v.clone(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn entry() -> Arc<Entry> {
        Arc::new(Entry {
            form: super::super::Form::Json,
            model: "m".into(),
            team: "".into(),
            created_ms: 0,
            expires_ms: u64::MAX,
            usage: None,
            body: Bytes::from_static(b"{}"),
            usage_event: Bytes::new(),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn followers_get_the_leaders_answer() {
        let f = Flights::default();
        let Joined::Leader(l) = f.join(Key([1; 32])) else {
            panic!("leader")
        };
        let Joined::Follower(rx) = f.join(Key([1; 32])) else {
            panic!("follower")
        };
        let waiting = tokio::spawn(wait(rx, Duration::from_secs(5)));
        l.done(entry());
        drop(l);
        assert!(waiting.await.unwrap().is_some());
        assert!(matches!(f.join(Key([1; 32])), Joined::Leader(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_that_fails_releases_its_followers_at_once() {
        let f = Flights::default();
        let Joined::Leader(l) = f.join(Key([2; 32])) else {
            panic!("leader")
        };
        let Joined::Follower(rx) = f.join(Key([2; 32])) else {
            panic!("follower")
        };
        let waiting = tokio::spawn(wait(rx, Duration::from_secs(3600)));
        drop(l);
        assert!(waiting.await.unwrap().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_follower_waits_no_longer_than_max_wait() {
        let f = Flights::default();
        let Joined::Leader(_l) = f.join(Key([3; 32])) else {
            panic!("leader")
        };
        let Joined::Follower(rx) = f.join(Key([3; 32])) else {
            panic!("follower")
        };
        let t0 = tokio::time::Instant::now();
        assert!(wait(rx, Duration::from_secs(2)).await.is_none());
        assert_eq!(t0.elapsed(), Duration::from_secs(2));
    }
}
