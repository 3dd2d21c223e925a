//! Listing state stage: the current state of every listing of one event (its
//! observation with the greatest `observed_at`), and ordered indexes of the
//! *available* current listings that answer "lowest price in this scope" (per
//! currency, and per section and currency) without scanning the event.
//!
//! Each seat is interned once per event ([`SeatId`]): the states and indexes are
//! addressed by id, so a message hashes its seat once and the indexes compare
//! integers, not four strings. The seat itself is kept as one allocation
//! ([`StoredSeat`]) beside its section's id: at a million listings a
//! [`Seat`]'s four `String`s would be most of the job's memory. Ties on price
//! resolve to the smallest [`Seat`] (`section, row, seat, source`), which is
//! what SPEC §2 asks of a rule that fires on being added.
//!
//! A section's index ([`SectionIndex`]) gives its lower median, which `deal`
//! rules judge listings against (SPEC §2b), as cheaply as its lowest price: a
//! sorted vector for the usual handful of listings, two ordered halves for a
//! large section.
//!
//! With a count of all current listings (available or not) per section and
//! currency, the indexes also give a section's [`SectionState`], what the
//! summaries are computed from, in O(1) after each change.

use std::collections::BTreeSet;
use std::hash::BuildHasher;

use foldhash::HashMap;
use hashbrown::HashTable;

use crate::model::{Cents, Currency, ListingKey, ListingRow, Micros, Observation, Seat, SectionState};

/// The state of a listing, without its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quote {
    pub price: Cents,
    pub currency: Currency,
    pub available: bool,
    pub observed_at: Micros,
}

impl Quote {
    pub fn of(observation: &Observation) -> Quote {
        Quote {
            price: observation.price,
            currency: observation.currency,
            available: observation.available,
            observed_at: observation.observed_at,
        }
    }

    pub fn of_row(row: &ListingRow) -> Quote {
        Quote {
            price: row.price,
            currency: row.currency,
            available: row.available,
            observed_at: row.observed_at,
        }
    }

    /// The row of `listing` in this state.
    pub fn row_of(&self, listing: ListingKey) -> ListingRow {
        ListingRow {
            listing,
            price: self.price,
            currency: self.currency,
            available: self.available,
            observed_at: self.observed_at,
        }
    }
}

/// What applying an observation did to its listing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Older than the current state: history only.
    Stale,
    /// It is the listing's current state now; `previous` is what it replaced.
    Current { previous: Option<Quote> },
}

/// A seat as [`Listings`] keeps it: row, seat and source in one string, the
/// section as its [`SectionId`] (kept beside it). 24 bytes and one allocation
/// of their length, where a [`Seat`] is 96 bytes and four allocations.
#[derive(Clone, Debug)]
struct StoredSeat {
    text: Box<str>,
    row_len: u32,
    seat_len: u32,
}

impl StoredSeat {
    fn of(seat: &Seat) -> StoredSeat {
        let mut text = String::with_capacity(seat.row.len() + seat.seat.len() + seat.source.len());
        text.push_str(&seat.row);
        text.push_str(&seat.seat);
        text.push_str(&seat.source);
        StoredSeat {
            text: text.into_boxed_str(),
            // A field's length is bounded by the parser's 64 KiB message
            // limit, or by PostgreSQL's 1 GB field limit when restored.
            row_len: seat.row.len() as u32,
            seat_len: seat.seat.len() as u32,
        }
    }

    fn with_section<'a>(&'a self, section: &'a str) -> SeatRef<'a> {
        let (row, rest) = self.text.split_at(self.row_len as usize);
        let (seat, source) = rest.split_at(self.seat_len as usize);
        SeatRef {
            section,
            row,
            seat,
            source,
        }
    }
}

/// Seat `id` from the [`Listings`] fields that hold it; a function of the
/// fields, not of `Listings`, so that rehashing can call it while the id table
/// is borrowed mutably.
fn seat_at<'a>(
    seats: &'a [StoredSeat],
    section_of: &[SectionId],
    names: &'a [String],
    id: SeatId,
) -> SeatRef<'a> {
    let id = id as usize;
    seats[id].with_section(&names[section_of[id] as usize])
}

/// A borrowed [`Seat`]: the same fields, in the same order, so it compares
/// (and hashes) as the [`Seat`] it was made from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeatRef<'a> {
    pub section: &'a str,
    pub row: &'a str,
    pub seat: &'a str,
    pub source: &'a str,
}

impl<'a> SeatRef<'a> {
    pub fn of(seat: &'a Seat) -> SeatRef<'a> {
        SeatRef {
            section: &seat.section,
            row: &seat.row,
            seat: &seat.seat,
            source: &seat.source,
        }
    }

    pub fn to_seat(self) -> Seat {
        Seat {
            section: self.section.to_owned(),
            row: self.row.to_owned(),
            seat: self.seat.to_owned(),
            source: self.source.to_owned(),
        }
    }
}

/// A listing's number within its event. Each seat is interned once, so the
/// price indexes and the processor's per-epoch bookkeeping hold four bytes per
/// listing instead of a [`Seat`] of four `String`s, and compare integers.
pub type SeatId = u32;

/// A section's number within its event, like [`SeatId`].
pub type SectionId = u32;

/// Available current listings of one scope, cheapest first. Ties on price are
/// ordered by [`SeatId`] here; [`Listings::lowest`] resolves them by [`Seat`].
type PriceIndex = BTreeSet<(Cents, SeatId)>;

/// The available current listings of one section and currency. Most sections
/// hold a handful of listings: those are one sorted vector (16 bytes a
/// listing; a B-tree's node is ~200 bytes however few it holds, which made
/// these indexes the largest part of the job's memory at a million listings).
/// A section past [`SectionIndex::LARGE`] listings is split in two ordered
/// halves instead, so that inserting and removing stay O(log n): `lower` holds
/// the ⌈n/2⌉ cheapest, so its last entry is the lower median and its first the
/// lowest price. Either way the lower median is as cheap as the lowest price.
#[derive(Clone, Debug)]
pub enum SectionIndex {
    Small(Vec<(Cents, SeatId)>),
    Halves { lower: PriceIndex, upper: PriceIndex },
}

impl Default for SectionIndex {
    fn default() -> Self {
        SectionIndex::Small(Vec::new())
    }
}

impl SectionIndex {
    /// Above this many listings a section's index is two B-trees; below
    /// [`SectionIndex::SMALL`] it is a vector again. Apart, so that a section
    /// going back and forth across one size does not convert every time.
    const LARGE: usize = 256;
    const SMALL: usize = 128;

    fn insert(&mut self, entry: (Cents, SeatId)) {
        match self {
            SectionIndex::Small(entries) => {
                if let Err(at) = entries.binary_search(&entry) {
                    entries.insert(at, entry);
                }
                if entries.len() > Self::LARGE {
                    // The ⌈n/2⌉ cheapest stay in `lower`.
                    let upper: PriceIndex = entries.drain(entries.len().div_ceil(2)..).collect();
                    let lower: PriceIndex = entries.drain(..).collect();
                    *self = SectionIndex::Halves { lower, upper };
                }
            }
            SectionIndex::Halves { lower, upper } => {
                if lower.last().is_none_or(|last| entry <= *last) {
                    lower.insert(entry);
                } else {
                    upper.insert(entry);
                }
                rebalance(lower, upper);
            }
        }
    }

    fn remove(&mut self, entry: &(Cents, SeatId)) {
        match self {
            SectionIndex::Small(entries) => {
                if let Ok(at) = entries.binary_search(entry) {
                    entries.remove(at);
                }
                if entries.capacity() > 2 * entries.len() + 4 {
                    entries.shrink_to(entries.len() + entries.len() / 2);
                }
            }
            SectionIndex::Halves { lower, upper } => {
                if !lower.remove(entry) {
                    upper.remove(entry);
                }
                rebalance(lower, upper);
                if lower.len() + upper.len() < Self::SMALL {
                    let entries = std::mem::take(lower)
                        .into_iter()
                        .chain(std::mem::take(upper))
                        .collect();
                    *self = SectionIndex::Small(entries);
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        match self {
            SectionIndex::Small(entries) => entries.len(),
            SectionIndex::Halves { lower, upper } => lower.len() + upper.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn first(&self) -> Option<&(Cents, SeatId)> {
        match self {
            SectionIndex::Small(entries) => entries.first(),
            SectionIndex::Halves { lower, .. } => lower.first(),
        }
    }

    /// The lower median: the ⌈n/2⌉-th cheapest price.
    pub fn lower_median(&self) -> Option<Cents> {
        match self {
            SectionIndex::Small(entries) => entries
                .len()
                .checked_sub(1)
                .and_then(|last| entries.get(last / 2))
                .map(|(price, _)| *price),
            SectionIndex::Halves { lower, .. } => lower.last().map(|(price, _)| *price),
        }
    }

    fn iter(&self) -> Box<dyn Iterator<Item = &(Cents, SeatId)> + '_> {
        match self {
            SectionIndex::Small(entries) => Box::new(entries.iter()),
            SectionIndex::Halves { lower, upper } => Box::new(lower.iter().chain(upper.iter())),
        }
    }

    /// The seats listed at `price`.
    fn at(&self, price: Cents) -> Box<dyn Iterator<Item = SeatId> + '_> {
        let range = (price, SeatId::MIN)..=(price, SeatId::MAX);
        match self {
            SectionIndex::Small(entries) => {
                let from = entries.partition_point(|entry| *entry < *range.start());
                let to = entries.partition_point(|entry| *entry <= *range.end());
                Box::new(entries[from..to].iter().map(|(_, id)| *id))
            }
            SectionIndex::Halves { lower, upper } => Box::new(
                lower
                    .range(range.clone())
                    .chain(upper.range(range))
                    .map(|(_, id)| *id),
            ),
        }
    }
}

/// Keeps `lower` at ⌈n/2⌉ entries: after one insert or remove, at most one
/// entry moves between the halves.
fn rebalance(lower: &mut PriceIndex, upper: &mut PriceIndex) {
    if lower.len() > upper.len() + 1 {
        if let Some(last) = lower.pop_last() {
            upper.insert(last);
        }
    } else if upper.len() > lower.len() {
        if let Some(first) = upper.pop_first() {
            lower.insert(first);
        }
    }
}

/// One scope's index: a whole event's (per currency) or one section's.
#[derive(Clone, Copy)]
enum Scope<'a> {
    Event(&'a PriceIndex),
    Section(&'a SectionIndex),
}

impl<'a> Scope<'a> {
    fn first(self) -> Option<&'a (Cents, SeatId)> {
        match self {
            Scope::Event(index) => index.first(),
            Scope::Section(index) => index.first(),
        }
    }

    /// The seats listed at `price`.
    fn at(self, price: Cents) -> Box<dyn Iterator<Item = SeatId> + 'a> {
        let range = (price, SeatId::MIN)..=(price, SeatId::MAX);
        match self {
            Scope::Event(index) => Box::new(index.range(range).map(|(_, id)| *id)),
            Scope::Section(index) => index.at(price),
        }
    }
}

/// The listings of one event. Interned seats are never forgotten: like the
/// current states, they follow the event's listings.
#[derive(Clone, Debug, Default)]
pub struct Listings {
    /// Each seat's id, found by hashing the seat (as a [`SeatRef`]) with
    /// `hasher` and comparing with `seats[id]`: the seat itself is stored
    /// once, in `seats`.
    ids: HashTable<SeatId>,
    hasher: foldhash::fast::RandomState,
    seats: Vec<StoredSeat>,
    section_of: Vec<SectionId>,
    current: Vec<Option<Quote>>,
    sections: HashMap<String, SectionId>,
    section_names: Vec<String>,
    by_currency: HashMap<Currency, PriceIndex>,
    by_section: HashMap<(SectionId, Currency), SectionIndex>,
    /// Current listings per section and currency, available or not; keys
    /// with none are dropped.
    listed: HashMap<(SectionId, Currency), i64>,
}

impl Listings {
    /// The id of `seat`, assigning the next one the first time.
    pub fn intern(&mut self, seat: &Seat) -> SeatId {
        let hash = self.hasher.hash_one(SeatRef::of(seat));
        if let Some(id) = self.find(hash, seat) {
            return id;
        }
        let id = self.seats.len() as SeatId;
        let section = match self.sections.get(&seat.section) {
            Some(section) => *section,
            None => {
                let section = self.section_names.len() as SectionId;
                self.sections.insert(seat.section.clone(), section);
                self.section_names.push(seat.section.clone());
                section
            }
        };
        let (seats, section_of, names, hasher) =
            (&self.seats, &self.section_of, &self.section_names, &self.hasher);
        // Rehashing hashes the seats already stored; the new one is pushed after.
        self.ids.insert_unique(hash, id, |id| {
            hasher.hash_one(seat_at(seats, section_of, names, *id))
        });
        self.seats.push(StoredSeat::of(seat));
        self.section_of.push(section);
        self.current.push(None);
        id
    }

    /// The id of `seat`, whose hash is `hash`, if it is interned.
    fn find(&self, hash: u64, seat: &Seat) -> Option<SeatId> {
        let wanted = SeatRef::of(seat);
        self.ids.find(hash, |id| self.seat(*id) == wanted).copied()
    }

    pub fn seat(&self, id: SeatId) -> SeatRef<'_> {
        seat_at(&self.seats, &self.section_of, &self.section_names, id)
    }

    pub fn section_of(&self, id: SeatId) -> SectionId {
        self.section_of[id as usize]
    }

    pub fn section_name(&self, section: SectionId) -> &str {
        &self.section_names[section as usize]
    }

    /// The state of one section in one currency; `None` when it has no
    /// current listing in that currency.
    pub fn section_state(&self, section: SectionId, currency: Currency) -> Option<SectionState> {
        let key = (section, currency);
        let listings = *self.listed.get(&key)?;
        let index = self.by_section.get(&key);
        Some(SectionState {
            listings,
            available: index.map_or(0, |index| index.len() as i64),
            low: index.and_then(|index| index.first()).map(|(price, _)| *price),
        })
    }

    pub fn quote(&self, id: SeatId) -> Option<&Quote> {
        self.current.get(id as usize).and_then(Option::as_ref)
    }

    pub fn get(&self, seat: &Seat) -> Option<&Quote> {
        self.id(seat).and_then(|id| self.quote(id))
    }

    pub fn is_empty(&self) -> bool {
        self.seats.is_empty()
    }

    /// Applies a non-duplicate observation of `seat`. Equal times cannot both be
    /// non-duplicates, so `>=` only matters for inconsistent restored state, where
    /// the later message wins as everywhere else.
    pub fn apply(&mut self, seat: &Seat, quote: Quote) -> Applied {
        let id = self.intern(seat);
        self.apply_id(id, quote)
    }

    /// [`Listings::apply`] to an interned seat.
    pub fn apply_id(&mut self, id: SeatId, quote: Quote) -> Applied {
        if let Some(current) = self.quote(id) {
            if quote.observed_at < current.observed_at {
                return Applied::Stale;
            }
        }
        Applied::Current {
            previous: self.set(id, quote),
        }
    }

    /// Sets restored state. Keeps whichever state is newer, so the order restore
    /// records arrive in cannot matter.
    pub fn restore(&mut self, seat: &Seat, quote: Quote) {
        let id = self.intern(seat);
        if self
            .quote(id)
            .is_none_or(|current| current.observed_at <= quote.observed_at)
        {
            self.set(id, quote);
        }
    }

    /// The lowest available current price of a scope (`section: None` = the whole
    /// event), with the smallest seat holding it.
    pub fn lowest(&self, section: Option<&str>, currency: Currency) -> Option<(Cents, SeatRef<'_>)> {
        let index = self.index(section, currency)?;
        let (price, _) = *index.first()?;
        index
            .at(price)
            .map(|id| self.seat(id))
            .min()
            .map(|seat| (price, seat))
    }

    pub fn lowest_price(&self, section: Option<&str>, currency: Currency) -> Option<Cents> {
        let index = self.index(section, currency)?;
        index.first().map(|(price, _)| *price)
    }

    /// The available listings of one section in one currency.
    pub fn section(&self, section: &str, currency: Currency) -> Option<&SectionIndex> {
        let section = self.sections.get(section)?;
        self.by_section.get(&(*section, currency))
    }

    /// Every available listing of a scope with its price, in no set order.
    pub fn available(&self, section: Option<&str>, currency: Currency) -> Vec<(SeatId, Cents)> {
        let mut found = Vec::new();
        for (&(section_id, index_currency), index) in &self.by_section {
            let in_scope = index_currency == currency
                && section.is_none_or(|name| self.sections.get(name) == Some(&section_id));
            if in_scope {
                found.extend(index.iter().map(|(price, id)| (*id, *price)));
            }
        }
        found
    }

    /// The id of an interned seat.
    pub fn id(&self, seat: &Seat) -> Option<SeatId> {
        self.find(self.hasher.hash_one(SeatRef::of(seat)), seat)
    }

    fn index(&self, section: Option<&str>, currency: Currency) -> Option<Scope<'_>> {
        match section {
            None => self.by_currency.get(&currency).map(Scope::Event),
            Some(section) => self.section(section, currency).map(Scope::Section),
        }
    }

    /// Replaces the state of `id`, keeping the indexes in step; returns the
    /// previous state.
    fn set(&mut self, id: SeatId, quote: Quote) -> Option<Quote> {
        let section = self.section_of[id as usize];
        let previous = self.current[id as usize].replace(quote);
        if let Some(old) = previous {
            if old.available {
                self.unindex(id, section, old);
            }
            let key = (section, old.currency);
            if let Some(count) = self.listed.get_mut(&key) {
                *count -= 1;
                if *count <= 0 {
                    self.listed.remove(&key);
                }
            }
        }
        *self.listed.entry((section, quote.currency)).or_default() += 1;
        if quote.available {
            self.by_currency
                .entry(quote.currency)
                .or_default()
                .insert((quote.price, id));
            self.by_section
                .entry((section, quote.currency))
                .or_default()
                .insert((quote.price, id));
        }
        previous
    }

    /// Empty indexes are dropped so memory follows what is listed now.
    fn unindex(&mut self, id: SeatId, section: SectionId, old: Quote) {
        let entry = (old.price, id);
        if let Some(index) = self.by_currency.get_mut(&old.currency) {
            index.remove(&entry);
            if index.is_empty() {
                self.by_currency.remove(&old.currency);
            }
        }
        let key = (section, old.currency);
        if let Some(index) = self.by_section.get_mut(&key) {
            index.remove(&entry);
            if index.is_empty() {
                self.by_section.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EUR: Currency = Currency(*b"EUR");

    fn seat(section: &str, name: &str) -> Seat {
        Seat {
            section: section.into(),
            row: "1".into(),
            seat: name.into(),
            source: "s".into(),
        }
    }

    fn quote(price: i64, currency: Currency, available: bool, observed_at: Micros) -> Quote {
        Quote {
            price: Cents(price),
            currency,
            available,
            observed_at,
        }
    }

    #[test]
    fn older_observation_is_stale() {
        let mut listings = Listings::default();
        let a = seat("A", "1");
        assert_eq!(
            listings.apply(&a, quote(100, Currency::USD, true, 10)),
            Applied::Current { previous: None }
        );
        assert_eq!(
            listings.apply(&a, quote(50, Currency::USD, true, 5)),
            Applied::Stale
        );
        assert_eq!(listings.get(&a), Some(&quote(100, Currency::USD, true, 10)));
        assert_eq!(listings.lowest_price(None, Currency::USD), Some(Cents(100)));
    }

    #[test]
    fn lowest_per_scope_ignores_unavailable_and_other_scopes() {
        let mut listings = Listings::default();
        listings.apply(&seat("A", "1"), quote(300, Currency::USD, true, 1));
        listings.apply(&seat("B", "1"), quote(200, Currency::USD, true, 1));
        listings.apply(&seat("B", "2"), quote(100, Currency::USD, false, 1));
        listings.apply(&seat("A", "2"), quote(50, EUR, true, 1));
        assert_eq!(listings.lowest_price(None, Currency::USD), Some(Cents(200)));
        assert_eq!(listings.lowest_price(Some("A"), Currency::USD), Some(Cents(300)));
        assert_eq!(listings.lowest_price(Some("A"), EUR), Some(Cents(50)));
        assert_eq!(listings.lowest_price(Some("B"), EUR), None);
        assert_eq!(listings.lowest_price(Some("C"), Currency::USD), None);
    }

    #[test]
    fn ties_go_to_the_smallest_seat() {
        let mut listings = Listings::default();
        listings.apply(&seat("B", "1"), quote(100, Currency::USD, true, 1));
        listings.apply(&seat("A", "9"), quote(100, Currency::USD, true, 2));
        listings.apply(&seat("A", "2"), quote(100, Currency::USD, true, 3));
        assert_eq!(
            listings.lowest(None, Currency::USD),
            Some((Cents(100), SeatRef::of(&seat("A", "2"))))
        );
    }

    #[test]
    fn selling_and_switching_currency_leave_no_index_behind() {
        let mut listings = Listings::default();
        let a = seat("A", "1");
        listings.apply(&a, quote(100, Currency::USD, true, 1));
        listings.apply(&a, quote(100, Currency::USD, false, 2));
        assert_eq!(listings.lowest_price(None, Currency::USD), None);
        listings.apply(&a, quote(90, EUR, true, 3));
        assert_eq!(listings.lowest_price(None, Currency::USD), None);
        assert_eq!(listings.lowest_price(Some("A"), EUR), Some(Cents(90)));
        listings.apply(&a, quote(90, EUR, false, 4));
        assert!(listings.by_currency.is_empty());
        assert!(listings.by_section.is_empty());
    }

    #[test]
    fn section_state_counts_every_listing_of_its_currency() {
        let mut listings = Listings::default();
        let a1 = seat("A", "1");
        let a2 = seat("A", "2");
        listings.apply(&a1, quote(100, Currency::USD, true, 1));
        listings.apply(&a2, quote(300, Currency::USD, true, 1));
        let a = listings.section_of(listings.id(&a1).unwrap());
        let state = |listings: i64, available: i64, low: Option<i64>| SectionState {
            listings,
            available,
            low: low.map(Cents),
        };
        assert_eq!(
            listings.section_state(a, Currency::USD),
            Some(state(2, 2, Some(100)))
        );
        // Sold: still a listing.
        listings.apply(&a1, quote(100, Currency::USD, false, 2));
        assert_eq!(
            listings.section_state(a, Currency::USD),
            Some(state(2, 1, Some(300)))
        );
        // Another currency: it leaves USD's count for EUR's.
        listings.apply(&a1, quote(90, EUR, false, 3));
        assert_eq!(
            listings.section_state(a, Currency::USD),
            Some(state(1, 1, Some(300)))
        );
        assert_eq!(listings.section_state(a, EUR), Some(state(1, 0, None)));
        listings.apply(&a2, quote(80, EUR, true, 4));
        assert_eq!(listings.section_state(a, Currency::USD), None);
        assert_eq!(listings.section_state(a, EUR), Some(state(2, 1, Some(80))));
        assert!(!listings.listed.contains_key(&(a, Currency::USD)));
        assert_eq!(listings.section_name(a), "A");
    }

    #[test]
    fn restore_keeps_the_newer_state_whatever_the_order() {
        let mut listings = Listings::default();
        let a = seat("A", "1");
        listings.restore(&a, quote(100, Currency::USD, true, 20));
        listings.restore(&a, quote(200, Currency::USD, true, 10));
        assert_eq!(listings.lowest_price(None, Currency::USD), Some(Cents(100)));
    }

    #[test]
    fn seats_whose_fields_join_to_the_same_text_stay_apart() {
        let fields = [
            ("ab", "c", "s"),
            ("a", "bc", "s"),
            ("", "abc", "s"),
            ("abc", "", "s"),
            ("", "", "abcs"),
            ("é", "\u{0}", "😀"),
            ("\u{0}", "é", "😀"),
        ];
        let seats: Vec<Seat> = fields
            .iter()
            .map(|(row, name, source)| Seat {
                section: "A".into(),
                row: (*row).into(),
                seat: (*name).into(),
                source: (*source).into(),
            })
            .collect();
        let mut listings = Listings::default();
        let ids: Vec<SeatId> = seats.iter().map(|seat| listings.intern(seat)).collect();
        assert_eq!(ids, (0..seats.len() as SeatId).collect::<Vec<_>>());
        for (seat, id) in seats.iter().zip(&ids) {
            assert_eq!(listings.intern(seat), *id);
            assert_eq!(listings.seat(*id), SeatRef::of(seat));
            assert_eq!(listings.seat(*id).to_seat(), *seat);
        }
    }

    #[test]
    fn section_index_keeps_the_lower_median() {
        // A small section, and one that grows past `LARGE` (two halves) and
        // shrinks below `SMALL` (a vector again), twice.
        for (seats, steps) in [(40, 2_000), (1_000, 12_000)] {
            let mut index = SectionIndex::default();
            let mut shadow: Vec<(Cents, SeatId)> = Vec::new();
            let (mut halves, mut small_again) = (false, false);
            // A fixed pseudo-random sequence of inserts and removals.
            let mut x: u64 = 7;
            for step in 0..steps {
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                let id = (x >> 33) as SeatId % seats;
                let price = Cents(((x >> 13) % 50) as i64);
                let shrinking = (step / 3_000) % 2 == 1;
                if shrinking && !shadow.is_empty() {
                    let entry = shadow.remove((x >> 40) as usize % shadow.len());
                    index.remove(&entry);
                } else if let Some(at) = shadow.iter().position(|(_, seat)| *seat == id) {
                    let entry = shadow.remove(at);
                    index.remove(&entry);
                } else {
                    shadow.push((price, id));
                    index.insert((price, id));
                }
                shadow.sort();
                match index {
                    SectionIndex::Halves { .. } => halves = true,
                    SectionIndex::Small(_) if halves => small_again = true,
                    SectionIndex::Small(_) => {}
                }
                assert_eq!(index.len(), shadow.len(), "step {step}");
                let median = (!shadow.is_empty()).then(|| shadow[(shadow.len() - 1) / 2].0);
                assert_eq!(index.lower_median(), median, "step {step}");
                assert_eq!(index.first(), shadow.first(), "step {step}");
                assert!(index.iter().eq(shadow.iter()), "step {step}");
                let at: Vec<SeatId> = index.at(price).collect();
                let want: Vec<SeatId> = shadow
                    .iter()
                    .filter(|(p, _)| *p == price)
                    .map(|(_, id)| *id)
                    .collect();
                assert_eq!(at, want, "step {step}");
            }
            assert_eq!((halves, small_again), (seats > 256, seats > 256), "{seats} seats");
        }
    }
}
