//! Who may read the data endpoints of sgpath's servers (the agent's `/metrics`,
//! `/v1/report`, `/v1/trace`; the hub's): nobody checked (`--auth none`, loopback only),
//! one static bearer token (`--auth token`, `--token-file`, for a node outside a cluster), or
//! the cluster's own answer (`--auth kubernetes`), as controller-runtime's metrics
//! authentication filter and kube-rbac-proxy do it: the bearer token is verified with a
//! `TokenReview` (authentication.k8s.io/v1) for the audience [`AUDIENCE`] and the user it
//! names is allowed with a `SubjectAccessReview` (authorization.k8s.io/v1) on the request's
//! path (`nonResourceAttributes: {path, verb: get}`). Both answers are cached per (token,
//! path) for a while, so a scrape every 15 s costs the API server two reviews per TTL.
//!
//! Only short-lived tokens bound to `sgpath` pass: a token for the API server (a
//! kubeconfig's, a pod's default one) or a legacy Secret token, which never expires, is
//! refused. Fair under abuse, in this order, each step before the next costs anything:
//! 1. a bearer that is not shaped like a JWT, or whose (not yet verified) claims lack the
//!    `sgpath` audience, an expiry in the future, or a lifetime within [`MAX_LIFETIME`], is
//!    refused (401) without asking anyone ([`Claims::of`]);
//! 2. a cached answer is served;
//! 3. a miss is reviewed only if the review budget ([`REVIEWS_PER_SECOND`], burst
//!    [`REVIEW_BURST`]) and the [`REVIEWS_IN_FLIGHT`] slots allow; otherwise 503 with
//!    `Retry-After` at once, never a queue.
//!
//! After the TokenReview the claims are the API server's (it checked the signature), so the
//! audience and lifetime checks of step 1 then hold for real; the TokenReview's own
//! `status.audiences` must name `sgpath` too (an API server that ignores audiences is not
//! trusted).
//!
//! Tokens are never logged, and the cache holds their SHA-1, not the token itself.
//!
//! Side effects: `--auth kubernetes` POSTs reviews to the API server.

pub mod issuer;

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use base64::Engine as _;

use k8s_openapi::api::{
    authentication::v1::{TokenReview, TokenReviewSpec},
    authorization::v1::{NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec},
};
use kube::{Api, api::PostParams};
use tokio::sync::Semaphore;
use tracing::warn;

/// How long an allowed (token, path) is trusted without asking again (kube-rbac-proxy's
/// authorization cache keeps allowed answers 5 min, controller-runtime's client 1 min).
pub const ALLOWED_TTL: Duration = Duration::from_secs(60);
/// How long a refused (token, path) stays refused without asking again: short, so a
/// RoleBinding just created takes effect soon.
pub const REFUSED_TTL: Duration = Duration::from_secs(10);
/// Answers cached at most: a flood of made-up tokens evicts the oldest, never grows memory.
pub const CACHE_ENTRIES: usize = 4096;
/// Reviews in flight at once: a flood of made-up tokens cannot flood the API server.
pub const REVIEWS_IN_FLIGHT: usize = 4;
/// Reviews (each a TokenReview, and a SubjectAccessReview if the token is known) started
/// per second, sustained: a fleet's scrapers and the hub hit the cache; only new tokens
/// (one per client per 10 min) and new paths miss it.
pub const REVIEWS_PER_SECOND: f64 = 2.0;
/// Reviews that may start at once after a quiet spell (a Prometheus restart, the hub's
/// first round).
pub const REVIEW_BURST: f64 = 10.0;
/// What a throttled client is told to wait (`Retry-After`, seconds).
pub const RETRY_AFTER_SECS: u64 = 1;
/// The audience every token must be bound to.
pub const AUDIENCE: &str = "sgpath";
/// The longest lifetime (`exp - iat`) of a token accepted: projected ServiceAccount tokens
/// of 600 to 900 s (TokenRequest's minimum is 600).
pub const MAX_LIFETIME: Duration = Duration::from_secs(15 * 60);
/// A JWT longer than this is not a ServiceAccount token (they are about 1 KiB).
pub const MAX_TOKEN_BYTES: usize = 4096;
/// Time the API server has to answer a review.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);

/// The answer for one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// 401: no bearer token, or one the cluster (or `--token-file`) does not know.
    Unauthenticated(String),
    /// 403: a known user without `get` on the path.
    Forbidden(String),
    /// 503: the API server could not be asked (not cached: the next request asks again).
    Unavailable(String),
    /// 503 with `Retry-After: RETRY_AFTER_SECS`: the review budget is spent (not cached).
    Throttled,
}

/// How requests are checked.
pub enum Auth {
    Open,
    Token(String),
    Kubernetes(Reviewer),
}

impl Auth {
    /// The verdict for a request to `path` bearing `authorization` (the header's raw value).
    pub async fn check(&self, authorization: Option<&[u8]>, path: &str) -> Verdict {
        let bearer = authorization.and_then(|v| v.strip_prefix(b"Bearer "));
        match self {
            Auth::Open => Verdict::Allowed,
            Auth::Token(token) => match bearer {
                Some(got) if same(got, token.as_bytes()) => Verdict::Allowed,
                Some(_) => Verdict::Unauthenticated("the bearer token is not the agent's".into()),
                None => Verdict::Unauthenticated("a bearer token is required".into()),
            },
            Auth::Kubernetes(reviewer) => match bearer.map(std::str::from_utf8) {
                Some(Ok(token)) => match Claims::of(token.trim(), SystemTime::now()) {
                    Ok(claims) => reviewer.check(token.trim(), &claims, path).await,
                    Err(why) => Verdict::Unauthenticated(why.to_string()),
                },
                Some(_) => Verdict::Unauthenticated("the bearer token is not text".into()),
                None => Verdict::Unauthenticated("a bearer token is required".into()),
            },
        }
    }
}

/// Compared in time independent of where they differ.
fn same(got: &[u8], want: &[u8]) -> bool {
    got.len() == want.len() && got.iter().zip(want).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// Why a bearer is refused before any review.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Shape {
    #[error(
        "the bearer token is not a JWT (three base64url segments, at most {MAX_TOKEN_BYTES} bytes)"
    )]
    NotJwt,
    #[error(
        "the bearer token's audience is not {AUDIENCE:?} (ask for one with `kubectl create token --audience {AUDIENCE}` or a projected token)"
    )]
    Audience,
    #[error("the bearer token has no expiry or issue time (a legacy Secret token?): tokens must live at most {} s", MAX_LIFETIME.as_secs())]
    NoExpiry,
    #[error("the bearer token lives {0} s: tokens must live at most {max} s", max = MAX_LIFETIME.as_secs())]
    TooLong(u64),
    #[error("the bearer token has expired")]
    Expired,
}

/// What the agent reads of a token's JWT claims (`aud`, `exp`, `iat`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// Seconds since the epoch.
    pub expires: u64,
}

impl Claims {
    /// The claims of `token` if it is shaped like a ServiceAccount JWT bound to [`AUDIENCE`],
    /// not expired at `now` and living at most [`MAX_LIFETIME`]. Not verified: the
    /// TokenReview does that; this only spares it tokens that could never pass.
    ///
    /// # Errors
    /// [`Shape`]: which check failed.
    pub fn of(token: &str, now: SystemTime) -> Result<Claims, Shape> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Aud {
            One(String),
            Many(Vec<String>),
        }
        #[derive(serde::Deserialize)]
        struct Payload {
            aud: Option<Aud>,
            exp: Option<u64>,
            iat: Option<u64>,
        }
        let b64url = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        let parts: Vec<&str> = token.split('.').collect();
        if token.len() > MAX_TOKEN_BYTES || parts.len() != 3 || !parts.iter().all(|p| b64url(p)) {
            return Err(Shape::NotJwt);
        }
        let decode = |s: &str| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(s)
                .map_err(|_| Shape::NotJwt)
        };
        // The header must be a JSON object too (it names the signing algorithm).
        serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&decode(parts[0])?)
            .map_err(|_| Shape::NotJwt)?;
        let payload: Payload =
            serde_json::from_slice(&decode(parts[1])?).map_err(|_| Shape::NotJwt)?;
        let bound = match payload.aud {
            Some(Aud::One(a)) => a == AUDIENCE,
            Some(Aud::Many(a)) => a.iter().any(|a| a == AUDIENCE),
            None => false,
        };
        if !bound {
            return Err(Shape::Audience);
        }
        let (Some(exp), Some(iat)) = (payload.exp, payload.iat) else {
            return Err(Shape::NoExpiry);
        };
        let lifetime = exp.saturating_sub(iat);
        if lifetime > MAX_LIFETIME.as_secs() {
            return Err(Shape::TooLong(lifetime));
        }
        let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        if exp <= now {
            return Err(Shape::Expired);
        }
        Ok(Claims { expires: exp })
    }
}

/// A token bucket: `per_second` sustained, `burst` at once.
struct Budget {
    tokens: f64,
    at: Instant,
}

impl Budget {
    fn take(&mut self, now: Instant) -> bool {
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * REVIEWS_PER_SECOND;
        self.tokens = (self.tokens + refill).min(REVIEW_BURST);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Asks the API server, through `client`, and remembers its answers.
pub struct Reviewer {
    client: kube::Client,
    cache: Mutex<Cache>,
    in_flight: Semaphore,
    budget: Mutex<Budget>,
}

impl Reviewer {
    pub fn new(client: kube::Client) -> Reviewer {
        Reviewer {
            client,
            cache: Mutex::new(Cache::default()),
            in_flight: Semaphore::new(REVIEWS_IN_FLIGHT),
            budget: Mutex::new(Budget {
                tokens: REVIEW_BURST,
                at: Instant::now(),
            }),
        }
    }

    async fn check(&self, token: &str, claims: &Claims, path: &str) -> Verdict {
        let key = (
            sha1_smol::Sha1::from(token).digest().bytes(),
            path.to_owned(),
        );
        let cached = || {
            self.cache
                .lock()
                .expect("not poisoned")
                .get(&key, Instant::now())
        };
        if let Some(v) = cached() {
            return v;
        }
        // A miss: reviewed now or refused now, never queued.
        let Ok(_permit) = self.in_flight.try_acquire() else {
            return Verdict::Throttled;
        };
        if !self
            .budget
            .lock()
            .expect("not poisoned")
            .take(Instant::now())
        {
            return Verdict::Throttled;
        }
        let verdict = match tokio::time::timeout(REVIEW_TIMEOUT, self.review(token, path)).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                // kube's error names the resource and the API server's status, never the body.
                warn!(event = "auth-review-failed", error = %e, "the API server did not review a request");
                return Verdict::Unavailable(format!("cannot review the token: {e}"));
            }
            Err(_) => {
                warn!(
                    event = "auth-review-failed",
                    error = "timed out",
                    "the API server did not review a request"
                );
                return Verdict::Unavailable(
                    "cannot review the token: the API server did not answer in time".into(),
                );
            }
        };
        // An allowed answer never outlives the token.
        let left = Duration::from_secs(claims.expires).saturating_sub(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default(),
        );
        self.cache
            .lock()
            .expect("not poisoned")
            .put(key, verdict.clone(), Instant::now(), left);
        verdict
    }

    /// TokenReview, then SubjectAccessReview for `get` on `path`.
    async fn review(&self, token: &str, path: &str) -> Result<Verdict, kube::Error> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_owned(),
                audiences: Some(vec![AUDIENCE.to_owned()]),
            },
            ..Default::default()
        };
        let answer = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await?;
        let status = answer.status.unwrap_or_default();
        let audience_aware = status
            .audiences
            .as_ref()
            .is_some_and(|a| a.iter().any(|a| a == AUDIENCE));
        let user = match (status.authenticated, status.user) {
            (Some(true), Some(user)) if audience_aware => user,
            (Some(true), Some(_)) => {
                return Ok(Verdict::Unauthenticated(format!(
                    "the API server did not confirm the audience {AUDIENCE:?} of the bearer token"
                )));
            }
            _ => {
                return Ok(Verdict::Unauthenticated(format!(
                    "the API server does not know the bearer token for the audience {AUDIENCE:?}"
                )));
            }
        };
        let name = user.username.clone().unwrap_or_default();
        let sar = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username,
                groups: user.groups,
                uid: user.uid,
                extra: user.extra,
                non_resource_attributes: Some(NonResourceAttributes {
                    path: Some(path.to_owned()),
                    verb: Some("get".to_owned()),
                }),
                resource_attributes: None,
            },
            ..Default::default()
        };
        let answer = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &sar)
            .await?;
        Ok(match answer.status {
            Some(s) if s.allowed && s.denied != Some(true) => Verdict::Allowed,
            s => Verdict::Forbidden(format!(
                "user {name:?} may not get {path}{}",
                s.and_then(|s| s.reason)
                    .filter(|r| !r.is_empty())
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            )),
        })
    }
}

/// (SHA-1 of the token, path).
type Key = ([u8; 20], String);

/// The reviews' answers, each until its TTL; at most [`CACHE_ENTRIES`].
#[derive(Default)]
struct Cache {
    entries: HashMap<Key, (Verdict, Instant)>,
}

impl Cache {
    fn get(&mut self, key: &Key, now: Instant) -> Option<Verdict> {
        match self.entries.get(key) {
            Some((v, until)) if *until > now => Some(v.clone()),
            Some(_) => {
                self.entries.remove(key);
                None
            }
            None => None,
        }
    }

    /// Remembers `verdict` for its TTL, an allowed one at most the token's `left` life.
    fn put(&mut self, key: Key, verdict: Verdict, now: Instant, left: Duration) {
        let ttl = match verdict {
            Verdict::Allowed => ALLOWED_TTL.min(left),
            Verdict::Unavailable(_) | Verdict::Throttled => return,
            _ => REFUSED_TTL,
        };
        if self.entries.len() >= CACHE_ENTRIES && !self.entries.contains_key(&key) {
            self.entries.retain(|_, (_, until)| *until > now);
            // Still full of live answers: the one closest to its end goes.
            if self.entries.len() >= CACHE_ENTRIES
                && let Some(k) = self
                    .entries
                    .iter()
                    .min_by_key(|(_, (_, until))| *until)
                    .map(|(k, _)| k.clone())
            {
                self.entries.remove(&k);
            }
        }
        self.entries.insert(key, (verdict, now + ttl));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: usize) -> Key {
        (
            sha1_smol::Sha1::from(i.to_string()).digest().bytes(),
            "/metrics".into(),
        )
    }

    #[test]
    fn the_review_cache_expires_and_stays_bounded() {
        let mut c = Cache::default();
        let t0 = Instant::now();
        let life = Duration::from_secs(600);
        c.put(key(0), Verdict::Allowed, t0, life);
        c.put(key(1), Verdict::Forbidden("no".into()), t0, life);
        c.put(key(2), Verdict::Unavailable("down".into()), t0, life);
        c.put(key(3), Verdict::Throttled, t0, life);
        c.put(key(4), Verdict::Allowed, t0, Duration::from_secs(5));
        assert_eq!(c.get(&key(0), t0), Some(Verdict::Allowed));
        assert!(
            c.get(&key(2), t0).is_none(),
            "an API server error is not remembered"
        );
        assert!(
            c.get(&key(3), t0).is_none(),
            "a throttled miss is not remembered"
        );
        assert!(
            c.get(&key(4), t0 + Duration::from_secs(6)).is_none(),
            "an allowed answer outlived its token"
        );
        let later = t0 + REFUSED_TTL + Duration::from_millis(1);
        assert!(c.get(&key(1), later).is_none(), "a refusal is asked again");
        assert_eq!(c.get(&key(0), later), Some(Verdict::Allowed));
        assert!(c.get(&key(0), t0 + ALLOWED_TTL).is_none());
        for i in 0..CACHE_ENTRIES * 2 {
            c.put(key(i), Verdict::Allowed, t0, life);
        }
        assert_eq!(c.entries.len(), CACHE_ENTRIES);
    }

    fn jwt(header: &str, payload: &str) -> String {
        let e = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.c2lnbmF0dXJl", e(header), e(payload))
    }

    #[test]
    fn only_short_lived_sgpath_jwts_are_worth_a_review() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let h = r#"{"alg":"RS256","kid":"k"}"#;
        let ok = |aud: &str| {
            jwt(
                h,
                &format!(
                    r#"{{"aud":{aud},"iat":999900,"exp":1000500,"sub":"system:serviceaccount:a:b"}}"#
                ),
            )
        };
        assert_eq!(
            Claims::of(&ok(r#"["sgpath"]"#), now),
            Ok(Claims { expires: 1_000_500 })
        );
        assert!(Claims::of(&ok(r#""sgpath""#), now).is_ok());
        assert!(Claims::of(&ok(r#"["https://kubernetes.default.svc","sgpath"]"#), now).is_ok());
        assert_eq!(
            Claims::of(&ok(r#"["https://kubernetes.default.svc"]"#), now),
            Err(Shape::Audience)
        );
        let cases = [
            ("s3cret-token".to_owned(), Shape::NotJwt),
            ("a.b".to_owned(), Shape::NotJwt),
            ("a..c".to_owned(), Shape::NotJwt),
            ("a.b.c.d".to_owned(), Shape::NotJwt),
            ("eyJ+.eyJ/.c2ln".to_owned(), Shape::NotJwt),
            (format!("{}.c2ln", "QUFB.".repeat(1000)), Shape::NotJwt),
            // Three base64url segments that are not JSON.
            ("QUFB.QUFB.QUFB".to_owned(), Shape::NotJwt),
            (jwt(h, r#"{"aud":"sgpath"}"#), Shape::NoExpiry),
            (
                jwt(h, r#"{"aud":"sgpath","iat":999000,"exp":1003000}"#),
                Shape::TooLong(4000),
            ),
            (
                jwt(h, r#"{"aud":"sgpath","iat":999000,"exp":999600}"#),
                Shape::Expired,
            ),
        ];
        for (token, want) in cases {
            assert_eq!(Claims::of(&token, now), Err(want), "{token}");
        }
    }

    #[test]
    fn the_review_budget_refills_at_its_rate() {
        let t0 = Instant::now();
        let mut b = Budget {
            tokens: REVIEW_BURST,
            at: t0,
        };
        let burst = (0..100).filter(|_| b.take(t0)).count();
        assert_eq!(burst, REVIEW_BURST as usize);
        let later = (0..100)
            .filter(|_| b.take(t0 + Duration::from_secs(5)))
            .count();
        assert_eq!(later, (5.0 * REVIEWS_PER_SECOND) as usize);
    }

    #[tokio::test]
    async fn a_static_token_must_match_exactly() {
        let auth = Auth::Token("s3cret".into());
        assert_eq!(
            auth.check(Some(b"Bearer s3cret"), "/metrics").await,
            Verdict::Allowed
        );
        for bad in [
            &b"Bearer s3creT"[..],
            b"s3cret",
            b"Bearer s3cret2",
            b"Bearer ",
        ] {
            assert!(matches!(
                auth.check(Some(bad), "/metrics").await,
                Verdict::Unauthenticated(_)
            ));
        }
        assert!(matches!(
            auth.check(None, "/metrics").await,
            Verdict::Unauthenticated(_)
        ));
        assert_eq!(Auth::Open.check(None, "/v1/report").await, Verdict::Allowed);
    }
}
