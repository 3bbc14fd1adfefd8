//! CA key pairs: the key types a root can be made with, generating them, and loading
//! the PEM encodings that Istio `cacerts` secrets carry (PKCS#8, PKCS#1 RSA, SEC1 EC).

use std::fmt;
use std::str::FromStr;

use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_RSA_SHA256};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

/// Key type of a CA key made by Warden.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// ECDSA on NIST P-256 with SHA-256.
    EcP256,
    /// ECDSA on NIST P-384 with SHA-384.
    EcP384,
    /// RSA with this many modulus bits (2048, 3072 or 4096), PKCS#1 v1.5 SHA-256.
    Rsa(usize),
}

impl FromStr for KeyType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ec-p256" => Ok(Self::EcP256),
            "ec-p384" => Ok(Self::EcP384),
            "rsa-2048" => Ok(Self::Rsa(2048)),
            "rsa-3072" => Ok(Self::Rsa(3072)),
            "rsa-4096" => Ok(Self::Rsa(4096)),
            other => Err(format!(
                "unknown key type {other:?}: expected ec-p256, ec-p384, rsa-2048, rsa-3072 or rsa-4096"
            )),
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EcP256 => f.write_str("ec-p256"),
            Self::EcP384 => f.write_str("ec-p384"),
            Self::Rsa(bits) => write!(f, "rsa-{bits}"),
        }
    }
}

/// A key that cannot be made or loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Key generation failed.
    #[error("cannot generate a {key_type} key: {message}")]
    Generate {
        /// Requested type.
        key_type: KeyType,
        /// Why.
        message: String,
    },
    /// The PEM holds no private key Warden can use.
    #[error(
        "not a usable private key: {0} (expected PEM PKCS#8, PKCS#1 RSA or SEC1 EC, P-256/P-384/RSA)"
    )]
    Parse(String),
}

impl KeyType {
    /// Generates a fresh key pair of this type.
    pub fn generate(self) -> Result<KeyPair, KeyError> {
        let gen_err = |message: String| KeyError::Generate {
            key_type: self,
            message,
        };
        match self {
            Self::EcP256 => {
                KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| gen_err(e.to_string()))
            }
            Self::EcP384 => {
                KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).map_err(|e| gen_err(e.to_string()))
            }
            Self::Rsa(bits) => {
                // ring cannot generate RSA keys; the RustCrypto `rsa` crate does, and ring
                // signs with the result.
                use rsa::pkcs8::EncodePrivateKey;
                let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, bits)
                    .map_err(|e| gen_err(e.to_string()))?;
                let der = key.to_pkcs8_der().map_err(|e| gen_err(e.to_string()))?;
                KeyPair::from_pkcs8_der_and_sign_algo(&der.as_bytes().into(), &PKCS_RSA_SHA256)
                    .map_err(|e| gen_err(e.to_string()))
            }
        }
    }
}

/// Loads a private key from PEM in any of the encodings `cacerts` secrets use.
pub fn load_pem_key(pem: &str) -> Result<KeyPair, KeyError> {
    let key = PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| KeyError::Parse(format!("{e:?}")))?;
    let pkcs8: Vec<u8> = match key {
        PrivateKeyDer::Pkcs8(k) => k.secret_pkcs8_der().to_vec(),
        PrivateKeyDer::Pkcs1(k) => {
            use rsa::pkcs1::DecodeRsaPrivateKey;
            use rsa::pkcs8::EncodePrivateKey;
            let rsa = rsa::RsaPrivateKey::from_pkcs1_der(k.secret_pkcs1_der())
                .map_err(|e| KeyError::Parse(format!("PKCS#1 RSA key: {e}")))?;
            rsa.to_pkcs8_der()
                .map_err(|e| KeyError::Parse(format!("PKCS#1 RSA key: {e}")))?
                .as_bytes()
                .to_vec()
        }
        PrivateKeyDer::Sec1(k) => sec1_to_pkcs8(k.secret_sec1_der())?,
        _ => return Err(KeyError::Parse("unsupported key encoding".into())),
    };
    let rsa = is_rsa_pkcs8(&pkcs8);
    let alg = if rsa {
        &PKCS_RSA_SHA256
    } else {
        // Try both curves; ring checks the curve inside the key.
        return KeyPair::from_pkcs8_der_and_sign_algo(
            &pkcs8.as_slice().into(),
            &PKCS_ECDSA_P256_SHA256,
        )
        .or_else(|_| {
            KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8.as_slice().into(), &PKCS_ECDSA_P384_SHA384)
        })
        .map_err(|e| KeyError::Parse(e.to_string()));
    };
    KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8.as_slice().into(), alg)
        .map_err(|e| KeyError::Parse(e.to_string()))
}

/// DER of the rsaEncryption OID (1.2.840.113549.1.1.1), as it appears in PKCS#8.
const RSA_OID_DER: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
];
/// DER of id-ecPublicKey (1.2.840.10045.2.1).
const EC_PUBLIC_KEY_OID_DER: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// DER of the P-256 (1.2.840.10045.3.1.7) and P-384 (1.3.132.0.34) curve OIDs.
const P256_OID_DER: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const P384_OID_DER: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];

fn is_rsa_pkcs8(der: &[u8]) -> bool {
    // The algorithm identifier sits within the first few dozen bytes.
    der.windows(RSA_OID_DER.len())
        .take(32)
        .any(|w| w == RSA_OID_DER)
}

/// Wraps a SEC1 `ECPrivateKey` in PKCS#8, which is what ring loads. The curve comes from
/// the key's own `parameters` field.
fn sec1_to_pkcs8(sec1: &[u8]) -> Result<Vec<u8>, KeyError> {
    let curve = if sec1.windows(P256_OID_DER.len()).any(|w| w == P256_OID_DER) {
        P256_OID_DER
    } else if sec1.windows(P384_OID_DER.len()).any(|w| w == P384_OID_DER) {
        P384_OID_DER
    } else {
        return Err(KeyError::Parse(
            "SEC1 EC key on an unsupported curve (P-256 and P-384 are supported)".into(),
        ));
    };
    let mut alg = Vec::new();
    alg.extend_from_slice(EC_PUBLIC_KEY_OID_DER);
    alg.extend_from_slice(curve);
    let mut body = vec![0x02, 0x01, 0x00]; // version 0
    der_tlv(0x30, &alg, &mut body);
    der_tlv(0x04, sec1, &mut body);
    let mut out = Vec::new();
    der_tlv(0x30, &body, &mut out);
    Ok(out)
}

fn der_tlv(tag: u8, value: &[u8], out: &mut Vec<u8>) {
    out.push(tag);
    let len = value.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(value);
}

/// The PKCS#8 DER inside a `PRIVATE KEY` PEM block; `label` names where it came from.
pub fn pkcs8_der(
    pem: &str,
    label: &std::path::Path,
) -> Result<rustls_pki_types::PrivatePkcs8KeyDer<'static>, super::PkiError> {
    use rustls_pki_types::pem::PemObject;
    match rustls_pki_types::PrivateKeyDer::from_pem_slice(pem.as_bytes()) {
        Ok(rustls_pki_types::PrivateKeyDer::Pkcs8(k)) => Ok(k),
        _ => Err(super::PkiError::Invalid {
            path: label.to_path_buf(),
            message: "expected a PKCS#8 \"PRIVATE KEY\" PEM block".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_types_parse_and_print() {
        for s in ["ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096"] {
            assert_eq!(s.parse::<KeyType>().unwrap().to_string(), s);
        }
        assert!(
            "rsa-1024"
                .parse::<KeyType>()
                .unwrap_err()
                .contains("rsa-1024")
        );
    }

    #[test]
    fn generated_keys_round_trip_through_pem() {
        for kt in [KeyType::EcP256, KeyType::EcP384, KeyType::Rsa(2048)] {
            let key = kt.generate().unwrap();
            let loaded = load_pem_key(&key.serialize_pem()).unwrap();
            assert_eq!(loaded.public_key_raw(), key.public_key_raw(), "{kt}");
        }
    }

    /// Keys in the encodings `openssl` writes for `cacerts` (SEC1 EC, PKCS#1 RSA) load.
    #[test]
    fn loads_openssl_traditional_keys() {
        let run = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .args(args)
                .output()
                .unwrap();
            assert!(out.status.success(), "openssl {args:?} failed");
            String::from_utf8(out.stdout).unwrap()
        };
        let sec1 = run(&["ecparam", "-genkey", "-name", "prime256v1", "-noout"]);
        assert!(sec1.contains("BEGIN EC PRIVATE KEY"));
        load_pem_key(&sec1).unwrap();
        let sec1_384 = run(&["ecparam", "-genkey", "-name", "secp384r1", "-noout"]);
        load_pem_key(&sec1_384).unwrap();
        let pkcs1 = run(&["genrsa", "-traditional", "2048"]);
        assert!(pkcs1.contains("BEGIN RSA PRIVATE KEY"));
        load_pem_key(&pkcs1).unwrap();
    }

    #[test]
    fn rejects_garbage() {
        assert!(load_pem_key("not a key").is_err());
    }
}
