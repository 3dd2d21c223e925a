//! The alert decoder of `conscope alerts` (`conscope::alerts::format`) on
//! arbitrary message values: it never panics (a hostile price once made it
//! overflow and crash-loop), and a line it prints holds no control character.

#![no_main]

use conscope::alerts::format::parse_alert;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|value: &[u8]| {
    if let Ok(notice) = parse_alert(value) {
        assert!(!notice.line.chars().any(char::is_control), "{:?}", notice.line);
    }
});
