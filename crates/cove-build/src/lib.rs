//! Dockerfile builds without a Docker engine (see ARCHITECTURE.md).
