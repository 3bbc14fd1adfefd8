#![no_main]

use libfuzzer_sys::fuzz_target;

// The same bytes as a bearer token to the CA and to RequestAuthentication in the proxy.
fuzz_target!(|data: &[u8]| {
    warden_ca::fuzz_checks::check_jwt(data);
    warden_policy::fuzz_checks::check_request_jwt(data);
});
