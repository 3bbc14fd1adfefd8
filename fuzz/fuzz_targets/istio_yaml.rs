#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| warden_policy::fuzz_checks::check_istio_yaml(data));
