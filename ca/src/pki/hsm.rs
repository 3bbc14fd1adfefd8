//! The CA's signing key in a PKCS#11 token (an HSM, or SoftHSM): selected by a PKCS#11
//! URI (RFC 7512), it never leaves the token; every signature (leaves, CRLs, the CA's
//! serving certificates) is made by the token.
//!
//! `pkcs11:token=warden;object=ca-key?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/run/secrets/pin`
//!
//! Path attributes: `token` (the token's label, required), `object` (the key's label)
//! and/or `id` (its CKA_ID, percent-encoded bytes). Query attributes: `module-path`
//! (the PKCS#11 library, required), `pin-source` (a file holding the user PIN, the way to
//! keep it out of the process's arguments) or `pin-value`.
//!
//! The key is an EC P-256 or P-384 private key; its certificate (the plugged-in
//! `ca-cert.pem`) gives the public key and the algorithm, and a test signature checked
//! with that public key at start proves the two belong together. Sessions come from a
//! pool: PKCS#11 sessions are not to be shared between threads, and a login holds for
//! every session of the application.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use rcgen::{PublicKeyData, SignatureAlgorithm, SigningKey};
use x509_parser::prelude::{FromDer, X509Certificate};

/// A parsed PKCS#11 URI. `Debug` leaves the PIN out.
#[derive(Clone, PartialEq, Eq)]
pub struct Pkcs11Uri {
    /// The PKCS#11 library.
    pub module: PathBuf,
    /// The token's label.
    pub token: String,
    /// The key's label.
    pub object: Option<String>,
    /// The key's CKA_ID.
    pub id: Option<Vec<u8>>,
    /// Where the PIN comes from.
    pin: PinSource,
}

#[derive(Clone, PartialEq, Eq)]
enum PinSource {
    File(PathBuf),
    Value(String),
}

impl std::fmt::Debug for Pkcs11Uri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Uri")
            .field("module", &self.module)
            .field("token", &self.token)
            .field("object", &self.object)
            .field("id", &self.id.as_ref().map(hex::encode))
            .finish_non_exhaustive()
    }
}

fn percent_decode(s: &str) -> Result<Vec<u8>, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .ok_or_else(|| format!("{s:?}: a % is not followed by two hex digits"))?;
            out.push(
                u8::from_str_radix(hex, 16)
                    .map_err(|_| format!("{s:?}: %{hex} is not a hex escape"))?,
            );
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(out)
}

fn text(s: &str) -> Result<String, String> {
    String::from_utf8(percent_decode(s)?).map_err(|_| format!("{s:?} is not UTF-8"))
}

impl Pkcs11Uri {
    /// Parses `pkcs11:` path attributes `;`-separated, then `?` and query attributes
    /// `&`-separated (RFC 7512). Unknown attributes are refused: a typo must not
    /// select another key.
    pub fn parse(uri: &str) -> Result<Self, String> {
        let rest = uri
            .strip_prefix("pkcs11:")
            .ok_or("expected a PKCS#11 URI starting with pkcs11:")?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (mut token, mut object, mut id) = (None, None, None);
        for attr in path.split(';').filter(|a| !a.is_empty()) {
            let (k, v) = attr
                .split_once('=')
                .ok_or_else(|| format!("path attribute {attr:?}: expected name=value"))?;
            match k {
                "token" => token = Some(text(v)?),
                "object" => object = Some(text(v)?),
                "id" => id = Some(percent_decode(v)?),
                "type" if v == "private" => {}
                "type" => return Err(format!("type={v}: the CA key is a private key")),
                other => {
                    return Err(format!(
                        "path attribute {other:?} is not supported (token, object, id, type)"
                    ));
                }
            }
        }
        let (mut module, mut pin) = (None, None);
        for attr in query.split('&').filter(|a| !a.is_empty()) {
            let (k, v) = attr
                .split_once('=')
                .ok_or_else(|| format!("query attribute {attr:?}: expected name=value"))?;
            match k {
                "module-path" => module = Some(PathBuf::from(text(v)?)),
                "pin-source" => {
                    let v = text(v)?;
                    let path = v.strip_prefix("file:").unwrap_or(&v);
                    pin = Some(PinSource::File(PathBuf::from(path)));
                }
                "pin-value" => pin = Some(PinSource::Value(text(v)?)),
                other => {
                    return Err(format!(
                        "query attribute {other:?} is not supported (module-path, pin-source, pin-value)"
                    ));
                }
            }
        }
        if object.is_none() && id.is_none() {
            return Err("name the key with object= (its label) or id= (its CKA_ID)".into());
        }
        Ok(Self {
            module: module.ok_or("module-path= (the PKCS#11 library) is required")?,
            token: token.ok_or("token= (the token's label) is required")?,
            object,
            id,
            pin: pin.ok_or("pin-source=file:PATH (or pin-value=) is required")?,
        })
    }

    fn pin(&self) -> Result<AuthPin, String> {
        match &self.pin {
            PinSource::Value(v) => Ok(AuthPin::from(v.clone())),
            PinSource::File(path) => std::fs::read_to_string(path)
                .map(|s| AuthPin::from(s.trim_end_matches(['\n', '\r']).to_string()))
                .map_err(|e| format!("pin-source {}: {e}", path.display())),
        }
    }

    /// What the key is, for logs and errors: token and label or ID, never the PIN.
    pub fn describe(&self) -> String {
        let mut s = format!("token {:?}", self.token);
        if let Some(o) = &self.object {
            s.push_str(&format!(", object {o:?}"));
        }
        if let Some(id) = &self.id {
            s.push_str(&format!(", id {}", hex::encode(id)));
        }
        s
    }
}

/// One context per PKCS#11 library for the life of the process: a context finalizes the
/// library when dropped, which would end the sessions of any other.
static CONTEXTS: LazyLock<Mutex<HashMap<PathBuf, Pkcs11>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn context(module: &Path) -> Result<Pkcs11, String> {
    let mut contexts = CONTEXTS
        .lock()
        .map_err(|_| "the PKCS#11 context table is poisoned".to_string())?;
    if let Some(c) = contexts.get(module) {
        return Ok(c.clone());
    }
    let ctx = Pkcs11::new(module)
        .map_err(|e| format!("loading the PKCS#11 library {}: {e}", module.display()))?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(format!("initializing {}: {e}", module.display())),
    }
    contexts.insert(module.to_path_buf(), ctx.clone());
    Ok(ctx)
}

/// A private key in a PKCS#11 token, with the public half from its certificate.
pub struct Pkcs11Key {
    ctx: Pkcs11,
    slot: Slot,
    key: ObjectHandle,
    sessions: Mutex<Vec<Session>>,
    public: Vec<u8>,
    alg: &'static SignatureAlgorithm,
    digest: &'static ring::digest::Algorithm,
    /// Bytes of r and of s in a raw PKCS#11 ECDSA signature.
    scalar_len: usize,
    label: String,
}

impl std::fmt::Debug for Pkcs11Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Key")
            .field("key", &self.label)
            .finish_non_exhaustive()
    }
}

impl Pkcs11Key {
    /// Logs in to the token `uri` names, finds its one private key, and checks that it
    /// is the key of `cert_der` with a test signature.
    pub fn open(uri: &Pkcs11Uri, cert_der: &[u8]) -> Result<Self, String> {
        let label = uri.describe();
        let (_, cert) = X509Certificate::from_der(cert_der)
            .map_err(|e| format!("the CA certificate does not parse: {e}"))?;
        let spki = cert.public_key();
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .map(|o| o.to_id_string());
        let (alg, digest, scalar_len, verify): (
            _,
            _,
            _,
            &ring::signature::EcdsaVerificationAlgorithm,
        ) = match curve.as_deref() {
            Some("1.2.840.10045.3.1.7") => (
                &rcgen::PKCS_ECDSA_P256_SHA256,
                &ring::digest::SHA256,
                32,
                &ring::signature::ECDSA_P256_SHA256_ASN1,
            ),
            Some("1.3.132.0.34") => (
                &rcgen::PKCS_ECDSA_P384_SHA384,
                &ring::digest::SHA384,
                48,
                &ring::signature::ECDSA_P384_SHA384_ASN1,
            ),
            _ => {
                return Err(
                        "the CA certificate's key is not EC P-256 or P-384, the key types a token key can be here"
                            .into(),
                    );
            }
        };
        let public = spki.subject_public_key.data.to_vec();
        let ctx = context(&uri.module)?;
        let slot = ctx
            .get_slots_with_token()
            .map_err(|e| format!("listing the slots of {}: {e}", uri.module.display()))?
            .into_iter()
            .find(|s| {
                ctx.get_token_info(*s)
                    .map(|i| i.label().trim_end() == uri.token)
                    .unwrap_or(false)
            })
            .ok_or_else(|| {
                format!(
                    "no token labelled {:?} in {}",
                    uri.token,
                    uri.module.display()
                )
            })?;
        let session = ctx
            .open_ro_session(slot)
            .map_err(|e| format!("opening a session on token {:?}: {e}", uri.token))?;
        match session.login(UserType::User, Some(&uri.pin()?)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(e) => return Err(format!("logging in to token {:?}: {e}", uri.token)),
        }
        let mut template = vec![Attribute::Class(ObjectClass::PRIVATE_KEY)];
        if let Some(o) = &uri.object {
            template.push(Attribute::Label(o.as_bytes().to_vec()));
        }
        if let Some(id) = &uri.id {
            template.push(Attribute::Id(id.clone()));
        }
        let found = session
            .find_objects(&template)
            .map_err(|e| format!("searching {label}: {e}"))?;
        let key = match found.as_slice() {
            [one] => *one,
            [] => return Err(format!("no private key matches {label}")),
            many => {
                return Err(format!(
                    "{} private keys match {label}; name one with object= and id=",
                    many.len()
                ));
            }
        };
        let k = Self {
            ctx,
            slot,
            key,
            sessions: Mutex::new(vec![session]),
            public,
            alg,
            digest,
            scalar_len,
            label,
        };
        // The token's key and the certificate must belong together.
        let probe = b"warden: does the token's key match ca-cert.pem?";
        let sig = k.sign(probe).map_err(|e| e.to_string())?;
        ring::signature::UnparsedPublicKey::new(verify, &k.public)
            .verify(probe, &sig)
            .map_err(|_| {
                format!(
                    "the key {} is not the key of the CA certificate (a test signature does not verify)",
                    k.label
                )
            })?;
        Ok(k)
    }

    fn take_session(&self) -> Result<Session, String> {
        if let Some(s) = self.sessions.lock().ok().and_then(|mut p| p.pop()) {
            return Ok(s);
        }
        // The login holds for every session of this application.
        self.ctx
            .open_ro_session(self.slot)
            .map_err(|e| format!("opening a session on {}: {e}", self.label))
    }

    /// What the key is, for logs.
    pub fn label(&self) -> &str {
        &self.label
    }
}

impl PublicKeyData for Pkcs11Key {
    fn der_bytes(&self) -> &[u8] {
        &self.public
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.alg
    }
}

impl SigningKey for Pkcs11Key {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let session = self
            .take_session()
            .map_err(|_| rcgen::Error::RemoteKeyError)?;
        let digest = ring::digest::digest(self.digest, msg);
        let raw = session.sign(&Mechanism::Ecdsa, self.key, digest.as_ref());
        if let Ok(mut pool) = self.sessions.lock() {
            pool.push(session);
        }
        let raw = raw.map_err(|e| {
            tracing::error!(key = %self.label, error = %e, "the token refused to sign");
            rcgen::Error::RemoteKeyError
        })?;
        ecdsa_der(&raw, self.scalar_len).ok_or(rcgen::Error::RemoteKeyError)
    }
}

/// The DER `ECDSA-Sig-Value` of a raw PKCS#11 signature `r || s` (each `len` bytes).
fn ecdsa_der(raw: &[u8], len: usize) -> Option<Vec<u8>> {
    if raw.len() != 2 * len {
        return None;
    }
    fn integer(bytes: &[u8]) -> Vec<u8> {
        let start = bytes
            .iter()
            .position(|b| *b != 0)
            .unwrap_or(bytes.len() - 1);
        let trimmed = &bytes[start..];
        let mut out = vec![0x02];
        let pad = trimmed[0] & 0x80 != 0;
        out.push(u8::try_from(trimmed.len() + usize::from(pad)).unwrap_or(0));
        if pad {
            out.push(0);
        }
        out.extend_from_slice(trimmed);
        out
    }
    let (r, s) = raw.split_at(len);
    let body: Vec<u8> = [integer(r), integer(s)].concat();
    let mut out = vec![0x30];
    if body.len() < 0x80 {
        out.push(u8::try_from(body.len()).ok()?);
    } else {
        out.push(0x81);
        out.push(u8::try_from(body.len()).ok()?);
    }
    out.extend(body);
    Some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn uris_parse_as_rfc_7512_writes_them_and_typos_are_refused() {
        let u = Pkcs11Uri::parse(
            "pkcs11:token=War%20den;object=ca-key;id=%01%02;type=private?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/run/pin",
        )
        .unwrap();
        assert_eq!(u.token, "War den");
        assert_eq!(u.object.as_deref(), Some("ca-key"));
        assert_eq!(u.id, Some(vec![1, 2]));
        assert_eq!(u.module, PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"));
        assert!(u.pin == PinSource::File("/run/pin".into()));
        assert!(!format!("{u:?}").contains("pin"), "{u:?}");
        for (bad, why) in [
            ("file:/x", "pkcs11:"),
            ("pkcs11:token=t;object=k", "module-path"),
            ("pkcs11:token=t?module-path=/m&pin-value=1", "object="),
            (
                "pkcs11:token=t;object=k;slot=1?module-path=/m&pin-value=1",
                "\"slot\"",
            ),
            (
                "pkcs11:token=t;object=k?module-path=/m&pin-value=1&x=y",
                "\"x\"",
            ),
            ("pkcs11:object=k?module-path=/m&pin-value=1", "token="),
            ("pkcs11:token=t;object=k?module-path=/m", "pin-source"),
            (
                "pkcs11:token=t;id=%zz?module-path=/m&pin-value=1",
                "hex escape",
            ),
            (
                "pkcs11:token=t;object=k;type=public?module-path=/m&pin-value=1",
                "private key",
            ),
        ] {
            let err = Pkcs11Uri::parse(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn raw_signatures_become_der_that_ring_verifies() {
        use ring::signature::KeyPair;
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &rng,
        )
        .unwrap();
        let key = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8.as_ref(),
            &rng,
        )
        .unwrap();
        for i in 0..64u8 {
            let msg = [i; 20];
            let raw = key.sign(&rng, &msg).unwrap();
            let der = ecdsa_der(raw.as_ref(), 32).unwrap();
            ring::signature::UnparsedPublicKey::new(
                &ring::signature::ECDSA_P256_SHA256_ASN1,
                key.public_key().as_ref(),
            )
            .verify(&msg, &der)
            .unwrap();
        }
        assert_eq!(ecdsa_der(&[1; 63], 32), None);
    }
}
