//! Sign-in backoff: failed sign-ins per client, and how long each client must
//! wait before its next attempt. Holds the table in memory; touches nothing
//! else.
//!
//! The first [`FREE_FAILURES`] - 1 wrong tokens in a row cost nothing (typos).
//! After the n-th (n ≥ `FREE_FAILURES`) the client is refused for
//! 2^(n - `FREE_FAILURES`) s, up to [`MAX_WAIT`], without its token being
//! looked at: a guesser gets about one try per [`MAX_WAIT`] after a dozen, from
//! each address (an IPv6 /64 counts as one, see `client`). A sign-in that
//! succeeds clears the client's count; a client that has not failed for
//! [`FORGET_AFTER`] is forgotten.
//!
//! At most [`MAX_CLIENTS`] clients are tracked: past that the forgotten ones
//! go first, then the one whose last failure is oldest. An attacker with more
//! addresses than that can push its own entries out; the table's memory stays
//! bounded either way.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::client::ClientKey;

pub const FREE_FAILURES: u32 = 3;
pub const MAX_WAIT: Duration = Duration::from_secs(15 * 60);
pub const FORGET_AFTER: Duration = Duration::from_secs(60 * 60);
pub const MAX_CLIENTS: usize = 10_000;

struct Failures {
    count: u32,
    last: Instant,
    until: Instant,
}

#[derive(Default)]
pub struct Backoff {
    clients: Mutex<HashMap<ClientKey, Failures>>,
}

/// How long a client is refused after its `count`-th failure in a row.
fn wait_after(count: u32) -> Duration {
    if count < FREE_FAILURES {
        return Duration::ZERO;
    }
    let doublings = (count - FREE_FAILURES).min(20);
    Duration::from_secs(1u64 << doublings).min(MAX_WAIT)
}

impl Backoff {
    /// `Err(wait)` while `client` must wait before trying again.
    pub fn check(&self, client: ClientKey, now: Instant) -> Result<(), Duration> {
        match self.lock().get(&client) {
            Some(failures) if failures.until > now => Err(failures.until - now),
            _ => Ok(()),
        }
    }

    /// Counts a wrong token; returns how long `client` must now wait.
    pub fn failed(&self, client: ClientKey, now: Instant) -> Duration {
        let mut clients = self.lock();
        if !clients.contains_key(&client) && clients.len() >= MAX_CLIENTS {
            clients.retain(|_, f| now.saturating_duration_since(f.last) < FORGET_AFTER || f.until > now);
            if clients.len() >= MAX_CLIENTS {
                if let Some(oldest) = clients.iter().min_by_key(|(_, f)| f.last).map(|(k, _)| *k) {
                    clients.remove(&oldest);
                }
            }
        }
        let failures = clients.entry(client).or_insert(Failures {
            count: 0,
            last: now,
            until: now,
        });
        if now.saturating_duration_since(failures.last) >= FORGET_AFTER {
            failures.count = 0;
        }
        failures.count = failures.count.saturating_add(1);
        failures.last = now;
        let wait = wait_after(failures.count);
        failures.until = now + wait;
        wait
    }

    pub fn succeeded(&self, client: ClientKey) {
        self.lock().remove(&client);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ClientKey, Failures>> {
        // Each operation is one insert, update or removal (or a retain).
        self.clients
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u32) -> ClientKey {
        ClientKey::of(std::net::IpAddr::V4(n.into()))
    }

    #[test]
    fn the_wait_grows_exponentially_per_client_up_to_the_cap() {
        let backoff = Backoff::default();
        let start = Instant::now();
        let mut now = start;
        let mut waits = Vec::new();
        for _ in 0..16 {
            assert_eq!(backoff.check(key(1), now), Ok(()));
            let wait = backoff.failed(key(1), now);
            waits.push(wait.as_secs());
            // Still refused just before the wait ends.
            if !wait.is_zero() {
                assert_eq!(
                    backoff.check(key(1), now + wait - Duration::from_millis(1)),
                    Err(Duration::from_millis(1))
                );
            }
            now += wait;
        }
        assert_eq!(
            waits,
            [0, 0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 900, 900, 900, 900]
        );
        // Another client is not slowed down.
        assert_eq!(backoff.check(key(2), now - Duration::from_secs(1)), Ok(()));
        assert_eq!(backoff.failed(key(2), now), Duration::ZERO);
        // A success clears the count.
        backoff.succeeded(key(1));
        assert_eq!(backoff.failed(key(1), now), Duration::ZERO);
        // So does a long quiet spell.
        for _ in 0..5 {
            backoff.failed(key(3), now);
        }
        let later = now + FORGET_AFTER + MAX_WAIT;
        assert_eq!(backoff.check(key(3), later), Ok(()));
        assert_eq!(backoff.failed(key(3), later), Duration::ZERO);
    }

    #[test]
    fn the_table_is_bounded() {
        let backoff = Backoff::default();
        let now = Instant::now();
        for n in 0..(MAX_CLIENTS as u32 + 500) {
            backoff.failed(key(n), now + Duration::from_millis(u64::from(n)));
        }
        assert_eq!(backoff.tracked(), MAX_CLIENTS);
        // The newest clients are the ones kept.
        let newest = MAX_CLIENTS as u32 + 499;
        assert_eq!(
            backoff.failed(key(newest), now + Duration::from_secs(60)),
            Duration::ZERO
        );
        assert_eq!(backoff.tracked(), MAX_CLIENTS);
    }
}
