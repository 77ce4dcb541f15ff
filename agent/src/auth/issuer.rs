//! The agents' tokens, checked at the hub without asking the API server per token. The
//! cluster's ServiceAccount issuer publishes its public keys (service account issuer
//! discovery: `/.well-known/openid-configuration` and `/openid/v1/jwks`, which every
//! ServiceAccount may read by default) and the hub checks each token's signature (RS256 or
//! ES256), issuer, audience [`AUDIENCE`](super::AUDIENCE), expiry and lifetime ([`Claims::of`]) itself.
//!
//! Why not a TokenReview: 5,000 agents with 10-minute tokens would cost the API server
//! about 10 reviews a second, a cost that grows with the fleet; the keys cost one read per
//! rotation. What it gives up: a deleted pod's token stays valid until it expires (at most
//! [`MAX_LIFETIME`](super::MAX_LIFETIME)).
//!
//! Side effects: [`IssuerKeys`] GETs the discovery document and the keys from the API
//! server, at most once per [`REFETCH_GAP`].

use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime},
};

use base64::Engine as _;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents, UnparsedPublicKey,
};
use serde::Deserialize;
use tokio::time::Instant;

use super::Claims;

/// Unknown key ids read the keys again no more often than this (a key rotation is rare; a
/// flood of made-up key ids must not become a flood of reads).
pub const REFETCH_GAP: Duration = Duration::from_secs(30);

/// A public key of the issuer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Key {
    /// RSA (`kty: RSA`): modulus and exponent, big-endian.
    Rs256 { n: Vec<u8>, e: Vec<u8> },
    /// ECDSA P-256 (`kty: EC`, `crv: P-256`): the uncompressed point.
    Es256 { point: Vec<u8> },
}

/// The issuer and its keys by key id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeySet {
    pub issuer: String,
    pub keys: BTreeMap<String, Key>,
}

/// Why a token is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(transparent)]
    Shape(#[from] super::Shape),
    #[error("the bearer token is signed by key {0:?}, which the cluster's issuer does not publish")]
    UnknownKey(String),
    #[error("the bearer token's signature does not verify")]
    Signature,
    #[error("the bearer token's issuer is {got:?}, not the cluster's {want:?}")]
    Issuer { got: String, want: String },
    #[error("the bearer token is not valid yet")]
    NotYet,
    #[error("the cluster's issuer keys cannot be read: {0}")]
    Keys(String),
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: String,
}

#[derive(Deserialize)]
struct Payload {
    #[serde(default)]
    iss: String,
    #[serde(default)]
    sub: String,
    nbf: Option<u64>,
}

#[derive(Deserialize)]
struct Jwks {
    keys: Vec<Jwk>,
}

#[derive(Deserialize)]
struct Jwk {
    kty: String,
    #[serde(default)]
    kid: String,
    #[serde(default)]
    crv: String,
    #[serde(default)]
    n: String,
    #[serde(default)]
    e: String,
    #[serde(default)]
    x: String,
    #[serde(default)]
    y: String,
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
}

fn b64(s: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|e| e.to_string())
}

impl KeySet {
    /// The issuer from the discovery document and the keys of the JWKS. Keys of another
    /// type or curve are skipped (a token signed by one is refused as by an unknown key).
    ///
    /// # Errors
    /// Either document is not what the issuer publishes.
    pub fn from_json(discovery: &str, jwks: &str) -> Result<KeySet, String> {
        let d: Discovery =
            serde_json::from_str(discovery).map_err(|e| format!("the discovery document: {e}"))?;
        let j: Jwks = serde_json::from_str(jwks).map_err(|e| format!("the JWKS: {e}"))?;
        let mut keys = BTreeMap::new();
        for k in j.keys {
            let key = match (k.kty.as_str(), k.crv.as_str()) {
                ("RSA", _) => Key::Rs256 {
                    n: b64(&k.n).map_err(|e| format!("key {:?}: n: {e}", k.kid))?,
                    e: b64(&k.e).map_err(|e| format!("key {:?}: e: {e}", k.kid))?,
                },
                ("EC", "P-256") => {
                    let mut point = vec![4u8];
                    point.extend(b64(&k.x).map_err(|e| format!("key {:?}: x: {e}", k.kid))?);
                    point.extend(b64(&k.y).map_err(|e| format!("key {:?}: y: {e}", k.kid))?);
                    Key::Es256 { point }
                }
                _ => continue,
            };
            keys.insert(k.kid, key);
        }
        Ok(KeySet {
            issuer: d.issuer,
            keys,
        })
    }

    /// The token's subject (`system:serviceaccount:<namespace>:<name>`) when it is shaped
    /// right ([`Claims::of`]), signed by one of the keys, and issued by the issuer.
    ///
    /// # Errors
    /// [`Refusal`]: the first check that failed.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<String, Refusal> {
        Claims::of(token, now)?;
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(super::Shape::NotJwt.into());
        };
        let not_jwt = |_| Refusal::Shape(super::Shape::NotJwt);
        let h: Header = serde_json::from_slice(&b64(header).map_err(not_jwt)?)
            .map_err(|_| Refusal::Shape(super::Shape::NotJwt))?;
        let p: Payload = serde_json::from_slice(&b64(payload).map_err(not_jwt)?)
            .map_err(|_| Refusal::Shape(super::Shape::NotJwt))?;
        let signature = b64(signature).map_err(not_jwt)?;
        let signed = &token[..header.len() + 1 + payload.len()];
        let key = self
            .keys
            .get(&h.kid)
            .ok_or_else(|| Refusal::UnknownKey(h.kid.clone()))?;
        let ok = match (h.alg.as_str(), key) {
            ("RS256", Key::Rs256 { n, e }) => RsaPublicKeyComponents { n, e }
                .verify(&RSA_PKCS1_2048_8192_SHA256, signed.as_bytes(), &signature)
                .is_ok(),
            ("ES256", Key::Es256 { point }) => {
                UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
                    .verify(signed.as_bytes(), &signature)
                    .is_ok()
            }
            _ => false,
        };
        if !ok {
            return Err(Refusal::Signature);
        }
        if p.iss != self.issuer {
            return Err(Refusal::Issuer {
                got: p.iss,
                want: self.issuer.clone(),
            });
        }
        let secs = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        // A minute of clock difference between the API server and the hub is tolerated.
        if p.nbf.is_some_and(|nbf| nbf > secs + 60) {
            return Err(Refusal::NotYet);
        }
        Ok(p.sub)
    }
}

/// The cluster issuer's keys, read when first needed and again when a token names a key id
/// not known (a rotation), at most once per [`REFETCH_GAP`].
pub struct IssuerKeys {
    client: kube::Client,
    state: tokio::sync::Mutex<(Option<KeySet>, Option<Instant>)>,
}

impl IssuerKeys {
    pub fn new(client: kube::Client) -> IssuerKeys {
        IssuerKeys {
            client,
            state: tokio::sync::Mutex::new((None, None)),
        }
    }

    /// See [`KeySet::verify`]; reads the keys when needed.
    ///
    /// # Errors
    /// [`Refusal`]; [`Refusal::Keys`] when the keys cannot be read.
    pub async fn verify(&self, token: &str) -> Result<String, Refusal> {
        let now = SystemTime::now();
        // Shape first: a bearer that could never pass costs nothing, not even the lock.
        Claims::of(token, now)?;
        let mut state = self.state.lock().await;
        if let Some(set) = &state.0 {
            match set.verify(token, now) {
                Err(Refusal::UnknownKey(_)) => {}
                other => return other,
            }
        }
        if let Some(at) = state.1
            && at.elapsed() < REFETCH_GAP
        {
            return match &state.0 {
                Some(set) => set.verify(token, now),
                None => Err(Refusal::Keys("read failed; retrying shortly".into())),
            };
        }
        state.1 = Some(Instant::now());
        let set = self.fetch().await.map_err(Refusal::Keys)?;
        tracing::info!(event = "issuer-keys-read", issuer = %set.issuer, keys = set.keys.len(),
            "read the cluster's ServiceAccount issuer keys");
        let verdict = set.verify(token, now);
        state.0 = Some(set);
        verdict
    }

    async fn fetch(&self) -> Result<KeySet, String> {
        let discovery = self.get("/.well-known/openid-configuration").await?;
        let jwks = self.get("/openid/v1/jwks").await?;
        KeySet::from_json(&discovery, &jwks)
    }

    async fn get(&self, path: &str) -> Result<String, String> {
        let req = http::Request::get(path)
            .body(Vec::new())
            .map_err(|e| e.to_string())?;
        self.client
            .request_text(req)
            .await
            .map_err(|e| format!("GET {path}: {e}"))
    }
}

/// Signs `claims` as an ES256 JWT with a key made here: for tests of the hub's and the
/// agents' side (the real API server signs RS256).
#[cfg(test)]
pub(crate) fn test_token(
    key: &ring::signature::EcdsaKeyPair,
    kid: &str,
    claims: &serde_json::Value,
) -> String {
    let e = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let header = e(serde_json::json!({"alg": "ES256", "kid": kid})
        .to_string()
        .as_bytes());
    let payload = e(claims.to_string().as_bytes());
    let signed = format!("{header}.{payload}");
    let rng = ring::rand::SystemRandom::new();
    let sig = key.sign(&rng, signed.as_bytes()).unwrap();
    format!("{signed}.{}", e(sig.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::AUDIENCE;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
    use serde_json::json;

    const ISSUER: &str = "https://oidc.eks.us-east-1.amazonaws.com/id/EXAMPLE";

    fn key() -> EcdsaKeyPair {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap()
    }

    fn jwks(key: &EcdsaKeyPair, kid: &str) -> String {
        let point = key.public_key().as_ref();
        let e = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        json!({"keys": [
            {"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
             "x": e(&point[1..33]), "y": e(&point[33..])},
            {"kty": "OKP", "crv": "Ed25519", "kid": "other", "x": "AAAA"},
        ]})
        .to_string()
    }

    fn claims(now: u64, aud: &str, iss: &str, life: u64) -> serde_json::Value {
        json!({"aud": [aud], "iss": iss, "sub": "system:serviceaccount:sgpath:sgpath",
               "iat": now, "nbf": now, "exp": now + life,
               "kubernetes.io": {"namespace": "sgpath", "serviceaccount": {"name": "sgpath"}}})
    }

    /// A token the issuer signed for the audience names its subject; one signed by
    /// another key, by an unknown key, for another audience or issuer, too long-lived, or
    /// with a byte changed is refused, each with its own reason.
    #[test]
    fn tokens_are_verified_by_the_issuers_published_keys() {
        let (good, evil) = (key(), key());
        let discovery = json!({"issuer": ISSUER, "jwks_uri": "https://x/openid/v1/jwks"});
        let set = KeySet::from_json(&discovery.to_string(), &jwks(&good, "k1")).unwrap();
        assert_eq!(set.keys.len(), 1, "the Ed25519 key is skipped");
        let now = SystemTime::now();
        let secs = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let ok = test_token(&good, "k1", &claims(secs, AUDIENCE, ISSUER, 600));
        assert_eq!(
            set.verify(&ok, now).unwrap(),
            "system:serviceaccount:sgpath:sgpath"
        );
        let forged = test_token(&evil, "k1", &claims(secs, AUDIENCE, ISSUER, 600));
        assert_eq!(set.verify(&forged, now), Err(Refusal::Signature));
        let unknown = test_token(&evil, "k9", &claims(secs, AUDIENCE, ISSUER, 600));
        assert_eq!(
            set.verify(&unknown, now),
            Err(Refusal::UnknownKey("k9".into()))
        );
        let api = test_token(
            &good,
            "k1",
            &claims(secs, "https://kubernetes.default.svc", ISSUER, 600),
        );
        assert!(matches!(
            set.verify(&api, now),
            Err(Refusal::Shape(super::super::Shape::Audience))
        ));
        let other = test_token(
            &good,
            "k1",
            &claims(secs, AUDIENCE, "https://elsewhere", 600),
        );
        assert!(matches!(
            set.verify(&other, now),
            Err(Refusal::Issuer { .. })
        ));
        let long = test_token(&good, "k1", &claims(secs, AUDIENCE, ISSUER, 3600));
        assert!(matches!(
            set.verify(&long, now),
            Err(Refusal::Shape(super::super::Shape::TooLong(_)))
        ));
        let future = test_token(&good, "k1", &{
            let mut c = claims(secs, AUDIENCE, ISSUER, 600);
            c["nbf"] = json!(secs + 300);
            c
        });
        assert_eq!(set.verify(&future, now), Err(Refusal::NotYet));
        let mut tampered = ok.clone().into_bytes();
        let i = ok.find('.').unwrap() + 5;
        tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
        assert!(
            set.verify(&String::from_utf8(tampered).unwrap(), now)
                .is_err()
        );
    }
}
