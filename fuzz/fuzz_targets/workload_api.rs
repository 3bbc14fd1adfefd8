#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| warden_agent::fuzz_checks::check_workload_api(data));
