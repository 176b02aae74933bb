//! Dockerfile builds without a Docker engine.
//!
//! The pipeline: [`dockerfile::parse`] → [`plan::Plan`] (stages, ARG scoping, substitution,
//! the config per step) → [`builder::Builder`] which, step by step, consults the
//! [`cache::Cache`], runs RUN steps through a [`builder::Backend`] (the server's runc and image
//! store), applies COPY/ADD with [`copy`], turns each new overlay upper directory into a gzip
//! OCI layer with [`layer`], and finally writes the image config and OCI manifest into the
//! content store.
//!
//! It deliberately does not pull images, mount filesystems or start containers itself: the
//! [`builder::Backend`] does, so this crate runs (and is tested) without root or runc. It
//! has no network access of its own: `ADD <url>` is refused. Every input is held to the
//! limits in [`limits`] (Dockerfile size, instructions, expansions, paths).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod builder;
pub mod cache;
pub mod config;
pub mod context;
pub mod copy;
pub mod dockerfile;
pub mod expand;
pub mod layer;
pub mod limits;
pub mod lower;
pub mod plan;

pub use builder::{
    Backend, BackendError, BaseImage, BuildError, BuildOutput, BuildRequest, Builder, LogSink, MergedView, RunStep,
};
pub use cache::{Cache, CacheEntry, Prune};
pub use context::extract_tars;
