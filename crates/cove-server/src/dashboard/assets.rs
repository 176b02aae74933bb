//! The embedded files and the handlers that serve them.

use axum::extract::Path;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

/// Vendored files carry their version in their path, so they may be cached for long.
const VENDOR_PREFIX: &str = "vendor/";

/// `(path under assets/, bytes)`; the content type comes from the extension.
static FILES: &[(&str, &[u8])] = &[
    ("app.js", include_bytes!("assets/app.js")),
    ("api.js", include_bytes!("assets/api.js")),
    ("ui.js", include_bytes!("assets/ui.js")),
    ("snapshots.js", include_bytes!("assets/snapshots.js")),
    ("registries.js", include_bytes!("assets/registries.js")),
    ("sandboxes.js", include_bytes!("assets/sandboxes.js")),
    ("terminal.js", include_bytes!("assets/terminal.js")),
    ("keys.js", include_bytes!("assets/keys.js")),
    ("builds.js", include_bytes!("assets/builds.js")),
    ("style.css", include_bytes!("assets/style.css")),
    ("favicon.svg", include_bytes!("assets/favicon.svg")),
    ("vendor/xterm-6.0.0/xterm.mjs", include_bytes!("assets/vendor/xterm-6.0.0/xterm.mjs")),
    ("vendor/xterm-6.0.0/xterm.css", include_bytes!("assets/vendor/xterm-6.0.0/xterm.css")),
    ("vendor/xterm-6.0.0/addon-fit.mjs", include_bytes!("assets/vendor/xterm-6.0.0/addon-fit.mjs")),
];

const INDEX: &str = include_str!("assets/index.html");
/// Where `index.html` wants the per-response style nonce.
const NONCE_MARK: &str = "{{STYLE_NONCE}}";

/// The content type of an asset's name.
pub(super) fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("html") => "text/html; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

/// The embedded bytes of `name`, if it is one of the files.
pub(super) fn lookup(name: &str) -> Option<&'static [u8]> {
    FILES.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
}

fn fresh_nonce() -> String {
    let mut b = [0u8; 16];
    // No randomness at all is not survivable for the server anyway; a fixed value would only
    // weaken the style allowance, never the script policy.
    getrandom::fill(&mut b).unwrap_or_default();
    hex::encode(b)
}

/// `GET /`: the page, with a fresh style nonce in both the page and its policy.
pub(super) async fn index() -> Response {
    let nonce = fresh_nonce();
    let html = INDEX.replace(NONCE_MARK, &nonce);
    let resp = (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8")),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        html,
    )
        .into_response();
    super::secure(resp, &nonce)
}

/// `GET /dashboard/assets/{file}`.
pub(super) async fn asset(Path(file): Path<String>) -> Response {
    let Some(bytes) = lookup(&file) else {
        return super::not_found(&file);
    };
    let cache = if file.starts_with(VENDOR_PREFIX) { "public, max-age=604800, immutable" } else { "no-cache" };
    let resp = (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type(&file))),
            (header::CACHE_CONTROL, HeaderValue::from_static(cache)),
        ],
        bytes,
    )
        .into_response();
    super::secure(resp, "none")
}
