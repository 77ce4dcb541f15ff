//! AWS Signature Version 4 for the EC2 Query API calls, and the credentials it signs with.
//! Pure functions (the clock is a parameter): the HTTP side lives with the client.
//!
//! The algorithm is AWS's "Create a signed AWS API request" (IAM User Guide): a canonical
//! request, a string to sign over its SHA-256, and an HMAC-SHA256 key derived from the
//! secret, the date, the region and the service. HMAC and SHA-256 come from `ring`, already
//! built for rustls, rather than `aws-sigv4` and its runtime crates (NOTES-issue22.md has
//! the build-time figures behind that choice).

use std::{fmt, time::SystemTime};

use ring::{digest, hmac};

/// Credentials from the standard chain. `Debug` never prints the secret or the token.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    /// `AWS_SESSION_TOKEN` or the token of temporary credentials (IRSA, Pod Identity, an
    /// instance role), sent as `X-Amz-Security-Token`.
    pub session_token: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// A request to sign: everything the signature covers.
pub struct Request<'a> {
    pub method: &'a str,
    pub host: &'a str,
    /// The path, already URI-encoded (`/`).
    pub path: &'a str,
    /// The canonical query string (sorted, encoded), empty for a POST of a form.
    pub query: &'a str,
    /// Headers besides `host`, `x-amz-date` and `x-amz-security-token`, lower-case names.
    pub headers: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
}

/// The headers to add to the request: `X-Amz-Date`, `X-Amz-Security-Token` (temporary
/// credentials) and `Authorization`.
pub fn sign(
    req: &Request<'_>,
    creds: &Credentials,
    region: &str,
    service: &str,
    now: SystemTime,
) -> Vec<(&'static str, String)> {
    let amz_date = amz_date(now);
    let date = &amz_date[..8];
    let mut headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    headers.push(("host".into(), req.host.to_owned()));
    headers.push(("x-amz-date".into(), amz_date.clone()));
    if let Some(t) = &creds.session_token {
        headers.push(("x-amz-security-token".into(), t.clone()));
    }
    headers.sort();
    let signed: Vec<&str> = headers.iter().map(|(k, _)| k.as_str()).collect();
    let signed = signed.join(";");
    let canonical_headers: String = headers.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let canonical = format!(
        "{}\n{}\n{}\n{canonical_headers}\n{signed}\n{}",
        req.method,
        req.path,
        req.query,
        hex(digest::digest(&digest::SHA256, req.body).as_ref())
    );
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex(digest::digest(&digest::SHA256, canonical.as_bytes()).as_ref())
    );
    let mac = |key: &[u8], data: &str| {
        hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data.as_bytes())
    };
    let k_date = mac(format!("AWS4{}", creds.secret_access_key).as_bytes(), date);
    let k_region = mac(k_date.as_ref(), region);
    let k_service = mac(k_region.as_ref(), service);
    let k_signing = mac(k_service.as_ref(), "aws4_request");
    let signature = hex(mac(k_signing.as_ref(), &to_sign).as_ref());
    let mut out = vec![("X-Amz-Date", amz_date)];
    if let Some(t) = &creds.session_token {
        out.push(("X-Amz-Security-Token", t.clone()));
    }
    out.push((
        "Authorization",
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed}, Signature={signature}",
            creds.access_key_id
        ),
    ));
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `20150830T123600Z` (UTC).
pub fn amz_date(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Form-encodes a Query API call's parameters (RFC 3986 unreserved characters kept).
pub fn form(params: &[(&str, &str)]) -> String {
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    params
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    /// 2015-08-30T12:36:00Z, the time of AWS's SigV4 test suite.
    fn suite_time() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_440_938_160)
    }

    fn suite_creds() -> Credentials {
        Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
        }
    }

    #[test]
    fn amz_dates() {
        assert_eq!(amz_date(suite_time()), "20150830T123600Z");
        assert_eq!(amz_date(UNIX_EPOCH), "19700101T000000Z");
        // A leap day.
        assert_eq!(
            amz_date(UNIX_EPOCH + Duration::from_secs(1_709_208_000)),
            "20240229T120000Z"
        );
    }

    /// AWS's SigV4 test suite, `get-vanilla`.
    #[test]
    fn get_vanilla() {
        let req = Request {
            method: "GET",
            host: "example.amazonaws.com",
            path: "/",
            query: "",
            headers: &[],
            body: b"",
        };
        let h = sign(&req, &suite_creds(), "us-east-1", "service", suite_time());
        assert_eq!(
            h.last().unwrap().1,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }

    /// The suite's example session token (its `post-sts-token` vectors).
    const SUITE_TOKEN: &str = "AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpSPfIeoIYRqTflfKD8YUuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQwj2ICCR/oLxBA==";

    fn suite_authorization<'h>(headers: &'h [(&'static str, String)]) -> &'h str {
        &headers
            .iter()
            .find(|(k, _)| *k == "Authorization")
            .expect("an Authorization header")
            .1
    }

    /// AWS's suite, `post-x-www-form-urlencoded`: a POST whose form body is hashed into
    /// the signature (the shape of every EC2 and STS call sgpath makes).
    #[test]
    fn post_x_www_form_urlencoded() {
        let req = Request {
            method: "POST",
            host: "example.amazonaws.com",
            path: "/",
            query: "",
            headers: &[("Content-Type", "application/x-www-form-urlencoded")],
            body: b"Param1=value1",
        };
        let h = sign(&req, &suite_creds(), "us-east-1", "service", suite_time());
        assert_eq!(
            suite_authorization(&h),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date, \
             Signature=ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a"
        );
    }

    /// AWS's suite, `post-sts-token/post-sts-header-before`: temporary credentials, the
    /// session token sent as `X-Amz-Security-Token` and signed (as EC2 requires).
    #[test]
    fn post_sts_header_before() {
        let mut c = suite_creds();
        c.session_token = Some(SUITE_TOKEN.into());
        let req = Request {
            method: "POST",
            host: "example.amazonaws.com",
            path: "/",
            query: "",
            headers: &[],
            body: b"",
        };
        let h = sign(&req, &c, "us-east-1", "service", suite_time());
        assert_eq!(
            suite_authorization(&h),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date;x-amz-security-token, \
             Signature=85d96828115b5dc0cfc3bd16ad9e210dd772bbebba041836c64533a82be05ead"
        );
        assert!(h.contains(&("X-Amz-Security-Token", SUITE_TOKEN.to_owned())));
    }

    /// AWS's suite, `post-header-key-sort` (a header's name lower-cased and sorted among
    /// the signed ones) and `get-vanilla-query-order-key-case` (a canonical query).
    #[test]
    fn header_sort_and_query_order() {
        let req = Request {
            method: "POST",
            host: "example.amazonaws.com",
            path: "/",
            query: "",
            headers: &[("My-Header1", "value1")],
            body: b"",
        };
        let h = sign(&req, &suite_creds(), "us-east-1", "service", suite_time());
        assert!(
            suite_authorization(&h).ends_with(
                "SignedHeaders=host;my-header1;x-amz-date, \
                 Signature=c5410059b04c1ee005303aed430f6e6645f61f4dc9e1461ec8f8916fdf18852c"
            ),
            "{h:?}"
        );
        let req = Request {
            method: "GET",
            host: "example.amazonaws.com",
            path: "/",
            query: "Param1=value1&Param2=value2",
            headers: &[],
            body: b"",
        };
        let h = sign(&req, &suite_creds(), "us-east-1", "service", suite_time());
        assert!(
            suite_authorization(&h).ends_with(
                "Signature=b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"
            ),
            "{h:?}"
        );
    }

    #[test]
    fn session_token_is_signed_and_never_printed() {
        let mut c = suite_creds();
        c.session_token = Some("TOKEN-SECRET".into());
        let body = form(&[
            ("Action", "DescribeSecurityGroups"),
            ("Version", "2016-11-15"),
        ]);
        let req = Request {
            method: "POST",
            host: "ec2.us-east-1.amazonaws.com",
            path: "/",
            query: "",
            headers: &[(
                "content-type",
                "application/x-www-form-urlencoded; charset=utf-8",
            )],
            body: body.as_bytes(),
        };
        let h = sign(&req, &c, "us-east-1", "ec2", suite_time());
        assert_eq!(h[1], ("X-Amz-Security-Token", "TOKEN-SECRET".to_owned()));
        assert!(
            h[2].1
                .contains("SignedHeaders=content-type;host;x-amz-date;x-amz-security-token")
        );
        let printed = format!("{c:?}");
        assert!(
            !printed.contains("TOKEN-SECRET") && !printed.contains("wJalr"),
            "{printed}"
        );
    }

    #[test]
    fn form_encoding() {
        assert_eq!(
            form(&[
                ("Filter.1.Name", "addresses.private-ip-address"),
                ("X", "a b/c")
            ]),
            "Filter.1.Name=addresses.private-ip-address&X=a%20b%2Fc"
        );
    }
}
