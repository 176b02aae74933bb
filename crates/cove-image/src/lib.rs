//! OCI images on local disk: the content store (`blobs/sha256/…`), a registry client that
//! streams blobs into it, layer unpacking into read-only root filesystems (whiteouts, path
//! safety), and garbage collection of what no snapshot references.
//!
//! It knows nothing about HTTP servers, SQL or sandboxes: callers pass in what to pull and
//! which images are still referenced.
//!
//! Layout under the data directory:
//! ```text
//! blobs/sha256/<hex>          compressed layers, configs and manifests, digest-verified
//! ingest/<uuid>               downloads in progress (removed at start)
//! images/<manifest-hex>/      one per platform-resolved manifest
//!     manifest.json config.json meta.json
//!     rootfs/                 all layers applied, read-only lower dir for sandboxes
//!     .complete               written last: a directory without it is crash debris
//! tmp/                        unpack staging (moved to the trash at start)
//! trash/<name>-<uuid>/        image trees being deleted: renamed here first, so a tree whose
//!                             removal began is never seen again; emptied in the background at start
//! ```

pub mod content;
pub mod distribution;
pub mod oci;
pub mod store;
pub mod unpack;

pub use content::ContentStore;
pub use distribution::{Credentials, RegistryClient, RegistryConfig};
pub use store::{ImageRecord, ImageStore, Lease, PullError, Pulled, StoredManifest};
