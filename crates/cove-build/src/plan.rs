//! The planner: stages, ARG scoping, variable substitution and the image config per step.
//!
//! Planning happens in two parts because a stage's substitutions depend on its base image's
//! config (`ENV PATH=/x:$PATH`):
//!
//! 1. [`Plan::new`] splits the Dockerfile into stages, resolves each FROM (global ARGs only,
//!    as Docker does), finds which stages the target (last) stage needs through `FROM <stage>`
//!    and `COPY --from`, and numbers the steps (`[2/5] RUN …`).
//! 2. [`Plan::steps`] walks one stage given its base config and returns [`Step`]s: what to
//!    execute, fully substituted, and the config after each step.
//!
//! ARG rules follow Docker: ARGs before the first FROM are global and visible only in FROM
//! lines unless a stage redeclares them (`ARG NAME` without a default then takes the global
//! value); `--build-arg` values override defaults; build args nobody declares are reported
//! in [`Plan::unused_build_args`] and otherwise ignored. ARGs are visible to RUN as
//! environment variables but never stored in the image; ENV wins over an ARG of the same name.
//!
//! Planning is bounded (see [`crate::limits`]): each word's expansion, the sum of one
//! instruction's expansions, a stage's config and ARG values, and every path an
//! instruction names in the image. Steps are produced one at a time ([`Plan::step_iter`]),
//! so a plan never holds a config per step. [`Plan::check`] plans every stage on an empty
//! base config before any image is pulled, which is how a snapshot's Dockerfile is refused
//! at creation.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

use crate::config::{ContainerConfig, Empty, Healthcheck};
use crate::dockerfile::{CommandForm, CopySource, Dockerfile, FromInstruction, Instruction, InstructionKind};
use crate::expand::{ExpandError, Lexer};
use crate::limits::{
    MAX_EXPANDED_INSTRUCTION_BYTES, MAX_STAGE_VARIABLES_BYTES, PathProblem, ShortPath, Size, check_path,
};

/// What one config or ARG entry counts on top of its text toward
/// [`MAX_STAGE_VARIABLES_BYTES`]: its allocation and bookkeeping, so a million empty
/// entries are as refused as a million bytes.
const ENTRY_OVERHEAD: usize = 16;

/// ARGs every build defines (BuildKit's automatic platform args), for linux/amd64.
const PLATFORM_ARGS: &[(&str, &str)] = &[
    ("TARGETPLATFORM", "linux/amd64"),
    ("TARGETOS", "linux"),
    ("TARGETARCH", "amd64"),
    ("TARGETVARIANT", ""),
    ("BUILDPLATFORM", "linux/amd64"),
    ("BUILDOS", "linux"),
    ("BUILDARCH", "amd64"),
    ("BUILDVARIANT", ""),
];
/// Build args that need no ARG declaration (Docker's predefined proxy args).
const PREDEFINED_ARGS: &[&str] = &[
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// A failed plan. Each variant names the Dockerfile line.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// Substitution failed.
    #[error("dockerfile line {line}: {source}")]
    Expand {
        /// 1-based line.
        line: usize,
        /// Cause.
        #[source]
        source: ExpandError,
    },
    /// `COPY --from` or `FROM` names a stage that does not exist before it.
    #[error("dockerfile line {line}: stage {name:?} is not defined before this instruction")]
    UnknownStage {
        /// 1-based line.
        line: usize,
        /// The reference.
        name: String,
    },
    /// The requested target stage does not exist.
    #[error("target stage {name:?} not found in the Dockerfile")]
    UnknownTarget {
        /// The requested name.
        name: String,
    },
    /// FROM expanded to nothing.
    #[error("dockerfile line {line}: FROM has an empty image name after substitution")]
    EmptyBase {
        /// 1-based line.
        line: usize,
    },
    /// `--chmod` is not an octal mode.
    #[error("dockerfile line {line}: invalid --chmod value {value:?}: only octal modes such as 755 are supported")]
    InvalidChmod {
        /// 1-based line.
        line: usize,
        /// The value.
        value: String,
    },
    /// ADD of a URL or git repository.
    #[error(
        "dockerfile line {line}: ADD {url} is not supported: the build server has no internet access; \
         download the file and COPY it from the build context instead"
    )]
    RemoteSource {
        /// 1-based line.
        line: usize,
        /// The URL.
        url: String,
    },
    /// `RUN --network=host` or an unknown mode.
    #[error(
        "dockerfile line {line}: RUN --network={value} is not supported: build steps never share the host's \
         network; use the default (outbound access through the server's NAT, DNS and blocks) or --network=none"
    )]
    RunNetwork {
        /// 1-based line.
        line: usize,
        /// The mode asked for.
        value: String,
    },
    /// A malformed flag or argument value (duration, port, signal…).
    #[error("dockerfile line {line}: invalid {what} {value:?}")]
    InvalidValue {
        /// 1-based line.
        line: usize,
        /// What kind of value.
        what: &'static str,
        /// The value.
        value: String,
    },
    /// The instruction's expanded words and heredoc bodies add up past
    /// [`MAX_EXPANDED_INSTRUCTION_BYTES`].
    #[error("dockerfile line {line}: expanded instruction exceeds {}", Size(MAX_EXPANDED_INSTRUCTION_BYTES))]
    InstructionTooLarge {
        /// 1-based line.
        line: usize,
    },
    /// The stage's config and ARG values grew past [`MAX_STAGE_VARIABLES_BYTES`].
    #[error(
        "dockerfile line {line}: the stage's image config and ARG values come to {} after this instruction, \
         over the limit of {}",
        Size(*size),
        Size(MAX_STAGE_VARIABLES_BYTES)
    )]
    VariablesTooLarge {
        /// 1-based line.
        line: usize,
        /// Their size (text plus a fixed overhead per entry).
        size: usize,
    },
    /// A path the instruction names in the image is too long or too deep.
    #[error("dockerfile line {line}: {what} {} {problem}", ShortPath(path))]
    Path {
        /// 1-based line.
        line: usize,
        /// `COPY destination`, `WORKDIR`, …
        what: &'static str,
        /// The path after substitution.
        path: String,
        /// What is wrong with it.
        #[source]
        problem: PathProblem,
    },
}

impl PlanError {
    /// Every plan failure is the caller's input.
    pub fn kind(&self) -> cove_types::ErrorKind {
        cove_types::ErrorKind::InvalidArgument
    }

    /// Whether this is a limit of [`crate::limits`] being crossed: those do not depend on a
    /// base image's config in any sensible Dockerfile, so they are refused before a build.
    pub fn is_limit(&self) -> bool {
        matches!(
            self,
            PlanError::Expand { source: ExpandError::TooLarge { .. }, .. }
                | PlanError::InstructionTooLarge { .. }
                | PlanError::VariablesTooLarge { .. }
                | PlanError::Path { .. }
        )
    }
}

/// What a stage starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StageBase {
    /// A registry image reference, as written after substitution.
    Image(String),
    /// An earlier stage (its index among all stages).
    Stage(usize),
    /// `FROM scratch`.
    Scratch,
}

/// One stage that the target needs.
#[derive(Debug, Clone)]
pub struct StagePlan {
    /// Index among all the Dockerfile's stages (what `COPY --from=<n>` counts).
    pub index: usize,
    /// `AS name`, lower-cased as Docker compares them.
    pub name: Option<String>,
    /// Where it starts.
    pub base: StageBase,
    /// `--platform` after substitution.
    pub platform: Option<String>,
    /// Step number of its FROM.
    pub first_step: usize,
    /// The FROM line as written.
    pub from_source: String,
    /// The instructions after FROM.
    instructions: Vec<Instruction>,
}

/// The stages to build, in order, the target last.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Needed stages in Dockerfile order; the last one is the target.
    pub stages: Vec<StagePlan>,
    /// Number of steps over the needed stages (FROM lines included).
    pub total_steps: usize,
    /// Build args given but declared by no ARG.
    pub unused_build_args: Vec<String>,
    /// Images named by `COPY --from=<image>` in needed stages.
    pub copy_from_images: Vec<String>,
    lexer: Lexer,
    build_args: BTreeMap<String, String>,
    /// Global ARG values (after overrides), `None` when declared without a value.
    global_args: BTreeMap<String, Option<String>>,
}

/// A COPY --from source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum CopyFrom {
    /// An earlier stage, by index among all stages.
    Stage(usize),
    /// An image reference.
    Image(String),
}

/// A COPY source after substitution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum PlannedSource {
    /// A path or glob relative to the context (or the `--from` root).
    Path(String),
    /// A file made from a heredoc.
    File {
        /// File name when the destination is a directory.
        name: String,
        /// Contents.
        content: String,
    },
}

/// A RUN to execute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunAction {
    /// The command; shell form already wrapped in the stage's SHELL.
    pub argv: Vec<String>,
    /// `KEY=value` environment: the config's ENV plus the ARGs in scope.
    pub env: Vec<String>,
    /// Working directory (absolute).
    pub workdir: String,
    /// USER (empty: root).
    pub user: String,
    /// `--network`.
    pub network: Option<String>,
}

/// A COPY or ADD to execute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CopyAction {
    /// ADD semantics (local archives are extracted).
    pub add: bool,
    /// `--from`.
    pub from: Option<CopyFrom>,
    /// Sources.
    pub sources: Vec<PlannedSource>,
    /// Absolute destination; a trailing `/` means "a directory".
    pub dest: String,
    /// `--chown` after substitution (`user[:group]`, names or ids).
    pub chown: Option<String>,
    /// `--chmod`.
    pub chmod: Option<u32>,
}

/// What a step does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Action {
    /// Only the config changes (ENV, LABEL, CMD, …); no layer.
    Config,
    /// Run a command in a container.
    Run(RunAction),
    /// Copy files into a new layer.
    Copy(CopyAction),
    /// Create the (absolute) working directory if it is missing.
    Workdir(String),
}

/// One executable step of a stage.
#[derive(Debug, Clone)]
pub struct Step {
    /// 1-based step number over the whole build.
    pub number: usize,
    /// Total steps.
    pub total: usize,
    /// Dockerfile line.
    pub line: usize,
    /// The instruction as written, on one line.
    pub source: String,
    /// What to do, fully substituted.
    pub action: Action,
    /// The container config after this step.
    pub config: ContainerConfig,
}

impl Step {
    /// `[2/5] RUN apt-get update`.
    pub fn label(&self) -> String {
        format!("[{}/{}] {}", self.number, self.total, self.source)
    }

    /// Canonical text of what the step does after substitution, for cache keys.
    pub fn cache_text(&self) -> String {
        match &self.action {
            // A config-only step changes later steps only through the config.
            Action::Config => serde_json::to_string(&self.config).unwrap_or_default(),
            a => serde_json::to_string(a).unwrap_or_default(),
        }
    }
}

struct RawStage {
    index: usize,
    line: usize,
    from: FromInstruction,
    from_source: String,
    instructions: Vec<Instruction>,
}

impl Plan {
    /// Splits `dockerfile` into stages and keeps those the target needs. `target` names a stage
    /// (`AS name` or index); `None` means the last one.
    pub fn new(
        dockerfile: &Dockerfile,
        build_args: &BTreeMap<String, String>,
        target: Option<&str>,
    ) -> Result<Plan, PlanError> {
        let lexer = Lexer::new(dockerfile.escape);
        let mut global_args: BTreeMap<String, Option<String>> = BTreeMap::new();
        let mut declared: BTreeSet<String> = BTreeSet::new();
        let mut raw: Vec<RawStage> = Vec::new();
        for ins in &dockerfile.instructions {
            match (&ins.kind, raw.last_mut()) {
                (InstructionKind::From(f), _) => raw.push(RawStage {
                    index: raw.len(),
                    line: ins.line,
                    from: f.clone(),
                    from_source: ins.source.clone(),
                    instructions: Vec::new(),
                }),
                (InstructionKind::Arg(decls), None) => {
                    let mut cost = 0;
                    for (name, default) in decls {
                        declared.insert(name.clone());
                        let value = match (build_args.get(name), default) {
                            (Some(v), _) => Some(v.clone()),
                            (None, Some(d)) => {
                                let env = |k: &str| global_lookup(&global_args, k);
                                let e = lexer
                                    .process_word(d, &env)
                                    .map_err(|source| PlanError::Expand { line: ins.line, source })?;
                                cost += e.cost;
                                if cost > MAX_EXPANDED_INSTRUCTION_BYTES {
                                    return Err(PlanError::InstructionTooLarge { line: ins.line });
                                }
                                Some(e.value)
                            }
                            (None, None) => platform_arg(name),
                        };
                        global_args.insert(name.clone(), value);
                    }
                    let size = global_args.iter().map(|(k, v)| entry_size(k) + v.as_ref().map_or(0, String::len)).sum();
                    if size > MAX_STAGE_VARIABLES_BYTES {
                        return Err(PlanError::VariablesTooLarge { line: ins.line, size });
                    }
                }
                (_, None) => {} // parse() guarantees only ARG precedes FROM
                (kind, Some(stage)) => {
                    if let InstructionKind::Arg(decls) = kind {
                        declared.extend(decls.iter().map(|(n, _)| n.clone()));
                    }
                    stage.instructions.push(ins.clone());
                }
            }
        }

        // Resolve FROM lines and dependencies.
        let mut bases = Vec::with_capacity(raw.len());
        let mut names: Vec<Option<String>> = Vec::with_capacity(raw.len());
        let mut deps: Vec<BTreeSet<usize>> = Vec::with_capacity(raw.len());
        let mut copy_from_images: Vec<(usize, String)> = Vec::new();
        let from_env = |k: &str| global_lookup(&global_args, k);
        for st in &raw {
            let image = expand(&lexer, &st.from.image, &from_env, st.line)?;
            if image.is_empty() {
                return Err(PlanError::EmptyBase { line: st.line });
            }
            let lower = image.to_ascii_lowercase();
            let mut d = BTreeSet::new();
            let base = if let Some(i) = names.iter().position(|n| n.as_deref() == Some(lower.as_str())) {
                d.insert(i);
                StageBase::Stage(i)
            } else if lower == "scratch" {
                StageBase::Scratch
            } else {
                StageBase::Image(image)
            };
            for ins in &st.instructions {
                if let InstructionKind::Copy(c) = &ins.kind
                    && let Some(from) = &c.from
                {
                    let from = expand(&lexer, from, &from_env, ins.line)?;
                    match resolve_copy_from(&from, &names, st.index, ins.line)? {
                        CopyFrom::Stage(i) => {
                            d.insert(i);
                        }
                        CopyFrom::Image(img) => copy_from_images.push((st.index, img)),
                    }
                }
            }
            bases.push(base);
            names.push(st.from.alias.as_ref().map(|a| a.to_ascii_lowercase()));
            deps.push(d);
        }

        let target_index = match target {
            None => raw.len() - 1,
            Some(t) => {
                let lower = t.to_ascii_lowercase();
                names
                    .iter()
                    .position(|n| n.as_deref() == Some(lower.as_str()))
                    .or_else(|| t.parse::<usize>().ok().filter(|i| *i < raw.len()))
                    .ok_or_else(|| PlanError::UnknownTarget { name: t.to_string() })?
            }
        };
        let mut needed = BTreeSet::new();
        let mut todo = vec![target_index];
        while let Some(i) = todo.pop() {
            if needed.insert(i) {
                todo.extend(deps[i].iter().copied());
            }
        }

        let mut stages = Vec::new();
        let mut step = 1;
        for (st, base) in raw.into_iter().zip(bases) {
            if !needed.contains(&st.index) {
                continue;
            }
            let platform = match &st.from.platform {
                Some(p) => Some(expand(&lexer, p, &from_env, st.line)?),
                None => None,
            };
            let n = st.instructions.len();
            stages.push(StagePlan {
                index: st.index,
                name: names[st.index].clone(),
                base,
                platform,
                first_step: step,
                from_source: st.from_source,
                instructions: st.instructions,
            });
            step += 1 + n;
        }
        let unused_build_args = build_args
            .keys()
            .filter(|k| !declared.contains(*k) && !PREDEFINED_ARGS.contains(&k.as_str()))
            .cloned()
            .collect();
        let copy_from_images =
            copy_from_images.into_iter().filter(|(i, _)| needed.contains(i)).map(|(_, img)| img).collect();
        Ok(Plan {
            stages,
            total_steps: step - 1,
            unused_build_args,
            copy_from_images,
            lexer,
            build_args: build_args.clone(),
            global_args,
        })
    }

    /// The steps of `stage` (one of [`Plan::stages`]) on top of a base whose container config
    /// is `base` (the image's config, or the config the base stage ended with), one at a
    /// time: only the current config is held. The iterator ends after the first error.
    pub fn step_iter<'p>(&'p self, stage: &'p StagePlan, base: &ContainerConfig) -> Steps<'p> {
        Steps { st: self.stage_state(stage, base, false), stage, next: 0 }
    }

    /// Plans `stage` on `base` without making its steps (no per-step config or RUN
    /// environment is built): every check [`Plan::step_iter`] makes, at a fraction of the
    /// cost.
    pub fn check_stage(&self, stage: &StagePlan, base: &ContainerConfig) -> Result<(), PlanError> {
        let mut st = self.stage_state(stage, base, true);
        for ins in &stage.instructions {
            st.apply(ins)?;
        }
        Ok(())
    }

    fn stage_state(&self, stage: &StagePlan, base: &ContainerConfig, dry: bool) -> StageState<'_> {
        StageState {
            plan: self,
            config: base.clone(),
            env_index: index_env(base),
            args: BTreeMap::new(),
            cmd_set: false,
            stage_index: stage.index,
            names: self.stage_names(),
            cost: Cell::new(0),
            vars: config_size(base),
            dry,
        }
    }

    /// All steps of `stage` at once (see [`Plan::step_iter`], which holds one config instead
    /// of one per step).
    pub fn steps(&self, stage: &StagePlan, base: &ContainerConfig) -> Result<Vec<Step>, PlanError> {
        self.step_iter(stage, base).collect()
    }

    /// Plans every needed stage on an empty base config, keeping nothing: what can be
    /// checked before any base image is known. A Dockerfile that fails here with
    /// [`PlanError::is_limit`] fails in every build.
    pub fn check(&self) -> Result<(), PlanError> {
        let empty = ContainerConfig::default();
        for stage in &self.stages {
            self.check_stage(stage, &empty)?;
        }
        Ok(())
    }

    /// The step label of a stage's FROM.
    pub fn from_label(&self, stage: &StagePlan) -> String {
        format!("[{}/{}] {}", stage.first_step, self.total_steps, stage.from_source)
    }

    fn stage_names(&self) -> Vec<Option<String>> {
        let max = self.stages.iter().map(|s| s.index).max().unwrap_or(0);
        let mut names = vec![None; max + 1];
        for s in &self.stages {
            names[s.index] = s.name.clone();
        }
        names
    }
}

/// The steps of one stage, planned as they are taken (see [`Plan::step_iter`]).
pub struct Steps<'p> {
    st: StageState<'p>,
    stage: &'p StagePlan,
    next: usize,
}

impl std::fmt::Debug for Steps<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Steps").field("stage", &self.stage.index).field("next", &self.next).finish()
    }
}

impl Iterator for Steps<'_> {
    type Item = Result<Step, PlanError>;

    fn next(&mut self) -> Option<Self::Item> {
        let i = self.next;
        let ins = self.stage.instructions.get(i)?;
        self.next += 1;
        let action = match self.st.apply(ins) {
            Ok(a) => a,
            Err(e) => {
                self.next = self.stage.instructions.len();
                return Some(Err(e));
            }
        };
        Some(Ok(Step {
            number: self.stage.first_step + 1 + i,
            total: self.st.plan.total_steps,
            line: ins.line,
            source: ins.source.clone(),
            action,
            config: self.st.config.clone(),
        }))
    }
}

struct StageState<'p> {
    plan: &'p Plan,
    config: ContainerConfig,
    /// Where each ENV key is in `config.env` (its last occurrence), so lookups and sets do
    /// not scan the list.
    env_index: HashMap<String, usize>,
    /// ARGs declared in this stage, with their values.
    args: BTreeMap<String, Option<String>>,
    cmd_set: bool,
    stage_index: usize,
    names: Vec<Option<String>>,
    /// Bytes the current instruction's expansions were charged.
    cost: Cell<usize>,
    /// Size of the config and ARG values, as [`config_size`] counts it, kept up to date.
    vars: usize,
    /// Only checking: RUN actions get no environment.
    dry: bool,
}

impl StageState<'_> {
    fn env_value(&self, k: &str) -> Option<&str> {
        let kv = self.config.env.as_ref()?.get(*self.env_index.get(k)?)?;
        Some(kv.split_once('=').map_or("", |(_, v)| v))
    }

    fn lookup(&self, k: &str) -> Option<String> {
        self.env_value(k).map(str::to_string).or_else(|| self.args.get(k).cloned().flatten())
    }

    /// Sets (replacing) an environment variable, as [`ContainerConfig::env_set`] does.
    fn env_set(&mut self, k: &str, v: &str) {
        let entry = format!("{k}={v}");
        let new = entry_size(&entry);
        let env = self.config.env.get_or_insert_with(Vec::new);
        let old = match self.env_index.get(k).and_then(|i| env.get_mut(*i)) {
            Some(slot) => entry_size(&std::mem::replace(slot, entry)),
            None => {
                self.env_index.insert(k.to_string(), env.len());
                env.push(entry);
                0
            }
        };
        self.account(old, new);
    }

    /// Replaces `old` bytes of config or ARG values with `new` ones.
    fn account(&mut self, old: usize, new: usize) {
        self.vars = self.vars.saturating_sub(old).saturating_add(new);
    }

    /// Charges an expansion's cost to the current instruction.
    fn charge(&self, cost: usize, line: usize) -> Result<(), PlanError> {
        let total = self.cost.get().saturating_add(cost);
        self.cost.set(total);
        if total > MAX_EXPANDED_INSTRUCTION_BYTES {
            return Err(PlanError::InstructionTooLarge { line });
        }
        Ok(())
    }

    fn word(&self, w: &str, line: usize) -> Result<String, PlanError> {
        let e = self
            .plan
            .lexer
            .process_word(w, &|k| self.lookup(k))
            .map_err(|source| PlanError::Expand { line, source })?;
        self.charge(e.cost, line)?;
        Ok(e.value)
    }

    fn workdir(&self) -> String {
        match self.config.working_dir.as_deref() {
            Some(w) if !w.is_empty() => w.to_string(),
            _ => "/".to_string(),
        }
    }

    fn shell_command(&self, c: &CommandForm) -> Vec<String> {
        match c {
            CommandForm::Exec(v) => v.clone(),
            CommandForm::Shell(s) => {
                let mut v = self.config.shell_or_default();
                v.push(s.clone());
                v
            }
        }
    }

    /// Applies one instruction, then checks what it left against the stage limits.
    fn apply(&mut self, ins: &Instruction) -> Result<Action, PlanError> {
        self.cost.set(0);
        let action = self.apply_instruction(ins)?;
        if self.vars > MAX_STAGE_VARIABLES_BYTES {
            return Err(PlanError::VariablesTooLarge { line: ins.line, size: self.vars });
        }
        Ok(action)
    }

    fn apply_instruction(&mut self, ins: &Instruction) -> Result<Action, PlanError> {
        let line = ins.line;
        match &ins.kind {
            InstructionKind::From(_) => unreachable!("FROM starts a stage"),
            InstructionKind::Arg(decls) => {
                for (name, default) in decls {
                    let value = match (self.plan.build_args.get(name), default) {
                        (Some(v), _) => Some(v.clone()),
                        (None, Some(d)) => Some(self.word(d, line)?),
                        (None, None) => {
                            self.plan.global_args.get(name).cloned().flatten().or_else(|| platform_arg(name))
                        }
                    };
                    let new = entry_size(name) + value.as_ref().map_or(0, String::len);
                    let old = match self.args.insert(name.clone(), value) {
                        Some(v) => entry_size(name) + v.map_or(0, |v| v.len()),
                        None => 0,
                    };
                    self.account(old, new);
                }
                Ok(Action::Config)
            }
            InstructionKind::Env(pairs) => {
                // All pairs of one line see the values from before the line.
                let mut resolved = Vec::with_capacity(pairs.len());
                for (k, v) in pairs {
                    resolved.push((self.word(k, line)?, self.word(v, line)?));
                }
                for (k, v) in resolved {
                    self.env_set(&k, &v);
                }
                Ok(Action::Config)
            }
            InstructionKind::Label(pairs) => {
                let mut resolved = Vec::with_capacity(pairs.len());
                for (k, v) in pairs {
                    resolved.push((self.word(k, line)?, self.word(v, line)?));
                }
                let labels = self.config.labels.get_or_insert_with(BTreeMap::new);
                let (mut old, mut new) = (0, 0);
                for (k, v) in resolved {
                    new += entry_size(&k) + v.len();
                    if let Some(prev) = labels.insert(k.clone(), v) {
                        old += entry_size(&k) + prev.len();
                    }
                }
                self.account(old, new);
                Ok(Action::Config)
            }
            InstructionKind::Run(r) if self.dry => Ok(Action::Run(RunAction {
                argv: Vec::new(),
                env: Vec::new(),
                workdir: String::new(),
                user: String::new(),
                network: run_network(r.network.as_deref(), line)?,
            })),
            InstructionKind::Run(r) => {
                let network = run_network(r.network.as_deref(), line)?;
                let mut env: Vec<String> = self.config.env.clone().unwrap_or_default();
                for (k, v) in &self.args {
                    if let Some(v) = v
                        && !self.env_index.contains_key(k)
                    {
                        env.push(format!("{k}={v}"));
                    }
                }
                Ok(Action::Run(RunAction {
                    argv: self.shell_command(&r.command),
                    env,
                    workdir: self.workdir(),
                    user: self.config.user.clone().unwrap_or_default(),
                    network,
                }))
            }
            InstructionKind::Copy(c) => {
                let from = match &c.from {
                    None => None,
                    Some(f) => Some(resolve_copy_from(&self.word(f, line)?, &self.names, self.stage_index, line)?),
                };
                let mut sources = Vec::with_capacity(c.sources.len());
                for s in &c.sources {
                    sources.push(match s {
                        CopySource::Path(p) => {
                            let p = self.word(p, line)?;
                            if c.add && is_remote(&p) {
                                return Err(PlanError::RemoteSource { line, url: p });
                            }
                            PlannedSource::Path(checked_path(
                                p,
                                line,
                                if c.add { "ADD source" } else { "COPY source" },
                            )?)
                        }
                        CopySource::HereDoc { name, content, expand } => {
                            let content = if *expand {
                                let e = self
                                    .plan
                                    .lexer
                                    .process_heredoc(content, &|k| self.lookup(k))
                                    .map_err(|source| PlanError::Expand { line, source })?;
                                self.charge(e.cost, line)?;
                                e.value
                            } else {
                                content.clone()
                            };
                            PlannedSource::File { name: name.clone(), content }
                        }
                    });
                }
                let raw_dest = self.word(&c.dest, line)?;
                let chown = match &c.chown {
                    Some(v) => Some(self.word(v, line)?),
                    None => None,
                };
                let chmod = match &c.chmod {
                    Some(v) => {
                        let v = self.word(v, line)?;
                        Some(
                            u32::from_str_radix(&v, 8)
                                .ok()
                                .filter(|m| *m <= 0o7777)
                                .ok_or(PlanError::InvalidChmod { line, value: v })?,
                        )
                    }
                    None => None,
                };
                let what = if c.add { "ADD destination" } else { "COPY destination" };
                let dest = checked_path(absolute_dest(&self.workdir(), &raw_dest), line, what)?;
                Ok(Action::Copy(CopyAction { add: c.add, from, sources, dest, chown, chmod }))
            }
            InstructionKind::Workdir(w) => {
                let w = self.word(w, line)?;
                let path = clean_path(&if w.starts_with('/') { w } else { format!("{}/{w}", self.workdir()) });
                let path = checked_path(path, line, "WORKDIR")?;
                let old = opt_size(&self.config.working_dir);
                self.config.working_dir = Some(path.clone());
                self.account(old, entry_size(&path));
                Ok(Action::Workdir(path))
            }
            InstructionKind::User(u) => {
                let user = self.word(u, line)?;
                let (old, new) = (opt_size(&self.config.user), entry_size(&user));
                self.config.user = Some(user);
                self.account(old, new);
                Ok(Action::Config)
            }
            InstructionKind::Entrypoint(c) => {
                let entrypoint = self.shell_command(c);
                let mut old = list_size(&self.config.entrypoint);
                let new = list_size(&Some(entrypoint.clone()));
                self.config.entrypoint = Some(entrypoint);
                if !self.cmd_set {
                    // Docker: a new ENTRYPOINT drops the CMD inherited from the base.
                    old += list_size(&self.config.cmd.take());
                }
                self.account(old, new);
                Ok(Action::Config)
            }
            InstructionKind::Cmd(c) => {
                let cmd = Some(self.shell_command(c));
                let (old, new) = (list_size(&self.config.cmd), list_size(&cmd));
                self.config.cmd = cmd;
                self.account(old, new);
                self.cmd_set = true;
                Ok(Action::Config)
            }
            InstructionKind::Expose(ports) => {
                let mut resolved = Vec::new();
                for p in ports {
                    let words = self
                        .plan
                        .lexer
                        .process_words(p, &|k| self.lookup(k))
                        .map_err(|source| PlanError::Expand { line, source })?;
                    self.charge(words.cost, line)?;
                    for w in words.values {
                        resolved.extend(expand_port(&w).ok_or(PlanError::InvalidValue {
                            line,
                            what: "port",
                            value: w,
                        })?);
                    }
                }
                let map = self.config.exposed_ports.get_or_insert_with(BTreeMap::new);
                let mut new = 0;
                for port in resolved {
                    let size = entry_size(&port);
                    if map.insert(port, Empty {}).is_none() {
                        new += size;
                    }
                }
                self.account(0, new);
                Ok(Action::Config)
            }
            InstructionKind::Volume(vols) => {
                let mut resolved = Vec::new();
                for v in vols {
                    let v = self.word(v, line)?;
                    if v.is_empty() {
                        return Err(PlanError::InvalidValue { line, what: "volume", value: v });
                    }
                    resolved.push(v);
                }
                let map = self.config.volumes.get_or_insert_with(BTreeMap::new);
                let mut new = 0;
                for v in resolved {
                    let size = entry_size(&v);
                    if map.insert(v, Empty {}).is_none() {
                        new += size;
                    }
                }
                self.account(0, new);
                Ok(Action::Config)
            }
            InstructionKind::Stopsignal(s) => {
                let signal = self.word(s, line)?;
                let (old, new) = (opt_size(&self.config.stop_signal), entry_size(&signal));
                self.config.stop_signal = Some(signal);
                self.account(old, new);
                Ok(Action::Config)
            }
            InstructionKind::Healthcheck(h) => {
                let test = match &h.test {
                    None => vec!["NONE".to_string()],
                    Some(CommandForm::Exec(v)) => std::iter::once("CMD".to_string()).chain(v.iter().cloned()).collect(),
                    Some(CommandForm::Shell(s)) => vec!["CMD-SHELL".to_string(), s.clone()],
                };
                let dur = |v: &Option<String>, what: &'static str| -> Result<Option<i64>, PlanError> {
                    match v {
                        None => Ok(None),
                        Some(s) => {
                            parse_duration(s).map(Some).ok_or(PlanError::InvalidValue { line, what, value: s.clone() })
                        }
                    }
                };
                let retries = match &h.retries {
                    None => None,
                    Some(r) => Some(r.parse::<i64>().map_err(|_| PlanError::InvalidValue {
                        line,
                        what: "--retries",
                        value: r.clone(),
                    })?),
                };
                let healthcheck = Healthcheck {
                    test,
                    interval: dur(&h.interval, "--interval")?,
                    timeout: dur(&h.timeout, "--timeout")?,
                    start_period: dur(&h.start_period, "--start-period")?,
                    start_interval: dur(&h.start_interval, "--start-interval")?,
                    retries,
                };
                let new = healthcheck_size(&Some(healthcheck.clone()));
                let old = healthcheck_size(&self.config.healthcheck.replace(healthcheck));
                self.account(old, new);
                Ok(Action::Config)
            }
            InstructionKind::Shell(s) => {
                let shell = Some(s.clone());
                let (old, new) = (list_size(&self.config.shell), list_size(&shell));
                self.config.shell = shell;
                self.account(old, new);
                Ok(Action::Config)
            }
            InstructionKind::Onbuild(text) => {
                self.config.on_build.get_or_insert_with(Vec::new).push(text.clone());
                self.account(0, entry_size(text));
                Ok(Action::Config)
            }
            InstructionKind::Maintainer(_) => {
                tracing::debug!(line, "MAINTAINER is deprecated and ignored");
                Ok(Action::Config)
            }
        }
    }
}

fn expand(lexer: &Lexer, w: &str, env: &dyn Fn(&str) -> Option<String>, line: usize) -> Result<String, PlanError> {
    lexer.process_word(w, env).map(|e| e.value).map_err(|source| PlanError::Expand { line, source })
}

fn checked_path(path: String, line: usize, what: &'static str) -> Result<String, PlanError> {
    match check_path(&path) {
        Ok(()) => Ok(path),
        Err(problem) => Err(PlanError::Path { line, what, path, problem }),
    }
}

/// Where each key of `config.env` is (its last occurrence wins, as lookups read it).
fn index_env(config: &ContainerConfig) -> HashMap<String, usize> {
    config
        .env
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, kv)| (kv.split_once('=').map_or(kv.as_str(), |(k, _)| k).to_string(), i))
        .collect()
}

/// One config or ARG entry's size toward [`MAX_STAGE_VARIABLES_BYTES`].
fn entry_size(text: &str) -> usize {
    text.len() + ENTRY_OVERHEAD
}

fn opt_size(v: &Option<String>) -> usize {
    v.as_deref().map_or(0, entry_size)
}

fn list_size(v: &Option<Vec<String>>) -> usize {
    v.iter().flatten().map(|s| entry_size(s)).sum()
}

fn healthcheck_size(h: &Option<Healthcheck>) -> usize {
    h.as_ref().map_or(0, |h| h.test.iter().map(|s| entry_size(s)).sum())
}

/// The size of the config values a stage can grow (ENV, LABEL, VOLUME, EXPOSE, ONBUILD and
/// the replaced ones), as the stage's ARG values are counted with them.
fn config_size(c: &ContainerConfig) -> usize {
    let keys = |m: &Option<BTreeMap<String, Empty>>| m.iter().flatten().map(|(k, _)| entry_size(k)).sum::<usize>();
    list_size(&c.env)
        + list_size(&c.entrypoint)
        + list_size(&c.cmd)
        + list_size(&c.shell)
        + list_size(&c.on_build)
        + keys(&c.exposed_ports)
        + keys(&c.volumes)
        + c.labels.iter().flatten().map(|(k, v)| entry_size(k) + v.len()).sum::<usize>()
        + opt_size(&c.user)
        + opt_size(&c.working_dir)
        + opt_size(&c.stop_signal)
        + healthcheck_size(&c.healthcheck)
}

fn global_lookup(globals: &BTreeMap<String, Option<String>>, k: &str) -> Option<String> {
    match globals.get(k) {
        Some(v) => v.clone(),
        None => platform_arg(k),
    }
}

fn platform_arg(name: &str) -> Option<String> {
    PLATFORM_ARGS.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
}

fn resolve_copy_from(from: &str, names: &[Option<String>], current: usize, line: usize) -> Result<CopyFrom, PlanError> {
    let lower = from.to_ascii_lowercase();
    if let Some(i) = names.iter().take(current).position(|n| n.as_deref() == Some(lower.as_str())) {
        return Ok(CopyFrom::Stage(i));
    }
    if let Ok(i) = from.parse::<usize>() {
        if i < current {
            return Ok(CopyFrom::Stage(i));
        }
        return Err(PlanError::UnknownStage { line, name: from.to_string() });
    }
    if from.is_empty() {
        return Err(PlanError::UnknownStage { line, name: from.to_string() });
    }
    Ok(CopyFrom::Image(from.to_string()))
}

fn is_remote(src: &str) -> bool {
    src.contains("://") || src.starts_with("git@")
}

/// Makes a COPY destination absolute against the working directory, keeping the meaning of
/// a trailing `/` (or a final `.`) as "a directory".
fn absolute_dest(workdir: &str, dest: &str) -> String {
    let is_dir = dest.ends_with('/') || dest == "." || dest.ends_with("/.") || dest.is_empty();
    let joined = if dest.starts_with('/') { dest.to_string() } else { format!("{workdir}/{dest}") };
    let mut p = clean_path(&joined);
    if is_dir && !p.ends_with('/') {
        p.push('/');
    }
    p
}

/// Lexically cleans an absolute path (`/a/./b/../c` → `/a/c`).
pub fn clean_path(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

/// `80`, `80/udp`, `8000-8002/tcp` → `["80/tcp"]`, … (Docker expands ranges).
fn expand_port(p: &str) -> Option<Vec<String>> {
    let (ports, proto) = match p.split_once('/') {
        Some((a, b)) => (a, b.to_ascii_lowercase()),
        None => (p, "tcp".to_string()),
    };
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return None;
    }
    let (lo, hi) = match ports.split_once('-') {
        Some((a, b)) => (a.parse::<u16>().ok()?, b.parse::<u16>().ok()?),
        None => {
            let n = ports.parse::<u16>().ok()?;
            (n, n)
        }
    };
    if lo > hi {
        return None;
    }
    Some((lo..=hi).map(|n| format!("{n}/{proto}")).collect())
}

/// Go-style durations (`30s`, `1m30s`, `500ms`, `1h`) in nanoseconds.
fn parse_duration(s: &str) -> Option<i64> {
    let mut total: f64 = 0.0;
    let mut rest = s.trim();
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let n: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let mult = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        total += n * mult;
        rest = &rest[unit_len..];
    }
    Some(total as i64)
}

/// `RUN --network`: `default` (also when absent) and `none` are what the builder offers.
fn run_network(mode: Option<&str>, line: usize) -> Result<Option<String>, PlanError> {
    match mode {
        None | Some("default") | Some("none") => Ok(mode.map(str::to_string)),
        Some(other) => Err(PlanError::RunNetwork { line, value: other.to_string() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dockerfile::parse;

    fn plan(text: &str, args: &[(&str, &str)]) -> Plan {
        let args = args.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Plan::new(&parse(text).unwrap(), &args, None).unwrap()
    }

    fn all_steps(p: &Plan, base: &ContainerConfig) -> Vec<Vec<Step>> {
        p.stages.iter().map(|s| p.steps(s, base).unwrap()).collect()
    }

    fn run_env(step: &Step) -> Vec<String> {
        let Action::Run(r) = &step.action else { panic!("not a RUN: {:?}", step.action) };
        r.env.clone()
    }

    #[test]
    fn run_network_host_is_refused_with_its_line_and_default_and_none_pass_through() {
        let p = plan("FROM x\nRUN --network=host true\n", &[]);
        let e = p.steps(&p.stages[0], &ContainerConfig::default()).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("--network=host is not supported"), "{e}");
        let p = plan("FROM x\nRUN true\nRUN --network=none true\nRUN --network=default true\n", &[]);
        let nets: Vec<Option<String>> = all_steps(&p, &ContainerConfig::default())[0]
            .iter()
            .map(|s| match &s.action {
                Action::Run(r) => r.network.clone(),
                a => panic!("not a RUN: {a:?}"),
            })
            .collect();
        assert_eq!(nets, [None, Some("none".into()), Some("default".into())]);
    }

    #[test]
    fn global_args_reach_from_but_not_the_stage_unless_redeclared() {
        let p = plan("ARG V=3.12\nARG W=x\nFROM python:${V}-slim\nRUN echo\nARG V\nRUN echo\n", &[]);
        assert_eq!(p.stages[0].base, StageBase::Image("python:3.12-slim".into()));
        let steps = &all_steps(&p, &ContainerConfig::default())[0];
        assert!(run_env(&steps[0]).is_empty(), "global ARG invisible before redeclaring");
        assert_eq!(run_env(&steps[2]), ["V=3.12"], "redeclared without default takes the global value");
    }

    #[test]
    fn build_args_override_defaults_and_undeclared_ones_are_reported() {
        let p = plan("ARG V=1\nFROM img:$V\nARG X=def\nENV Y=$X\n", &[("V", "2"), ("X", "given"), ("NOPE", "n")]);
        assert_eq!(p.stages[0].base, StageBase::Image("img:2".into()));
        assert_eq!(p.unused_build_args, ["NOPE"]);
        let steps = &all_steps(&p, &ContainerConfig::default())[0];
        assert_eq!(steps[1].config.env_get("Y").as_deref(), Some("given"));
    }

    #[test]
    fn env_substitution_uses_the_base_config_and_defaults() {
        let base = ContainerConfig { env: Some(vec!["PATH=/usr/bin".into()]), ..Default::default() };
        let p = plan("FROM x\nENV PATH=/opt/bin:$PATH A=${UNSET:-dflt} B=${A:+alt}\nWORKDIR $A\nRUN echo $A\n", &[]);
        let steps = &all_steps(&p, &base)[0];
        let c = &steps[0].config;
        assert_eq!(c.env_get("PATH").as_deref(), Some("/opt/bin:/usr/bin"));
        assert_eq!(c.env_get("A").as_deref(), Some("dflt"));
        assert_eq!(c.env_get("B").as_deref(), Some(""), "pairs on one line see the values from before it");
        assert_eq!(steps[1].action, Action::Workdir("/dflt".into()));
        let Action::Run(r) = &steps[2].action else { panic!() };
        assert_eq!(r.argv, ["/bin/sh", "-c", "echo $A"], "RUN is not substituted by the builder");
        assert_eq!(r.workdir, "/dflt");
    }

    #[test]
    fn the_sdk_example_plans_ten_steps_with_labels() {
        let text = "FROM python:3.12.10-slim-bookworm\nRUN apt-get update\n\
            RUN apt-get install -y gcc gfortran build-essential\nRUN pip install --upgrade pip\n\
            RUN echo 'debconf debconf/frontend select Noninteractive' | debconf-set-selections\n\
            RUN python -m pip install numpy requests\nRUN echo hi\nRUN \"bash\" \"-c\" \"echo \\'x\\'\"\n\
            ENV A='b c'\nWORKDIR /home/daytona\n";
        let p = plan(text, &[]);
        assert_eq!(p.total_steps, 10);
        assert_eq!(p.from_label(&p.stages[0]), "[1/10] FROM python:3.12.10-slim-bookworm");
        let steps = &all_steps(&p, &ContainerConfig::default())[0];
        assert_eq!(steps[0].label(), "[2/10] RUN apt-get update");
        assert_eq!(steps[7].config.env_get("A").as_deref(), Some("b c"));
        assert_eq!(steps[8].action, Action::Workdir("/home/daytona".into()));
        assert_eq!(steps[8].config.working_dir.as_deref(), Some("/home/daytona"));
    }

    #[test]
    fn multi_stage_copy_from_by_name_and_index_pulls_in_only_needed_stages() {
        let text = "FROM alpine AS unused\nRUN x\nFROM alpine AS build\nRUN make\nFROM busybox AS other\n\
                    FROM build AS derived\nFROM scratch\nCOPY --from=build /out /a\nCOPY --from=2 /o /b\n\
                    COPY --from=3 /x /c\nCOPY --from=docker.io/library/nginx:1 /etc/nginx /d\n";
        let p = plan(text, &[]);
        let idx: Vec<usize> = p.stages.iter().map(|s| s.index).collect();
        assert_eq!(idx, [1, 2, 3, 4]);
        assert_eq!(p.stages[2].base, StageBase::Stage(1));
        assert_eq!(p.stages[3].base, StageBase::Scratch);
        assert_eq!(p.copy_from_images, ["docker.io/library/nginx:1"]);
        let steps = p.steps(&p.stages[3], &ContainerConfig::default()).unwrap();
        let froms: Vec<_> = steps
            .iter()
            .map(|s| match &s.action {
                Action::Copy(c) => c.from.clone().unwrap(),
                _ => panic!(),
            })
            .collect();
        assert_eq!(
            froms,
            [
                CopyFrom::Stage(1),
                CopyFrom::Stage(2),
                CopyFrom::Stage(3),
                CopyFrom::Image("docker.io/library/nginx:1".into())
            ]
        );
        assert_eq!(p.total_steps, 2 + 1 + 1 + 5);
        let p = plan("FROM a AS one\nFROM one\nRUN x\n", &[]);
        assert_eq!(p.stages[1].base, StageBase::Stage(0));
    }

    #[test]
    fn copy_from_a_later_stage_index_is_refused() {
        let d = parse("FROM a\nCOPY --from=1 /x /y\nFROM b\n").unwrap();
        let e = Plan::new(&d, &BTreeMap::new(), Some("0")).unwrap_err();
        assert!(matches!(e, PlanError::UnknownStage { line: 2, .. }), "{e}");
    }

    #[test]
    fn entrypoint_resets_the_inherited_cmd_but_not_one_set_in_the_stage() {
        let base = ContainerConfig { cmd: Some(vec!["python3".into()]), ..Default::default() };
        let p = plan("FROM x\nENTRYPOINT [\"/init\"]\n", &[]);
        let c = &all_steps(&p, &base)[0][0].config;
        assert_eq!(c.cmd, None);
        assert_eq!(c.entrypoint, Some(vec!["/init".to_string()]));
        let p = plan("FROM x\nCMD run\nENTRYPOINT [\"/init\"]\n", &[]);
        let c = &all_steps(&p, &base)[0][1].config;
        assert_eq!(c.cmd, Some(vec!["/bin/sh".to_string(), "-c".into(), "run".into()]));
    }

    #[test]
    fn shell_labels_ports_volumes_and_healthcheck_accumulate() {
        let p = plan(
            "FROM x\nARG P=8080\nSHELL [\"/bin/bash\", \"-eo\", \"pipefail\", \"-c\"]\nRUN echo\n\
             LABEL a=b \"c d\"='e f'\nEXPOSE $P 53/udp 7000-7001\nVOLUME /data\nSTOPSIGNAL SIGINT\n\
             HEALTHCHECK --interval=1m30s --retries=2 CMD curl -f x\nUSER app\n",
            &[],
        );
        let steps = &all_steps(&p, &ContainerConfig::default())[0];
        let Action::Run(r) = &steps[2].action else { panic!() };
        assert_eq!(r.argv, ["/bin/bash", "-eo", "pipefail", "-c", "echo"]);
        assert_eq!(r.env, ["P=8080"]);
        let c = &steps.last().unwrap().config;
        assert_eq!(c.labels.as_ref().unwrap()["c d"], "e f");
        let ports: Vec<_> = c.exposed_ports.as_ref().unwrap().keys().cloned().collect();
        assert_eq!(ports, ["53/udp", "7000/tcp", "7001/tcp", "8080/tcp"]);
        assert!(c.volumes.as_ref().unwrap().contains_key("/data"));
        assert_eq!(c.stop_signal.as_deref(), Some("SIGINT"));
        let h = c.healthcheck.as_ref().unwrap();
        assert_eq!(h.test, ["CMD-SHELL", "curl -f x"]);
        assert_eq!((h.interval, h.retries), (Some(90_000_000_000), Some(2)));
        assert_eq!(c.user.as_deref(), Some("app"));
    }

    #[test]
    fn copy_destinations_are_made_absolute_against_workdir() {
        let p = plan(
            "FROM x\nWORKDIR /app\nCOPY a.txt .\nCOPY [\"home/u/ctx/a.txt\", \"/app/a.txt\"]\nCOPY --chmod=640 b sub/\n",
            &[],
        );
        let steps = &all_steps(&p, &ContainerConfig::default())[0];
        let dests: Vec<_> = steps[1..]
            .iter()
            .map(|s| match &s.action {
                Action::Copy(c) => (c.dest.clone(), c.chmod),
                _ => panic!(),
            })
            .collect();
        assert_eq!(dests, [("/app/".into(), None), ("/app/a.txt".into(), None), ("/app/sub/".into(), Some(0o640))]);
    }

    #[test]
    fn add_of_a_url_is_refused_with_advice() {
        let d = parse("FROM x\nADD https://example.com/f.tgz /tmp/\n").unwrap();
        let p = Plan::new(&d, &BTreeMap::new(), None).unwrap();
        let e = p.steps(&p.stages[0], &ContainerConfig::default()).unwrap_err();
        assert!(e.to_string().contains("no internet access"), "{e}");
        assert!(e.to_string().contains("COPY"), "{e}");
    }

    #[test]
    fn a_bad_substitution_names_its_line() {
        let d = parse("FROM x\n\nENV A=${B:?needed}\n").unwrap();
        let p = Plan::new(&d, &BTreeMap::new(), None).unwrap();
        let e = p.steps(&p.stages[0], &ContainerConfig::default()).unwrap_err();
        assert_eq!(e.to_string(), "dockerfile line 3: B: needed");
    }

    /// The measured attack: each line multiplies the value by four (64 MiB after 11 lines).
    fn multiplying_args(global: bool) -> String {
        let mut text = String::new();
        if !global {
            text.push_str("FROM scratch\n");
        }
        text.push_str(&format!("ARG A0={}\n", "x".repeat(64)));
        for i in 1..=10 {
            let p = i - 1;
            text.push_str(&format!("ARG A{i}=$A{p}$A{p}$A{p}$A{p}\n"));
        }
        if global {
            text.push_str("FROM scratch\n");
        }
        text
    }

    #[test]
    fn multiplying_stage_args_are_refused_at_the_word_limit_naming_the_line() {
        let d = parse(&multiplying_args(false)).unwrap();
        let p = Plan::new(&d, &BTreeMap::new(), None).unwrap();
        let t = std::time::Instant::now();
        let e = p.check().unwrap_err();
        assert!(t.elapsed() < std::time::Duration::from_secs(1), "{:?}", t.elapsed());
        // 64 B × 4⁵ = 64 KiB is allowed (line 7); line 8 would be 256 KiB.
        assert_eq!(e.to_string(), "dockerfile line 8: expanded value exceeds 64 KiB");
        assert!(e.is_limit());
        let e = p.steps(&p.stages[0], &ContainerConfig::default()).unwrap_err();
        assert!(matches!(e, PlanError::Expand { line: 8, source: ExpandError::TooLarge { .. } }), "{e}");
    }

    #[test]
    fn multiplying_global_args_are_refused_when_the_plan_is_made() {
        let e = Plan::new(&parse(&multiplying_args(true)).unwrap(), &BTreeMap::new(), None).unwrap_err();
        assert_eq!(e.to_string(), "dockerfile line 7: expanded value exceeds 64 KiB");
    }

    #[test]
    fn an_instruction_whose_words_add_up_past_the_instruction_limit_is_refused() {
        let a = "y".repeat(60 << 10);
        let text = format!("FROM scratch\nARG A={a}\nENV B1=$A B2=$A B3=$A B4=$A B5=$A\n");
        let p = Plan::new(&parse(&text).unwrap(), &BTreeMap::new(), None).unwrap();
        let e = p.check().unwrap_err();
        assert_eq!(e.to_string(), "dockerfile line 3: expanded instruction exceeds 256 KiB");
        assert!(e.is_limit());
        // Four of them fit.
        let text = format!("FROM scratch\nARG A={a}\nENV B1=$A B2=$A B3=$A B4=$A\n");
        Plan::new(&parse(&text).unwrap(), &BTreeMap::new(), None).unwrap().check().unwrap();
    }

    #[test]
    fn env_and_labels_accumulating_past_the_stage_limit_are_refused() {
        let a = "v".repeat(60 << 10);
        let mut text = format!("FROM scratch\nARG A={a}\n");
        for i in 0..4 {
            text.push_str(&format!("ENV E{i}a=$A E{i}b=$A\n"));
        }
        let p = Plan::new(&parse(&text).unwrap(), &BTreeMap::new(), None).unwrap();
        let e = p.check().unwrap_err();
        assert!(matches!(e, PlanError::VariablesTooLarge { line: 6, .. }), "{e}");
        assert!(e.to_string().contains("over the limit of 512 KiB"), "{e}");
        // Replacing a value does not count it twice.
        let mut text = format!("FROM scratch\nARG A={a}\n");
        for _ in 0..20 {
            text.push_str("ENV SAME=$A\nLABEL same=$A\n");
        }
        Plan::new(&parse(&text).unwrap(), &BTreeMap::new(), None).unwrap().check().unwrap();
    }

    #[test]
    fn many_small_entries_count_their_overhead() {
        let pairs: Vec<String> = (0..40_000).map(|i| format!("K{i}=")).collect();
        let text = format!("FROM scratch\nENV {}\n", pairs.join(" "));
        let p = Plan::new(&parse(&text).unwrap(), &BTreeMap::new(), None).unwrap();
        assert!(matches!(p.check().unwrap_err(), PlanError::VariablesTooLarge { line: 2, .. }));
    }

    #[test]
    fn a_base_config_past_the_stage_limit_fails_the_first_step_with_the_size() {
        let env = (0..40).map(|i| format!("B{i}={}", "b".repeat(16 << 10))).collect();
        let base = ContainerConfig { env: Some(env), ..Default::default() };
        let p = plan("FROM x\nRUN true\n", &[]);
        let e = p.steps(&p.stages[0], &base).unwrap_err();
        assert!(matches!(e, PlanError::VariablesTooLarge { line: 2, size } if size > 640 << 10), "{e}");
    }

    #[test]
    fn deep_or_long_copy_destinations_and_workdirs_are_refused_naming_the_path_problem() {
        let deep = "/a".repeat(5000);
        let p = Plan::new(&parse(&format!("FROM scratch\nCOPY f {deep}/\n")).unwrap(), &BTreeMap::new(), None).unwrap();
        let e = p.check().unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("dockerfile line 2: COPY destination /a/a/a"), "{msg}");
        assert!(msg.ends_with("is 10001 bytes long, over the limit of 3 KiB for a path"), "{msg}");
        assert!(msg.len() < 300, "the path is shortened: {msg}");
        assert!(e.is_limit());

        let mut text = "FROM scratch\n".to_string();
        for _ in 0..600 {
            text.push_str("WORKDIR d\n");
        }
        let p = Plan::new(&parse(&text).unwrap(), &BTreeMap::new(), None).unwrap();
        let e = p.check().unwrap_err();
        assert!(e.to_string().contains("WORKDIR") && e.to_string().contains("nests 513 directories deep"), "{e}");
        assert!(matches!(e, PlanError::Path { line: 514, .. }), "{e}");

        let long_name = "n".repeat(4000);
        let p = Plan::new(&parse(&format!("FROM scratch\nCOPY {long_name} /x\n")).unwrap(), &BTreeMap::new(), None)
            .unwrap();
        assert!(p.check().unwrap_err().to_string().contains("COPY source nnnn"));
    }

    #[test]
    fn steps_are_planned_one_at_a_time_and_stop_after_an_error() {
        let p = plan("FROM x\nENV A=1\nRUN echo\nENV B=${NOPE:?unset}\nRUN never\n", &[]);
        let mut it = p.step_iter(&p.stages[0], &ContainerConfig::default());
        assert_eq!(it.next().unwrap().unwrap().config.env_get("A").as_deref(), Some("1"));
        assert!(matches!(it.next().unwrap().unwrap().action, Action::Run(_)));
        assert!(it.next().unwrap().is_err());
        assert!(it.next().is_none());
        assert!(!p.check().unwrap_err().is_limit(), "a missing variable may come from the base image");
    }

    #[test]
    fn env_lookups_see_the_last_of_duplicate_base_entries_and_sets_replace_it() {
        let base = ContainerConfig { env: Some(vec!["A=1".into(), "A=2".into()]), ..Default::default() };
        let p = plan("FROM x\nENV B=$A\nENV A=3\nENV C=$A\n", &[]);
        let steps = p.steps(&p.stages[0], &base).unwrap();
        let c = &steps[2].config;
        assert_eq!(c.env_get("B").as_deref(), Some("2"));
        assert_eq!(c.env_get("C").as_deref(), Some("3"));
        assert_eq!(c.env.as_ref().unwrap(), &["A=1", "A=3", "B=2", "C=3"]);
    }

    #[test]
    fn checking_a_plan_with_a_large_config_does_not_copy_it_per_step() {
        let pairs: Vec<String> = (0..20_000).map(|i| format!("K{i}=")).collect();
        let mut text = format!("FROM scratch\nENV {}\n", pairs.join(" "));
        for i in 0..997 {
            text.push_str(&format!("RUN x{i}\n"));
        }
        let p = Plan::new(&parse(&text).unwrap(), &BTreeMap::new(), None).unwrap();
        let t = std::time::Instant::now();
        p.check().unwrap();
        assert!(t.elapsed() < std::time::Duration::from_millis(500), "{:?}", t.elapsed());
    }
}
