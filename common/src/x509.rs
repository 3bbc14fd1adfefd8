//! The SPIFFE ID of an X.509-SVID.

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::X509Certificate;

use warden_proto::SpiffeId;

/// The single SPIFFE ID URI SAN of a certificate (a workload ID: non-root path).
pub fn spiffe_id_of(cert: &X509Certificate<'_>) -> Result<SpiffeId, String> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| e.to_string())?
        .ok_or("no subject alternative name")?;
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [one] => SpiffeId::parse_workload(one).map_err(|e| e.to_string()),
        [] => Err("no URI SAN".into()),
        _ => Err(format!("{} URI SANs; exactly one is allowed", uris.len())),
    }
}
