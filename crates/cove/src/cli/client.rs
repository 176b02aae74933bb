//! The HTTP client behind every command: the API key as bearer token, and API errors turned
//! into their message (`{statusCode, message, …}` envelopes).

use anyhow::Context as _;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A logged-in API client.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    key: String,
}

/// An API answer that is not a success.
#[derive(Debug, thiserror::Error)]
#[error("{method} {path}: {status}: {message}")]
pub struct ApiError {
    /// `GET`, `POST`, …
    pub method: String,
    /// Path under the API.
    pub path: String,
    /// The status.
    pub status: reqwest::StatusCode,
    /// The server's message.
    pub message: String,
}

impl Client {
    /// A client for `base` (`…/api`) that trusts the system's roots and, when given, the
    /// server's pinned CA (PEM) besides: object storage, and the registry when served over
    /// TLS, have certificates signed by it.
    pub fn new(base: &str, key: &str, pinned_ca: Option<&str>) -> anyhow::Result<Self> {
        let mut builder = reqwest::Client::builder().user_agent(concat!("cove-cli/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = pinned_ca {
            let cert = reqwest::Certificate::from_pem(pem.as_bytes()).context("read the pinned server CA")?;
            builder = builder.add_root_certificate(cert);
        }
        let http = builder.build().context("create the HTTP client")?;
        Ok(Client { http, base: base.trim_end_matches('/').to_string(), key: key.to_string() })
    }

    /// The underlying HTTP client.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// A request to an absolute URL with the API key.
    pub fn request_url(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        self.http.request(method, url).bearer_auth(&self.key)
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.request_url(method, &format!("{}{path}", self.base))
    }

    /// Sends and checks the status; the body of an error becomes its message.
    pub async fn send(
        &self,
        req: reqwest::RequestBuilder,
        method: &str,
        path: &str,
    ) -> anyhow::Result<reqwest::Response> {
        let resp = req.send().await.with_context(|| format!("{method} {path}: cannot reach {}", self.base))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_string))
            .unwrap_or(text);
        Err(ApiError { method: method.into(), path: path.into(), status, message }.into())
    }

    /// `GET path` → JSON.
    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let resp = self.send(self.request(reqwest::Method::GET, path), "GET", path).await?;
        resp.json().await.with_context(|| format!("GET {path}: unexpected answer"))
    }

    /// `POST path` with a JSON body → JSON.
    pub async fn post_json<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> anyhow::Result<T> {
        let resp = self.send(self.request(reqwest::Method::POST, path).json(body), "POST", path).await?;
        resp.json().await.with_context(|| format!("POST {path}: unexpected answer"))
    }

    /// `POST path` without caring for the answer's body.
    pub async fn post_empty(&self, path: &str) -> anyhow::Result<()> {
        self.send(self.request(reqwest::Method::POST, path), "POST", path).await.map(drop)
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> anyhow::Result<()> {
        self.send(self.request(reqwest::Method::DELETE, path), "DELETE", path).await.map(drop)
    }
}

/// A path segment, percent-encoded.
pub fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
