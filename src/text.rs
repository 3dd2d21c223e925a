//! Text for terminals: what the CLI commands print of values they did not
//! write themselves (alerts from a topic, rules from the database).

use rust_decimal::Decimal;

/// Replaces control characters, so a hostile or odd value cannot garble the
/// terminal.
pub fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
        .collect()
}

/// A money amount with at least two decimals, as `NUMERIC(12,2)` prints it:
/// `199` → `199.00`.
pub fn money(amount: Decimal) -> String {
    let mut amount = amount;
    if amount.scale() < 2 {
        amount.rescale(2);
    }
    amount.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_replaced() {
        assert_eq!(printable("a\u{1b}[2Jb\nc"), "a\u{FFFD}[2Jb\u{FFFD}c");
        assert_eq!(printable("Café"), "Café");
    }

    #[test]
    fn money_has_at_least_two_decimals() {
        assert_eq!(money(Decimal::new(199, 0)), "199.00");
        assert_eq!(money(Decimal::new(19_950, 2)), "199.50");
        assert_eq!(money(Decimal::new(1_995, 1)), "199.50");
        assert_eq!(money(Decimal::new(12_345, 3)), "12.345");
    }
}
