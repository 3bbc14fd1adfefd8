#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| warden_ca::fuzz_checks::check_join_token(data));
