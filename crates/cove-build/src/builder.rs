//! The build orchestrator.
//!
//! [`Builder::build`] parses and plans the Dockerfile, then for each step of each needed
//! stage: computes the cache key, reuses a cached layer or executes the step (RUN through the
//! [`Backend`], COPY/ADD with [`crate::copy`], WORKDIR by creating the directory), turns a new
//! layer directory into a blob with [`crate::layer`], and finally writes the image config and
//! an OCI manifest into the content store.
//!
//! ```text
//! server                                  cove-build
//!   Builder::new(&backend, &cache, &content)
//!   .build(&request, &log) ───────────────▶ parse → plan
//!                                           for each stage: backend.base_image(FROM)
//!                                             for each step: cache.lookup(key)
//!                                               RUN  → backend.run(lowers, upper, argv…)
//!                                               COPY → copy::apply_copy (backend.view for --from)
//!                                               → layer::write_layer → cache.insert
//!                                           config + manifest → ContentStore
//!   ◀──────────────────────────────────── BuildOutput { manifest_digest, … }
//! ```
//!
//! Dropping the future cancels the build: scratch directories are removed by their guards;
//! the backend must stop its container and unmount when its own futures are dropped.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use cove_image::ContentStore;
use cove_image::oci::{Descriptor, OCI_MANIFEST};
use cove_types::{Digest, ErrorKind};

use crate::cache::{Cache, CacheError, CacheHit, step_key};
use crate::config::{History, ImageConfig, rfc3339};
use crate::context::{BuildContext, ContextError, Source, hash_sources, resolve_sources};
use crate::copy::{CopyError, CopyItem, CopyRequest, apply_copy, make_dir, resolve_chown};
use crate::dockerfile::DockerfileError;
use crate::layer::{LAYER_MEDIA_TYPE, LayerBlob, LayerError, write_layer};
use crate::lower::LowerStack;
use crate::plan::{Action, CopyAction, CopyFrom, PlanError, PlannedSource, RunAction, StageBase, Step};

/// OCI image config media type.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
/// Output lines kept for the error of a failed RUN.
const TAIL_LINES: usize = 20;

/// A base image resolved by the backend.
#[derive(Debug, Clone)]
pub struct BaseImage {
    /// Manifest digest (part of the FROM step's cache key).
    pub manifest_digest: Digest,
    /// The image config as stored (unknown fields are kept).
    pub config: ImageConfig,
    /// Its layers, bottom first, already in the content store.
    pub layers: Vec<Descriptor>,
    /// The unpacked root filesystem, used read-only as the lowest overlay lowerdir.
    pub rootfs: PathBuf,
}

/// One RUN for the backend to execute.
#[derive(Debug, Clone, Copy)]
pub struct RunStep<'a> {
    /// Overlay lowerdirs, topmost first; the last is the base rootfs (an empty directory for
    /// `scratch`). Upper directories of earlier steps contain overlay whiteouts and opaque
    /// markers, which overlayfs honours in lowerdirs.
    pub lowers: &'a [PathBuf],
    /// Empty directory receiving the changes (overlay upperdir). Mount with `metacopy=off`
    /// and `redirect_dir=off` so it is self-contained.
    pub upper: &'a Path,
    /// Overlay workdir on the same filesystem as `upper`.
    pub work: &'a Path,
    /// The command; the shell form already includes the shell (`/bin/sh -c …`).
    pub argv: &'a [String],
    /// `KEY=value` environment.
    pub env: &'a [String],
    /// Working directory (absolute; create it if missing).
    pub workdir: &'a str,
    /// USER as written (`name`, `uid`, `uid:gid`, `name:group`); empty means root.
    pub user: &'a str,
    /// `RUN --network` (`default` or `none`; the planner refuses others), if given.
    pub network: Option<&'a str>,
}

/// A mounted read-only merged view; unmounted when dropped.
pub trait MergedView: Send + Sync {
    /// The merged root directory.
    fn root(&self) -> &Path;
}

/// A failure inside the backend, with the operation that failed.
#[derive(Debug, thiserror::Error)]
#[error("{operation}")]
pub struct BackendError {
    /// What failed (`pull python:3.12`, `start build container`).
    pub operation: String,
    /// Its class.
    pub kind: ErrorKind,
    /// Cause.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl BackendError {
    /// A backend error with a cause.
    pub fn new(
        operation: impl Into<String>,
        kind: ErrorKind,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        BackendError { operation: operation.into(), kind, source: Some(source.into()) }
    }
}

/// What the builder needs from the server: images, containers and mounts.
#[async_trait::async_trait]
pub trait Backend: Send + Sync {
    /// Pulls/resolves a FROM (or `COPY --from=<image>`) image: its manifest digest, config,
    /// layer descriptors (blobs already in the content store) and unpacked rootfs.
    async fn base_image(&self, image: &str) -> Result<BaseImage, BackendError>;

    /// Runs one RUN step (see [`RunStep`]); output chunks go to `log`. Returns the exit code.
    async fn run(&self, step: RunStep<'_>, log: &LogSink) -> Result<i32, BackendError>;

    /// Mounts a read-only merged view of `lowers` (topmost first) for `COPY --from`.
    async fn view(&self, lowers: &[PathBuf]) -> Result<Box<dyn MergedView>, BackendError>;
}

/// The callback behind a [`LogSink`].
type LogFn = dyn Fn(&[u8]) + Send + Sync;

/// Where build output goes: a cheap, cloneable byte sink (a channel or a callback).
#[derive(Clone)]
pub struct LogSink {
    f: Arc<LogFn>,
}

impl std::fmt::Debug for LogSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogSink")
    }
}

impl LogSink {
    /// A sink calling `f` for each chunk.
    pub fn new(f: impl Fn(&[u8]) + Send + Sync + 'static) -> Self {
        LogSink { f: Arc::new(f) }
    }

    /// A sink feeding an unbounded channel.
    pub fn channel() -> (Self, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (LogSink::new(move |b| drop(tx.send(b.to_vec()))), rx)
    }

    /// A sink that drops everything.
    pub fn discard() -> Self {
        LogSink::new(|_| {})
    }

    /// Writes raw output.
    pub fn write(&self, bytes: &[u8]) {
        (self.f)(bytes)
    }

    /// Writes one line (a newline is added).
    pub fn line(&self, s: &str) {
        let mut b = Vec::with_capacity(s.len() + 1);
        b.extend_from_slice(s.as_bytes());
        b.push(b'\n');
        self.write(&b);
    }
}

/// What to build.
#[derive(Debug, Clone, Default)]
pub struct BuildRequest {
    /// Dockerfile text.
    pub dockerfile: String,
    /// `--build-arg` values.
    pub build_args: BTreeMap<String, String>,
    /// The context directory (see [`crate::context::extract_tars`]).
    pub context_dir: PathBuf,
    /// Target stage (`None`: the last one).
    pub target: Option<String>,
}

/// A finished build.
#[derive(Debug, Clone)]
pub struct BuildOutput {
    /// Digest of the OCI manifest in the content store.
    pub manifest_digest: Digest,
    /// The manifest bytes.
    pub manifest: Vec<u8>,
    /// Digest of the config blob.
    pub config_digest: Digest,
    /// The image config written.
    pub config: ImageConfig,
    /// All layers, bottom first (base image layers included).
    pub layers: Vec<Descriptor>,
    /// The image's ENTRYPOINT.
    pub entrypoint: Option<Vec<String>>,
    /// The image's CMD.
    pub cmd: Option<Vec<String>>,
    /// Layer steps served from the cache.
    pub cache_hits: usize,
    /// Steps in the build (FROM lines included).
    pub steps: usize,
}

/// A failed build.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The Dockerfile does not parse.
    #[error(transparent)]
    Parse(#[from] DockerfileError),
    /// The Dockerfile does not plan (substitution, stages, values).
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// A RUN exited non-zero.
    #[error("step `{step}` failed with exit code {exit_code}")]
    StepFailed {
        /// The instruction (`RUN false`).
        step: String,
        /// Its exit code.
        exit_code: i32,
        /// The last lines of its output.
        output: Vec<String>,
    },
    /// Resolving a base image failed.
    #[error("resolve base image {image}")]
    BaseImage {
        /// The image.
        image: String,
        /// Cause.
        #[source]
        source: BackendError,
    },
    /// The backend failed while executing a step.
    #[error("step `{step}`")]
    Backend {
        /// The instruction.
        step: String,
        /// Cause.
        #[source]
        source: BackendError,
    },
    /// COPY/ADD sources could not be resolved.
    #[error("step `{step}`")]
    Context {
        /// The instruction.
        step: String,
        /// Cause.
        #[source]
        source: ContextError,
    },
    /// COPY/ADD could not be applied.
    #[error("step `{step}`")]
    Copy {
        /// The instruction.
        step: String,
        /// Cause.
        #[source]
        source: CopyError,
    },
    /// Exporting a layer failed.
    #[error("export the layer of step `{step}`")]
    Layer {
        /// The instruction.
        step: String,
        /// Cause.
        #[source]
        source: LayerError,
    },
    /// The step cache failed.
    #[error("build cache")]
    Cache(#[source] CacheError),
    /// Opening the context failed.
    #[error("open the build context")]
    OpenContext(#[source] ContextError),
    /// Writing the config or manifest failed.
    #[error("store the image {what}")]
    StoreImage {
        /// `config` or `manifest`.
        what: &'static str,
        /// Cause.
        #[source]
        source: cove_image::content::ContentError,
    },
    /// A blocking task panicked or was cancelled.
    #[error("build worker task for step `{step}`")]
    Worker {
        /// The instruction.
        step: String,
        /// Cause.
        #[source]
        source: tokio::task::JoinError,
    },
}

impl BuildError {
    /// The class of the failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            BuildError::Parse(e) => e.kind(),
            BuildError::Plan(e) => e.kind(),
            BuildError::StepFailed { .. } => ErrorKind::FailedPrecondition,
            BuildError::BaseImage { source, .. } | BuildError::Backend { source, .. } => source.kind,
            BuildError::Context { source, .. } => source.kind(),
            BuildError::Copy { source, .. } => source.kind(),
            BuildError::Layer { source, .. } => source.kind(),
            BuildError::OpenContext(e) => e.kind(),
            _ => ErrorKind::Internal,
        }
    }

    /// A reason for users (a snapshot's `errorReason`): the error chain, and for a failed
    /// RUN the last lines of its output.
    pub fn reason(&self) -> String {
        let mut s = cove_types::error::chain(self);
        if let BuildError::StepFailed { output, .. } = self
            && !output.is_empty()
        {
            s.push_str(":\n");
            s.push_str(&output.join("\n"));
        }
        s
    }
}

/// Runs builds against a backend, a step cache and a content store.
#[derive(Debug)]
pub struct Builder<'a, B: Backend + ?Sized> {
    backend: &'a B,
    cache: &'a Cache,
    content: &'a ContentStore,
}

/// A stage as built so far.
#[derive(Debug, Clone)]
struct StageState {
    key: String,
    /// Layer directories and blobs of this build, bottom first.
    layers: Vec<(PathBuf, LayerBlob)>,
    base_rootfs: PathBuf,
    base_layers: Vec<Descriptor>,
    config: ImageConfig,
    /// Newest creation time of a layer made by this build (for a reproducible `created`).
    newest: u64,
}

impl StageState {
    fn lowers(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = self.layers.iter().rev().map(|(d, _)| d.clone()).collect();
        v.push(self.base_rootfs.clone());
        v
    }
}

/// Keeps the last lines of a step's output.
#[derive(Default)]
struct Tail {
    lines: VecDeque<String>,
    partial: String,
}

impl Tail {
    fn push(&mut self, bytes: &[u8]) {
        self.partial.push_str(&String::from_utf8_lossy(bytes));
        while let Some(i) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=i).collect();
            self.lines.push_back(line.trim_end_matches(['\n', '\r']).to_string());
            if self.lines.len() > TAIL_LINES {
                self.lines.pop_front();
            }
        }
    }

    fn finish(mut self) -> Vec<String> {
        if !self.partial.trim().is_empty() {
            self.lines.push_back(std::mem::take(&mut self.partial));
            if self.lines.len() > TAIL_LINES {
                self.lines.pop_front();
            }
        }
        self.lines.into()
    }
}

impl<'a, B: Backend + ?Sized> Builder<'a, B> {
    /// A builder over the server's backend, cache and content store.
    pub fn new(backend: &'a B, cache: &'a Cache, content: &'a ContentStore) -> Self {
        Builder { backend, cache, content }
    }

    /// Builds `req`, streaming progress to `log`.
    pub async fn build(&self, req: &BuildRequest, log: &LogSink) -> Result<BuildOutput, BuildError> {
        let df = crate::dockerfile::parse(&req.dockerfile)?;
        let plan = crate::plan::Plan::new(&df, &req.build_args, req.target.as_deref())?;
        let ctx = BuildContext::open(&req.context_dir).map_err(BuildError::OpenContext)?;
        for arg in &plan.unused_build_args {
            log.line(&format!("[Warning] One or more build-args [{arg}] were not consumed"));
        }
        let _lease = self.cache.lease().await;
        let empty_root = self.cache.scratch().map_err(BuildError::Cache)?;
        let mut done: HashMap<usize, StageState> = HashMap::new();
        let mut hits = 0;

        for stage in &plan.stages {
            log.line(&format!("Step {}/{} : {}", stage.first_step, plan.total_steps, stage.from_source));
            let mut st = match &stage.base {
                StageBase::Image(image) => {
                    let base = self
                        .backend
                        .base_image(image)
                        .await
                        .map_err(|source| BuildError::BaseImage { image: image.clone(), source })?;
                    let mut config = base.config;
                    if config.config.on_build.take().is_some_and(|t| !t.is_empty()) {
                        log.line(" ---> [Warning] the base image's ONBUILD triggers are not run by this builder");
                    }
                    StageState {
                        key: step_key("", "FROM", &format!("{} {:?}", base.manifest_digest, stage.platform)),
                        layers: Vec::new(),
                        base_rootfs: base.rootfs,
                        base_layers: base.layers,
                        config,
                        newest: 0,
                    }
                }
                StageBase::Stage(i) => done
                    .get(i)
                    .cloned()
                    .ok_or_else(|| BuildError::Plan(PlanError::UnknownStage { line: 0, name: i.to_string() }))?,
                StageBase::Scratch => StageState {
                    key: step_key("", "FROM scratch", ""),
                    layers: Vec::new(),
                    base_rootfs: empty_root.path().to_path_buf(),
                    base_layers: Vec::new(),
                    config: ImageConfig { architecture: "amd64".into(), os: "linux".into(), ..Default::default() },
                    newest: 0,
                },
            };
            // Check the whole stage first, so a bad instruction fails before anything runs;
            // then plan it step by step while executing, holding one config at a time (a
            // config per step of a large Dockerfile adds up).
            plan.check_stage(stage, &st.config.config)?;
            let base = st.config.config.clone();
            for step in plan.step_iter(stage, &base) {
                let step = step?;
                tracing::debug!(step = %step.label(), key = %st.key, "build step");
                log.line(&format!("Step {}/{} : {}", step.number, step.total, step.source));
                if self.step(&step, &mut st, &ctx, &done, log).await? {
                    hits += 1;
                }
                st.config.config = step.config;
            }
            done.insert(stage.index, st);
        }

        let target = plan.stages.last().map(|s| s.index).unwrap_or(0);
        let st = done.remove(&target).ok_or(BuildError::Plan(PlanError::UnknownTarget { name: target.to_string() }))?;
        let out = self.write_image(st, hits, plan.total_steps)?;
        log.line(&format!("Successfully built {}", out.manifest_digest));
        Ok(out)
    }

    /// Executes (or reuses) one step; true on a cache hit.
    async fn step(
        &self,
        step: &Step,
        st: &mut StageState,
        ctx: &BuildContext,
        done: &HashMap<usize, StageState>,
        log: &LogSink,
    ) -> Result<bool, BuildError> {
        let history = |st: &mut StageState, empty: bool| {
            st.config.history.push(History {
                created: None,
                created_by: Some(history_text(step)),
                comment: Some("cove-build".into()),
                empty_layer: empty,
            });
        };
        match &step.action {
            Action::Config => {
                st.key = step_key(&st.key, &step.cache_text(), "");
                history(st, true);
                Ok(false)
            }
            Action::Workdir(path) => {
                let exists = LowerStack::new(st.lowers()).stat(path).is_some_and(|f| f.meta.is_dir());
                st.key = step_key(&st.key, &step.cache_text(), if exists { "exists" } else { "create" });
                if exists {
                    history(st, true);
                    return Ok(false);
                }
                let path = path.clone();
                let hit = self
                    .layer_step(step, st, log, move |upper, lowers| make_dir(&path, upper, &LowerStack::new(lowers)))
                    .await?;
                history(st, false);
                Ok(hit)
            }
            Action::Run(run) => {
                st.key = step_key(&st.key, &step.cache_text(), "");
                let hit = self.run_step(step, run, st, log).await?;
                history(st, false);
                Ok(hit)
            }
            Action::Copy(copy) => {
                let hit = self.copy_step(step, copy, st, ctx, done, log).await?;
                history(st, false);
                Ok(hit)
            }
        }
    }

    /// Uses the cache entry for `st.key` if there is one; true on a hit.
    fn try_cache(&self, step: &Step, st: &mut StageState, log: &LogSink) -> Result<bool, BuildError> {
        let Some(hit) = self.cache.lookup(&st.key) else { return Ok(false) };
        let (Some(dir), Some(mut blob)) = (hit.dir, hit.entry.layer) else { return Ok(false) };
        if !self.content.contains(&blob.digest) {
            // The blob was garbage-collected: export the kept directory again.
            blob = write_layer(&dir, self.content)
                .map_err(|source| BuildError::Layer { step: step.source.clone(), source })?;
            self.cache.set_layer(&st.key, blob.clone()).map_err(BuildError::Cache)?;
        }
        log.line(" ---> Using cache");
        st.newest = st.newest.max(hit.entry.created);
        st.layers.push((dir, blob));
        Ok(true)
    }

    /// Runs `make` (blocking) to fill a fresh upper directory, exports and caches the layer.
    async fn layer_step<F>(&self, step: &Step, st: &mut StageState, log: &LogSink, make: F) -> Result<bool, BuildError>
    where
        F: FnOnce(&Path, Vec<PathBuf>) -> Result<(), CopyError> + Send + 'static,
    {
        if self.try_cache(step, st, log)? {
            return Ok(true);
        }
        let scratch = self.cache.scratch().map_err(BuildError::Cache)?;
        let upper = scratch.path().join("upper");
        let lowers = st.lowers();
        let store = self.content.clone();
        let label = step.source.clone();
        let up = upper.clone();
        let blob = tokio::task::spawn_blocking(move || -> Result<LayerBlob, BuildError> {
            std::fs::create_dir(&up)
                .map_err(|e| BuildError::Cache(CacheError::CreateDir { path: up.clone(), source: e }))?;
            make(&up, lowers).map_err(|source| BuildError::Copy { step: label.clone(), source })?;
            write_layer(&up, &store).map_err(|source| BuildError::Layer { step: label, source })
        })
        .await
        .map_err(|source| BuildError::Worker { step: step.source.clone(), source })??;
        self.commit(step, st, &upper, blob)?;
        Ok(false)
    }

    fn commit(&self, step: &Step, st: &mut StageState, upper: &Path, blob: LayerBlob) -> Result<(), BuildError> {
        let CacheHit { entry, dir } =
            self.cache.insert(&st.key, &step.source, Some(upper), Some(blob.clone())).map_err(BuildError::Cache)?;
        let dir = dir.ok_or_else(|| {
            BuildError::Cache(CacheError::Insert {
                key: st.key.clone(),
                source: std::io::Error::other("cache entry without its layer directory"),
            })
        })?;
        st.newest = st.newest.max(entry.created);
        st.layers.push((dir, entry.layer.unwrap_or(blob)));
        Ok(())
    }

    async fn run_step(
        &self,
        step: &Step,
        run: &RunAction,
        st: &mut StageState,
        log: &LogSink,
    ) -> Result<bool, BuildError> {
        if self.try_cache(step, st, log)? {
            return Ok(true);
        }
        let scratch = self.cache.scratch().map_err(BuildError::Cache)?;
        let upper = scratch.path().join("upper");
        let work = scratch.path().join("work");
        for d in [&upper, &work] {
            std::fs::create_dir(d)
                .map_err(|e| BuildError::Cache(CacheError::CreateDir { path: d.clone(), source: e }))?;
        }
        let lowers = st.lowers();
        let tail = Arc::new(Mutex::new(Tail::default()));
        let step_log = {
            let (outer, tail) = (log.clone(), tail.clone());
            LogSink::new(move |b| {
                outer.write(b);
                if let Ok(mut t) = tail.lock() {
                    t.push(b);
                }
            })
        };
        let code = self
            .backend
            .run(
                RunStep {
                    lowers: &lowers,
                    upper: &upper,
                    work: &work,
                    argv: &run.argv,
                    env: &run.env,
                    workdir: &run.workdir,
                    user: &run.user,
                    network: run.network.as_deref(),
                },
                &step_log,
            )
            .await
            .map_err(|source| BuildError::Backend { step: step.source.clone(), source })?;
        if code != 0 {
            let output = tail.lock().map(|mut t| std::mem::take(&mut *t).finish()).unwrap_or_default();
            log.line(&format!(" ---> The command '{}' returned a non-zero code: {code}", run.argv.join(" ")));
            return Err(BuildError::StepFailed { step: step.source.clone(), exit_code: code, output });
        }
        let store = self.content.clone();
        let up = upper.clone();
        let label = step.source.clone();
        let blob = tokio::task::spawn_blocking(move || write_layer(&up, &store))
            .await
            .map_err(|source| BuildError::Worker { step: step.source.clone(), source })?
            .map_err(|source| BuildError::Layer { step: label, source })?;
        self.commit(step, st, &upper, blob)?;
        Ok(false)
    }

    async fn copy_step(
        &self,
        step: &Step,
        copy: &CopyAction,
        st: &mut StageState,
        ctx: &BuildContext,
        done: &HashMap<usize, StageState>,
        log: &LogSink,
    ) -> Result<bool, BuildError> {
        let instruction = if copy.add { "ADD" } else { "COPY" };
        let ctx_err = |source| BuildError::Context { step: step.source.clone(), source };
        // Where sources come from: the context, another stage's merged view, or an image.
        let mut view_guard: Option<Box<dyn MergedView>> = None;
        let (root, ignore, from_input) = match &copy.from {
            None => (ctx.root().to_path_buf(), Some(ctx.ignore().clone()), String::new()),
            Some(from) => {
                let (lowers, input) = match from {
                    CopyFrom::Stage(i) => {
                        let s = done.get(i).ok_or_else(|| {
                            BuildError::Plan(PlanError::UnknownStage { line: step.line, name: i.to_string() })
                        })?;
                        (s.lowers(), format!("stage {}", s.key))
                    }
                    CopyFrom::Image(image) => {
                        let b = self
                            .backend
                            .base_image(image)
                            .await
                            .map_err(|source| BuildError::BaseImage { image: image.clone(), source })?;
                        (vec![b.rootfs], format!("image {}", b.manifest_digest))
                    }
                };
                let root = if lowers.len() == 1 {
                    lowers[0].clone()
                } else {
                    let v = self
                        .backend
                        .view(&lowers)
                        .await
                        .map_err(|source| BuildError::Backend { step: step.source.clone(), source })?;
                    let r = v.root().to_path_buf();
                    view_guard = Some(v);
                    r
                };
                (root, None, input)
            }
        };
        let mut items = Vec::new();
        let mut sources: Vec<Source> = Vec::new();
        for s in &copy.sources {
            match s {
                PlannedSource::Path(p) => {
                    let found = resolve_sources(&root, p, ignore.as_ref(), instruction).map_err(ctx_err)?;
                    sources.extend(found.iter().cloned());
                    items.extend(found.into_iter().map(CopyItem::Source));
                }
                PlannedSource::File { name, content } => {
                    items.push(CopyItem::File { name: name.clone(), content: content.clone() })
                }
            }
        }
        let inputs = if copy.from.is_none() {
            let (srcs, ig, chown, chmod) = (sources.clone(), ignore.clone(), copy.chown.clone(), copy.chmod);
            tokio::task::spawn_blocking(move || hash_sources(&srcs, ig.as_ref(), chown.as_deref(), chmod))
                .await
                .map_err(|source| BuildError::Worker { step: step.source.clone(), source })?
                .map_err(ctx_err)?
        } else {
            from_input
        };
        st.key = step_key(&st.key, &step.cache_text(), &inputs);
        let owner = match &copy.chown {
            Some(spec) => resolve_chown(spec, &LowerStack::new(st.lowers()))
                .map_err(|source| BuildError::Copy { step: step.source.clone(), source })?,
            None => (0, 0),
        };
        let (dest, chmod, add) = (copy.dest.clone(), copy.chmod, copy.add);
        let hit = self
            .layer_step(step, st, log, move |upper, lowers| {
                let req = CopyRequest { items, dest: &dest, owner, chmod, add, ignore: ignore.as_ref() };
                apply_copy(&req, upper, &LowerStack::new(lowers))
            })
            .await?;
        drop(view_guard);
        Ok(hit)
    }

    fn write_image(&self, st: StageState, hits: usize, steps: usize) -> Result<BuildOutput, BuildError> {
        let mut config = st.config;
        let created = if st.newest > 0 { Some(rfc3339(st.newest)) } else { config.created.clone() };
        config.created = created.clone();
        for h in config.history.iter_mut().filter(|h| h.comment.as_deref() == Some("cove-build")) {
            h.created = created.clone();
            h.comment = None;
        }
        let mut layers: Vec<Descriptor> = st
            .base_layers
            .into_iter()
            .map(|mut d| {
                if d.media_type == "application/vnd.docker.image.rootfs.diff.tar.gzip" {
                    d.media_type = LAYER_MEDIA_TYPE.into();
                }
                d
            })
            .collect();
        for (_, blob) in &st.layers {
            config.rootfs.diff_ids.push(blob.diff_id.to_string());
            layers.push(Descriptor {
                media_type: LAYER_MEDIA_TYPE.into(),
                digest: blob.digest.to_string(),
                size: blob.size,
                platform: None,
            });
        }
        if config.rootfs.kind.is_empty() {
            config.rootfs.kind = "layers".into();
        }
        let config_bytes = serde_json::to_vec(&config).map_err(|e| BuildError::StoreImage {
            what: "config",
            source: cove_image::content::ContentError::Write { path: PathBuf::from("config.json"), source: e.into() },
        })?;
        let config_digest = cove_image::content::sha256(&config_bytes);
        self.content
            .put(&config_digest, &config_bytes)
            .map_err(|source| BuildError::StoreImage { what: "config", source })?;
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": { "mediaType": CONFIG_MEDIA_TYPE, "digest": config_digest.to_string(), "size": config_bytes.len() },
            "layers": layers,
        });
        let manifest_bytes = serde_json::to_vec(&manifest).map_err(|e| BuildError::StoreImage {
            what: "manifest",
            source: cove_image::content::ContentError::Write { path: PathBuf::from("manifest.json"), source: e.into() },
        })?;
        let manifest_digest = cove_image::content::sha256(&manifest_bytes);
        self.content
            .put(&manifest_digest, &manifest_bytes)
            .map_err(|source| BuildError::StoreImage { what: "manifest", source })?;
        Ok(BuildOutput {
            manifest_digest,
            manifest: manifest_bytes,
            config_digest,
            entrypoint: config.config.entrypoint.clone(),
            cmd: config.config.cmd.clone(),
            config,
            layers,
            cache_hits: hits,
            steps,
        })
    }
}

/// Docker-style `created_by` text.
fn history_text(step: &Step) -> String {
    match &step.action {
        Action::Run(r) => r.argv.join(" "),
        _ => format!("/bin/sh -c #(nop) {}", step.source),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Pretends to be runc + the image store: a base image made from a directory, and a tiny
    /// interpreter for `echo X > /path`, `rm /path`, `nest N` (N nested directories `a`),
    /// `false`, joined by `&&`.
    struct FakeBackend {
        dir: PathBuf,
        content: ContentStore,
        runs: AtomicUsize,
    }

    struct CopiedView(PathBuf);

    impl MergedView for CopiedView {
        fn root(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for CopiedView {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn merge_into(src: &Path, dst: &Path) {
        for e in std::fs::read_dir(src).unwrap().flatten() {
            let (s, d) = (e.path(), dst.join(e.file_name()));
            let m = std::fs::symlink_metadata(&s).unwrap();
            if crate::lower::is_whiteout(&m) {
                let _ = std::fs::remove_dir_all(&d).or_else(|_| std::fs::remove_file(&d));
            } else if m.is_dir() {
                std::fs::create_dir_all(&d).unwrap();
                merge_into(&s, &d);
            } else if m.file_type().is_symlink() {
                let _ = std::fs::remove_file(&d);
                std::os::unix::fs::symlink(std::fs::read_link(&s).unwrap(), &d).unwrap();
            } else {
                std::fs::copy(&s, &d).unwrap();
            }
        }
    }

    #[async_trait::async_trait]
    impl Backend for FakeBackend {
        async fn base_image(&self, image: &str) -> Result<BaseImage, BackendError> {
            let rootfs = self.dir.join("base-rootfs");
            if !rootfs.exists() {
                std::fs::create_dir_all(rootfs.join("etc")).unwrap();
                std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
                std::fs::write(rootfs.join("etc/base-file"), "base\n").unwrap();
            }
            let blob = write_layer(&rootfs, &self.content).unwrap();
            let mut config = ImageConfig { architecture: "amd64".into(), os: "linux".into(), ..Default::default() };
            config.config.env = Some(vec!["PATH=/usr/bin:/bin".into()]);
            config.config.cmd = Some(vec!["python3".into()]);
            config.rootfs.diff_ids = vec![blob.diff_id.to_string()];
            Ok(BaseImage {
                manifest_digest: cove_image::content::sha256(image.as_bytes()),
                config,
                layers: vec![Descriptor {
                    media_type: "application/vnd.docker.image.rootfs.diff.tar.gzip".into(),
                    digest: blob.digest.to_string(),
                    size: blob.size,
                    platform: None,
                }],
                rootfs,
            })
        }

        async fn run(&self, step: RunStep<'_>, log: &LogSink) -> Result<i32, BackendError> {
            self.runs.fetch_add(1, Ordering::SeqCst);
            let script = step.argv.last().cloned().unwrap_or_default();
            for cmd in script.split("&&").map(str::trim) {
                if cmd == "false" {
                    for i in 0..30 {
                        log.line(&format!("noise {i}"));
                    }
                    log.write(b"boom: something went wrong\n");
                    return Ok(1);
                }
                if let Some(rest) = cmd.strip_prefix("echo ")
                    && let Some((text, path)) = rest.split_once(" > ")
                {
                    let p = step.upper.join(path.trim().trim_start_matches('/'));
                    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                    std::fs::write(p, format!("{text}\n")).unwrap();
                } else if let Some(depth) = cmd.strip_prefix("nest ") {
                    crate::limits::nest_dirs(step.upper, "a", depth.trim().parse().unwrap());
                } else if let Some(path) = cmd.strip_prefix("rm ") {
                    let rel = path.trim().trim_start_matches('/');
                    let p = step.upper.join(rel);
                    let _ = std::fs::remove_file(&p);
                    if step.lowers.iter().any(|l| l.join(rel).exists()) {
                        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                        let ok = std::process::Command::new("mknod").arg(&p).args(["c", "0", "0"]).status().unwrap();
                        assert!(ok.success(), "these tests need root for mknod");
                    }
                } else {
                    log.line(cmd);
                }
            }
            Ok(0)
        }

        async fn view(&self, lowers: &[PathBuf]) -> Result<Box<dyn MergedView>, BackendError> {
            let root = self.dir.join(format!("view-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&root).unwrap();
            for l in lowers.iter().rev() {
                merge_into(l, &root);
            }
            Ok(Box::new(CopiedView(root)))
        }
    }

    struct Env {
        _t: tempfile::TempDir,
        ctx: PathBuf,
        cache: Cache,
        content: ContentStore,
        backend: FakeBackend,
        out: PathBuf,
    }

    fn env() -> Env {
        let t = tempfile::tempdir().unwrap();
        let content = ContentStore::open(&t.path().join("content")).unwrap();
        let ctx = t.path().join("ctx");
        std::fs::create_dir_all(ctx.join("home/u/ctx")).unwrap();
        std::fs::create_dir_all(ctx.join("ctx")).unwrap();
        std::fs::write(ctx.join("home/u/ctx/a.txt"), "A\n").unwrap();
        std::fs::write(ctx.join("ctx/b.txt"), "B\n").unwrap();
        let backend =
            FakeBackend { dir: t.path().join("backend"), content: content.clone(), runs: AtomicUsize::new(0) };
        Env {
            cache: Cache::open(&t.path().join("cache")).unwrap(),
            out: t.path().join("out"),
            ctx,
            content,
            backend,
            _t: t,
        }
    }

    impl Env {
        async fn build(&self, dockerfile: &str) -> (Result<BuildOutput, BuildError>, String) {
            let (log, mut rx) = LogSink::channel();
            let req =
                BuildRequest { dockerfile: dockerfile.into(), context_dir: self.ctx.clone(), ..Default::default() };
            let res = Builder::new(&self.backend, &self.cache, &self.content).build(&req, &log).await;
            drop(log);
            let mut text = Vec::new();
            while let Some(chunk) = rx.recv().await {
                text.extend(chunk);
            }
            (res, String::from_utf8(text).unwrap())
        }

        /// Applies every layer of the manifest onto a fresh directory.
        fn unpack(&self, out: &BuildOutput) -> PathBuf {
            let _ = std::fs::remove_dir_all(&self.out);
            std::fs::create_dir_all(&self.out).unwrap();
            assert_eq!(out.layers.len(), out.config.rootfs.diff_ids.len());
            for (l, diff_id) in out.layers.iter().zip(&out.config.rootfs.diff_ids) {
                let d: Digest = l.digest.parse().unwrap();
                let r = cove_image::unpack::open_layer(&self.content.path(&d)).unwrap();
                cove_image::unpack::apply_layer(&self.out, r, Some(diff_id)).unwrap();
            }
            self.out.clone()
        }
    }

    const SDK_DOCKERFILE: &str = "FROM python:3.12.10-slim-bookworm\nRUN echo hi > /hi.txt\n\
        RUN \"bash\" \"-c\" \"echo \\'x\\'\"\nENV A='b c'\nWORKDIR /home/daytona\n\
        COPY [\"home/u/ctx/a.txt\", \"/app/a.txt\"]\nCOPY ctx/b.txt /app/b.txt\nRUN rm /etc/base-file\n";

    #[tokio::test]
    async fn the_sdk_dockerfile_builds_an_oci_image_with_its_files_and_config() {
        let e = env();
        let (res, log) = e.build(SDK_DOCKERFILE).await;
        let out = res.unwrap();
        assert!(log.contains("Step 2/8 : RUN echo hi > /hi.txt"), "{log}");
        assert!(log.contains("Step 8/8 : RUN rm /etc/base-file"), "{log}");
        assert_eq!((out.steps, out.cache_hits), (8, 0));
        assert_eq!(out.layers.len(), 1 + 6, "base + 3 RUN + WORKDIR + 2 COPY");
        assert!(out.layers.iter().all(|l| l.media_type == LAYER_MEDIA_TYPE));
        let manifest: serde_json::Value =
            serde_json::from_slice(&e.content.read(&out.manifest_digest).unwrap()).unwrap();
        assert_eq!(manifest["mediaType"], OCI_MANIFEST);
        assert_eq!(manifest["config"]["digest"], out.config_digest.to_string());
        assert!(e.content.contains(&out.config_digest));
        assert_eq!(out.config.config.env_get("A").as_deref(), Some("b c"));
        assert_eq!(out.config.config.working_dir.as_deref(), Some("/home/daytona"));
        assert_eq!(out.cmd, Some(vec!["python3".to_string()]), "CMD is inherited from the base");
        assert_eq!(out.config.history.len(), 7);

        let root = e.unpack(&out);
        assert_eq!(std::fs::read_to_string(root.join("hi.txt")).unwrap(), "hi\n");
        assert_eq!(std::fs::read_to_string(root.join("app/a.txt")).unwrap(), "A\n");
        assert_eq!(std::fs::read_to_string(root.join("app/b.txt")).unwrap(), "B\n");
        assert!(root.join("home/daytona").is_dir());
        assert!(!root.join("etc/base-file").exists(), "the RUN rm whiteout removed the base file");
        assert!(root.join("etc/passwd").exists());
    }

    #[tokio::test]
    async fn an_unchanged_rebuild_is_all_cache_hits_and_a_change_misses_from_that_step_on() {
        let e = env();
        let first = e.build(SDK_DOCKERFILE).await.0.unwrap();
        let runs = e.backend.runs.load(Ordering::SeqCst);
        assert_eq!(runs, 3);

        let (res, log) = e.build(SDK_DOCKERFILE).await;
        let second = res.unwrap();
        assert_eq!(second.cache_hits, 6);
        assert_eq!(e.backend.runs.load(Ordering::SeqCst), runs, "nothing ran again");
        assert_eq!(second.manifest_digest, first.manifest_digest, "a fully cached rebuild is the same image");
        assert_eq!(log.matches(" ---> Using cache").count(), 6, "{log}");

        std::fs::write(e.ctx.join("ctx/b.txt"), "changed\n").unwrap();
        let third = e.build(SDK_DOCKERFILE).await.0.unwrap();
        assert_eq!(third.cache_hits, 4, "RUN, RUN, WORKDIR and the first COPY are reused");
        assert_eq!(e.backend.runs.load(Ordering::SeqCst), runs + 1, "only the RUN after the changed COPY ran");
        assert_ne!(third.manifest_digest, first.manifest_digest);
        let root = e.unpack(&third);
        assert_eq!(std::fs::read_to_string(root.join("app/b.txt")).unwrap(), "changed\n");
        assert_eq!(e.cache.list().len(), 6 + 2);
    }

    #[tokio::test]
    async fn a_failing_run_names_the_step_its_exit_code_and_the_last_output_lines() {
        let e = env();
        let (res, log) = e.build("FROM alpine:3.20\nRUN echo ok > /ok\nRUN false\nRUN echo never > /n\n").await;
        let err = res.unwrap_err();
        assert_eq!(err.to_string(), "step `RUN false` failed with exit code 1");
        assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
        let BuildError::StepFailed { output, .. } = &err else { panic!("{err:?}") };
        assert_eq!(output.len(), TAIL_LINES);
        assert_eq!(output.last().map(String::as_str), Some("boom: something went wrong"));
        assert!(err.reason().starts_with("step `RUN false` failed with exit code 1:\n"), "{}", err.reason());
        assert!(err.reason().ends_with("boom: something went wrong"));
        assert!(log.contains("returned a non-zero code: 1"), "{log}");
        assert!(!log.contains("Step 4/4"), "the build stops at the failure");
        assert_eq!(
            std::fs::read_dir(e.cache.scratch().unwrap().path().parent().unwrap()).unwrap().count(),
            1,
            "the failed step's scratch directory is gone"
        );
    }

    #[tokio::test]
    async fn multi_stage_copy_from_by_name_and_index_reads_the_earlier_stage() {
        let e = env();
        let text = "FROM alpine:3.20 AS build\nRUN echo built > /out/bin\nRUN echo more > /out/other\n\
                    FROM alpine:3.20 AS unused\nRUN echo never > /x\n\
                    FROM alpine:3.20\nCOPY --from=build /out/bin /usr/local/bin/tool\nCOPY --from=0 /out/other /other\n";
        let (res, log) = e.build(text).await;
        let out = res.unwrap();
        assert!(!log.contains("never"), "the unused stage is not built: {log}");
        assert_eq!(e.backend.runs.load(Ordering::SeqCst), 2);
        assert_eq!(out.layers.len(), 1 + 2, "the final stage has the base and its two COPY layers");
        let root = e.unpack(&out);
        assert_eq!(std::fs::read_to_string(root.join("usr/local/bin/tool")).unwrap(), "built\n");
        assert_eq!(std::fs::read_to_string(root.join("other")).unwrap(), "more\n");
        assert!(!root.join("out").exists());
    }

    #[tokio::test]
    async fn heredoc_copy_and_build_args_reach_the_image() {
        let e = env();
        let text = "ARG V=1\nFROM alpine:3.20\nARG V\nCOPY <<EOF /etc/app.conf\nversion=$V\nEOF\n";
        let (log, _rx) = LogSink::channel();
        let req = BuildRequest {
            dockerfile: text.into(),
            context_dir: e.ctx.clone(),
            build_args: [("V".to_string(), "2".to_string())].into(),
            target: None,
        };
        let out = Builder::new(&e.backend, &e.cache, &e.content).build(&req, &log).await.unwrap();
        let root = e.unpack(&out);
        assert_eq!(std::fs::read_to_string(root.join("etc/app.conf")).unwrap(), "version=2\n");
    }

    #[tokio::test]
    async fn a_missing_copy_source_is_named() {
        let e = env();
        let err = e.build("FROM alpine:3.20\nCOPY nope.txt /x\n").await.0.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert_eq!(err.reason(), "step `COPY nope.txt /x`: COPY source nope.txt not found in the build context");
    }

    #[tokio::test]
    async fn multiplying_args_fail_the_build_naming_the_limit_before_anything_runs() {
        let e = env();
        let mut text = format!("FROM alpine:3.20\nRUN echo first > /f\nARG A0={}\n", "x".repeat(64));
        for i in 1..=10 {
            let p = i - 1;
            text.push_str(&format!("ARG A{i}=$A{p}$A{p}$A{p}$A{p}\n"));
        }
        let err = e.build(&text).await.0.unwrap_err();
        assert_eq!(err.reason(), "dockerfile line 9: expanded value exceeds 64 KiB");
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert_eq!(e.backend.runs.load(Ordering::SeqCst), 0, "the stage is checked before its first step runs");
    }

    #[tokio::test]
    async fn a_run_step_nesting_directories_past_the_limit_fails_with_the_path_problem() {
        let e = env();
        let err = e.build("FROM alpine:3.20\nRUN nest 5000\n").await.0.unwrap_err();
        let reason = err.reason();
        assert!(reason.starts_with("export the layer of step `RUN nest 5000`: the layer's path a/a/a/"), "{reason}");
        assert!(reason.ends_with("nests 513 directories deep, over the limit of 512"), "{reason}");
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    }

    #[tokio::test]
    async fn a_copy_destination_deeper_than_the_limit_fails_naming_the_path() {
        let e = env();
        let text = format!("FROM alpine:3.20\nCOPY ctx/b.txt {}/\n", "/d".repeat(5000));
        let reason = e.build(&text).await.0.unwrap_err().reason();
        assert!(reason.starts_with("dockerfile line 2: COPY destination /d/d/d"), "{reason}");
        assert!(reason.ends_with("is 10001 bytes long, over the limit of 3 KiB for a path"), "{reason}");
    }

    #[tokio::test]
    async fn an_add_archive_entry_longer_than_path_max_fails_with_its_cause() {
        let e = env();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        b.append_data(&mut h, format!("{}f", "a/".repeat(5000)), &b"x"[..]).unwrap();
        std::fs::write(e.ctx.join("deep.tar"), b.into_inner().unwrap()).unwrap();
        let reason = e.build("FROM alpine:3.20\nADD deep.tar /opt/\n").await.0.unwrap_err().reason();
        assert!(reason.starts_with("step `ADD deep.tar /opt/`: extract archive "), "{reason}");
        assert!(reason.contains("File name too long"), "the IO cause is kept: {reason}");
        assert!(reason.len() < 1000, "{reason}");
    }
}
