//! Amazon ECR pull credentials: the server assumes the organization's role with STS
//! `AssumeRole` (external id = the organization id, session `cove-<orgId>-pull`), signed with
//! its own AWS credentials, then calls ECR `GetAuthorizationToken` with the temporary
//! credentials. The token (`AWS:<password>` in base64) is cached until five minutes before
//! it expires.
//!
//! The identity those credentials belong to (STS `GetCallerIdentity`, cached ten minutes) is
//! the "broker" that organizations name as the Principal of their role's trust policy
//! ([`EcrAuth::broker_identity`]).
//!
//! Requests are signed with SigV4 ([`sign`]), reusing the canonicalization of
//! [`crate::s3::sigv4`]. Both endpoints are configurable (`--sts-endpoint`, `--ecr-endpoint`)
//! so that tests can use a local emulator; by default they are the AWS regional endpoints of
//! the registry's region (and the global STS endpoint for `GetCallerIdentity`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use cove_image::Credentials;
use cove_types::ErrorKind;
use sha2::{Digest as _, Sha256};

use crate::s3::sigv4;

/// Tokens are renewed this long before AWS says they expire.
const REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);
/// Lifetime asked for the assumed role's credentials.
const ROLE_SESSION_SECONDS: u32 = 900;
const ECR_TARGET: &str = "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken";
/// How long the server's own identity is remembered (it only changes with its credentials).
const BROKER_CACHE: Duration = Duration::from_secs(10 * 60);
/// STS's global endpoint, and the region its requests are signed for.
const GLOBAL_STS: (&str, &str) = ("https://sts.amazonaws.com", "us-east-1");
/// What to set when the server has no AWS credentials.
const SET_SERVER_CREDENTIALS: &str = "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary ones) in the server's environment";

/// AWS credentials (the server's own, or a role's temporary ones).
#[derive(Clone)]
pub struct AwsCredentials {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// Session token of temporary credentials.
    pub session_token: Option<String>,
}

impl std::fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("session_token", &self.session_token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl AwsCredentials {
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and (optional) `AWS_SESSION_TOKEN`.
    pub fn from_env() -> Option<Self> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        Some(AwsCredentials {
            access_key_id: var("AWS_ACCESS_KEY_ID")?,
            secret_access_key: var("AWS_SECRET_ACCESS_KEY")?,
            session_token: var("AWS_SESSION_TOKEN"),
        })
    }
}

/// Where STS and ECR are reached; `None` means the AWS regional endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AwsEndpoints {
    /// STS base URL, e.g. `http://127.0.0.1:5000`.
    pub sts: Option<String>,
    /// ECR API base URL.
    pub ecr: Option<String>,
}

/// An ECR registry host, `<account>.dkr.ecr.<region>.amazonaws.com`, taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EcrHost {
    /// 12-digit account id.
    pub account: String,
    /// Region, e.g. `eu-west-1`.
    pub region: String,
    /// `amazonaws.com` or `amazonaws.com.cn`.
    pub domain: String,
}

impl EcrHost {
    /// Parses a registry host (no scheme, no path); `None` when it is not an ECR host.
    pub fn parse(host: &str) -> Option<Self> {
        let mut parts = host.splitn(5, '.');
        let account = parts.next()?;
        let (dkr, ecr, region, domain) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let account_ok = account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit());
        let region_ok =
            !region.is_empty() && region.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        let domain_ok = domain == "amazonaws.com" || domain == "amazonaws.com.cn";
        (account_ok && dkr == "dkr" && (ecr == "ecr" || ecr == "ecr-fips") && region_ok && domain_ok).then(|| EcrHost {
            account: account.to_string(),
            region: region.to_string(),
            domain: domain.to_string(),
        })
    }
}

/// Whether `arn` looks like an IAM role ARN (`arn:aws:iam::123456789012:role/name`).
pub fn is_role_arn(arn: &str) -> bool {
    let mut p = arn.splitn(6, ':');
    let (Some("arn"), Some(partition), Some("iam"), Some(""), Some(account), Some(resource)) =
        (p.next(), p.next(), p.next(), p.next(), p.next(), p.next())
    else {
        return false;
    };
    partition.starts_with("aws")
        && account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && resource.strip_prefix("role/").is_some_and(|n| !n.is_empty() && !n.contains(char::is_whitespace))
}

/// A failed ECR credential exchange.
#[derive(Debug, thiserror::Error)]
pub enum EcrError {
    /// The server has no AWS credentials of its own to assume the role with.
    #[error("the server has no AWS credentials to assume {role_arn}: {SET_SERVER_CREDENTIALS}")]
    NoServerCredentials {
        /// The role.
        role_arn: String,
    },
    /// The server has no AWS credentials, so no identity that roles could trust.
    #[error(
        "the server has no AWS credentials, so there is no identity for a role to trust: {SET_SERVER_CREDENTIALS}, then restart it"
    )]
    NoBrokerCredentials,
    /// The registry URL is not an ECR host.
    #[error("{url} is not an ECR registry host (<account>.dkr.ecr.<region>.amazonaws.com)")]
    NotEcr {
        /// The URL.
        url: String,
    },
    /// The request did not get an answer.
    #[error("{operation} at {endpoint}: {reason}")]
    Request {
        /// `sts:AssumeRole`, `sts:GetCallerIdentity` or `ecr:GetAuthorizationToken`.
        operation: &'static str,
        /// Where.
        endpoint: String,
        /// The transport error.
        reason: String,
    },
    /// AWS answered with an error.
    #[error("{operation} at {endpoint} was refused ({status}: {message})")]
    Refused {
        /// The operation.
        operation: &'static str,
        /// Where.
        endpoint: String,
        /// HTTP status.
        status: u16,
        /// AWS's error code and message.
        message: String,
    },
    /// The answer could not be understood.
    #[error("{operation} at {endpoint} answered something unexpected: {why}")]
    BadResponse {
        /// The operation.
        operation: &'static str,
        /// Where.
        endpoint: String,
        /// What is missing or malformed.
        why: String,
    },
}

impl EcrError {
    /// The error class.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::NoServerCredentials { .. } | Self::NoBrokerCredentials => ErrorKind::FailedPrecondition,
            Self::NotEcr { .. } => ErrorKind::InvalidArgument,
            Self::Request { .. } => ErrorKind::Unavailable,
            Self::Refused { status, .. } if *status == 401 || *status == 403 => ErrorKind::Unauthenticated,
            Self::Refused { .. } | Self::BadResponse { .. } => ErrorKind::Unavailable,
        }
    }
}

#[derive(Clone)]
struct CachedToken {
    creds: Credentials,
    refresh_at: SystemTime,
}

/// The IAM identity of the server's AWS credentials (STS `GetCallerIdentity`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerIdentity {
    /// `arn:aws:iam::<account>:user/<name>`, or an assumed role's session ARN.
    pub arn: String,
    /// The 12-digit account id.
    pub account: String,
}

struct CachedBroker {
    /// The access key the identity was asked with: other credentials ask again.
    access_key_id: String,
    identity: BrokerIdentity,
    at: Instant,
}

/// Gets (and caches) ECR pull credentials by assuming organizations' roles.
pub struct EcrAuth {
    http: reqwest::Client,
    endpoints: AwsEndpoints,
    /// (org id, role ARN, registry host) → token.
    cache: Mutex<HashMap<(String, String, String), CachedToken>>,
    broker: Mutex<Option<CachedBroker>>,
}

impl std::fmt::Debug for EcrAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EcrAuth").field("endpoints", &self.endpoints).finish_non_exhaustive()
    }
}

impl EcrAuth {
    /// A client for the given endpoints.
    pub fn new(endpoints: AwsEndpoints) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .user_agent(concat!("cove/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("the TLS backend is compiled in, so building a client cannot fail");
        EcrAuth { http, endpoints, cache: Mutex::new(HashMap::new()), broker: Mutex::new(None) }
    }

    /// The IAM identity of the server's own AWS credentials: what an organization's role must
    /// trust. Asked of STS `GetCallerIdentity` (at `--sts-endpoint`, else the global endpoint)
    /// and remembered for ten minutes.
    pub async fn broker_identity(&self) -> Result<BrokerIdentity, EcrError> {
        let server = AwsCredentials::from_env().ok_or(EcrError::NoBrokerCredentials)?;
        self.broker_identity_as(&server).await
    }

    async fn broker_identity_as(&self, server: &AwsCredentials) -> Result<BrokerIdentity, EcrError> {
        const OP: &str = "sts:GetCallerIdentity";
        if let Some(c) = self.broker.lock().expect("broker cache lock is never poisoned").as_ref()
            && c.access_key_id == server.access_key_id
            && c.at.elapsed() < BROKER_CACHE
        {
            return Ok(c.identity.clone());
        }
        let (global, region) = GLOBAL_STS;
        let endpoint = self.endpoints.sts.clone().unwrap_or_else(|| global.to_string());
        let text = self
            .post(
                OP,
                &endpoint,
                region,
                "sts",
                server,
                "application/x-www-form-urlencoded; charset=utf-8",
                None,
                caller_identity_form(),
            )
            .await?;
        let identity = parse_caller_identity(&text).map_err(|why| EcrError::BadResponse {
            operation: OP,
            endpoint: endpoint.clone(),
            why: why.to_string(),
        })?;
        tracing::info!(arn = %identity.arn, "the server's AWS identity (the ECR broker)");
        *self.broker.lock().expect("broker cache lock is never poisoned") = Some(CachedBroker {
            access_key_id: server.access_key_id.clone(),
            identity: identity.clone(),
            at: Instant::now(),
        });
        Ok(identity)
    }

    /// Basic-auth credentials for pulling from `registry_host` as `role_arn` on behalf of
    /// `org_id`: cached, or fresh from STS and ECR.
    #[tracing::instrument(skip(self), fields(registry = %registry_host))]
    pub async fn credentials(
        &self,
        org_id: &str,
        role_arn: &str,
        registry_host: &str,
    ) -> Result<Credentials, EcrError> {
        let key = (org_id.to_string(), role_arn.to_string(), registry_host.to_string());
        if let Some(t) = self.cache.lock().expect("token cache lock is never poisoned").get(&key)
            && SystemTime::now() < t.refresh_at
        {
            return Ok(t.creds.clone());
        }
        let host = EcrHost::parse(registry_host).ok_or_else(|| EcrError::NotEcr { url: registry_host.to_string() })?;
        let server = AwsCredentials::from_env()
            .ok_or_else(|| EcrError::NoServerCredentials { role_arn: role_arn.to_string() })?;
        let role = self.assume_role(&host, &server, org_id, role_arn).await?;
        let (creds, expires_at) = self.authorization_token(&host, &role).await?;
        let refresh_at = expires_at.checked_sub(REFRESH_MARGIN).unwrap_or(SystemTime::UNIX_EPOCH);
        tracing::info!(role_arn, org_id, "obtained an ECR authorization token");
        self.cache
            .lock()
            .expect("token cache lock is never poisoned")
            .insert(key, CachedToken { creds: creds.clone(), refresh_at });
        Ok(creds)
    }

    async fn assume_role(
        &self,
        host: &EcrHost,
        server: &AwsCredentials,
        org_id: &str,
        role_arn: &str,
    ) -> Result<AwsCredentials, EcrError> {
        const OP: &str = "sts:AssumeRole";
        let endpoint =
            self.endpoints.sts.clone().unwrap_or_else(|| format!("https://sts.{}.{}", host.region, host.domain));
        let session = session_name(org_id);
        let body = form(&[
            ("Action", "AssumeRole"),
            ("Version", "2011-06-15"),
            ("RoleArn", role_arn),
            ("RoleSessionName", &session),
            ("ExternalId", org_id),
            ("DurationSeconds", &ROLE_SESSION_SECONDS.to_string()),
        ]);
        let text = self
            .post(
                OP,
                &endpoint,
                &host.region,
                "sts",
                server,
                "application/x-www-form-urlencoded; charset=utf-8",
                None,
                body,
            )
            .await?;
        let bad = |why: &str| EcrError::BadResponse { operation: OP, endpoint: endpoint.clone(), why: why.to_string() };
        Ok(AwsCredentials {
            access_key_id: xml_text(&text, "AccessKeyId").ok_or_else(|| bad("no AccessKeyId"))?,
            secret_access_key: xml_text(&text, "SecretAccessKey").ok_or_else(|| bad("no SecretAccessKey"))?,
            session_token: Some(xml_text(&text, "SessionToken").ok_or_else(|| bad("no SessionToken"))?),
        })
    }

    async fn authorization_token(
        &self,
        host: &EcrHost,
        role: &AwsCredentials,
    ) -> Result<(Credentials, SystemTime), EcrError> {
        const OP: &str = "ecr:GetAuthorizationToken";
        let endpoint =
            self.endpoints.ecr.clone().unwrap_or_else(|| format!("https://api.ecr.{}.{}", host.region, host.domain));
        let text = self
            .post(OP, &endpoint, &host.region, "ecr", role, "application/x-amz-json-1.1", Some(ECR_TARGET), "{}".into())
            .await?;
        let bad = |why: &str| EcrError::BadResponse { operation: OP, endpoint: endpoint.clone(), why: why.to_string() };
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|_| bad("not JSON"))?;
        let data = v.get("authorizationData").and_then(|d| d.get(0)).ok_or_else(|| bad("no authorizationData"))?;
        let token =
            data.get("authorizationToken").and_then(|t| t.as_str()).ok_or_else(|| bad("no authorizationToken"))?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(token.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| bad("authorizationToken is not base64 text"))?;
        let (username, password) =
            decoded.split_once(':').ok_or_else(|| bad("authorizationToken is not USER:PASSWORD"))?;
        let expires_at = match data.get("expiresAt") {
            Some(serde_json::Value::Number(n)) => n
                .as_f64()
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs_f64(s)),
            Some(serde_json::Value::String(s)) => DateTime::parse_from_rfc3339(s).ok().map(SystemTime::from),
            _ => None,
        }
        // Without an expiry, assume ECR's documented 12 hours.
        .unwrap_or_else(|| SystemTime::now() + Duration::from_secs(12 * 3600));
        Ok((Credentials { username: username.to_string(), password: password.to_string() }, expires_at))
    }

    #[allow(clippy::too_many_arguments)]
    async fn post(
        &self,
        operation: &'static str,
        endpoint: &str,
        region: &str,
        service: &str,
        creds: &AwsCredentials,
        content_type: &str,
        target: Option<&str>,
        body: String,
    ) -> Result<String, EcrError> {
        let request = |reason: String| EcrError::Request { operation, endpoint: endpoint.to_string(), reason };
        let url = reqwest::Url::parse(endpoint).map_err(|e| request(format!("invalid endpoint URL: {e}")))?;
        let host = match (url.host_str(), url.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            (None, _) => return Err(request("endpoint URL has no host".into())),
        };
        let mut headers = HeaderMap::new();
        headers.insert(axum::http::header::CONTENT_TYPE, header(content_type));
        if let Some(t) = target {
            headers.insert(HeaderName::from_static("x-amz-target"), header(t));
        }
        let path = if url.path().is_empty() { "/" } else { url.path() };
        sign(
            &SigningInput {
                method: "POST",
                host: &host,
                path,
                query: url.query().unwrap_or(""),
                body: body.as_bytes(),
            },
            &mut headers,
            creds,
            (region, service),
            Utc::now(),
        );
        headers.remove(axum::http::header::HOST);
        let resp = self
            .http
            .post(url)
            .headers(headers)
            .body(body)
            .send()
            .await
            .map_err(|e| request(cove_types::error::chain(&e)))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| request(cove_types::error::chain(&e)))?;
        if !status.is_success() {
            return Err(EcrError::Refused {
                operation,
                endpoint: endpoint.to_string(),
                status: status.as_u16(),
                message: aws_error_message(&text),
            });
        }
        Ok(text)
    }
}

/// The body of STS `GetCallerIdentity`.
fn caller_identity_form() -> String {
    form(&[("Action", "GetCallerIdentity"), ("Version", "2011-06-15")])
}

/// `<Arn>` and `<Account>` of a `GetCallerIdentityResponse`.
fn parse_caller_identity(xml: &str) -> Result<BrokerIdentity, &'static str> {
    let arn = xml_text(xml, "Arn").filter(|a| a.starts_with("arn:")).ok_or("no Arn")?;
    // The account is the ARN's fifth field when the answer leaves it out.
    let account = xml_text(xml, "Account")
        .filter(|a| !a.is_empty())
        .or_else(|| arn.split(':').nth(4).filter(|a| !a.is_empty()).map(str::to_string))
        .ok_or("no Account")?;
    Ok(BrokerIdentity { arn, account })
}

/// `cove-<orgId>-pull`, cut to STS's 64-character limit.
pub fn session_name(org_id: &str) -> String {
    let clean: String =
        org_id.chars().map(|c| if c.is_ascii_alphanumeric() || "=,.@-_".contains(c) { c } else { '-' }).collect();
    let mut s = format!("cove-{clean}-pull");
    s.truncate(64);
    s
}

/// What a request signature covers.
#[derive(Debug, Clone, Copy)]
pub struct SigningInput<'a> {
    /// HTTP method.
    pub method: &'a str,
    /// `Host` header value (host, or host:port when not the default).
    pub host: &'a str,
    /// Path as sent (already URI-encoded).
    pub path: &'a str,
    /// Query string as sent, without `?`.
    pub query: &'a str,
    /// The body.
    pub body: &'a [u8],
}

/// Signs a request with SigV4: adds `host`, `x-amz-date`, `x-amz-security-token` (for
/// temporary credentials) and `authorization` to `headers`, signing every header present.
pub fn sign(
    req: &SigningInput<'_>,
    headers: &mut HeaderMap,
    creds: &AwsCredentials,
    (region, service): (&str, &str),
    now: DateTime<Utc>,
) {
    let amz_date = now.format("%Y%m%dT%H%M%SZ").to_string();
    let date = &amz_date[..8];
    headers.insert(axum::http::header::HOST, header(req.host));
    headers.insert(HeaderName::from_static("x-amz-date"), header(&amz_date));
    if let Some(t) = &creds.session_token {
        headers.insert(HeaderName::from_static("x-amz-security-token"), header(t));
    }
    let mut signed: Vec<String> = headers.keys().map(|k| k.as_str().to_ascii_lowercase()).collect();
    signed.sort();
    signed.dedup();
    let payload_hash = hex::encode(Sha256::digest(req.body));
    let parts = sigv4::RequestParts {
        method: req.method,
        raw_path: req.path,
        raw_query: req.query,
        headers,
        payload_hash: &payload_hash,
    };
    let creq = sigv4::canonical_request(&parts, &signed)
        .expect("every signed header is present and the path and query were encoded by us");
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let to_sign = sigv4::string_to_sign(&amz_date, &scope, &creq);
    let signature = sigv4::signature(&creds.secret_access_key, (date, region, service), &to_sign);
    let auth = format!(
        "{} Credential={}/{scope}, SignedHeaders={}, Signature={signature}",
        sigv4::ALGORITHM,
        creds.access_key_id,
        signed.join(";")
    );
    headers.insert(axum::http::header::AUTHORIZATION, header(&auth));
}

fn header(v: &str) -> HeaderValue {
    HeaderValue::from_str(v).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `application/x-www-form-urlencoded` with AWS's encoding.
fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", sigv4::uri_encode(k, false), sigv4::uri_encode(v, false)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The text of the first `<tag>…</tag>`, with the five XML entities decoded.
fn xml_text(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&format!("</{tag}>"))?;
    Some(
        xml[start..end]
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&")
            .trim()
            .to_string(),
    )
}

/// `Code: Message` from an AWS XML or JSON error body.
fn aws_error_message(body: &str) -> String {
    if let (Some(code), msg) = (xml_text(body, "Code"), xml_text(body, "Message")) {
        return format!("{code}: {}", msg.unwrap_or_default());
    }
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(body) {
        let code = v.get("__type").and_then(|c| c.as_str()).unwrap_or_default();
        let code = code.rsplit('#').next().unwrap_or(code);
        let msg = v.get("message").or_else(|| v.get("Message")).and_then(|m| m.as_str()).unwrap_or_default();
        return format!("{code}: {msg}");
    }
    body.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example_creds() -> AwsCredentials {
        AwsCredentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
        }
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn signing_reproduces_the_aws_get_vanilla_test_suite_vector() {
        // aws-sig-v4-test-suite/get-vanilla: GET / on example.amazonaws.com, service "service".
        let mut h = HeaderMap::new();
        let req = SigningInput { method: "GET", host: "example.amazonaws.com", path: "/", query: "", body: b"" };
        sign(&req, &mut h, &example_creds(), ("us-east-1", "service"), at("2015-08-30T12:36:00Z"));
        assert_eq!(
            h["authorization"],
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
        assert_eq!(h["x-amz-date"], "20150830T123600Z");
    }

    #[test]
    fn signing_reproduces_the_aws_iam_list_users_example() {
        // The worked example of the AWS General Reference ("Signature Version 4 signing process").
        let mut h = HeaderMap::new();
        h.insert("content-type", header("application/x-www-form-urlencoded; charset=utf-8"));
        let req = SigningInput {
            method: "GET",
            host: "iam.amazonaws.com",
            path: "/",
            query: "Action=ListUsers&Version=2010-05-08",
            body: b"",
        };
        sign(&req, &mut h, &example_creds(), ("us-east-1", "iam"), at("2015-08-30T12:36:00Z"));
        assert_eq!(
            h["authorization"],
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date, \
             Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
        );
    }

    #[test]
    fn temporary_credentials_sign_their_session_token() {
        let mut creds = example_creds();
        creds.session_token = Some("tok/en+".into());
        let mut h = HeaderMap::new();
        let req =
            SigningInput { method: "POST", host: "sts.us-east-1.amazonaws.com", path: "/", query: "", body: b"{}" };
        sign(&req, &mut h, &creds, ("us-east-1", "sts"), at("2015-08-30T12:36:00Z"));
        assert_eq!(h["x-amz-security-token"], "tok/en+");
        let auth = h["authorization"].to_str().unwrap();
        assert!(auth.contains("SignedHeaders=host;x-amz-date;x-amz-security-token,"), "{auth}");
    }

    #[test]
    fn ecr_hosts_are_recognised_by_account_and_region() {
        let h = EcrHost::parse("123456789012.dkr.ecr.eu-west-1.amazonaws.com").unwrap();
        assert_eq!(
            (h.account.as_str(), h.region.as_str(), h.domain.as_str()),
            ("123456789012", "eu-west-1", "amazonaws.com")
        );
        assert_eq!(EcrHost::parse("123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn").unwrap().region, "cn-north-1");
        for bad in ["ghcr.io", "12345.dkr.ecr.us-east-1.amazonaws.com", "123456789012.dkr.ecr.us-east-1.example.com"] {
            assert!(EcrHost::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn role_arns_must_name_an_iam_role() {
        assert!(is_role_arn("arn:aws:iam::123456789012:role/cove-pull"));
        assert!(is_role_arn("arn:aws:iam::123456789012:role/path/cove-pull"));
        for bad in ["", "arn:aws:iam::123456789012:user/x", "arn:aws:iam::1234:role/x", "arn:aws:s3:::b", "role/x"] {
            assert!(!is_role_arn(bad), "{bad}");
        }
    }

    #[test]
    fn session_names_carry_the_organization_and_fit_sts_limits() {
        assert_eq!(session_name("0b8c-42"), "cove-0b8c-42-pull");
        assert!(session_name(&"x".repeat(100)).len() <= 64);
        assert_eq!(session_name("a b/c"), "cove-a-b-c-pull");
    }

    #[test]
    fn xml_fields_and_aws_errors_are_read() {
        let xml =
            "<R><Credentials><AccessKeyId>ASIA1</AccessKeyId><SessionToken>a&amp;b</SessionToken></Credentials></R>";
        assert_eq!(xml_text(xml, "AccessKeyId").as_deref(), Some("ASIA1"));
        assert_eq!(xml_text(xml, "SessionToken").as_deref(), Some("a&b"));
        assert_eq!(
            aws_error_message(
                "<ErrorResponse><Error><Code>AccessDenied</Code><Message>no</Message></Error></ErrorResponse>"
            ),
            "AccessDenied: no"
        );
        assert_eq!(
            aws_error_message(r#"{"__type":"com.amazon#AccessDeniedException","message":"no"}"#),
            "AccessDeniedException: no"
        );
    }

    #[test]
    fn the_caller_identity_request_is_the_sts_form_and_its_answer_gives_the_arn_and_account() {
        assert_eq!(caller_identity_form(), "Action=GetCallerIdentity&Version=2011-06-15");
        // The example answer of the STS API reference.
        let xml = r#"<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <GetCallerIdentityResult>
    <Arn>arn:aws:iam::123456789012:user/Alice</Arn>
    <UserId>AKIAI44QH8DHBEXAMPLE</UserId>
    <Account>123456789012</Account>
  </GetCallerIdentityResult>
  <ResponseMetadata><RequestId>01234567-89ab-cdef-0123-456789abcdef</RequestId></ResponseMetadata>
</GetCallerIdentityResponse>"#;
        assert_eq!(
            parse_caller_identity(xml),
            Ok(BrokerIdentity { arn: "arn:aws:iam::123456789012:user/Alice".into(), account: "123456789012".into() })
        );
        let without_account = "<Arn>arn:aws:sts::210987654321:assumed-role/cove/i-1</Arn>";
        assert_eq!(parse_caller_identity(without_account).unwrap().account, "210987654321");
        assert_eq!(parse_caller_identity("<Account>123456789012</Account>"), Err("no Arn"));
    }

    #[tokio::test]
    async fn the_broker_identity_is_asked_of_sts_signed_for_us_east_1_and_remembered() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};

        let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let calls = Arc::new(AtomicUsize::new(0));
        let (seen2, calls2) = (seen.clone(), calls.clone());
        let app = axum::Router::new().route(
            "/",
            axum::routing::post(move |headers: HeaderMap, body: String| async move {
                calls2.fetch_add(1, Ordering::SeqCst);
                let auth = headers["authorization"].to_str().unwrap().to_string();
                seen2.lock().unwrap().push((auth, body));
                "<GetCallerIdentityResponse><GetCallerIdentityResult><Arn>arn:aws:iam::123456789012:user/cove-server</Arn><Account>123456789012</Account></GetCallerIdentityResult></GetCallerIdentityResponse>"
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

        let auth = EcrAuth::new(AwsEndpoints { sts: Some(url), ecr: None });
        let id = auth.broker_identity_as(&example_creds()).await.unwrap();
        assert_eq!(id.arn, "arn:aws:iam::123456789012:user/cove-server");
        assert_eq!(id.account, "123456789012");
        let (authz, body) = seen.lock().unwrap()[0].clone();
        assert_eq!(body, "Action=GetCallerIdentity&Version=2011-06-15");
        assert!(authz.contains("Credential=AKIDEXAMPLE/") && authz.contains("/us-east-1/sts/aws4_request"), "{authz}");

        assert_eq!(auth.broker_identity_as(&example_creds()).await.unwrap(), id);
        assert_eq!(calls.load(Ordering::SeqCst), 1, "the second answer came from the cache");
        let mut other = example_creds();
        other.access_key_id = "AKIDOTHER".into();
        auth.broker_identity_as(&other).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2, "other credentials ask again");
    }

    #[test]
    fn without_server_credentials_the_broker_error_names_the_variables_to_set() {
        let e = EcrError::NoBrokerCredentials;
        assert_eq!(e.kind(), ErrorKind::FailedPrecondition);
        let m = e.to_string();
        assert!(m.contains("AWS_ACCESS_KEY_ID") && m.contains("AWS_SECRET_ACCESS_KEY"), "{m}");
    }

    #[test]
    fn server_credentials_never_print_their_secrets() {
        let mut c = example_creds();
        c.session_token = Some("sessiontoken".into());
        let s = format!("{c:?}");
        assert!(!s.contains("EXAMPLEKEY") && !s.contains("sessiontoken"), "{s}");
    }
}
