//! Who may read the agent's data endpoints (`/metrics`, `/v1/report`, `/v1/trace`): nobody
//! checked (`--auth none`), one static bearer token (`--auth token`, `--token-file`, for a
//! node outside a cluster), or the cluster's own answer (`--auth kubernetes`), as
//! controller-runtime's metrics authentication filter and kube-rbac-proxy do it: the bearer
//! token is verified with a `TokenReview` (authentication.k8s.io/v1) and the user it names
//! is allowed with a `SubjectAccessReview` (authorization.k8s.io/v1) on the request's path
//! (`nonResourceAttributes: {path, verb: get}`). Both answers are cached per (token, path)
//! for a while, so a scrape every 15 s costs the API server two reviews per TTL.
//!
//! Tokens are never logged, and the cache holds their SHA-1, not the token itself.
//!
//! Side effects: `--auth kubernetes` POSTs reviews to the API server.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

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
const REVIEWS_IN_FLIGHT: usize = 4;
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
                Some(Ok(token)) if !token.trim().is_empty() => {
                    reviewer.check(token.trim(), path).await
                }
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

/// Asks the API server, through `client`, and remembers its answers.
pub struct Reviewer {
    client: kube::Client,
    cache: Mutex<Cache>,
    in_flight: Semaphore,
}

impl Reviewer {
    pub fn new(client: kube::Client) -> Reviewer {
        Reviewer {
            client,
            cache: Mutex::new(Cache::default()),
            in_flight: Semaphore::new(REVIEWS_IN_FLIGHT),
        }
    }

    async fn check(&self, token: &str, path: &str) -> Verdict {
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
        let Ok(_permit) = self.in_flight.acquire().await else {
            return Verdict::Unavailable("the agent is stopping".into());
        };
        // Another request may have asked while this one waited.
        if let Some(v) = cached() {
            return v;
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
        self.cache
            .lock()
            .expect("not poisoned")
            .put(key, verdict.clone(), Instant::now());
        verdict
    }

    /// TokenReview, then SubjectAccessReview for `get` on `path`.
    async fn review(&self, token: &str, path: &str) -> Result<Verdict, kube::Error> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_owned(),
                audiences: None,
            },
            ..Default::default()
        };
        let answer = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await?;
        let status = answer.status.unwrap_or_default();
        let user = match (status.authenticated, status.user) {
            (Some(true), Some(user)) => user,
            _ => {
                return Ok(Verdict::Unauthenticated(
                    "the API server does not know the bearer token".into(),
                ));
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

    fn put(&mut self, key: Key, verdict: Verdict, now: Instant) {
        let ttl = match verdict {
            Verdict::Allowed => ALLOWED_TTL,
            Verdict::Unavailable(_) => return,
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
        c.put(key(0), Verdict::Allowed, t0);
        c.put(key(1), Verdict::Forbidden("no".into()), t0);
        c.put(key(2), Verdict::Unavailable("down".into()), t0);
        assert_eq!(c.get(&key(0), t0), Some(Verdict::Allowed));
        assert!(
            c.get(&key(2), t0).is_none(),
            "an API server error is not remembered"
        );
        let later = t0 + REFUSED_TTL + Duration::from_millis(1);
        assert!(c.get(&key(1), later).is_none(), "a refusal is asked again");
        assert_eq!(c.get(&key(0), later), Some(Verdict::Allowed));
        assert!(c.get(&key(0), t0 + ALLOWED_TTL).is_none());
        for i in 0..CACHE_ENTRIES * 2 {
            c.put(key(i), Verdict::Allowed, t0);
        }
        assert_eq!(c.entries.len(), CACHE_ENTRIES);
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
