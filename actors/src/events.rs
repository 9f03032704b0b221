//! What happened to the engine's objects, as a stream of numbered events.
//!
//! The registry publishes an event where a change happens (an object made, a container's state
//! reported by its actor, an object released) into the engine's [`Events`]: a bounded ring of
//! the latest events, for resuming, and a broadcast to the subscribers. Publishing never waits
//! for a subscriber: one that falls behind the ring is told how far it lost track
//! ([`Delivery::Lost`]) and goes on from the oldest event still held.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::{broadcast, watch};

use crate::model::wire::{ContainerState, Id};
use crate::registry::graph::ObjectKind;

/// The ring's size when the service is not told otherwise.
pub const DEFAULT_BUFFER: usize = 1024;

/// What kind of change an event tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Created,
    State,
    Deleted,
}

impl Change {
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Created => "created",
            Change::State => "state",
            Change::Deleted => "deleted",
        }
    }
}

/// The object an event is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Subject {
    #[serde(serialize_with = "object_name")]
    pub object: ObjectKind,
    pub id: Id,
    /// The driver kind of an attachment or mount.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

fn object_name<S: serde::Serializer>(object: &ObjectKind, out: S) -> Result<S::Ok, S::Error> {
    out.serialize_str(object.as_str())
}

/// One change, numbered service-wide.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    #[serde(skip)]
    pub seq: u64,
    #[serde(skip)]
    pub change: Change,
    #[serde(flatten)]
    pub subject: Subject,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<ContainerState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_state: Option<ContainerState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    #[serde(serialize_with = "rfc3339")]
    pub time: SystemTime,
}

fn rfc3339<S: serde::Serializer>(time: &SystemTime, out: S) -> Result<S::Ok, S::Error> {
    out.serialize_str(&format_rfc3339(*time))
}

/// `time` as RFC 3339 UTC with milliseconds (civil date from days since the epoch, after
/// Howard Hinnant's `civil_from_days`).
pub fn format_rfc3339(time: SystemTime) -> String {
    let since = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs();
    let (days, of_day) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60,
        since.subsec_millis()
    )
}

/// What a subscriber is handed next.
#[derive(Debug, Clone)]
pub enum Delivery {
    Event(Arc<Event>),
    /// The events after the subscriber's last one up to `oldest` are no longer held.
    Lost {
        oldest: u64,
    },
}

struct Ring {
    held: VecDeque<Arc<Event>>,
    capacity: usize,
    /// The number the next event gets (the first is 1).
    next: u64,
}

/// The engine's event buffer and broadcast; cheap to clone (every clone is the same buffer).
#[derive(Clone)]
pub struct Events {
    ring: Arc<Mutex<Ring>>,
    broadcast: broadcast::Sender<Arc<Event>>,
    closed: watch::Sender<bool>,
}

impl Events {
    /// A buffer holding the last `capacity` events (at least one).
    pub fn new(capacity: usize) -> Events {
        let capacity = capacity.max(1);
        let (broadcast, _) = broadcast::channel(capacity);
        Events {
            ring: Arc::new(Mutex::new(Ring {
                held: VecDeque::with_capacity(capacity),
                capacity,
                next: 1,
            })),
            broadcast,
            closed: watch::channel(false).0,
        }
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Numbers and publishes one event.
    pub fn publish(
        &self,
        change: Change,
        subject: Subject,
        (state, old_state): (Option<ContainerState>, Option<ContainerState>),
        exit_code: Option<i64>,
    ) {
        let mut ring = self.ring();
        let event = Arc::new(Event {
            seq: ring.next,
            change,
            subject,
            state,
            old_state,
            exit_code,
            time: SystemTime::now(),
        });
        ring.next += 1;
        if ring.held.len() == ring.capacity {
            ring.held.pop_front();
        }
        ring.held.push_back(event.clone());
        // Sent under the lock, so that subscribers see the events in their order; a send with
        // no subscriber is not an error worth telling.
        let _ = self.broadcast.send(event);
    }

    /// Follows the events after number `after`, or from now on.
    pub fn subscribe(&self, after: Option<u64>) -> Subscription {
        let after = after.unwrap_or_else(|| self.ring().next - 1);
        let mut subscription = Subscription {
            events: self.clone(),
            receiver: self.broadcast.subscribe(),
            queued: VecDeque::new(),
            last: after,
            closed: self.closed.subscribe(),
        };
        subscription.replay(after, false);
        subscription
    }

    /// Ends every subscription (at shutdown: open streams must not hold the service up).
    pub fn close(&self) {
        self.closed.send_replace(true);
    }
}

/// One subscriber's position in the events.
pub struct Subscription {
    events: Events,
    receiver: broadcast::Receiver<Arc<Event>>,
    queued: VecDeque<Delivery>,
    /// The number of the last event handed out (or asked to resume after).
    last: u64,
    closed: watch::Receiver<bool>,
}

impl Subscription {
    /// Queues the held events after `after`, resubscribing first when `resubscribe` (after the
    /// broadcast left this subscriber behind). A resume from before the oldest held event
    /// starts with a [`Delivery::Lost`].
    fn replay(&mut self, after: u64, resubscribe: bool) {
        let ring = self.events.ring();
        if resubscribe {
            self.receiver = self.events.broadcast.subscribe();
        }
        let oldest = ring.held.front().map_or(ring.next, |event| event.seq);
        if after + 1 < oldest {
            self.queued.push_back(Delivery::Lost { oldest });
        }
        self.queued.extend(
            ring.held
                .iter()
                .filter(|event| event.seq > after)
                .cloned()
                .map(Delivery::Event),
        );
    }

    /// The next delivery; `None` once the events are closed.
    pub async fn next(&mut self) -> Option<Delivery> {
        loop {
            if *self.closed.borrow() {
                return None;
            }
            if let Some(delivery) = self.queued.pop_front() {
                if let Delivery::Event(event) = &delivery {
                    self.last = event.seq;
                }
                return Some(delivery);
            }
            let received = tokio::select! {
                received = self.receiver.recv() => received,
                _ = self.closed.changed() => return None,
            };
            match received {
                // Replayed already, or sent while the replay was taken.
                Ok(event) if event.seq <= self.last => continue,
                Ok(event) => self.queued.push_back(Delivery::Event(event)),
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    self.replay(self.last, true);
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject(id: Id) -> Subject {
        Subject {
            object: ObjectKind::Container,
            id,
            kind: None,
            name: None,
        }
    }

    fn publish(events: &Events, id: Id) {
        events.publish(Change::Created, subject(id), (None, None), None);
    }

    async fn seqs(subscription: &mut Subscription, count: usize) -> Vec<String> {
        let mut seen = Vec::new();
        for _ in 0..count {
            seen.push(match subscription.next().await.unwrap() {
                Delivery::Event(event) => event.seq.to_string(),
                Delivery::Lost { oldest } => format!("lost {oldest}"),
            });
        }
        seen
    }

    #[tokio::test]
    async fn a_resume_replays_what_is_held_then_follows_without_duplicates() {
        let events = Events::new(4);
        for id in 1..=3 {
            publish(&events, id);
        }
        let mut subscription = events.subscribe(Some(1));
        publish(&events, 4);
        assert_eq!(seqs(&mut subscription, 3).await, ["2", "3", "4"]);
    }

    #[tokio::test]
    async fn a_resume_from_too_far_back_is_told_what_was_lost() {
        let events = Events::new(2);
        for id in 1..=5 {
            publish(&events, id);
        }
        let mut subscription = events.subscribe(Some(1));
        assert_eq!(seqs(&mut subscription, 3).await, ["lost 4", "4", "5"]);
    }

    #[tokio::test]
    async fn a_subscriber_left_behind_is_told_and_goes_on() {
        let events = Events::new(2);
        let mut subscription = events.subscribe(None);
        for id in 1..=6 {
            publish(&events, id);
        }
        assert_eq!(seqs(&mut subscription, 3).await, ["lost 5", "5", "6"]);
    }

    #[tokio::test]
    async fn close_ends_the_subscriptions() {
        let events = Events::new(2);
        let mut subscription = events.subscribe(None);
        events.close();
        assert!(subscription.next().await.is_none());
    }

    #[test]
    fn times_are_rfc3339_utc() {
        let time = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_764_756_930_042);
        assert_eq!(format_rfc3339(time), "2025-12-03T10:15:30.042Z");
    }
}
