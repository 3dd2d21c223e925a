//! Rules stage: the active alert rules of one event and whether each is *below*
//! (its scope's lowest price is at or under `max_price`, and it has fired). A rule
//! fires on the transition into below and re-arms when the scope goes back above
//! `max_price` or empties; the `below` flag is what the sink persists so a restart
//! neither re-fires nor misses a transition.

use std::collections::BTreeMap;

use crate::model::{Cents, Currency, Rule};

/// An active rule and its arming state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArmedRule {
    pub rule: Rule,
    pub below: bool,
}

/// What an `Activate` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// The same definition was already active; its live state stands.
    Unchanged,
    /// Took the persisted state it was restored with; nothing to persist or fire.
    Restored,
    /// A rule not evaluated before: its state is now `below`, and it fires at once
    /// if that is `true`.
    Evaluated { below: bool },
}

/// A change of a rule's state caused by its scope's lowest price.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// Went to at or below `max_price` from above or from an empty scope.
    Fired,
    /// Went back above `max_price`, or the scope emptied.
    Rearmed,
}

/// The transition of a rule in state `below` whose scope's lowest price is now
/// `lowest`, if any.
pub fn step(max_price: Cents, below: bool, lowest: Option<Cents>) -> Option<Transition> {
    let at_or_below = lowest.is_some_and(|price| price <= max_price);
    match (below, at_or_below) {
        (false, true) => Some(Transition::Fired),
        (true, false) => Some(Transition::Rearmed),
        _ => None,
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

    pub fn is_empty(&self) -> bool {
        self.active.is_empty()
    }

    /// Activates `rule`. `below` is its persisted state when restored; `None` means
    /// it is new (or its definition changed), and it is evaluated against
    /// `scope_lowest`, the lowest available price in its scope right now.
    pub fn activate(&mut self, rule: Rule, below: Option<bool>, scope_lowest: Option<Cents>) -> Activation {
        if self
            .active
            .get(&rule.rule_id)
            .is_some_and(|armed| armed.rule == rule)
        {
            return Activation::Unchanged;
        }
        let (below, activation) = match below {
            Some(below) => (below, Activation::Restored),
            None => {
                let below = scope_lowest.is_some_and(|price| price <= rule.max_price);
                (below, Activation::Evaluated { below })
            }
        };
        self.active.insert(rule.rule_id, ArmedRule { rule, below });
        activation
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

    /// Moves a rule to the state its scope's new lowest price implies.
    pub fn observe(&mut self, rule_id: i64, lowest: Option<Cents>) -> Option<Transition> {
        let armed = self.active.get_mut(&rule_id)?;
        let transition = step(armed.rule.max_price, armed.below, lowest)?;
        armed.below = transition == Transition::Fired;
        Some(transition)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(rule_id: i64, section: Option<&str>, max_price: i64) -> Rule {
        Rule {
            rule_id,
            event_id: "ev".into(),
            section: section.map(Into::into),
            currency: Currency::USD,
            max_price: Cents(max_price),
        }
    }

    #[test]
    fn fires_on_the_way_down_and_rearms_on_the_way_up() {
        let max = Cents(100);
        assert_eq!(step(max, false, Some(Cents(100))), Some(Transition::Fired));
        assert_eq!(step(max, false, Some(Cents(101))), None);
        assert_eq!(step(max, false, None), None);
        assert_eq!(step(max, true, Some(Cents(50))), None);
        assert_eq!(step(max, true, Some(Cents(101))), Some(Transition::Rearmed));
        assert_eq!(step(max, true, None), Some(Transition::Rearmed));
    }

    #[test]
    fn new_rule_is_evaluated_restored_rule_is_not() {
        let mut rules = Rules::default();
        assert_eq!(
            rules.activate(rule(1, None, 100), None, Some(Cents(90))),
            Activation::Evaluated { below: true }
        );
        assert_eq!(
            rules.activate(rule(2, None, 100), None, None),
            Activation::Evaluated { below: false }
        );
        assert_eq!(
            rules.activate(rule(3, None, 100), Some(true), Some(Cents(90))),
            Activation::Restored
        );
        assert_eq!(rules.get(3).map(|r| r.below), Some(true));
        assert_eq!(
            rules.activate(rule(1, None, 100), None, Some(Cents(90))),
            Activation::Unchanged
        );
        assert_eq!(
            rules.activate(rule(1, None, 80), None, Some(Cents(90))),
            Activation::Evaluated { below: false },
            "a changed definition is a new rule"
        );
    }

    #[test]
    fn scope_is_section_and_currency() {
        let mut rules = Rules::default();
        rules.activate(rule(2, Some("A"), 100), None, None);
        rules.activate(rule(1, None, 100), None, None);
        rules.activate(rule(3, Some("B"), 100), None, None);
        let ids = |rules: Vec<&Rule>| rules.iter().map(|r| r.rule_id).collect::<Vec<_>>();
        assert_eq!(ids(rules.covering("A", &[Currency::USD])), vec![1, 2]);
        assert_eq!(ids(rules.covering("C", &[Currency::USD])), vec![1]);
        assert!(rules.covering("A", &[Currency(*b"EUR")]).is_empty());
        assert!(rules.deactivate(1));
        assert!(!rules.deactivate(1));
        assert_eq!(ids(rules.covering("C", &[Currency::USD])), Vec::<i64>::new());
    }
}
