//! How numbers and times read on the dashboard: money exactly from NUMERIC
//! (`rust_decimal`, never `f64`), signed changes, and UTC timestamps. Pure
//! functions; touches nothing.

use chrono::{DateTime, Utc};
use rust_decimal::{Decimal, RoundingStrategy};

/// `1234.5` in USD reads `$1,234.50`; a currency without a well-known symbol
/// reads `1,234.50 CHF`.
pub fn money(amount: Decimal, currency: &str) -> String {
    let digits = grouped(amount.abs());
    let sign = if amount.is_sign_negative() && !amount.is_zero() {
        "−"
    } else {
        ""
    };
    match symbol(currency) {
        Some(symbol) => format!("{sign}{symbol}{digits}"),
        None => format!("{sign}{digits} {currency}"),
    }
}

fn symbol(currency: &str) -> Option<&'static str> {
    Some(match currency {
        "USD" => "$",
        "EUR" => "€",
        "GBP" => "£",
        "JPY" => "¥",
        "CAD" => "CA$",
        "AUD" => "A$",
        _ => return None,
    })
}

/// Two decimals, thousands grouped with commas; `value` is not negative.
fn grouped(value: Decimal) -> String {
    let mut value = value;
    value.rescale(2);
    let text = value.to_string();
    let (whole, fraction) = text.split_once('.').unwrap_or((text.as_str(), "00"));
    let mut out = String::with_capacity(text.len() + whole.len() / 3);
    for (index, digit) in whole.chars().enumerate() {
        if index > 0 && (whole.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out.push('.');
    out.push_str(fraction);
    out
}

/// The direction of a price change, for its colour: a drop is good news.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trend {
    Down,
    Up,
    Flat,
}

/// `new - old` as `+$12.50 (+4.2%)` or `−$3.00 (−1.1%)`, and its trend.
pub fn change(old: Decimal, new: Decimal, currency: &str) -> (String, Trend) {
    let delta = new - old;
    let trend = if delta.is_zero() {
        Trend::Flat
    } else if delta.is_sign_negative() {
        Trend::Down
    } else {
        Trend::Up
    };
    let sign = match trend {
        Trend::Up => "+",
        Trend::Down | Trend::Flat => "",
    };
    let percent = if old.is_zero() {
        String::new()
    } else {
        let mut pct = (delta * Decimal::ONE_HUNDRED / old)
            .round_dp_with_strategy(1, RoundingStrategy::MidpointAwayFromZero);
        pct.rescale(1);
        let pct_sign = if pct.is_sign_positive() && !pct.is_zero() {
            "+"
        } else {
            ""
        };
        format!(" ({pct_sign}{}%)", pct.to_string().replace('-', "−"))
    };
    (format!("{sign}{}{percent}", money(delta, currency)), trend)
}

/// `2026-05-01 19:30 UTC`.
pub fn when(time: DateTime<Utc>) -> String {
    time.format("%Y-%m-%d %H:%M UTC").to_string()
}

/// `May 01 19:30` in the current year, `2027 May 01 19:30` in another.
pub fn short(time: DateTime<Utc>) -> String {
    use chrono::Datelike;
    if time.year() == Utc::now().year() {
        time.format("%b %d %H:%M").to_string()
    } else {
        time.format("%Y %b %d %H:%M").to_string()
    }
}

/// `Fri 01 May 2026, 19:30`, for an event's date.
pub fn date(time: DateTime<Utc>) -> String {
    time.format("%a %d %b %Y, %H:%M").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(text: &str) -> Decimal {
        Decimal::from_str_exact(text).expect("decimal")
    }

    #[test]
    fn money_is_exact_and_grouped() {
        assert_eq!(money(d("1234.5"), "USD"), "$1,234.50");
        assert_eq!(money(d("0.01"), "EUR"), "€0.01");
        assert_eq!(money(d("1000000.00"), "GBP"), "£1,000,000.00");
        assert_eq!(money(d("999.99"), "CHF"), "999.99 CHF");
        assert_eq!(money(d("-3"), "USD"), "−$3.00");
        assert_eq!(money(d("123456789.10"), "USD"), "$123,456,789.10");
    }

    #[test]
    fn changes_are_signed_with_a_trend() {
        assert_eq!(
            change(d("100"), d("90"), "USD"),
            ("−$10.00 (−10.0%)".to_owned(), Trend::Down)
        );
        assert_eq!(
            change(d("100"), d("112.50"), "USD"),
            ("+$12.50 (+12.5%)".to_owned(), Trend::Up)
        );
        assert_eq!(
            change(d("3.00"), d("3.00"), "EUR"),
            ("€0.00 (0.0%)".to_owned(), Trend::Flat)
        );
        // 1/3 of a percent rounds, exactly.
        assert_eq!(change(d("300"), d("301"), "USD").0, "+$1.00 (+0.3%)");
    }
}
