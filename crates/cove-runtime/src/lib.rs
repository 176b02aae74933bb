//! Sandboxes as OCI bundles, started by Cove's own launcher ([`launch`]) or by `runc` — the
//! only crate in Cove that starts containers.
//!
//! Each sandbox is a directory `<root>/<id>/` holding a sparse ext4 disk (the hard disk
//! quota), an overlay of the read-only image over that disk, generated `/etc` files and the
//! agent's socket directory. It runs in its own pid, mount, uts, ipc and network namespaces
//! (a named netns on an isolated bridge port), with CPU, memory (no extra swap) and pids
//! limits in `<cgroup_parent>/<id>`, Docker's default capabilities and seccomp profile unless
//! privileged. Sandboxes keep running when the server exits (the launcher's init and runc's
//! are reparented to PID 1). At start the
//! runtime caps `<cgroup_parent>`'s `pids.max` at half the host's PIDs and installs its
//! nftables table ([`firewall`]): sandboxes never reach the host (but its DNS forwarder) or
//! each other (unless linked), egress is masqueraded, and each sandbox's [`netpolicy`] is
//! enforced.
//!
//! One-shot build steps ([`Runtime::run_step`]) reuse the same isolation on a throw-away
//! overlay whose upper dir the builder turns into a layer.

pub mod archive;
pub mod cabundle;
pub mod cdi;
mod cgroup;
mod cmd;
pub mod copytree;
pub mod disk;
pub mod firewall;
pub mod gpu;
pub mod launch;
pub mod loopdev;
pub mod net;
pub mod netpolicy;
pub mod nfset;
pub mod oci;
mod pool;
pub mod runc;
mod runtime;
pub mod seccomp;
mod step;
pub mod user;
pub mod userns;

pub use cmd::CommandError;
pub use runtime::{Runtime, RuntimeConfig, RuntimeError, SandboxSpec, SandboxStatus};
pub use step::StepSpec;
