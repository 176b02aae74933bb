//! Debian sandbox images built on this host with `mmdebstrap` (no Docker): the recipe per
//! profile, the host's apt sources, and the build into a cache directory.
//!
//! Contract: [`Recipe::build`] runs `mmdebstrap --variant=minbase` writing a tar to its stdout,
//! which is streamed into one gzip OCI layer (the uncompressed bytes hashed for the diff id,
//! the compressed ones for the digest); the config and manifest are written next to it. A
//! cache entry `<cache>/<profile>-<release>-<key>/` (the key hashes everything that decides
//! the image: packages, hooks, options, sources) holds `layer.tar.gz`, `config.json`,
//! `manifest.json`, `build.log`, and `image.json` written last: an entry without it is not
//! used. Entries are built in a temporary directory and renamed into place, one build per
//! entry at a time (a lock file), and the cache directory is 0700.

use std::io::{self, BufRead as _, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Digest as _;

/// The user sandboxes from these images run as (Daytona's default user and home, so that
/// scripts written for Daytona find what they expect).
pub const USER: &str = "daytona";
/// Its home.
pub const HOME: &str = "/home/daytona";
/// Bump when the way images are built changes: old cache entries are then not reused.
const RECIPE_VERSION: u32 = 1;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// What goes into an image besides Debian's minbase.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// python3 (as `python`), pip and CA certificates: the smallest image `code_run` works on.
    Minimal,
    /// minimal + venv, git, curl, build-essential and Debian's numpy, pandas, matplotlib,
    /// requests, beautifulsoup, and pylsp (the language server `create_lsp_server("python")` starts).
    Python,
    /// minimal + git, curl, Node.js and npm.
    Node,
    /// python and node together.
    Full,
    /// minimal + Debian's Docker engine (docker.io, containerd, runc, iptables) and Compose
    /// (`docker-compose`, also as `docker compose`), started as the entrypoint: for sandboxes
    /// in container-engine mode (Docker-in-Docker without a privileged container).
    Docker,
}

/// Every profile: Python (the SDK's `code_run` and `pip_install` run `python`), CA
/// certificates and sudo.
const BASE: &[&str] = &["ca-certificates", "python-is-python3", "python3", "python3-pip", "sudo"];
const PYTHON: &[&str] = &[
    "build-essential",
    "curl",
    "git",
    "python3-bs4",
    "python3-dev",
    "python3-matplotlib",
    "python3-numpy",
    "python3-pandas",
    "python3-pylsp",
    "python3-requests",
    "python3-venv",
];
const NODE: &[&str] = &["curl", "git", "nodejs", "npm"];
const DOCKER: &[&str] = &["containerd", "curl", "docker-compose", "docker.io", "iptables", "runc"];
/// The docker profile's entrypoint (written by [`DOCKER_HOOKS`]).
const DOCKERD_ENTRYPOINT: &str = "/usr/local/bin/cove-dockerd";
/// The docker profile's files: the entrypoint that starts dockerd (its log in
/// /var/log/dockerd.log), `docker compose` as a CLI plugin running Debian's Compose v1, and
/// the user in the docker group.
const DOCKER_HOOKS: &[&str] = &[
    "printf '%s\\n' '#!/bin/sh' '# The sandbox entrypoint in container-engine mode: the Docker daemon.' 'exec dockerd >>/var/log/dockerd.log 2>&1' > \"$1\"/usr/local/bin/cove-dockerd && chmod 0755 \"$1\"/usr/local/bin/cove-dockerd",
    "mkdir -p \"$1\"/usr/libexec/docker/cli-plugins && printf '%s\\n' '#!/bin/sh' '# docker compose ... runs Debian docker-compose (Compose v1) as a Docker CLI plugin.' 'if [ \"$1\" = docker-cli-plugin-metadata ]; then' '  echo \"{\\\"SchemaVersion\\\":\\\"0.1.0\\\",\\\"Vendor\\\":\\\"Cove\\\",\\\"Version\\\":\\\"1.29.2\\\",\\\"ShortDescription\\\":\\\"Docker Compose (Debian docker-compose)\\\"}\"' '  exit 0' 'fi' 'shift' 'exec docker-compose \"$@\"' > \"$1\"/usr/libexec/docker/cli-plugins/docker-compose && chmod 0755 \"$1\"/usr/libexec/docker/cli-plugins/docker-compose",
    "chroot \"$1\" usermod -aG docker daytona",
];

impl Profile {
    /// Its name, as in tags.
    pub fn name(self) -> &'static str {
        match self {
            Profile::Minimal => "minimal",
            Profile::Python => "python",
            Profile::Node => "node",
            Profile::Full => "full",
            Profile::Docker => "docker",
        }
    }

    /// Hooks of this profile, after [`CUSTOMIZE_HOOKS`].
    fn hooks(self) -> &'static [&'static str] {
        match self {
            Profile::Docker => DOCKER_HOOKS,
            _ => &[],
        }
    }

    /// The packages installed on top of minbase, sorted and without repeats.
    pub fn packages(self) -> Vec<&'static str> {
        let extra: &[&[&str]] = match self {
            Profile::Minimal => &[],
            Profile::Python => &[PYTHON],
            Profile::Node => &[NODE],
            Profile::Full => &[PYTHON, NODE],
            Profile::Docker => &[DOCKER],
        };
        let mut all: Vec<&str> = BASE.iter().chain(extra.iter().copied().flatten()).copied().collect();
        all.sort_unstable();
        all.dedup();
        all
    }
}

/// Permanent in the image (`/etc/apt/apt.conf.d/99mmdebstrap`): mirrors that serve a dated
/// Debian snapshot have Release files past their Valid-Until.
const APT_OPTS: &[&str] =
    &["Acquire::Check-Valid-Until \"false\"", "Acquire::Check-Date \"false\"", "Acquire::Languages \"none\""];
/// Permanent too (`/etc/dpkg/dpkg.cfg.d/99mmdebstrap`), as in Docker's slim images.
const DPKG_OPTS: &[&str] = &[
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
];
/// Run on the host after the packages are in; `$1` is the root.
const CUSTOMIZE_HOOKS: &[&str] = &[
    "chroot \"$1\" useradd --create-home --uid 1000 --user-group --shell /bin/bash daytona",
    "printf 'daytona ALL=(ALL) NOPASSWD:ALL\\n' > \"$1\"/etc/sudoers.d/daytona && chmod 0440 \"$1\"/etc/sudoers.d/daytona",
    // PEP 668: `python -m pip install` works as in Docker's python images (the SDK's
    // pip_install runs it); PIP_BREAK_SYSTEM_PACKAGES in the config says the same.
    "rm -f \"$1\"/usr/lib/python3*/EXTERNALLY-MANAGED",
    "rm -rf \"$1\"/var/lib/apt/lists/* \"$1\"/var/cache/apt/*.bin \"$1\"/var/cache/apt/archives/*.deb",
    // mmdebstrap copies the host's; the sandbox runtime bind-mounts its own over both.
    "echo localhost > \"$1\"/etc/hostname",
    ": > \"$1\"/etc/resolv.conf",
];
/// Merged /usr by symlinks (as debootstrap does) instead of the usrmerge package and perl.
const MERGED_USR_HOOKS: &str = "/usr/share/mmdebstrap/hooks/merged-usr";
const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Everything that decides an image.
#[derive(Debug, Clone)]
pub struct Recipe {
    /// The profile.
    pub profile: Profile,
    /// Debian release codename (`bookworm`).
    pub release: String,
    /// mmdebstrap's mirror arguments (`deb [opts] URI SUITE COMPONENTS` or a URL); empty:
    /// mmdebstrap's default.
    pub mirrors: Vec<String>,
}

/// A built image in the cache.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Built {
    /// Digest of `layer.tar.gz`.
    pub layer_digest: String,
    /// Its size.
    pub layer_size: u64,
    /// Digest of the uncompressed tar.
    pub diff_id: String,
    /// Digest of `config.json`.
    pub config_digest: String,
    /// Digest of `manifest.json`.
    pub manifest_digest: String,
    /// When it was built (RFC 3339).
    pub created: String,
}

/// A cache entry: its directory and what it holds.
#[derive(Debug, Clone)]
pub struct Entry {
    /// `<cache>/<profile>-<release>-<key>`.
    pub dir: PathBuf,
    /// From `image.json`.
    pub built: Built,
}

impl Entry {
    /// `layer.tar.gz`.
    pub fn layer(&self) -> PathBuf {
        self.dir.join("layer.tar.gz")
    }
    /// `config.json`.
    pub fn config(&self) -> PathBuf {
        self.dir.join("config.json")
    }
    /// `manifest.json`'s bytes.
    pub fn manifest(&self) -> anyhow::Result<Vec<u8>> {
        let p = self.dir.join("manifest.json");
        std::fs::read(&p).with_context(|| format!("read {}", p.display()))
    }
}

/// The release this host runs (`VERSION_CODENAME` of /etc/os-release).
pub fn host_release() -> anyhow::Result<String> {
    let text = std::fs::read_to_string("/etc/os-release").context("read /etc/os-release")?;
    os_release_codename(&text).context("/etc/os-release names no VERSION_CODENAME: give --release")
}

fn os_release_codename(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim().trim_matches(['"', '\'']).to_string())
        .filter(|v| !v.is_empty())
}

/// The host's apt sources for `release` and its `-updates`/`-security` suites, as one-line
/// entries for mmdebstrap (which would otherwise use deb.debian.org): deb822 files under
/// /etc/apt/sources.list.d and one-line `sources.list` files.
pub fn host_sources(release: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir("/etc/apt/sources.list.d")
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    for p in files.iter().filter(|p| p.extension().is_some_and(|e| e == "sources")) {
        if let Ok(text) = std::fs::read_to_string(p) {
            lines.extend(deb822_sources(&text, release));
        }
    }
    let lists = std::iter::once(PathBuf::from("/etc/apt/sources.list"))
        .chain(files.iter().filter(|p| p.extension().is_some_and(|e| e == "list")).cloned());
    for p in lists {
        if let Ok(text) = std::fs::read_to_string(&p) {
            lines.extend(one_line_sources(&text, release));
        }
    }
    lines
}

fn wanted_suite(suite: &str, release: &str) -> bool {
    suite == release || suite.strip_prefix(release).is_some_and(|r| r.starts_with('-'))
}

/// `deb` entries of a deb822 `.sources` file for `release`.
fn deb822_sources(text: &str, release: &str) -> Vec<String> {
    let mut out = Vec::new();
    for para in text.split("\n\n") {
        let mut fields: Vec<(String, String)> = Vec::new();
        for line in para.lines().filter(|l| !l.starts_with('#')) {
            if line.starts_with([' ', '\t']) {
                if let Some(last) = fields.last_mut() {
                    last.1.push(' ');
                    last.1.push_str(line.trim());
                }
            } else if let Some((k, v)) = line.split_once(':') {
                fields.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let get = |k: &str| fields.iter().find(|(f, _)| f == k).map(|(_, v)| v.as_str()).unwrap_or("");
        if !get("types").split_whitespace().any(|t| t == "deb") || get("enabled").eq_ignore_ascii_case("no") {
            continue;
        }
        let opts = match get("signed-by") {
            s if s.starts_with('/') => format!("[signed-by={s}] "),
            _ => String::new(),
        };
        let components = match get("components") {
            "" => "main",
            c => c,
        };
        for uri in get("uris").split_whitespace() {
            for suite in get("suites").split_whitespace().filter(|s| wanted_suite(s, release)) {
                out.push(format!("deb {opts}{uri} {suite} {components}"));
            }
        }
    }
    out
}

/// `deb` lines of a one-line `sources.list` for `release`.
fn one_line_sources(text: &str, release: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default();
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some((&"deb", rest)) = words.split_first() else { continue };
        let (opts, rest) = match rest.first() {
            Some(w) if w.starts_with('[') => match rest.iter().position(|w| w.ends_with(']')) {
                Some(end) => (format!("{} ", rest[..=end].join(" ")), &rest[end + 1..]),
                None => continue,
            },
            _ => (String::new(), rest),
        };
        if rest.len() >= 2 && wanted_suite(rest[1], release) {
            out.push(format!("deb {opts}{}", rest.join(" ")));
        }
    }
    out
}

impl Recipe {
    /// The image tag: `<profile>-<release>`.
    pub fn tag(&self) -> String {
        format!("{}-{}", self.profile.name(), self.release)
    }

    /// A short hash of everything that decides the image.
    pub fn key(&self) -> String {
        let all = json!({
            "v": RECIPE_VERSION, "release": self.release, "packages": self.profile.packages(),
            "mirrors": self.mirrors, "apt": APT_OPTS, "dpkg": DPKG_OPTS, "hooks": CUSTOMIZE_HOOKS, "profileHooks": self.profile.hooks(),
            "mergedUsr": MERGED_USR_HOOKS, "user": USER, "env": self.env(),
            // Everything the image config decides (user, entrypoint, labels).
            "config": self.config("-", "-"),
        });
        hex::encode(&sha2::Sha256::digest(all.to_string().as_bytes())[..8])
    }

    /// The image's environment.
    fn env(&self) -> Vec<String> {
        vec![PATH_ENV.into(), "LANG=C.UTF-8".into(), "PIP_BREAK_SYSTEM_PACKAGES=1".into()]
    }

    /// The cache entry's directory under `cache`.
    pub fn entry_dir(&self, cache: &Path) -> PathBuf {
        cache.join(format!("{}-{}", self.tag(), self.key()))
    }

    /// The finished entry in `cache`, if there is one.
    pub fn cached(&self, cache: &Path) -> Option<Entry> {
        let dir = self.entry_dir(cache);
        let built: Built = serde_json::from_slice(&std::fs::read(dir.join("image.json")).ok()?).ok()?;
        Some(Entry { dir, built })
    }

    /// The mmdebstrap command writing the root filesystem as a tar to stdout.
    pub fn command(&self) -> Command {
        let mut c = Command::new("mmdebstrap");
        c.arg("--variant=minbase").arg("--format=tar").arg(format!("--include={}", self.profile.packages().join(",")));
        if Path::new(MERGED_USR_HOOKS).is_dir() {
            c.arg(format!("--hook-dir={MERGED_USR_HOOKS}"));
        }
        if is_root() {
            c.arg("--mode=root");
        }
        c.args(APT_OPTS.iter().map(|o| format!("--aptopt={o}")));
        c.args(DPKG_OPTS.iter().map(|o| format!("--dpkgopt={o}")));
        c.args(CUSTOMIZE_HOOKS.iter().chain(self.profile.hooks()).map(|h| format!("--customize-hook={h}")));
        c.arg(&self.release).arg("-").args(&self.mirrors);
        c.env("LC_ALL", "C.UTF-8");
        c
    }

    /// The image config for a layer with `diff_id`.
    pub fn config(&self, diff_id: &str, created: &str) -> Value {
        // The engine runs as the sandbox's root, as in Docker's own docker:dind images.
        let (user, workdir) = if self.profile == Profile::Docker { ("root", "/root") } else { (USER, HOME) };
        let mut labels = json!({
            "dev.cove.bootstrap.profile": self.profile.name(),
            "dev.cove.bootstrap.release": self.release,
            "dev.cove.bootstrap.packages": self.profile.packages().join(","),
        });
        if self.profile == Profile::Docker {
            labels[cove_types::sandbox::ENGINE_LABEL] = json!("true");
        }
        let mut config = json!({
            "architecture": "amd64",
            "os": "linux",
            "created": created,
            "config": {
                "Env": self.env(),
                "Cmd": ["sleep", "infinity"],
                "User": user,
                "WorkingDir": workdir,
                "Labels": labels,
            },
            "rootfs": { "type": "layers", "diff_ids": [diff_id] },
            "history": [{
                "created": created,
                "created_by": format!("cove image bootstrap --profile {} (mmdebstrap --variant=minbase {})",
                                      self.profile.name(), self.release),
            }],
        });
        if self.profile == Profile::Docker {
            // A snapshot runs an image's Entrypoint (not its Cmd), as Daytona does.
            config["config"]["Entrypoint"] = json!([DOCKERD_ENTRYPOINT]);
            config["config"]["Cmd"] = json!([]);
        }
        config
    }

    /// Builds the entry (replacing an older one) and returns it; without `force`, an entry
    /// another process finished while this one waited for the lock is returned instead.
    /// mmdebstrap's messages go to `build.log` and its `I:`/`W:`/`E:` lines to stderr.
    pub fn build(&self, cache: &Path, force: bool) -> anyhow::Result<Entry> {
        make_private_dir(cache)?;
        let dir = self.entry_dir(cache);
        let lock_path = cache.join(format!("{}.lock", self.tag()));
        let lock = std::fs::File::create(&lock_path).with_context(|| format!("create {}", lock_path.display()))?;
        lock.lock().with_context(|| format!("lock {}", lock_path.display()))?;
        if !force && let Some(e) = self.cached(cache) {
            return Ok(e);
        }
        let tmp = cache.join(format!(".tmp-{}-{}", self.tag(), std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        make_private_dir(&tmp)?;
        let result = self.build_into(&tmp);
        let built = match result {
            Ok(b) => b,
            Err(e) => {
                let log = tmp.join("build.log");
                let kept = cache.join(format!("{}.failed.log", self.tag()));
                let _ = std::fs::rename(&log, &kept);
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(e.context(format!("full log: {}", kept.display())));
            }
        };
        if dir.exists() {
            let old = cache.join(format!(".old-{}-{}", self.tag(), std::process::id()));
            std::fs::rename(&dir, &old).with_context(|| format!("move {} aside", dir.display()))?;
            let _ = std::fs::remove_dir_all(&old);
        }
        std::fs::rename(&tmp, &dir).with_context(|| format!("rename {} to {}", tmp.display(), dir.display()))?;
        Ok(Entry { dir, built })
    }

    fn build_into(&self, dir: &Path) -> anyhow::Result<Built> {
        let log_path = dir.join("build.log");
        let mut log = std::fs::File::create(&log_path).with_context(|| format!("create {}", log_path.display()))?;
        let mut cmd = self.command();
        writeln!(log, "$ {cmd:?}")?;
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("run mmdebstrap (install it: apt-get install mmdebstrap)")?;
        let stderr = child.stderr.take().expect("piped");
        let mut log2 = log.try_clone()?;
        let relay = std::thread::spawn(move || {
            let mut tail = std::collections::VecDeque::new();
            for line in io::BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = writeln!(log2, "{line}");
                if ["I: ", "W: ", "E: "].iter().any(|p| line.starts_with(p)) {
                    eprintln!("  {line}");
                }
                tail.push_back(line);
                if tail.len() > 30 {
                    tail.pop_front();
                }
            }
            tail.into_iter().collect::<Vec<_>>().join("\n")
        });
        let layer_path = dir.join("layer.tar.gz");
        let layer = std::fs::File::create(&layer_path).with_context(|| format!("create {}", layer_path.display()))?;
        let stdout = child.stdout.take().expect("piped");
        let written = gzip_layer(stdout, io::BufWriter::with_capacity(1 << 20, layer));
        let status = child.wait().context("wait for mmdebstrap")?;
        let tail = relay.join().unwrap_or_default();
        if !status.success() {
            anyhow::bail!("mmdebstrap failed ({status}); its last lines:\n{tail}");
        }
        let layer = written.context("write the layer")?;
        let created = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let config = serde_json::to_vec(&self.config(&layer.diff_id, &created))?;
        let manifest = manifest(&config, &layer);
        let built = Built {
            layer_digest: layer.digest.clone(),
            layer_size: layer.size,
            diff_id: layer.diff_id.clone(),
            config_digest: sha256(&config),
            manifest_digest: sha256(&manifest),
            created,
        };
        for (name, bytes) in
            [("config.json", config), ("manifest.json", manifest), ("image.json", serde_json::to_vec_pretty(&built)?)]
        {
            std::fs::write(dir.join(name), bytes).with_context(|| format!("write {name}"))?;
        }
        Ok(built)
    }
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Creates `dir` (and parents) readable by its owner only.
fn make_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("create {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("restrict {}", dir.display()))
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// A gzip layer as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// Digest of the compressed bytes.
    pub digest: String,
    /// Their count.
    pub size: u64,
    /// Digest of the uncompressed tar.
    pub diff_id: String,
}

/// Counts and hashes what passes through.
struct Hashing<W> {
    inner: W,
    hash: sha2::Sha256,
    size: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Streams a tar from `src` into `dst` as one gzip layer, hashing both sides.
pub fn gzip_layer(mut src: impl io::Read, dst: impl Write) -> io::Result<Layer> {
    let out = Hashing { inner: dst, hash: sha2::Sha256::new(), size: 0 };
    let gz = flate2::write::GzEncoder::new(out, flate2::Compression::default());
    let mut raw = Hashing { inner: gz, hash: sha2::Sha256::new(), size: 0 };
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        raw.write_all(&buf[..n])?;
    }
    let diff_id = format!("sha256:{}", hex::encode(raw.hash.finalize()));
    let mut out = raw.inner.finish()?;
    out.flush()?;
    Ok(Layer { digest: format!("sha256:{}", hex::encode(out.hash.finalize())), size: out.size, diff_id })
}

/// The OCI manifest of `config` and one gzip `layer`.
pub fn manifest(config: &[u8], layer: &Layer) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": { "mediaType": OCI_CONFIG, "digest": sha256(config), "size": config.len() },
        "layers": [{ "mediaType": OCI_LAYER_GZIP, "digest": layer.digest, "size": layer.size }],
    }))
    .expect("a JSON value serializes")
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    fn recipe(profile: Profile) -> Recipe {
        Recipe { profile, release: "bookworm".into(), mirrors: vec!["deb http://m/debian bookworm main".into()] }
    }

    #[test]
    fn a_gzip_layer_hashes_the_tar_for_its_diff_id_and_the_gzip_for_its_digest() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "etc/hello", &b"hello"[..]).unwrap();
        let tar = b.into_inner().unwrap();
        let mut gz = Vec::new();
        let layer = gzip_layer(&tar[..], &mut gz).unwrap();
        assert_eq!(layer.diff_id, sha256(&tar));
        assert_eq!(layer.digest, sha256(&gz));
        assert_eq!(layer.size, gz.len() as u64);
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&gz[..]).read_to_end(&mut back).unwrap();
        assert_eq!(back, tar);
    }

    #[test]
    fn the_config_runs_as_daytona_in_its_home_with_pip_allowed_and_names_the_recipe() {
        let c = recipe(Profile::Minimal).config("sha256:ab", "2025-01-01T00:00:00Z");
        assert_eq!((c["os"].as_str(), c["architecture"].as_str()), (Some("linux"), Some("amd64")));
        assert_eq!(c["config"]["User"], "daytona");
        assert_eq!(c["config"]["WorkingDir"], "/home/daytona");
        assert_eq!(c["config"]["Cmd"], json!(["sleep", "infinity"]));
        let env: Vec<&str> = c["config"]["Env"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
        assert!(env.contains(&"PIP_BREAK_SYSTEM_PACKAGES=1") && env.contains(&"LANG=C.UTF-8"), "{env:?}");
        assert!(env.iter().any(|e| e.starts_with("PATH=")), "{env:?}");
        assert_eq!(c["config"]["Labels"]["dev.cove.bootstrap.profile"], "minimal");
        assert_eq!(c["config"]["Labels"]["dev.cove.bootstrap.release"], "bookworm");
        assert_eq!(c["rootfs"]["diff_ids"], json!(["sha256:ab"]));
    }

    #[test]
    fn the_manifest_names_the_config_and_the_layer_with_their_sizes() {
        let layer = Layer { digest: "sha256:11".into(), size: 42, diff_id: "sha256:22".into() };
        let m: Value = serde_json::from_slice(&manifest(b"{}", &layer)).unwrap();
        assert_eq!(m["schemaVersion"], 2);
        assert_eq!(m["mediaType"], OCI_MANIFEST);
        assert_eq!(m["config"]["digest"], sha256(b"{}"));
        assert_eq!(m["config"]["size"], 2);
        assert_eq!(m["layers"], json!([{ "mediaType": OCI_LAYER_GZIP, "digest": "sha256:11", "size": 42 }]));
    }

    #[test]
    fn profiles_add_to_the_minimal_one_and_full_has_everything() {
        let min = Profile::Minimal.packages();
        for p in ["python3", "python3-pip", "python-is-python3", "ca-certificates", "sudo"] {
            assert!(min.contains(&p), "{p}");
        }
        assert!(!min.contains(&"nodejs"));
        let full = Profile::Full.packages();
        for p in Profile::Python.packages().into_iter().chain(Profile::Node.packages()) {
            assert!(full.contains(&p), "{p}");
        }
        assert!(Profile::Node.packages().contains(&"npm") && !Profile::Python.packages().contains(&"nodejs"));
        // The SDK's create_lsp_server("python") needs a language server in the default image.
        assert!(Profile::Python.packages().contains(&"python3-pylsp") && full.contains(&"python3-pylsp"));
    }

    #[test]
    fn the_cache_key_changes_with_what_decides_the_image() {
        let a = recipe(Profile::Minimal);
        assert_eq!(a.key(), recipe(Profile::Minimal).key());
        assert_ne!(a.key(), recipe(Profile::Python).key());
        let mut other_mirror = a.clone();
        other_mirror.mirrors = vec!["http://elsewhere/debian".into()];
        assert_ne!(a.key(), other_mirror.key());
        assert!(a.entry_dir(Path::new("/c")).to_string_lossy().starts_with("/c/minimal-bookworm-"));
    }

    #[test]
    fn host_sources_keep_only_the_release_suites_with_their_keyring() {
        let deb822 = "Types: deb\n# comment\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates trixie\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\nTypes: deb-src\nURIs: http://x\nSuites: bookworm\n";
        assert_eq!(
            deb822_sources(deb822, "bookworm"),
            [
                "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main",
                "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-updates main",
            ]
        );
        let list = "deb http://a/debian bookworm main contrib\n# deb http://b bookworm main\ndeb [arch=amd64] http://c bookworm-security main\ndeb http://d bookwormish main\ndeb-src http://e bookworm main\n";
        assert_eq!(
            one_line_sources(list, "bookworm"),
            ["deb http://a/debian bookworm main contrib", "deb [arch=amd64] http://c bookworm-security main"]
        );
        assert_eq!(os_release_codename("NAME=x\nVERSION_CODENAME=\"bookworm\"\n").as_deref(), Some("bookworm"));
    }
}
