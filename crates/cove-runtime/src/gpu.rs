//! The machine's GPUs and which sandbox holds which.
//!
//! Contract: the inventory is read once, at runtime start, from the CDI specs of kind
//! [`cdi::GPU_KIND`] ([`cdi::Catalog::units`]: `all` and second names of one GPU left out) and
//! cross-checked with `nvidia-smi -L` when that program is there (GPUs listed but no CDI spec:
//! a warning saying how to generate one). A sandbox asking for `n` GPUs takes `n` free ones
//! ([`Gpus::acquire`], all or none, idempotent per sandbox) and holds them until
//! [`Gpus::release`]; the runtime records the names in the sandbox's record, takes them at every
//! start and releases them at every stop, so a restarted server adopts what running
//! sandboxes hold ([`Gpus::adopt`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use crate::cdi::{self, Catalog, CdiError, ContainerEdits};

/// No `n` GPUs are free now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "no free GPU: {requested} requested, {free} free of {total} on this server (the others are held by running \
     sandboxes; retry once one stops)"
)]
pub struct NoFreeGpu {
    /// GPUs asked for.
    pub requested: usize,
    /// GPUs free now.
    pub free: usize,
    /// GPUs of the server.
    pub total: usize,
}

/// The GPUs and their holders.
#[derive(Debug, Default)]
pub struct Gpus {
    catalog: Catalog,
    /// One name per GPU, in spec order.
    units: Vec<String>,
    /// Sandbox id → the GPUs it holds.
    held: Mutex<BTreeMap<String, Vec<String>>>,
}

impl Gpus {
    /// An inventory of the catalog's GPUs, none held.
    pub fn new(catalog: Catalog) -> Self {
        let units = catalog.units();
        Gpus { catalog, units, held: Mutex::default() }
    }

    /// Reads the CDI specs in `dirs` and cross-checks with `nvidia-smi -L` (see the module
    /// contract). `protected`: host paths no CDI mount may expose.
    pub async fn discover(dirs: &[PathBuf], protected: &[PathBuf]) -> Result<Self, CdiError> {
        let gpus = Gpus::new(Catalog::load(dirs, cdi::GPU_KIND, protected)?);
        let listed = nvidia_smi_gpus().await;
        match listed {
            Some(n) if n > 0 && gpus.total() == 0 => tracing::warn!(
                nvidia_smi = n,
                dirs = ?dirs,
                "nvidia-smi lists GPUs but no CDI spec describes them, so sandboxes get none: run \
                 `nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml` and restart the server"
            ),
            Some(n) if n != gpus.total() => tracing::warn!(
                nvidia_smi = n,
                cdi = gpus.total(),
                "nvidia-smi and the CDI specs count different GPUs; regenerate the spec with \
                 `nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml` if the GPUs changed"
            ),
            _ => {}
        }
        if gpus.total() > 0 {
            tracing::info!(gpus = ?gpus.units, files = ?gpus.catalog.files(), "GPUs from CDI specs");
        }
        Ok(gpus)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Vec<String>>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// GPUs of the server.
    pub fn total(&self) -> usize {
        self.units.len()
    }

    /// GPUs no sandbox holds.
    pub fn free(&self) -> usize {
        let held: usize = self.lock().values().map(Vec::len).sum();
        self.total().saturating_sub(held)
    }

    /// What `sandbox` holds (empty when nothing).
    pub fn held_by(&self, sandbox: &str) -> Vec<String> {
        self.lock().get(sandbox).cloned().unwrap_or_default()
    }

    /// Gives `sandbox` `n` GPUs: the ones it holds if that is `n` of them, else `n` free ones
    /// (all or none). `n == 0` releases what it held.
    pub fn acquire(&self, sandbox: &str, n: usize) -> Result<Vec<String>, NoFreeGpu> {
        let mut held = self.lock();
        let mine = held.remove(sandbox).unwrap_or_default();
        if mine.len() == n {
            if n > 0 {
                held.insert(sandbox.to_string(), mine.clone());
            }
            return Ok(mine);
        }
        let taken: Vec<&String> = held.values().flatten().collect();
        let free: Vec<String> = self.units.iter().filter(|u| !taken.contains(u)).cloned().collect();
        if free.len() < n {
            // What it held before stays held: a failed resize takes nothing away.
            let e = NoFreeGpu { requested: n, free: free.len(), total: self.total() };
            if !mine.is_empty() {
                held.insert(sandbox.to_string(), mine);
            }
            return Err(e);
        }
        let got: Vec<String> = free.into_iter().take(n).collect();
        if n > 0 {
            held.insert(sandbox.to_string(), got.clone());
        }
        Ok(got)
    }

    /// Records that `sandbox` holds `names` (from its record, at a restart). Names the
    /// inventory lacks, or another sandbox holds, are left out and logged.
    pub fn adopt(&self, sandbox: &str, names: &[String]) {
        let mut held = self.lock();
        let mut keep = Vec::new();
        for n in names {
            let other = held.iter().find(|(s, v)| s.as_str() != sandbox && v.contains(n)).map(|(s, _)| s.clone());
            if !self.units.contains(n) || other.is_some() {
                tracing::warn!(sandbox, gpu = %n, holder = ?other, "a recorded GPU is not in the inventory or is held twice");
            } else {
                keep.push(n.clone());
            }
        }
        if !keep.is_empty() {
            held.insert(sandbox.to_string(), keep);
        }
    }

    /// Frees what `sandbox` holds; whether it held anything.
    pub fn release(&self, sandbox: &str) -> bool {
        self.lock().remove(sandbox).is_some()
    }

    /// The CDI edits for `names`.
    pub fn edits(&self, names: &[String]) -> Result<ContainerEdits, CdiError> {
        self.catalog.edits_for(names)
    }
}

/// GPUs `nvidia-smi -L` lists; `None` when it is not installed or fails.
async fn nvidia_smi_gpus() -> Option<usize> {
    let run = tokio::process::Command::new("nvidia-smi").arg("-L").kill_on_drop(true).output();
    match tokio::time::timeout(Duration::from_secs(10), run).await {
        Ok(Ok(out)) if out.status.success() => {
            Some(String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.starts_with("GPU ")).count())
        }
        Ok(Ok(out)) => {
            tracing::warn!(status = %out.status, stderr = %String::from_utf8_lossy(&out.stderr).trim(), "nvidia-smi -L failed");
            None
        }
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => None,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "nvidia-smi -L could not run");
            None
        }
        Err(_) => {
            tracing::warn!("nvidia-smi -L did not answer within 10 s");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn gpus(n: usize) -> Gpus {
        let dir = tempfile::tempdir().unwrap();
        let mut text = String::from("cdiVersion: 0.5.0\nkind: nvidia.com/gpu\ndevices:\n");
        for i in 0..n {
            text.push_str(&format!(
                "- name: '{i}'\n  containerEdits:\n    deviceNodes: [{{path: /dev/nvidia{i}, hostPath: /dev/null}}]\n"
            ));
        }
        let p = dir.path().join("nvidia.yaml");
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        Gpus::new(Catalog::load(&[dir.path().to_path_buf()], cdi::GPU_KIND, &[]).unwrap())
    }

    #[test]
    fn sandboxes_take_free_gpus_and_give_them_back() {
        let g = gpus(3);
        assert_eq!((g.total(), g.free()), (3, 3));
        assert_eq!(g.acquire("a", 2).unwrap(), ["0", "1"]);
        assert_eq!(g.acquire("b", 1).unwrap(), ["2"]);
        assert_eq!(g.free(), 0);
        assert!(g.release("a"));
        assert!(!g.release("a"), "released once");
        assert_eq!(g.free(), 2);
        assert_eq!(g.acquire("c", 2).unwrap(), ["0", "1"]);
    }

    #[test]
    fn no_free_gpu_says_how_many_were_requested_free_and_there() {
        let g = gpus(2);
        g.acquire("a", 1).unwrap();
        let e = g.acquire("b", 2).unwrap_err();
        assert_eq!(e, NoFreeGpu { requested: 2, free: 1, total: 2 });
        assert!(e.to_string().contains("2 requested, 1 free of 2"), "{e}");
        assert!(g.held_by("b").is_empty(), "all or none");
        assert_eq!(g.free(), 1);
    }

    #[test]
    fn acquiring_again_keeps_what_a_sandbox_holds() {
        let g = gpus(2);
        assert_eq!(g.acquire("a", 1).unwrap(), ["0"]);
        assert_eq!(g.acquire("a", 1).unwrap(), ["0"], "idempotent");
        g.acquire("b", 1).unwrap();
        assert!(g.acquire("a", 2).is_err());
        assert_eq!(g.held_by("a"), ["0"], "a failed resize keeps what it had");
        assert_eq!(g.acquire("a", 0).unwrap(), Vec::<String>::new());
        assert_eq!(g.free(), 1);
    }

    #[test]
    fn adopted_gpus_count_as_held_unless_unknown_or_taken() {
        let g = gpus(2);
        g.adopt("a", &["1".into(), "9".into()]);
        assert_eq!(g.held_by("a"), ["1"]);
        g.adopt("b", &["1".into()]);
        assert!(g.held_by("b").is_empty(), "one GPU, one holder");
        assert_eq!(g.acquire("c", 1).unwrap(), ["0"]);
    }

    #[test]
    fn a_server_without_specs_has_no_gpus() {
        let g = Gpus::default();
        assert_eq!(g.total(), 0);
        assert_eq!(g.acquire("a", 1).unwrap_err(), NoFreeGpu { requested: 1, free: 0, total: 0 });
        assert!(g.acquire("a", 0).unwrap().is_empty());
    }
}
