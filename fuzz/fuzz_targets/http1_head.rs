#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| warden_proxy::fuzz_checks::check_http1_head(data));
