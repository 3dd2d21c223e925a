//! Per-client caps: connections open at once, and requests in progress at
//! once, counted per [`ClientKey`]. Holds the counts in memory; touches
//! nothing else.
//!
//! A count lives only while it is above zero, so the table never holds more
//! entries than there are connections (or requests) in progress: its memory is
//! bounded by the server's own connection cap, whatever the number of clients.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::client::ClientKey;

/// How many of something each client holds, each at most `cap`.
pub struct PerClient {
    cap: usize,
    counts: Mutex<HashMap<ClientKey, usize>>,
}

/// One unit held by a client; given back when dropped.
pub struct Held {
    table: Arc<PerClient>,
    key: ClientKey,
}

impl PerClient {
    pub fn new(cap: usize) -> Arc<PerClient> {
        Arc::new(PerClient {
            cap,
            counts: Mutex::new(HashMap::new()),
        })
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    /// One more unit for `key`, unless it already holds `cap`.
    pub fn try_hold(self: &Arc<Self>, key: ClientKey) -> Option<Held> {
        let mut counts = self.lock();
        let count = counts.entry(key).or_insert(0);
        if *count >= self.cap {
            return None;
        }
        *count += 1;
        Some(Held {
            table: Arc::clone(self),
            key,
        })
    }

    /// How many clients hold anything (for tests of the bound).
    #[cfg(test)]
    fn clients(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ClientKey, usize>> {
        // Each operation changes one count: a panic cannot leave it half-done.
        self.counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut counts = self.table.lock();
        if let Some(count) = counts.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(text: &str) -> ClientKey {
        ClientKey::of(text.parse().expect("address"))
    }

    #[test]
    fn each_client_holds_at_most_the_cap_and_entries_go_with_their_last_unit() {
        let table = PerClient::new(2);
        let a1 = table.try_hold(key("1.1.1.1")).expect("first");
        let a2 = table.try_hold(key("1.1.1.1")).expect("second");
        assert!(table.try_hold(key("1.1.1.1")).is_none(), "over the cap");
        let b = table.try_hold(key("2.2.2.2")).expect("another client");
        drop(a1);
        let a3 = table.try_hold(key("1.1.1.1")).expect("a unit came back");
        assert_eq!(table.clients(), 2);
        drop((a2, a3, b));
        assert_eq!(table.clients(), 0, "no entry outlives its units");
        // The refusal of a full client adds no entry either.
        let held: Vec<Held> = (0..2).filter_map(|_| table.try_hold(key("3.3.3.3"))).collect();
        assert!(table.try_hold(key("3.3.3.3")).is_none());
        assert_eq!(table.clients(), 1);
        drop(held);
        assert_eq!(table.clients(), 0);
    }
}
