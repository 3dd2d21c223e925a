//! What `conscope run` prints: its metrics lines and its exit summary, as fields.

use std::collections::BTreeMap;

/// The `key=value` fields of a metrics line or summary, by key: `alerts[a=1 b=2]`
/// gives `a` and `b`. Values as printed (`12`, `3.5ms`, `-`).
pub fn metrics_fields(line: &str) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    for token in line.split_whitespace() {
        let token = token.trim_end_matches(']');
        let token = token.rsplit_once('[').map_or(token, |(_, inner)| inner);
        if let Some((key, value)) = token.split_once('=') {
            let previous = fields.insert(key.to_owned(), value.to_owned());
            assert!(previous.is_none(), "{key} twice in {line:?}");
        }
    }
    fields
}

/// The fields of the `summary:` line `conscope run --exit-at-end` printed on
/// `stdout` (its last one); fails the test when there is none.
pub fn parse_summary(stdout: &str) -> BTreeMap<String, String> {
    let line = stdout
        .lines()
        .rev()
        .find_map(|line| line.strip_prefix("summary: "))
        .unwrap_or_else(|| panic!("no summary line in {stdout:?}"));
    metrics_fields(line)
}

/// Checks that the `summary:` line on `stdout` has exactly these values, each
/// compared whole (`duplicates=1` is not `duplicates=12`).
pub fn assert_summary(stdout: &str, expected: &[(&str, u64)]) {
    let fields = parse_summary(stdout);
    for (key, value) in expected {
        assert_eq!(
            fields.get(*key).map(String::as_str),
            Some(value.to_string().as_str()),
            "summary field {key} in {stdout}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUMMARY: &str =
        "summary: processed=12 duplicates=12 alerts[listing_drop=3 event_low=0 rule_match=1] \
                           lag=0 commit_lag_p50=1.5ms peak_rss=20MB total_elapsed=1.0s\n";

    #[test]
    fn fields_are_whole_values_by_key() {
        let fields = parse_summary(&format!("starting\n{SUMMARY}"));
        assert_eq!(fields["duplicates"], "12");
        assert_eq!(fields["listing_drop"], "3");
        assert_eq!(fields["rule_match"], "1");
        assert_eq!(fields["commit_lag_p50"], "1.5ms");
        assert_summary(SUMMARY, &[("processed", 12), ("lag", 0), ("event_low", 0)]);
    }

    #[test]
    #[should_panic(expected = "summary field duplicates")]
    fn a_value_that_only_starts_like_the_expected_one_fails() {
        // `contains("duplicates=1")` would have passed.
        assert_summary(SUMMARY, &[("duplicates", 1)]);
    }

    #[test]
    #[should_panic(expected = "no summary line")]
    fn no_summary_fails() {
        parse_summary("processed=1\n");
    }
}
