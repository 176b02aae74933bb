//! The built-in OCI registry (distribution API at `/v2/`), over the same content store as
//! snapshots, so a pushed image becomes a snapshot without copying a byte.
//!
//! `path` parses `/v2/…` paths and validates names; `upload` holds upload sessions; `repos`
//! keeps repositories, links, tags and referrers as files under `<data-dir>/registry/`;
//! `range` reads blob `Range` headers; `token` issues short-lived push tokens; `service`
//! holds the rules (organization scoping, manifest checks, referrers, GC roots); `http` is
//! the thin axum layer.
//!
//! Authentication: HTTP Basic with any user name and a Cove API key (or a push token from
//! `GET /api/docker-registry/registry-push-access`) as the password, or the same secret as a
//! Bearer token. A caller reaches only repositories named `<its organization id>/…`.

mod http;
pub mod path;
pub mod range;
pub mod repos;
pub mod service;
pub mod token;
pub mod upload;

pub use http::router;
pub use service::{RegistryError, RegistryService};
