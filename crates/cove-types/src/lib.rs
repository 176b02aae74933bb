//! Plain data shared by every Cove crate: validated names and image references, the
//! `ErrorKind` every module's error maps to, the Daytona-compatible API DTOs, and
//! `write_atomic` for durable files.
//!
//! This crate does no network or async IO and knows nothing about HTTP or SQL.

pub mod digest;
pub mod dto;
pub mod error;
pub mod fault;
pub mod fs;
pub mod name;
pub mod reference;
pub mod sandbox;
pub mod state;

pub use digest::Digest;
pub use error::ErrorKind;
pub use name::SnapshotName;
pub use reference::ImageRef;
pub use sandbox::SandboxState;
pub use state::SnapshotState;
