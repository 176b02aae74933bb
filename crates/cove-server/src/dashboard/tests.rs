use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::Response;

use super::assets;

fn h(r: &Response, name: header::HeaderName) -> &str {
    r.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

async fn body(r: Response) -> String {
    String::from_utf8(axum::body::to_bytes(r.into_body(), 1 << 22).await.unwrap().to_vec()).unwrap()
}

fn assert_hardened(r: &Response) {
    let csp = h(r, header::CONTENT_SECURITY_POLICY);
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(csp.contains("script-src 'self';"), "no inline or remote script: {csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(h(r, header::X_CONTENT_TYPE_OPTIONS), "nosniff");
    assert_eq!(h(r, header::X_FRAME_OPTIONS), "DENY");
}

#[tokio::test]
async fn the_page_is_html_with_a_fresh_style_nonce_in_its_policy_and_no_inline_script() {
    let a = assets::index().await;
    assert_eq!(a.status(), StatusCode::OK);
    assert_eq!(h(&a, header::CONTENT_TYPE), "text/html; charset=utf-8");
    assert_eq!(h(&a, header::CACHE_CONTROL), "no-store");
    assert_hardened(&a);
    let csp = h(&a, header::CONTENT_SECURITY_POLICY).to_string();
    let nonce = csp.split("'nonce-").nth(1).and_then(|s| s.split('\'').next()).unwrap().to_string();
    assert_eq!(nonce.len(), 32);
    let html = body(a).await;
    assert!(html.contains(&format!("content=\"{nonce}\"")), "the page carries its nonce");
    assert!(!html.contains("{{"), "every mark replaced");
    assert!(!html.contains("<script>"), "no inline script");
    assert!(html.contains("<script type=\"module\" src=\"/dashboard/assets/app.js\">"));
    let b = assets::index().await;
    assert_ne!(h(&b, header::CONTENT_SECURITY_POLICY), csp, "a nonce per answer");
}

#[tokio::test]
async fn assets_are_served_with_their_content_types_and_cache_rules() {
    for (file, ty, cache) in [
        ("app.js", "text/javascript; charset=utf-8", "no-cache"),
        ("style.css", "text/css; charset=utf-8", "no-cache"),
        ("favicon.svg", "image/svg+xml", "no-cache"),
        ("vendor/xterm-6.0.0/xterm.mjs", "text/javascript; charset=utf-8", "public, max-age=604800, immutable"),
        ("vendor/xterm-6.0.0/xterm.css", "text/css; charset=utf-8", "public, max-age=604800, immutable"),
    ] {
        let r = assets::asset(Path(file.to_string())).await;
        assert_eq!(r.status(), StatusCode::OK, "{file}");
        assert_eq!(h(&r, header::CONTENT_TYPE), ty, "{file}");
        assert_eq!(h(&r, header::CACHE_CONTROL), cache, "{file}");
        assert_hardened(&r);
        assert!(!body(r).await.is_empty());
    }
}

#[tokio::test]
async fn an_unknown_asset_is_a_404_and_paths_never_leave_the_embedded_set() {
    for file in ["nope.js", "../mod.rs", "vendor/../app.js", "", "index.html.bak"] {
        let r = assets::asset(Path(file.to_string())).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{file:?}");
        assert_hardened(&r);
    }
}

#[test]
fn the_first_page_loads_under_100_kb_of_script() {
    let first: usize =
        ["app.js", "api.js", "ui.js", "snapshots.js", "registries.js", "sandboxes.js", "keys.js", "builds.js"]
            .iter()
            .map(|f| assets::lookup(f).unwrap().len())
            .sum();
    assert!(first < 100 * 1024, "{first} bytes");
}

#[test]
fn content_types_follow_the_extension() {
    assert_eq!(assets::content_type("a.mjs"), "text/javascript; charset=utf-8");
    assert_eq!(assets::content_type("a.html"), "text/html; charset=utf-8");
    assert_eq!(assets::content_type("LICENSE"), "application/octet-stream");
}
