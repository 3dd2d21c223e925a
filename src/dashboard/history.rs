//! Rebuilds an event's price history for its chart: the get-in price per
//! currency, and the lowest available price of chosen sections, over a time
//! window, from `price_history` rows replayed in time order.
//!
//! At any time a listing's state is its last observation so far, so a replay
//! in `observed_at` order rebuilds every state exactly (a stale observation,
//! which the job keeps in history only, never arrives out of order here).
//! Each replayed row updates one listing and so at most two series (its
//! currency's get-in price and its section's low). Series are downsampled
//! while they are built: the window is cut into [`BUCKETS`] equal buckets and
//! each keeps its lowest point and its last, so drops stay visible and a
//! series has at most `2 * BUCKETS + 1` points however long the history. Pure:
//! rows come in through [`History::seed`] and [`History::observe`].

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

/// Buckets across the chart's width: about one per two pixels.
pub const BUCKETS: i64 = 360;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ListingKey {
    pub section: String,
    pub row: String,
    pub seat: String,
    pub source: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub price: Decimal,
    pub currency: String,
    pub available: bool,
    pub observed_at: DateTime<Utc>,
}

/// A price (or none: nothing available) from a time on.
pub type Point = (DateTime<Utc>, Option<Decimal>);

/// What a series is the price of.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SeriesKey {
    GetIn { currency: String },
    Section { currency: String, section: String },
}

/// Prices available at each price, with their counts: the lowest is the first key.
#[derive(Debug, Default)]
struct Prices(BTreeMap<Decimal, u32>);

impl Prices {
    fn add(&mut self, price: Decimal) {
        *self.0.entry(price).or_insert(0) += 1;
    }

    fn remove(&mut self, price: Decimal) {
        if let Some(count) = self.0.get_mut(&price) {
            *count -= 1;
            if *count == 0 {
                self.0.remove(&price);
            }
        }
    }

    fn lowest(&self) -> Option<Decimal> {
        self.0.keys().next().copied()
    }
}

/// One series being downsampled.
#[derive(Debug)]
struct Sampler {
    points: Vec<Point>,
    /// The open bucket: its index, its lowest point and its last point.
    open: Option<(i64, Option<Point>, Point)>,
    last_value: Option<Option<Decimal>>,
}

impl Sampler {
    fn new() -> Sampler {
        Sampler {
            points: Vec::new(),
            open: None,
            last_value: None,
        }
    }

    fn push(&mut self, bucket: i64, point: Point) {
        if self.last_value == Some(point.1) {
            return;
        }
        self.last_value = Some(point.1);
        match &mut self.open {
            Some((open, lowest, last)) if *open == bucket => {
                if point.1.is_some()
                    && lowest.is_none_or(|(_, low)| low.is_none_or(|low| point.1 < Some(low)))
                {
                    *lowest = Some(point);
                }
                *last = point;
            }
            _ => {
                self.flush();
                let lowest = point.1.is_some().then_some(point);
                self.open = Some((bucket, lowest, point));
            }
        }
    }

    fn flush(&mut self) {
        if let Some((_, lowest, last)) = self.open.take() {
            if let Some(lowest) = lowest {
                if lowest != last {
                    self.points.push(lowest);
                }
            }
            self.points.push(last);
        }
    }
}

/// The replay of one event's history over `[from, to]`.
pub struct History {
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    listings: HashMap<ListingKey, Observation>,
    get_in: HashMap<String, Prices>,
    sections: HashMap<(String, String), Prices>,
    /// The (currency, section) pairs that get a series of their own.
    charted_sections: BTreeSet<(String, String)>,
    series: BTreeMap<SeriesKey, Sampler>,
    started: bool,
    /// When the replay stopped at its row limit: the time of the last row read.
    pub truncated: Option<DateTime<Utc>>,
}

impl History {
    /// A replay over `[from, to]` charting the get-in price of every currency
    /// and the lows of `sections` (currency, section).
    pub fn new(from: DateTime<Utc>, to: DateTime<Utc>, sections: BTreeSet<(String, String)>) -> History {
        History {
            from,
            to: to.max(from),
            listings: HashMap::new(),
            get_in: HashMap::new(),
            sections: HashMap::new(),
            charted_sections: sections,
            series: BTreeMap::new(),
            started: false,
            truncated: None,
        }
    }

    /// A listing's state as of `from`, before the window.
    pub fn seed(&mut self, key: ListingKey, observation: Observation) {
        self.apply(key, observation);
    }

    /// Ends seeding: every series starts at `from` with its value then.
    pub fn start(&mut self) {
        if self.started {
            return;
        }
        self.started = true;
        let from = self.from;
        let currencies: Vec<String> = self.get_in.keys().cloned().collect();
        for currency in currencies {
            let value = self.get_in.get(&currency).and_then(Prices::lowest);
            self.record(SeriesKey::GetIn { currency }, (from, value));
        }
        let sections: Vec<(String, String)> = self.charted_sections.iter().cloned().collect();
        for (currency, section) in sections {
            if let Some(prices) = self.sections.get(&(currency.clone(), section.clone())) {
                let value = prices.lowest();
                self.record(SeriesKey::Section { currency, section }, (from, value));
            }
        }
    }

    /// An observation inside the window, in time order.
    pub fn observe(&mut self, key: ListingKey, observation: Observation) {
        self.start();
        let at = observation.observed_at;
        let section = key.section.clone();
        let old_currency = self.listings.get(&key).map(|o| o.currency.clone());
        let new_currency = observation.currency.clone();
        self.apply(key, observation);
        let mut currencies = vec![new_currency];
        if let Some(old) = old_currency {
            if old != currencies[0] {
                currencies.push(old);
            }
        }
        for currency in currencies {
            let value = self.get_in.get(&currency).and_then(Prices::lowest);
            self.record(
                SeriesKey::GetIn {
                    currency: currency.clone(),
                },
                (at, value),
            );
            let pair = (currency, section.clone());
            if self.charted_sections.contains(&pair) {
                let value = self.sections.get(&pair).and_then(Prices::lowest);
                let (currency, section) = pair;
                self.record(SeriesKey::Section { currency, section }, (at, value));
            }
        }
    }

    fn apply(&mut self, key: ListingKey, observation: Observation) {
        if let Some(old) = self.listings.get(&key) {
            if old.available {
                if let Some(prices) = self.get_in.get_mut(&old.currency) {
                    prices.remove(old.price);
                }
                if let Some(prices) = self
                    .sections
                    .get_mut(&(old.currency.clone(), key.section.clone()))
                {
                    prices.remove(old.price);
                }
            }
        }
        let get_in = self.get_in.entry(observation.currency.clone()).or_default();
        let section = self
            .sections
            .entry((observation.currency.clone(), key.section.clone()))
            .or_default();
        if observation.available {
            get_in.add(observation.price);
            section.add(observation.price);
        }
        self.listings.insert(key, observation);
    }

    fn bucket(&self, at: DateTime<Utc>) -> i64 {
        let span = (self.to - self.from).num_milliseconds().max(1);
        let offset = (at - self.from).num_milliseconds().clamp(0, span);
        // i128: span * BUCKETS overflows i64 for spans of centuries.
        ((i128::from(offset) * i128::from(BUCKETS)) / i128::from(span)).min(i128::from(BUCKETS - 1)) as i64
    }

    fn record(&mut self, key: SeriesKey, point: Point) {
        let bucket = self.bucket(point.0);
        self.series
            .entry(key)
            .or_insert_with(Sampler::new)
            .push(bucket, point);
    }

    /// The series, each in time order, get-in prices first.
    pub fn finish(mut self) -> Vec<(SeriesKey, Vec<Point>)> {
        self.start();
        self.series
            .into_iter()
            .map(|(key, mut sampler)| {
                sampler.flush();
                (key, sampler.points)
            })
            .collect()
    }

    pub fn window(&self) -> (DateTime<Utc>, DateTime<Utc>) {
        (self.from, self.to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(minute: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + minute * 60, 0)
            .single()
            .expect("time")
    }

    fn d(text: &str) -> Decimal {
        Decimal::from_str_exact(text).expect("decimal")
    }

    fn key(section: &str, seat: &str) -> ListingKey {
        ListingKey {
            section: section.into(),
            row: "1".into(),
            seat: seat.into(),
            source: "s".into(),
        }
    }

    fn obs(price: &str, available: bool, minute: i64) -> Observation {
        Observation {
            price: d(price),
            currency: "USD".into(),
            available,
            observed_at: t(minute),
        }
    }

    fn series(history: History) -> BTreeMap<SeriesKey, Vec<Point>> {
        history.finish().into_iter().collect()
    }

    fn get_in() -> SeriesKey {
        SeriesKey::GetIn {
            currency: "USD".into(),
        }
    }

    #[test]
    fn get_in_price_follows_the_lowest_available_listing() {
        let sections = BTreeSet::from([("USD".to_owned(), "A".to_owned())]);
        let mut history = History::new(t(0), t(100_000), sections);
        history.seed(key("A", "1"), obs("100", true, -5));
        history.observe(key("B", "1"), obs("80", true, 10_000));
        history.observe(key("B", "1"), obs("80", false, 20_000));
        history.observe(key("A", "1"), obs("120", true, 30_000));
        history.observe(key("A", "1"), obs("120", false, 40_000));
        let all = series(history);
        assert_eq!(
            all[&get_in()],
            vec![
                (t(0), Some(d("100"))),
                (t(10_000), Some(d("80"))),
                (t(20_000), Some(d("100"))),
                (t(30_000), Some(d("120"))),
                (t(40_000), None),
            ]
        );
        let section_a = SeriesKey::Section {
            currency: "USD".into(),
            section: "A".into(),
        };
        assert_eq!(
            all[&section_a],
            vec![
                (t(0), Some(d("100"))),
                (t(30_000), Some(d("120"))),
                (t(40_000), None)
            ]
        );
        // Section B is not charted.
        assert_eq!(all.len(), 2);
    }

    #[test]
    fn long_histories_are_downsampled_keeping_the_lows() {
        let mut history = History::new(t(0), t(200_000), BTreeSet::new());
        // A price that wobbles every minute, with one deep dip inside a bucket.
        for minute in 0..200_000i64 {
            let price = if minute == 100_001 {
                "1.00".to_owned()
            } else {
                format!("{}.00", 100 + minute % 7)
            };
            history.observe(key("A", "1"), obs(&price, true, minute));
        }
        let points = &series(history)[&get_in()];
        assert!(points.len() as i64 <= 2 * BUCKETS + 1, "{} points", points.len());
        assert!(points.contains(&(t(100_001), Some(d("1.00")))), "the dip is kept");
        assert!(points.windows(2).all(|w| w[0].0 <= w[1].0), "in time order");
    }
}
