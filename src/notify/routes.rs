//! Which channels an alert goes to (SPEC §7): every active route whose kinds
//! (NULL = all), event (NULL = all) and rule (NULL = any) match the alert names
//! a channel; an active channel gets the alert once however many of its routes
//! match.
//!
//! Pure: a snapshot of the tables in, channel ids out. The notifier reloads the
//! snapshot every few seconds, so route changes take effect while it runs.

use std::collections::{BTreeSet, HashMap};

use super::alert::Alert;
use super::store::{Channel, Route};

#[derive(Debug, Default, Clone)]
pub struct Routing {
    pub routes: Vec<Route>,
    pub channels: HashMap<i64, Channel>,
}

fn matches(route: &Route, alert: &Alert) -> bool {
    route.active
        && route
            .kinds
            .as_ref()
            .is_none_or(|kinds| kinds.contains(&alert.kind))
        && route
            .event_id
            .as_ref()
            .is_none_or(|event| *event == alert.event_id)
        && route.rule_id.is_none_or(|rule| alert.rule_id == Some(rule))
}

impl Routing {
    pub fn new(channels: Vec<Channel>, routes: Vec<Route>) -> Routing {
        Routing {
            routes,
            channels: channels.into_iter().map(|c| (c.channel_id, c)).collect(),
        }
    }

    /// The active channels `alert` goes to, each once, by id.
    pub fn channels_for(&self, alert: &Alert) -> BTreeSet<i64> {
        self.routes
            .iter()
            .filter(|route| matches(route, alert))
            .map(|route| route.channel_id)
            .filter(|id| self.channels.get(id).is_some_and(|c| c.active))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::alert::decode;
    use crate::notify::store::ChannelKind;

    fn channel(id: i64, active: bool) -> Channel {
        Channel {
            channel_id: id,
            name: format!("c{id}"),
            kind: ChannelKind::Webhook,
            target: "http://x".into(),
            secret_env: None,
            max_per_hour: None,
            active,
        }
    }

    fn route(id: i64, channel: i64, kinds: Option<&[&str]>, event: Option<&str>, rule: Option<i64>) -> Route {
        Route {
            route_id: id,
            channel_id: channel,
            kinds: kinds.map(|k| k.iter().map(|s| s.to_string()).collect()),
            event_id: event.map(str::to_owned),
            rule_id: rule,
            active: true,
        }
    }

    #[test]
    fn kind_event_and_rule_narrow_a_route() {
        let routing = Routing::new(
            vec![
                channel(1, true),
                channel(2, true),
                channel(3, false),
                channel(4, true),
            ],
            vec![
                route(1, 1, None, None, None),
                route(2, 1, Some(&["rule_match"]), None, None),
                route(3, 2, Some(&["rule_match", "deal"]), Some("ev"), Some(9)),
                route(4, 3, None, None, None),
                route(5, 4, None, Some("other"), None),
            ],
        );
        let alert = |kind: &str, event: &str, rule: &str| {
            decode(
                format!(
                    r#"{{"alert_id":"a","kind":"{kind}","event_id":"{event}","rule_id":{rule},"new_price":"1","currency":"USD","observed_at":"t"}}"#
                )
                .as_bytes(),
            )
            .unwrap()
        };
        let ids = |set: BTreeSet<i64>| set.into_iter().collect::<Vec<_>>();
        assert_eq!(ids(routing.channels_for(&alert("rule_match", "ev", "9"))), [1, 2]);
        assert_eq!(ids(routing.channels_for(&alert("rule_match", "ev", "8"))), [1]);
        assert_eq!(
            ids(routing.channels_for(&alert("listing_drop", "other", "null"))),
            [1, 4]
        );
    }
}
