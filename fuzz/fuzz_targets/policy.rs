//! The policy loader on arbitrary documents: every problem is an error with a path, never a panic.
#![no_main]

use edgegate_core::policy::Policy;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(errors) = Policy::compile(data) {
        assert!(!errors.is_empty());
    }
});
