//! Rules stage: the active alert rules of one event and the state each carries
//! between messages (SPEC §2b): a `max_price` rule's arming (`below`: fired,
//! waiting to re-arm), a `new_low` rule's window of past lows, a `deal` rule's
//! set of listings that are a deal, and every rule's last firing for its
//! cooldown. The processor evaluates a rule at each message applied to a
//! listing in its scope; what is here decides, from the scope's lowest price
//! before and after (or the listing's verdict, for `deal`), whether it fires.
//! The state is what the sink persists ([`RuleMemory`]), so a restart neither
//! re-fires nor misses a transition.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::listing_state::SeatId;
use crate::model::{Cents, Currency, Micros, Rule, RuleKind};

/// Microseconds in a day: `new_low` windows are whole days of event time.
pub const DAY: Micros = 86_400_000_000;

/// An active rule and its state. `deals` holds seat ids of the rule's event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleState {
    pub below: bool,
    pub fired_at: Option<Micros>,
    pub window: VecDeque<(Micros, Cents)>,
    pub deals: BTreeSet<SeatId>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArmedRule {
    pub rule: Rule,
    pub state: RuleState,
}

/// What an `Activate` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// The same definition was already active; its live state stands.
    Unchanged,
    /// Took the persisted state it was restored with; nothing to persist or fire.
    Restored,
    /// A rule not evaluated before: it starts from the state it was given,
    /// which must be persisted.
    Fresh,
}

/// What evaluating a rule at one message did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The alert's `old_price` and `new_price`, if it fired.
    pub fired: Option<(Option<Cents>, Cents)>,
    /// Its state changed (and must be persisted).
    pub changed: bool,
}

/// Whether `price` is at or under an optional threshold.
fn within(price: Cents, max_price: Option<Cents>) -> bool {
    max_price.is_none_or(|max| price <= max)
}

/// Whether a `max_price` rule that fired re-arms at `lowest`: the scope
/// emptied, or its lowest price rose above `max_price × (1 + rearm_bp/10000)`.
pub fn rearms(max_price: Cents, rearm_bp: u32, lowest: Option<Cents>) -> bool {
    lowest.is_none_or(|price| {
        i128::from(price.0) * 10_000 > i128::from(max_price.0) * (10_000 + i128::from(rearm_bp))
    })
}

/// Whether a listing at `price` is a deal in a section of `count` available
/// listings whose lower median is `median`: ≥ 5 listings and
/// `price ≤ median × (1 − deal_pct/100)`, exactly.
pub fn is_deal(price: Cents, median: Cents, count: usize, deal_pct: u32) -> bool {
    count >= 5 && i128::from(price.0) * 100 <= i128::from(median.0) * (100 - i128::from(deal_pct.min(100)))
}

impl ArmedRule {
    /// Inside the cooldown of its last firing at event-clock time `clock`.
    fn cooling(&self, clock: Micros) -> bool {
        self.rule.cooldown > 0
            && self
                .state
                .fired_at
                .is_some_and(|fired| clock <= fired.saturating_add(self.rule.cooldown))
    }

    /// A crossing at `clock`: fires unless the cooldown swallows it.
    fn fire(&mut self, clock: Micros) -> bool {
        if self.cooling(clock) {
            return false;
        }
        self.state.fired_at = Some(clock);
        true
    }

    /// Evaluates a `max_price`, `new_low` or `back_in_stock` rule at a message
    /// that moved its scope's lowest price from `before` to `after` (possibly
    /// equal), with the event clock at `clock` after the message.
    pub fn on_lowest(&mut self, before: Option<Cents>, after: Option<Cents>, clock: Micros) -> Outcome {
        let mut outcome = Outcome::default();
        match self.rule.kind {
            RuleKind::MaxPrice { max_price, rearm_bp } => {
                let at_or_below = after.is_some_and(|price| price <= max_price);
                if !self.state.below && at_or_below {
                    self.state.below = true;
                    outcome.changed = true;
                    if let (true, Some(new)) = (self.fire(clock), after) {
                        outcome.fired = Some((before, new));
                    }
                } else if self.state.below && rearms(max_price, rearm_bp, after) {
                    self.state.below = false;
                    outcome.changed = true;
                }
            }
            RuleKind::NewLow {
                window_days,
                max_price,
            } => {
                if before == after {
                    return outcome;
                }
                outcome.changed = true;
                let start = clock.saturating_sub(DAY.saturating_mul(Micros::from(window_days)));
                // A value that stopped being in effect before the window's start
                // held no value within it.
                while self.state.window.front().is_some_and(|(end, _)| *end < start) {
                    self.state.window.pop_front();
                }
                let held = self.state.window.front().map(|(_, price)| *price);
                let low = match (held, before) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                if let (Some(low), Some(new)) = (low, after) {
                    if new < low && within(new, max_price) && self.fire(clock) {
                        outcome.fired = Some((Some(low), new));
                    }
                }
                if let Some(before) = before {
                    // A value held later and no higher is the low of every
                    // window the earlier one is in: the earlier one can go.
                    while self
                        .state
                        .window
                        .back()
                        .is_some_and(|(_, price)| *price >= before)
                    {
                        self.state.window.pop_back();
                    }
                    self.state.window.push_back((clock, before));
                }
            }
            RuleKind::BackInStock { max_price } => {
                let had = before.is_some_and(|price| within(price, max_price));
                let has = after.is_some_and(|price| within(price, max_price));
                if !had && has && self.fire(clock) {
                    outcome.changed = true;
                    outcome.fired = after.map(|new| (None, new));
                }
            }
            RuleKind::Deal { .. } => {}
        }
        outcome
    }

    /// Evaluates a `deal` rule at a message of listing `id`: `deal` is the
    /// section's lower median if the message made the listing a deal, `None`
    /// if it is not one (any more).
    pub fn on_deal(&mut self, id: SeatId, deal: Option<Cents>, price: Cents, clock: Micros) -> Outcome {
        let mut outcome = Outcome::default();
        let was = self.state.deals.contains(&id);
        match (was, deal) {
            (false, Some(median)) => {
                self.state.deals.insert(id);
                outcome.changed = true;
                if self.fire(clock) {
                    outcome.fired = Some((Some(median), price));
                }
            }
            (true, None) => {
                self.state.deals.remove(&id);
                outcome.changed = true;
            }
            _ => {}
        }
        outcome
    }
}

/// Whether a listing in `section` priced in `currency` is in the rule's scope.
pub fn covers(rule: &Rule, section: &str, currency: Currency) -> bool {
    rule.currency == currency && rule.section.as_deref().is_none_or(|s| s == section)
}

/// The active rules of one event, by rule id (so they are evaluated in id order).
#[derive(Clone, Debug, Default)]
pub struct Rules {
    active: BTreeMap<i64, ArmedRule>,
}

impl Rules {
    pub fn get(&self, rule_id: i64) -> Option<&ArmedRule> {
        self.active.get(&rule_id)
    }

    pub fn get_mut(&mut self, rule_id: i64) -> Option<&mut ArmedRule> {
        self.active.get_mut(&rule_id)
    }

    pub fn is_empty(&self) -> bool {
        self.active.is_empty()
    }

    /// Whether `rule` is active with this very definition.
    pub fn has(&self, rule: &Rule) -> bool {
        self.active
            .get(&rule.rule_id)
            .is_some_and(|armed| armed.rule == *rule)
    }

    /// Activates `rule` with `state`: its persisted state when `restored`, else
    /// the state its scope gives it now (the rule is new, or its definition
    /// changed).
    pub fn activate(&mut self, rule: Rule, state: RuleState, restored: bool) -> Activation {
        if self.has(&rule) {
            return Activation::Unchanged;
        }
        self.active.insert(rule.rule_id, ArmedRule { rule, state });
        if restored {
            Activation::Restored
        } else {
            Activation::Fresh
        }
    }

    /// `true` if the rule was active.
    pub fn deactivate(&mut self, rule_id: i64) -> bool {
        self.active.remove(&rule_id).is_some()
    }

    /// The rules whose scope holds a listing of `section` in any of `currencies`,
    /// in id order: the only rules a change of that listing can move.
    pub fn covering(&self, section: &str, currencies: &[Currency]) -> Vec<&Rule> {
        self.active
            .values()
            .map(|armed| &armed.rule)
            .filter(|rule| currencies.iter().any(|c| covers(rule, section, *c)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(kind: RuleKind, cooldown: Micros) -> ArmedRule {
        ArmedRule {
            rule: Rule {
                rule_id: 1,
                event_id: "ev".into(),
                section: None,
                currency: Currency::USD,
                kind,
                cooldown,
            },
            state: RuleState::default(),
        }
    }

    fn max_price(max: i64, rearm_bp: u32) -> ArmedRule {
        rule(
            RuleKind::MaxPrice {
                max_price: Cents(max),
                rearm_bp,
            },
            0,
        )
    }

    fn fired(outcome: Outcome) -> bool {
        outcome.fired.is_some()
    }

    #[test]
    fn max_price_fires_on_the_way_down_and_rearms_on_the_way_up() {
        let mut armed = max_price(100, 0);
        assert!(!fired(armed.on_lowest(None, Some(Cents(101)), 1)));
        assert!(fired(armed.on_lowest(Some(Cents(101)), Some(Cents(100)), 2)));
        assert!(!fired(armed.on_lowest(Some(Cents(100)), Some(Cents(50)), 3)));
        assert!(armed.on_lowest(Some(Cents(50)), Some(Cents(101)), 4).changed);
        assert!(!armed.state.below);
        assert!(fired(armed.on_lowest(Some(Cents(101)), Some(Cents(99)), 5)));
        assert!(
            armed.on_lowest(Some(Cents(99)), None, 6).changed,
            "an empty scope re-arms"
        );
    }

    #[test]
    fn rearm_pct_needs_the_price_above_the_band() {
        // 10.00 with 5%: re-arms only above 10.50.
        let mut armed = max_price(1000, 500);
        assert!(fired(armed.on_lowest(None, Some(Cents(1000)), 1)));
        assert!(!armed.on_lowest(Some(Cents(1000)), Some(Cents(1050)), 2).changed);
        assert!(!fired(armed.on_lowest(Some(Cents(1050)), Some(Cents(990)), 3)));
        assert!(armed.on_lowest(Some(Cents(990)), Some(Cents(1051)), 4).changed);
        assert!(fired(armed.on_lowest(Some(Cents(1051)), Some(Cents(1000)), 5)));
        assert!(rearms(Cents(1000), 500, None));
    }

    #[test]
    fn cooldown_swallows_a_crossing_until_the_clock_is_past_it() {
        let mut armed = rule(RuleKind::BackInStock { max_price: None }, 10);
        assert!(fired(armed.on_lowest(None, Some(Cents(5)), 100)));
        assert!(
            !fired(armed.on_lowest(None, Some(Cents(5)), 110)),
            "100 + 10 is still inside"
        );
        assert!(fired(armed.on_lowest(None, Some(Cents(5)), 111)));
        assert_eq!(armed.state.fired_at, Some(111));
    }

    #[test]
    fn deal_fires_once_per_becoming_a_deal() {
        let mut armed = rule(RuleKind::Deal { deal_pct: 20 }, 0);
        assert!(fired(armed.on_deal(3, Some(Cents(100)), Cents(80), 1)));
        assert!(!armed.on_deal(3, Some(Cents(100)), Cents(70), 2).changed);
        assert!(armed.on_deal(3, None, Cents(95), 3).changed);
        assert!(fired(armed.on_deal(3, Some(Cents(100)), Cents(80), 4)));
        assert!(is_deal(Cents(80), Cents(100), 5, 20));
        assert!(!is_deal(Cents(81), Cents(100), 5, 20));
        assert!(!is_deal(Cents(10), Cents(100), 4, 20));
    }

    #[test]
    fn new_low_window_keeps_only_what_can_still_be_the_low() {
        let mut armed = rule(
            RuleKind::NewLow {
                window_days: 1,
                max_price: None,
            },
            0,
        );
        // Rising values after a low are dominated by nothing; falling ones
        // evict the higher values before them.
        armed.on_lowest(Some(Cents(50)), Some(Cents(60)), 10);
        armed.on_lowest(Some(Cents(60)), Some(Cents(70)), 20);
        armed.on_lowest(Some(Cents(70)), Some(Cents(65)), 30);
        let window: Vec<_> = armed.state.window.iter().copied().collect();
        assert_eq!(window, vec![(10, Cents(50)), (20, Cents(60)), (30, Cents(70))]);
        armed.on_lowest(Some(Cents(65)), Some(Cents(66)), 40);
        let window: Vec<_> = armed.state.window.iter().copied().collect();
        assert_eq!(window, vec![(10, Cents(50)), (20, Cents(60)), (40, Cents(65))]);
        // A day later, the values that ended more than a day ago are gone.
        armed.on_lowest(Some(Cents(66)), Some(Cents(67)), 25 + DAY);
        let window: Vec<_> = armed.state.window.iter().copied().collect();
        assert_eq!(window, vec![(40, Cents(65)), (25 + DAY, Cents(66))]);
    }
}
