//! Any `Range` value against any size: no panic, and a partial range is inside the content.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vaultfs::handlers::content::{parse_range, RangeSpec};

fuzz_target!(|input: (&str, u64)| {
    let (value, size) = input;
    if let RangeSpec::Partial(start, end) = parse_range(value, size) {
        assert!(start <= end && end < size, "{value:?} on {size}: {start}-{end}");
    }
});
