//! The simulated world of `conscope produce`: which events exist (tours, games and
//! shows, each at a venue with its local UTC offset and currency), how each kind
//! of venue lays out its sections, rows and seats, which resale sources list
//! them, and the starting price of every listing.
//!
//! Static data plus pure functions of the generator's RNG: touches no IO, no
//! clock. The order of RNG draws here is part of the byte-identical output for a
//! seed, so any change to it changes every generated message.

use std::collections::HashSet;

use chrono::{DateTime, FixedOffset, NaiveTime, SecondsFormat, TimeZone, Utc};
use rand::rngs::StdRng;
use rand::Rng;

/// An event and its listings. The catalogue makes it; the generator then walks
/// its listings' prices.
pub(super) struct Event {
    pub(super) id: String,
    pub(super) name: String,
    pub(super) venue: String,
    /// RFC 3339 with the venue's local offset.
    pub(super) date: String,
    pub(super) currency: &'static str,
    pub(super) listings: Vec<Listing>,
}

/// One listing: its identity (section, row, seat, source) is fixed; the rest is
/// the state of its price walk, owned by the generator.
pub(super) struct Listing {
    pub(super) section: String,
    pub(super) row: String,
    pub(super) seat: String,
    pub(super) source: &'static str,
    pub(super) cents: i64,
    pub(super) available: bool,
    /// Some sellers price in whole dollars.
    pub(super) whole_dollars: bool,
    /// Timestamp of the newest observation sent, if any.
    pub(super) last_ts: Option<i64>,
    /// Exclusive lower bound for the next stale timestamp: stale observations fall
    /// strictly between two fresh ones and after earlier stale ones, so each is a new identity.
    pub(super) stale_floor: i64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Layout {
    Arena,
    Stadium,
    Theatre,
}

#[derive(Clone, Copy)]
struct Venue {
    name: &'static str,
    /// UTC offset in hours (standard time; good enough for a mock).
    offset_hours: i32,
    layout: Layout,
}

const fn venue(name: &'static str, offset_hours: i32, layout: Layout) -> Venue {
    Venue {
        name,
        offset_hours,
        layout,
    }
}

const MSG: Venue = venue("Madison Square Garden, New York, NY", -5, Layout::Arena);
const CRYPTO: Venue = venue("Crypto.com Arena, Los Angeles, CA", -8, Layout::Arena);
const TD_GARDEN: Venue = venue("TD Garden, Boston, MA", -5, Layout::Arena);
const UNITED: Venue = venue("United Center, Chicago, IL", -6, Layout::Arena);
const CHASE: Venue = venue("Chase Center, San Francisco, CA", -8, Layout::Arena);

const US_CONCERT_VENUES: &[Venue] = &[
    MSG,
    CRYPTO,
    UNITED,
    CHASE,
    venue("Barclays Center, Brooklyn, NY", -5, Layout::Arena),
    venue("SoFi Stadium, Inglewood, CA", -8, Layout::Stadium),
    venue("MetLife Stadium, East Rutherford, NJ", -5, Layout::Stadium),
    venue("Red Rocks Amphitheatre, Morrison, CO", -7, Layout::Stadium),
];
const EU_CONCERT_VENUES: &[Venue] = &[
    venue("Accor Arena, Paris", 1, Layout::Arena),
    venue("Uber Arena, Berlin", 1, Layout::Arena),
    venue("Ziggo Dome, Amsterdam", 1, Layout::Arena),
    venue("Stade de France, Saint-Denis", 1, Layout::Stadium),
];
const UK_CONCERT_VENUES: &[Venue] = &[
    venue("The O2, London", 0, Layout::Arena),
    venue("Wembley Stadium, London", 0, Layout::Stadium),
    venue("Co-op Live, Manchester", 0, Layout::Arena),
];

const ACTS: &[&str] = &[
    "Taylor Swift — The Eras Tour",
    "Beyoncé — Cowboy Carter Tour",
    "Coldplay — Music of the Spheres World Tour",
    "Bad Bunny — Debí Tirar Más Fotos World Tour",
    "Metallica — M72 World Tour",
    "Olivia Rodrigo — GUTS World Tour",
    "Billie Eilish — Hit Me Hard and Soft Tour",
    "Bruce Springsteen and the E Street Band",
    "Kendrick Lamar & SZA — Grand National Tour",
    "Dua Lipa — Radical Optimism Tour",
    "Ed Sheeran — Mathematics Tour",
    "Foo Fighters — Everything or Nothing at All",
    "Sabrina Carpenter — Short n' Sweet Tour",
    "The Weeknd — After Hours til Dawn",
];

/// (team, home venue) per league; a game is "home vs away" within a league.
type League = &'static [(&'static str, Venue)];
const US_LEAGUES: &[League] = &[
    &[
        ("Lakers", CRYPTO),
        ("Celtics", TD_GARDEN),
        ("Knicks", MSG),
        ("Warriors", CHASE),
        ("Bulls", UNITED),
        ("Heat", venue("Kaseya Center, Miami, FL", -5, Layout::Arena)),
    ],
    &[
        (
            "Giants",
            venue("MetLife Stadium, East Rutherford, NJ", -5, Layout::Stadium),
        ),
        (
            "Cowboys",
            venue("AT&T Stadium, Arlington, TX", -6, Layout::Stadium),
        ),
        (
            "Packers",
            venue("Lambeau Field, Green Bay, WI", -6, Layout::Stadium),
        ),
        (
            "Chiefs",
            venue(
                "GEHA Field at Arrowhead Stadium, Kansas City, MO",
                -6,
                Layout::Stadium,
            ),
        ),
    ],
    &[("Rangers", MSG), ("Bruins", TD_GARDEN), ("Blackhawks", UNITED)],
    &[
        ("Yankees", venue("Yankee Stadium, Bronx, NY", -5, Layout::Stadium)),
        ("Red Sox", venue("Fenway Park, Boston, MA", -5, Layout::Stadium)),
        (
            "Dodgers",
            venue("Dodger Stadium, Los Angeles, CA", -8, Layout::Stadium),
        ),
    ],
];
const EU_LEAGUES: &[League] = &[&[
    (
        "Real Madrid",
        venue("Estadio Santiago Bernabéu, Madrid", 1, Layout::Stadium),
    ),
    (
        "FC Barcelona",
        venue("Spotify Camp Nou, Barcelona", 1, Layout::Stadium),
    ),
    (
        "Bayern München",
        venue("Allianz Arena, München", 1, Layout::Stadium),
    ),
    (
        "Paris Saint-Germain",
        venue("Parc des Princes, Paris", 1, Layout::Stadium),
    ),
]];
const UK_LEAGUES: &[League] = &[&[
    ("Arsenal", venue("Emirates Stadium, London", 0, Layout::Stadium)),
    ("Chelsea", venue("Stamford Bridge, London", 0, Layout::Stadium)),
    (
        "Manchester United",
        venue("Old Trafford, Manchester", 0, Layout::Stadium),
    ),
    ("Liverpool", venue("Anfield, Liverpool", 0, Layout::Stadium)),
]];

const US_SHOWS: &[(&str, Venue)] = &[
    (
        "Hamilton",
        venue("Richard Rodgers Theatre, New York, NY", -5, Layout::Theatre),
    ),
    (
        "The Lion King",
        venue("Minskoff Theatre, New York, NY", -5, Layout::Theatre),
    ),
    (
        "Wicked",
        venue("Gershwin Theatre, New York, NY", -5, Layout::Theatre),
    ),
    (
        "Hadestown",
        venue("Walter Kerr Theatre, New York, NY", -5, Layout::Theatre),
    ),
];
const EU_SHOWS: &[(&str, Venue)] = &[("Le Roi Lion", venue("Théâtre Mogador, Paris", 1, Layout::Theatre))];
const UK_SHOWS: &[(&str, Venue)] = &[
    (
        "Les Misérables",
        venue("Sondheim Theatre, London", 0, Layout::Theatre),
    ),
    (
        "Hamilton",
        venue("Victoria Palace Theatre, London", 0, Layout::Theatre),
    ),
    (
        "The Phantom of the Opera",
        venue("His Majesty's Theatre, London", 0, Layout::Theatre),
    ),
];

const SOURCES: &[(&str, u32)] = &[
    ("stubhub", 35),
    ("seatgeek", 25),
    ("vividseats", 20),
    ("ticketmaster", 16),
    ("unknown", 4),
];

fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    &items[rng.gen_range(0..items.len())]
}

/// A new event with `listings_per_event` listings, dated 3 to 240 days after
/// `start`; its id is not in `ids` (and is added to it). With `sections` > 0 its
/// listings are spread over that many sections (round robin), so a world can be
/// made where every section holds enough listings to judge deals; 0 lets the
/// venue's layout decide, as it always has (same RNG draws, same bytes).
pub(super) fn make_event(
    rng: &mut StdRng,
    start: DateTime<Utc>,
    listings_per_event: usize,
    sections: usize,
    ids: &mut HashSet<String>,
) -> Event {
    let id = loop {
        let id = format!("evt_{:010x}", rng.gen::<u64>() & 0xff_ffff_ffff);
        if ids.insert(id.clone()) {
            break id;
        }
    };
    let (currency, concert_venues, leagues, shows) = match rng.gen_range(0..100) {
        0..=79 => ("USD", US_CONCERT_VENUES, US_LEAGUES, US_SHOWS),
        80..=89 => ("EUR", EU_CONCERT_VENUES, EU_LEAGUES, EU_SHOWS),
        _ => ("GBP", UK_CONCERT_VENUES, UK_LEAGUES, UK_SHOWS),
    };
    // (name, venue, concert?, base price in cents)
    let (name, venue, concert, base) = match rng.gen_range(0..100) {
        0..=44 => (
            (*pick(rng, ACTS)).to_owned(),
            *pick(rng, concert_venues),
            true,
            rng.gen_range(9_000..=24_000),
        ),
        45..=84 => {
            let league = *pick(rng, leagues);
            let home = rng.gen_range(0..league.len());
            let away = (home + rng.gen_range(1..league.len().max(2))) % league.len();
            let (home, venue) = league[home];
            (
                format!("{home} vs {}", league[away].0),
                venue,
                false,
                rng.gen_range(6_000..=18_000),
            )
        }
        _ => {
            let (show, venue) = *pick(rng, shows);
            (show.to_owned(), venue, false, rng.gen_range(7_000..=16_000))
        }
    };
    // In the future relative to --start: 3 to 240 days out, evening, local time.
    let day = start.date_naive() + chrono::Days::new(rng.gen_range(3..=240));
    let time =
        NaiveTime::from_hms_opt(rng.gen_range(18..=20), [0, 30][rng.gen_range(0..2)], 0).unwrap_or_default();
    let date = FixedOffset::east_opt(venue.offset_hours * 3600)
        .and_then(|offset| offset.from_local_datetime(&day.and_time(time)).single())
        .map(|date| date.to_rfc3339_opts(SecondsFormat::Secs, false))
        .unwrap_or_else(|| {
            day.and_time(time)
                .and_utc()
                .to_rfc3339_opts(SecondsFormat::Secs, true)
        });

    let names = section_names(rng, venue.layout, concert, sections);
    let mut taken = HashSet::new();
    let listings = (0..listings_per_event)
        .map(|index| {
            let section = (!names.is_empty()).then(|| names[index % names.len()].as_str());
            make_listing(rng, venue.layout, concert, base, index, section, &mut taken)
        })
        .collect();
    Event {
        id,
        name,
        venue: venue.name.to_owned(),
        date,
        currency,
        listings,
    }
}

/// `count` distinct section names for one event: the venue layout's own first,
/// then numbered ones when the layout has fewer. Empty for `count` 0.
fn section_names(rng: &mut StdRng, layout: Layout, concert: bool, count: usize) -> Vec<String> {
    let mut names: Vec<String> = Vec::with_capacity(count);
    // A layout has a few hundred names at most: enough draws to find them, bounded.
    for _ in 0..count.saturating_mul(20).min(4_000) {
        if names.len() == count {
            break;
        }
        let (section, ..) = make_seat(rng, layout, concert);
        if !names.contains(&section) {
            names.push(section);
        }
    }
    let mut number = 1;
    while names.len() < count {
        let name = format!("Section {number}");
        if !names.contains(&name) {
            names.push(name);
        }
        number += 1;
    }
    names
}

/// A listing unique within its event (section, row, seat, source), in
/// `section` when given, else in the section its seat draw names.
fn make_listing(
    rng: &mut StdRng,
    layout: Layout,
    concert: bool,
    base: i64,
    index: usize,
    section: Option<&str>,
    taken: &mut HashSet<(String, String, String, &'static str)>,
) -> Listing {
    let mut attempt = 0;
    let (section, row, seat, source, multiplier) = loop {
        let (drawn, row, seat, multiplier) = make_seat(rng, layout, concert);
        let section = section.map_or(drawn, str::to_owned);
        let total: u32 = SOURCES.iter().map(|(_, weight)| weight).sum();
        let mut roll = rng.gen_range(0..total);
        let mut source = SOURCES[0].0;
        for (name, weight) in SOURCES {
            if roll < *weight {
                source = *name;
                break;
            }
            roll -= weight;
        }
        let candidate = (section, row, seat, source);
        attempt += 1;
        if !taken.contains(&candidate) {
            taken.insert(candidate.clone());
            break (candidate.0, candidate.1, candidate.2, candidate.3, multiplier);
        }
        if attempt >= 50 {
            // Practically never: fall back to a seat number no other listing uses.
            let candidate = (candidate.0, candidate.1, format!("X{index}"), candidate.3);
            taken.insert(candidate.clone());
            break (candidate.0, candidate.1, candidate.2, candidate.3, multiplier);
        }
    };
    let jitter = rng.gen_range(8_000..=13_000);
    let cents = (base * multiplier / 10_000 * jitter / 10_000).clamp(4_000, 90_000);
    let whole_dollars = rng.gen_bool(0.3);
    let cents = if whole_dollars { cents / 100 * 100 } else { cents };
    Listing {
        section,
        row,
        seat,
        source,
        cents,
        available: true,
        whole_dollars,
        last_ts: None,
        stale_floor: 0,
    }
}

/// (section, row, seat, price multiplier in basis points).
fn make_seat(rng: &mut StdRng, layout: Layout, concert: bool) -> (String, String, String, i64) {
    let letter = |rng: &mut StdRng, n: u8| char::from(b'A' + rng.gen_range(0..n)).to_string();
    let number = |rng: &mut StdRng, low: u32, high: u32| rng.gen_range(low..=high).to_string();
    if concert && layout != Layout::Theatre && rng.gen_bool(0.12) {
        let section = if layout == Layout::Stadium {
            "GA Pit"
        } else {
            "GA Floor"
        };
        return (section.to_owned(), String::new(), String::new(), 15_000);
    }
    let roll = rng.gen_range(0..100);
    let (section, row_is_letter, multiplier) = match layout {
        Layout::Arena => match roll {
            0..=14 if concert => (format!("Floor {}", letter(rng, 4)), true, 20_000),
            0..=44 => (number(rng, 101, 124), false, 13_000),
            45..=79 => (number(rng, 201, 230), false, 9_000),
            80..=91 => (format!("Mezzanine {}", number(rng, 1, 8)), false, 10_000),
            _ => (format!("Club {}", number(rng, 1, 12)), true, 22_000),
        },
        Layout::Stadium => match roll {
            0..=9 => (format!("Field {}", letter(rng, 6)), true, 18_000),
            10..=39 => (number(rng, 101, 149), false, 13_000),
            40..=64 => (number(rng, 201, 249), false, 9_000),
            65..=89 => (number(rng, 501, 549), false, 6_500),
            _ => (format!("Club {}", number(rng, 1, 20)), true, 22_000),
        },
        Layout::Theatre => match roll {
            0..=39 => ("Orchestra".to_owned(), true, 16_000),
            40..=59 => ("Front Mezzanine".to_owned(), true, 12_000),
            60..=79 => ("Rear Mezzanine".to_owned(), true, 8_000),
            80..=94 => ("Balcony".to_owned(), true, 6_500),
            _ => (format!("Box {}", letter(rng, 4)), true, 25_000),
        },
    };
    let row = if row_is_letter {
        let row = letter(rng, 26);
        if rng.gen_bool(0.1) {
            format!("{row}{row}")
        } else {
            row
        }
    } else {
        number(rng, 1, 30)
    };
    let seat = if rng.gen_bool(0.05) {
        let first = rng.gen_range(1..=28);
        format!("{first}-{}", first + 1)
    } else {
        number(rng, 1, 30)
    };
    (section, row, seat, multiplier)
}
