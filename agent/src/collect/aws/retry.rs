//! One retry policy for every AWS call sgpath makes: EC2, STS (`AssumeRoleWithWebIdentity`
//! for IRSA), instance metadata and the EKS Pod Identity agent. A call is tried again, after
//! a jittered exponential wait ([`Backoff`]), when it did not get an answer (a refused or
//! reset connection, no answer within the request timeout) or got a transient one: HTTP
//! 429 or 5xx, or an error document whose code says throttled or failed inside AWS
//! (`Throttling`, `RequestLimitExceeded`, `InternalError`, `Unavailable`...). Anything
//! else (a denial, a missing group, a 404 from metadata) is final at once.
//!
//! Also the error document itself: AWS's Query APIs (EC2, STS) answer faults as XML with a
//! `<Code>` and a `<Message>`, which errors quote.
//!
//! Side effects: none but sleeping on tokio's clock.

use std::time::{Duration, SystemTime};

use super::{AwsError, budget::Backoff};

/// Tries per call: the first and 4 retries.
pub const ATTEMPTS: u32 = 5;
/// The waits between them: about 0.25, 0.5, 1 and 2 s (half of each fixed, half random).
pub const BACKOFF: Backoff = Backoff {
    base: Duration::from_millis(250),
    cap: Duration::from_secs(20),
};

/// Error codes AWS documents as throttling or its own transient failure (the SDKs' retry
/// classifiers: throttling errors and transient errors).
const TRANSIENT_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "RequestThrottled",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "SlowDown",
    "PriorRequestNotComplete",
    "EC2ThrottledException",
    "BandwidthLimitExceeded",
    "InternalError",
    "InternalFailure",
    "InternalServerError",
    "ServiceUnavailable",
    "Unavailable",
    "RequestTimeout",
    "RequestTimeoutException",
    // STS: the identity provider (EKS's OIDC issuer) did not answer STS in time.
    "IDPCommunicationError",
];

/// Codes of a request signed with a clock too far from AWS's: re-signed with the server's
/// `Date` once, not backed off.
const SKEW_CODES: &[&str] = &[
    "RequestTimeTooSkewed",
    "RequestExpired",
    "RequestInTheFuture",
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
    "AuthFailure",
];

/// Whether AWS's error `code` is throttling or a transient failure.
pub fn is_transient_code(code: &str) -> bool {
    TRANSIENT_CODES.contains(&code)
}

/// Whether AWS's error `code` may mean the request's time was too far from AWS's.
pub fn is_skew_code(code: &str) -> bool {
    SKEW_CODES.contains(&code)
}

/// An HTTP answer: status, body, and the server's `Date` when it sent one.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub body: String,
    pub date: Option<SystemTime>,
}

impl Answer {
    /// The code and message of AWS's XML error document in the body: EC2's
    /// `<Response><Errors><Error>` or STS's `<ErrorResponse><Error>`.
    pub fn error(&self) -> Option<(String, String)> {
        aws_error(&self.body)
    }

    /// Whether this answer is worth trying again.
    pub fn is_transient(&self) -> bool {
        self.status == 429
            || self.status >= 500
            || self
                .error()
                .is_some_and(|(code, _)| is_transient_code(&code))
    }
}

/// The `<Code>` and `<Message>` of the first `<Error>` in an AWS Query API error document.
pub fn aws_error(body: &str) -> Option<(String, String)> {
    let doc = roxmltree::Document::parse(body).ok()?;
    let error = doc
        .descendants()
        .find(|n| n.is_element() && n.tag_name().name() == "Error")?;
    let text = |name: &str| {
        error
            .children()
            .find(|c| c.is_element() && c.tag_name().name() == name)
            .and_then(|c| c.text())
            .map(|t| t.trim().to_owned())
    };
    Some((text("Code")?, text("Message").unwrap_or_default()))
}

/// The tries of one call. After each, [`Attempts::after`] says whether it is final, and
/// waits before the next when it is not.
#[derive(Debug)]
pub struct Attempts {
    /// What is being called, for the log (`sts AssumeRoleWithWebIdentity`).
    what: String,
    done: u32,
    limit: u32,
    backoff: Backoff,
}

impl Attempts {
    pub fn new(what: impl Into<String>) -> Attempts {
        Attempts {
            what: what.into(),
            done: 0,
            limit: ATTEMPTS,
            backoff: BACKOFF,
        }
    }

    /// Tries made so far.
    pub fn made(&self) -> u32 {
        self.done
    }

    /// Judges one try: `Ok(Some(answer))` when it is final (a success, a fault that
    /// another try would not mend, or the last try's transient answer, for the caller to
    /// quote); `Err` when the last try got no answer; `Ok(None)` after waiting for the next.
    ///
    /// # Errors
    /// The last try's [`AwsError`] (no answer: connection or timeout).
    pub async fn after(
        &mut self,
        result: Result<Answer, AwsError>,
    ) -> Result<Option<Answer>, AwsError> {
        self.done += 1;
        let last = self.done >= self.limit;
        let error = match result {
            Ok(a) if last || !a.is_transient() => return Ok(Some(a)),
            Ok(a) => match a.error() {
                Some((code, message)) => format!("HTTP {}: {code}: {message}", a.status),
                None => format!("HTTP {}", a.status),
            },
            // No answer: a refused or reset connection, or the timeout.
            Err(e @ AwsError::Http { .. }) if !last => e.to_string(),
            Err(e) => return Err(e),
        };
        let wait = self.backoff.wait(self.done - 1);
        tracing::debug!(event = "aws-retry", call = %self.what, attempt = self.done, error,
            wait_ms = wait.as_millis() as u64, "AWS call failed; backing off");
        tokio::time::sleep(wait).await;
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str) -> Answer {
        Answer {
            status,
            body: body.to_owned(),
            date: None,
        }
    }

    #[test]
    fn error_documents_of_ec2_and_sts() {
        let ec2 = "<Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>Request limit exceeded.</Message></Error></Errors><RequestID>r</RequestID></Response>";
        assert_eq!(
            aws_error(ec2),
            Some((
                "RequestLimitExceeded".into(),
                "Request limit exceeded.".into()
            ))
        );
        let sts = r#"<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type><Code>InvalidIdentityToken</Code><Message>No OpenIDConnect provider found in your account for https://oidc.eks.us-east-1.amazonaws.com/id/X</Message></Error><RequestId>r</RequestId></ErrorResponse>"#;
        let (code, message) = aws_error(sts).unwrap();
        assert_eq!(code, "InvalidIdentityToken");
        assert!(message.starts_with("No OpenIDConnect provider"));
        assert_eq!(aws_error("{\"message\":\"no\"}"), None);
        assert_eq!(aws_error("<ok/>"), None);
    }

    #[test]
    fn which_answers_are_transient() {
        assert!(answer(503, "").is_transient());
        assert!(answer(500, "<html/>").is_transient());
        assert!(answer(429, "").is_transient());
        // EC2 throttles with 503 and the code; STS with 400 and `Throttling`.
        assert!(answer(400, "<ErrorResponse><Error><Code>Throttling</Code><Message>Rate exceeded</Message></Error></ErrorResponse>").is_transient());
        assert!(
            answer(
                400,
                "<ErrorResponse><Error><Code>IDPCommunicationError</Code></Error></ErrorResponse>"
            )
            .is_transient()
        );
        assert!(!answer(403, "<Response><Errors><Error><Code>UnauthorizedOperation</Code></Error></Errors></Response>").is_transient());
        assert!(!answer(404, "").is_transient());
        assert!(!answer(200, "<ok/>").is_transient());
    }

    /// Transient answers are retried with growing waits up to the limit, and the last
    /// one is handed back to be quoted; a final answer stops at once.
    #[tokio::test(start_paused = true)]
    async fn tries_until_final_or_the_limit() {
        let start = tokio::time::Instant::now();
        let mut a = Attempts::new("test");
        let mut tries = 0;
        let last = loop {
            tries += 1;
            if let Some(answer) = a.after(Ok(answer(503, ""))).await.unwrap() {
                break answer;
            }
        };
        assert_eq!((tries, last.status), (ATTEMPTS, 503));
        // Four waits: half of 250 + 500 + 1000 + 2000 ms at least, all of it at most.
        let waited = start.elapsed();
        assert!(
            (Duration::from_millis(1875)..=Duration::from_millis(3750)).contains(&waited),
            "{waited:?}"
        );
        let mut a = Attempts::new("test");
        assert_eq!(
            a.after(Ok(answer(403, ""))).await.unwrap().unwrap().status,
            403
        );
        assert_eq!(a.made(), 1);
        // No answer at all: retried, and the last failure is the error.
        let mut a = Attempts::new("test");
        let gone = || AwsError::Http {
            url: "http://127.0.0.1:9/".into(),
            message: "connection refused".into(),
        };
        for _ in 1..ATTEMPTS {
            assert!(a.after(Err(gone())).await.unwrap().is_none());
        }
        let e = a.after(Err(gone())).await.unwrap_err();
        assert_eq!(e.to_string(), "http://127.0.0.1:9/: connection refused");
    }
}
