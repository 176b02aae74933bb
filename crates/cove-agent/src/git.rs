//! Git for the toolbox (`/git/*`, every git method of the Daytona SDKs), done by running the
//! image's own `git`.
//!
//! Contract:
//! - `path` names the repository (or the clone/init target); relative paths resolve against the
//!   workdir exactly as the file API resolves them (`process::resolve`); an existing path that is
//!   not a repository is git's own 400, a repository path that does not exist is 404.
//! - `git` must be on the agent's `PATH`. When it is not, every route answers 400 saying so and
//!   naming the package to install. Why the CLI and not a Rust library: gix cannot push, and
//!   libgit2 (`git2`) would link a C library with its own TLS and SSH stacks statically into the
//!   agent, which every sandbox carries; the SDK's core (push/pull over http(s) with
//!   credentials, reset, restore, merges on pull) is what `git` does, with the behaviour and
//!   configuration users already know, at no cost to the agent's size or build time.
//! - Credentials (`username`/`password` of clone, push and pull) exist only in the environment of
//!   that one git process: its configuration comes through `GIT_CONFIG_COUNT`/`KEY_n`/`VALUE_n`
//!   (never argv), which first empties `credential.helper` (so a configured helper such as
//!   `store` never saves them) and then adds an inline helper printing `$COVE_GIT_USERNAME` and
//!   `$COVE_GIT_PASSWORD` with the shell's builtin `printf` (so the values are in no process's
//!   `/proc/*/cmdline`). Nothing is written to the repository's config; requests and credentials
//!   are never logged. A process environment is readable only by those that may ptrace the
//!   process, i.e. that could read its memory anyway.
//! - git never prompts (`GIT_TERMINAL_PROMPT=0`, stdin `/dev/null` unless data is piped) and runs
//!   with `LC_ALL=C`; it is killed when the client goes away.
//! - A failed git command answers 400 with git's stderr; unknown JSON fields and query
//!   parameters are refused by name (400).
//! - `create_branch` makes the branch at HEAD and switches to it, as Daytona's daemon does;
//!   `dangerously_authenticate` is the one route that stores credentials, on purpose: in the git
//!   credential store (`~/.git-credentials`, 0600), given on stdin.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::error::{ApiError, ErrorKind, chain};
use crate::process::{prepare, resolve, which};
use crate::server::AppState;

/// The inline credential helper: answers `get` from the environment, ignores `store`/`erase`.
const CREDENTIAL_HELPER: &str = "!f() { test \"$1\" = get || return 0; \
     printf 'username=%s\\npassword=%s\\n' \"$COVE_GIT_USERNAME\" \"$COVE_GIT_PASSWORD\"; }; f";
/// Variables of the agent's environment that would point git somewhere else than `path`.
const REMOVED_ENV: [&str; 6] =
    ["GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_ASKPASS", "SSH_ASKPASS", "GIT_CONFIG_COUNT"];

/// A failed git operation.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// No `git` on `PATH`.
    #[error(
        "git is not installed in this sandbox (no git on PATH); install it in the image, e.g. \
         `apt-get install git` (Debian/Ubuntu), `apk add git` (Alpine) or `dnf install git`"
    )]
    NotInstalled,
    /// The body is not the JSON the route takes.
    #[error("invalid JSON body for {op}: {message}")]
    Body {
        /// The route.
        op: &'static str,
        /// serde's words.
        message: String,
    },
    /// A field is missing, empty or malformed.
    #[error("{op}: {message}")]
    Invalid {
        /// The route.
        op: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The repository path does not exist.
    #[error("{op}: repository path {path} does not exist")]
    NoSuchPath {
        /// The route.
        op: &'static str,
        /// The resolved path.
        path: String,
    },
    /// A remote of that name exists and `overwrite` is not set.
    #[error("remote {name:?} already exists; pass overwrite to replace its URL")]
    RemoteExists {
        /// The remote.
        name: String,
    },
    /// git could not be started.
    #[error("{op}: start {git}")]
    Spawn {
        /// The route.
        op: &'static str,
        /// The binary.
        git: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// git exited with an error.
    #[error("{op}: git {subcommand} failed (exit {code}): {stderr}")]
    Failed {
        /// The route.
        op: &'static str,
        /// git's subcommand.
        subcommand: String,
        /// The exit code (-1 for a signal).
        code: i32,
        /// git's own words.
        stderr: String,
    },
}

impl GitError {
    /// Class of the failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            GitError::NotInstalled | GitError::Body { .. } | GitError::Invalid { .. } | GitError::Failed { .. } => {
                ErrorKind::InvalidArgument
            }
            GitError::NoSuchPath { .. } => ErrorKind::NotFound,
            GitError::RemoteExists { .. } => ErrorKind::AlreadyExists,
            GitError::Spawn { .. } => ErrorKind::Internal,
        }
    }
}

impl From<GitError> for ApiError {
    fn from(e: GitError) -> Self {
        ApiError::new(e.kind(), chain(&e))
    }
}

/// `POST /git/clone`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloneRequest {
    url: String,
    path: String,
    branch: Option<String>,
    commit_id: Option<String>,
    username: Option<String>,
    password: Option<String>,
    insecure_skip_tls: Option<bool>,
    depth: Option<i64>,
}

/// Bodies that name a repository and a list of files (`/git/add`, `/git/restore`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddRequest {
    path: String,
    files: Vec<String>,
}

/// `POST /git/restore`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    path: String,
    files: Vec<String>,
    staged: Option<bool>,
    worktree: Option<bool>,
    source: Option<String>,
}

/// `POST /git/reset`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResetRequest {
    path: String,
    mode: Option<String>,
    target: Option<String>,
    files: Option<Vec<String>>,
}

/// `POST /git/commit`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommitRequest {
    path: String,
    message: String,
    author: String,
    email: String,
    allow_empty: Option<bool>,
}

/// `POST /git/push`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushRequest {
    path: String,
    username: Option<String>,
    password: Option<String>,
    branch: Option<String>,
    remote: Option<String>,
    set_upstream: Option<bool>,
}

/// `POST /git/pull`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullRequest {
    path: String,
    username: Option<String>,
    password: Option<String>,
    branch: Option<String>,
    remote: Option<String>,
}

/// `POST /git/branches`, `DELETE /git/branches`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BranchRequest {
    path: String,
    name: String,
}

/// `POST /git/checkout`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckoutRequest {
    path: String,
    branch: String,
}

/// `POST /git/init`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitRequest {
    path: String,
    bare: Option<bool>,
    initial_branch: Option<String>,
}

/// `POST /git/remotes`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddRemoteRequest {
    path: String,
    name: String,
    url: String,
    fetch: Option<bool>,
    overwrite: Option<bool>,
}

/// `POST /git/config`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetConfigRequest {
    key: String,
    value: String,
    scope: Option<String>,
    path: Option<String>,
}

/// `POST /git/config/user`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigureUserRequest {
    name: String,
    email: String,
    scope: Option<String>,
    path: Option<String>,
}

/// `POST /git/credentials`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthenticateRequest {
    username: String,
    password: String,
    host: Option<String>,
    protocol: Option<String>,
}

/// `?path=` of the GET routes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathQuery {
    path: Option<String>,
}

/// `GET /git/config?key=&scope=&path=`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigQuery {
    key: Option<String>,
    scope: Option<String>,
    path: Option<String>,
}

/// `FileStatus` as the toolbox client reads it.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct FileStatus {
    /// Path relative to the repository root.
    pub name: String,
    /// Index side.
    pub staging: &'static str,
    /// Working tree side.
    pub worktree: &'static str,
    /// The original path of a rename or copy, else empty.
    pub extra: String,
}

/// `GitStatus` as the toolbox client reads it.
#[derive(Debug, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct GitStatus {
    /// The branch, or `HEAD` when detached.
    pub current_branch: String,
    /// Changed, staged and untracked files.
    pub file_status: Vec<FileStatus>,
    /// Commits not on the upstream.
    pub ahead: u64,
    /// Upstream commits not here.
    pub behind: u64,
    /// The branch has an upstream that exists.
    pub branch_published: bool,
    /// HEAD is not on a branch.
    pub detached: bool,
    /// `origin/main`, or empty.
    pub upstream: String,
}

#[derive(Debug, Serialize)]
struct BranchesResponse {
    branches: Vec<String>,
    current: String,
}

#[derive(Debug, Serialize)]
struct Remote {
    name: String,
    url: String,
}

#[derive(Debug, Serialize)]
struct RemotesResponse {
    remotes: Vec<Remote>,
}

#[derive(Debug, Serialize)]
struct CommitResponse {
    hash: String,
}

#[derive(Debug, Serialize)]
struct ConfigResponse {
    value: Option<String>,
}

/// `GitCommitInfo` of `/git/history`.
#[derive(Debug, Serialize)]
struct CommitInfo {
    hash: String,
    author: String,
    email: String,
    message: String,
    timestamp: String,
}

/// The git routes, merged into the toolbox router.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/git/clone", post(clone))
        .route("/git/status", get(status))
        .route("/git/branches", get(branches).post(create_branch).delete(delete_branch))
        .route("/git/checkout", post(checkout))
        .route("/git/add", post(add))
        .route("/git/commit", post(commit))
        .route("/git/push", post(push))
        .route("/git/pull", post(pull))
        .route("/git/reset", post(reset))
        .route("/git/restore", post(restore))
        .route("/git/init", post(init))
        .route("/git/remotes", get(remotes).post(add_remote))
        .route("/git/config", get(get_config).post(set_config))
        .route("/git/config/user", post(configure_user))
        .route("/git/credentials", post(authenticate))
        .route("/git/history", get(history))
}

fn body<T: DeserializeOwned>(op: &'static str, bytes: &[u8]) -> Result<T, GitError> {
    serde_json::from_slice(bytes).map_err(|e| GitError::Body { op, message: e.to_string() })
}

type Done = Result<Json<serde_json::Value>, ApiError>;

fn ok() -> Done {
    Ok(Json(serde_json::json!({})))
}

async fn clone(State(s): State<AppState>, b: Bytes) -> Done {
    let req: CloneRequest = body("clone", &b)?;
    do_clone(&s.config.workdir, req).await?;
    ok()
}

async fn status(State(s): State<AppState>, Query(q): Query<PathQuery>) -> Result<Json<GitStatus>, ApiError> {
    let repo = repo_path("status", &s.config.workdir, q.path.as_deref())?;
    Ok(Json(do_status(&repo).await?))
}

async fn branches(State(s): State<AppState>, Query(q): Query<PathQuery>) -> Done {
    let repo = repo_path("branches", &s.config.workdir, q.path.as_deref())?;
    let git = Git::find()?;
    let out = git.run("branches", &repo, &["for-each-ref", "--format=%(refname)", "refs/heads/"]).await?;
    let branches = out.lines().filter_map(|l| l.strip_prefix("refs/heads/")).map(str::to_string).collect();
    let current = git.current_branch(&repo).await?.unwrap_or_default();
    Ok(Json(serde_json::to_value(BranchesResponse { branches, current }).unwrap_or_default()))
}

async fn create_branch(State(s): State<AppState>, b: Bytes) -> Done {
    let req: BranchRequest = body("create branch", &b)?;
    let repo = repo_path("create branch", &s.config.workdir, Some(&req.path))?;
    let name = not_option("create branch", "name", &req.name)?;
    Git::find()?.run("create branch", &repo, &["switch", "--create", name]).await?;
    ok()
}

async fn delete_branch(State(s): State<AppState>, b: Bytes) -> Done {
    let req: BranchRequest = body("delete branch", &b)?;
    let repo = repo_path("delete branch", &s.config.workdir, Some(&req.path))?;
    let name = not_option("delete branch", "name", &req.name)?;
    Git::find()?.run("delete branch", &repo, &["branch", "-D", "--", name]).await?;
    ok()
}

async fn checkout(State(s): State<AppState>, b: Bytes) -> Done {
    let req: CheckoutRequest = body("checkout", &b)?;
    let repo = repo_path("checkout", &s.config.workdir, Some(&req.path))?;
    let branch = not_option("checkout", "branch", &req.branch)?;
    // `--` makes git take it as a branch or commit, never as a file to restore.
    Git::find()?.run("checkout", &repo, &["checkout", branch, "--"]).await?;
    ok()
}

async fn add(State(s): State<AppState>, b: Bytes) -> Done {
    let req: AddRequest = body("add", &b)?;
    let repo = repo_path("add", &s.config.workdir, Some(&req.path))?;
    let files = files_of("add", &req.files)?;
    let mut args = vec!["add", "--"];
    args.extend(files);
    Git::find()?.run("add", &repo, &args).await?;
    ok()
}

async fn commit(State(s): State<AppState>, b: Bytes) -> Result<Json<serde_json::Value>, ApiError> {
    let req: CommitRequest = body("commit", &b)?;
    let repo = repo_path("commit", &s.config.workdir, Some(&req.path))?;
    let author = required("commit", "author", &req.author)?;
    let email = required("commit", "email", &req.email)?;
    let git = Git::find()?;
    let mut args = vec!["commit", "--file=-"];
    if req.allow_empty == Some(true) {
        args.push("--allow-empty");
    }
    let identity = [
        ("GIT_AUTHOR_NAME", author),
        ("GIT_AUTHOR_EMAIL", email),
        ("GIT_COMMITTER_NAME", author),
        ("GIT_COMMITTER_EMAIL", email),
    ];
    let inv = Invocation::new("commit", &repo, &args).envs(&identity).stdin(req.message.as_bytes());
    git.exec(inv).await?;
    let hash = git.run("commit", &repo, &["rev-parse", "HEAD"]).await?.trim().to_string();
    Ok(Json(serde_json::to_value(CommitResponse { hash }).unwrap_or_default()))
}

async fn push(State(s): State<AppState>, b: Bytes) -> Done {
    let req: PushRequest = body("push", &b)?;
    let repo = repo_path("push", &s.config.workdir, Some(&req.path))?;
    let creds = Credentials::from_request("push", req.username.as_deref(), req.password.as_deref())?;
    let git = Git::find()?;
    let remote = optional("push", "remote", req.remote.as_deref())?.unwrap_or("origin");
    let branch = match optional("push", "branch", req.branch.as_deref())? {
        Some(b) => b.to_string(),
        None => git.current_branch(&repo).await?.ok_or_else(|| GitError::Invalid {
            op: "push",
            message: "HEAD is detached; name the branch to push".into(),
        })?,
    };
    let mut args = vec!["push"];
    if req.set_upstream == Some(true) {
        args.push("--set-upstream");
    }
    args.extend(["--", remote, branch.as_str()]);
    git.exec(Invocation::new("push", &repo, &args).credentials(creds.as_ref())).await?;
    ok()
}

async fn pull(State(s): State<AppState>, b: Bytes) -> Done {
    let req: PullRequest = body("pull", &b)?;
    let repo = repo_path("pull", &s.config.workdir, Some(&req.path))?;
    let creds = Credentials::from_request("pull", req.username.as_deref(), req.password.as_deref())?;
    let remote = optional("pull", "remote", req.remote.as_deref())?;
    let branch = optional("pull", "branch", req.branch.as_deref())?;
    let mut args = vec!["pull"];
    match (remote, branch) {
        (None, None) => {}
        (remote, branch) => {
            args.extend(["--", remote.unwrap_or("origin")]);
            args.extend(branch);
        }
    }
    Git::find()?.exec(Invocation::new("pull", &repo, &args).credentials(creds.as_ref())).await?;
    ok()
}

async fn reset(State(s): State<AppState>, b: Bytes) -> Done {
    let req: ResetRequest = body("reset", &b)?;
    let repo = repo_path("reset", &s.config.workdir, Some(&req.path))?;
    let mut args = vec!["reset"];
    let mode = match req.mode.as_deref().filter(|m| !m.is_empty()) {
        None => None,
        Some(m @ ("soft" | "mixed" | "hard" | "merge" | "keep")) => Some(format!("--{m}")),
        Some(m) => {
            return Err(GitError::Invalid {
                op: "reset",
                message: format!("unknown mode {m:?}; use soft, mixed, hard, merge or keep"),
            }
            .into());
        }
    };
    if let Some(m) = &mode {
        args.push(m);
    }
    let target = optional("reset", "target", req.target.as_deref())?;
    args.push(target.unwrap_or("HEAD"));
    let files = req.files.unwrap_or_default();
    if !files.is_empty() {
        args.push("--");
        args.extend(files.iter().map(String::as_str));
    }
    Git::find()?.run("reset", &repo, &args).await?;
    ok()
}

async fn restore(State(s): State<AppState>, b: Bytes) -> Done {
    let req: RestoreRequest = body("restore", &b)?;
    let repo = repo_path("restore", &s.config.workdir, Some(&req.path))?;
    let files = files_of("restore", &req.files)?;
    let mut args = vec!["restore".to_string()];
    if req.staged == Some(true) {
        args.push("--staged".into());
    }
    if req.worktree == Some(true) {
        args.push("--worktree".into());
    }
    if let Some(src) = optional("restore", "source", req.source.as_deref())? {
        args.push(format!("--source={src}"));
    }
    args.push("--".into());
    args.extend(files.iter().map(|f| f.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Git::find()?.run("restore", &repo, &args).await?;
    ok()
}

async fn init(State(s): State<AppState>, b: Bytes) -> Done {
    let req: InitRequest = body("init", &b)?;
    let target = resolve(&s.config.workdir, Some(required("init", "path", &req.path)?));
    let target = target.to_string_lossy().into_owned();
    let mut args = vec!["init".to_string(), "--quiet".to_string()];
    if req.bare == Some(true) {
        args.push("--bare".into());
    }
    if let Some(b) = optional("init", "initial_branch", req.initial_branch.as_deref())? {
        args.push(format!("--initial-branch={b}"));
    }
    args.extend(["--".to_string(), target]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Git::find()?.run("init", &s.config.workdir, &args).await?;
    ok()
}

async fn remotes(State(s): State<AppState>, Query(q): Query<PathQuery>) -> Done {
    let repo = repo_path("remotes", &s.config.workdir, q.path.as_deref())?;
    let git = Git::find()?;
    let inv = Invocation::new("remotes", &repo, &["config", "--local", "-z", "--get-regexp", r"^remote\..*\.url$"]);
    let out = git.exec(inv.ok_codes(&[0, 1])).await?;
    let remotes = parse_remote_urls(&String::from_utf8_lossy(&out.stdout));
    Ok(Json(serde_json::to_value(RemotesResponse { remotes }).unwrap_or_default()))
}

async fn add_remote(State(s): State<AppState>, b: Bytes) -> Done {
    let req: AddRemoteRequest = body("add remote", &b)?;
    let repo = repo_path("add remote", &s.config.workdir, Some(&req.path))?;
    let name = not_option("add remote", "name", &req.name)?;
    let url = not_option("add remote", "url", &req.url)?;
    let git = Git::find()?;
    let exists =
        git.exec(Invocation::new("add remote", &repo, &["remote", "get-url", "--", name]).ok_codes(&[0, 2])).await?;
    if exists.code == 0 {
        if req.overwrite != Some(true) {
            return Err(GitError::RemoteExists { name: name.to_string() }.into());
        }
        git.run("add remote", &repo, &["remote", "set-url", "--", name, url]).await?;
    } else {
        git.run("add remote", &repo, &["remote", "add", "--", name, url]).await?;
    }
    if req.fetch == Some(true) {
        git.run("add remote", &repo, &["fetch", "--", name]).await?;
    }
    ok()
}

/// `--global` (default), `--local` (needs a repository path) or `--system`, and where git runs.
fn scope(
    op: &'static str,
    workdir: &Path,
    scope: Option<&str>,
    path: Option<&str>,
) -> Result<(&'static str, PathBuf), GitError> {
    let path = path.filter(|p| !p.is_empty());
    match scope.filter(|s| !s.is_empty()).unwrap_or("global") {
        "global" => Ok(("--global", workdir.to_path_buf())),
        "system" => Ok(("--system", workdir.to_path_buf())),
        "local" => match path {
            Some(p) => Ok(("--local", repo_path(op, workdir, Some(p))?)),
            None => Err(GitError::Invalid { op, message: "path is required when scope is local".into() }),
        },
        other => {
            Err(GitError::Invalid { op, message: format!("unknown scope {other:?}; use global, local or system") })
        }
    }
}

async fn get_config(State(s): State<AppState>, Query(q): Query<ConfigQuery>) -> Done {
    let key = not_option("get config", "key", q.key.as_deref().unwrap_or_default())?;
    let (flag, cwd) = scope("get config", &s.config.workdir, q.scope.as_deref(), q.path.as_deref())?;
    let out = Git::find()?
        .exec(Invocation::new("get config", &cwd, &["config", flag, "--get", "--", key]).ok_codes(&[0, 1]))
        .await?;
    let value = (out.code == 0).then(|| String::from_utf8_lossy(&out.stdout).trim_end_matches('\n').to_string());
    Ok(Json(serde_json::to_value(ConfigResponse { value }).unwrap_or_default()))
}

async fn set_config(State(s): State<AppState>, b: Bytes) -> Done {
    let req: SetConfigRequest = body("set config", &b)?;
    let key = not_option("set config", "key", &req.key)?;
    let (flag, cwd) = scope("set config", &s.config.workdir, req.scope.as_deref(), req.path.as_deref())?;
    Git::find()?.run("set config", &cwd, &["config", flag, "--", key, &req.value]).await?;
    ok()
}

async fn configure_user(State(s): State<AppState>, b: Bytes) -> Done {
    let req: ConfigureUserRequest = body("configure user", &b)?;
    let name = required("configure user", "name", &req.name)?;
    let email = required("configure user", "email", &req.email)?;
    let (flag, cwd) = scope("configure user", &s.config.workdir, req.scope.as_deref(), req.path.as_deref())?;
    let git = Git::find()?;
    git.run("configure user", &cwd, &["config", flag, "user.name", name]).await?;
    git.run("configure user", &cwd, &["config", flag, "user.email", email]).await?;
    ok()
}

async fn authenticate(State(s): State<AppState>, b: Bytes) -> Done {
    const OP: &str = "authenticate";
    let req: AuthenticateRequest = body(OP, &b)?;
    let creds = Credentials::from_request(OP, Some(&req.username), Some(&req.password))?
        .ok_or_else(|| GitError::Invalid { op: OP, message: "username and password are required".into() })?;
    let host = optional(OP, "host", req.host.as_deref())?.unwrap_or("github.com");
    let protocol = optional(OP, "protocol", req.protocol.as_deref())?.unwrap_or("https");
    for (what, v) in [("host", host), ("protocol", protocol)] {
        if v.contains(['\n', '\0', '=']) {
            return Err(GitError::Invalid { op: OP, message: format!("{what} must be one line without '='") }.into());
        }
    }
    let git = Git::find()?;
    let cwd = &s.config.workdir;
    let input =
        format!("protocol={protocol}\nhost={host}\nusername={}\npassword={}\n\n", creds.username, creds.password);
    // Only the store helper sees them (not any other configured helper), through stdin.
    let store = ["-c", "credential.helper=", "-c", "credential.helper=store", "credential", "approve"];
    git.exec(Invocation::new(OP, cwd, &store).stdin(input.as_bytes())).await?;
    let helpers = git
        .exec(Invocation::new(OP, cwd, &["config", "--global", "--get-all", "credential.helper"]).ok_codes(&[0, 1]))
        .await?;
    if !String::from_utf8_lossy(&helpers.stdout).lines().any(|l| l.trim() == "store") {
        git.run(OP, cwd, &["config", "--global", "--add", "credential.helper", "store"]).await?;
    }
    ok()
}

async fn history(State(s): State<AppState>, Query(q): Query<PathQuery>) -> Done {
    let repo = repo_path("history", &s.config.workdir, q.path.as_deref())?;
    let git = Git::find()?;
    let head = git
        .exec(Invocation::new("history", &repo, &["rev-parse", "--verify", "--quiet", "HEAD"]).ok_codes(&[0, 1]))
        .await?;
    let commits = if head.code != 0 {
        Vec::new() // no commits yet
    } else {
        let out = git.run("history", &repo, &["log", "-z", "--format=%H%x1f%an%x1f%ae%x1f%aI%x1f%B"]).await?;
        parse_log(&out)
    };
    Ok(Json(serde_json::to_value(commits).unwrap_or_default()))
}

async fn do_clone(workdir: &Path, req: CloneRequest) -> Result<(), GitError> {
    const OP: &str = "clone";
    let url = not_option(OP, "url", &req.url)?;
    let target = resolve(workdir, Some(required(OP, "path", &req.path)?)).to_string_lossy().into_owned();
    let creds = Credentials::from_request(OP, req.username.as_deref(), req.password.as_deref())?;
    let mut args = vec!["clone".to_string(), "--quiet".to_string()];
    if let Some(b) = optional(OP, "branch", req.branch.as_deref())? {
        args.push(format!("--branch={b}"));
    }
    match req.depth {
        None => {}
        Some(d) if d > 0 => args.push(format!("--depth={d}")),
        Some(d) => {
            return Err(GitError::Invalid { op: OP, message: format!("depth must be a positive number, not {d}") });
        }
    }
    let commit = optional(OP, "commit_id", req.commit_id.as_deref())?;
    if commit.is_some() {
        args.push("--no-checkout".into());
    }
    args.extend(["--".to_string(), url.to_string(), target.clone()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let git = Git::find()?;
    let mut inv = Invocation::new(OP, workdir, &args).credentials(creds.as_ref());
    if req.insecure_skip_tls == Some(true) {
        inv = inv.envs(&[("GIT_SSL_NO_VERIFY", "true")]);
    }
    git.exec(inv).await?;
    if let Some(commit) = commit {
        git.run(OP, Path::new(&target), &["checkout", "--quiet", "--detach", commit, "--"]).await?;
    }
    Ok(())
}

async fn do_status(repo: &Path) -> Result<GitStatus, GitError> {
    let git = Git::find()?;
    let out = git.run("status", repo, &["status", "--porcelain=v2", "--branch", "-z", "--untracked-files=all"]).await?;
    Ok(parse_status(&out))
}

/// Parses `git status --porcelain=v2 --branch -z`.
pub fn parse_status(out: &str) -> GitStatus {
    let mut st = GitStatus::default();
    let mut fields = out.split('\0').filter(|f| !f.is_empty());
    while let Some(entry) = fields.next() {
        if let Some(h) = entry.strip_prefix("# ") {
            let (key, value) = h.split_once(' ').unwrap_or((h, ""));
            match key {
                "branch.head" if value == "(detached)" => {
                    st.detached = true;
                    st.current_branch = "HEAD".into();
                }
                "branch.head" => st.current_branch = value.to_string(),
                "branch.upstream" => st.upstream = value.to_string(),
                "branch.ab" => {
                    st.branch_published = true;
                    for part in value.split(' ') {
                        if let Some(n) = part.strip_prefix('+') {
                            st.ahead = n.parse().unwrap_or(0);
                        } else if let Some(n) = part.strip_prefix('-') {
                            st.behind = n.parse().unwrap_or(0);
                        }
                    }
                }
                _ => {}
            }
            continue;
        }
        let (kind, rest) = entry.split_at(entry.len().min(2));
        match kind {
            "1 " | "2 " | "u " => {
                // XY sub mH mI mW hH hI [score] path (ordinary: 8 fields before the path,
                // renamed: 9, unmerged: 10).
                let before = match kind {
                    "1 " => 7,
                    "2 " => 8,
                    _ => 9,
                };
                let mut parts = rest.splitn(before + 1, ' ');
                let xy = parts.next().unwrap_or("..");
                let name = parts.nth(before - 1).unwrap_or_default().to_string();
                let extra = if kind == "2 " { fields.next().unwrap_or_default().to_string() } else { String::new() };
                let (staging, worktree) = if kind == "u " {
                    (UNMERGED, UNMERGED)
                } else {
                    let mut c = xy.chars();
                    (status_name(c.next().unwrap_or('.')), status_name(c.next().unwrap_or('.')))
                };
                st.file_status.push(FileStatus { name, staging, worktree, extra });
            }
            "? " => st.file_status.push(FileStatus {
                name: rest.to_string(),
                staging: "Untracked",
                worktree: "Untracked",
                extra: String::new(),
            }),
            _ => {} // ignored files ("! ") and anything newer
        }
    }
    st
}

const UNMERGED: &str = "Updated but unmerged";

fn status_name(c: char) -> &'static str {
    match c {
        'M' | 'T' => "Modified",
        'A' => "Added",
        'D' => "Deleted",
        'R' => "Renamed",
        'C' => "Copied",
        'U' => UNMERGED,
        '?' => "Untracked",
        _ => "Unmodified",
    }
}

/// `remote.<name>.url\n<url>\0` entries of `git config -z --get-regexp`.
fn parse_remote_urls(out: &str) -> Vec<Remote> {
    out.split('\0')
        .filter_map(|e| {
            let (key, url) = e.split_once('\n')?;
            let name = key.strip_prefix("remote.")?.strip_suffix(".url")?;
            Some(Remote { name: name.to_string(), url: url.to_string() })
        })
        .collect()
}

/// `git log -z --format=%H%x1f%an%x1f%ae%x1f%aI%x1f%B`.
fn parse_log(out: &str) -> Vec<CommitInfo> {
    out.split('\0')
        .filter_map(|e| {
            let mut f = e.splitn(5, '\x1f');
            Some(CommitInfo {
                hash: f.next().filter(|h| !h.is_empty())?.trim_start_matches('\n').to_string(),
                author: f.next()?.to_string(),
                email: f.next()?.to_string(),
                timestamp: f.next()?.to_string(),
                message: f.next()?.trim_end_matches('\n').to_string(),
            })
        })
        .collect()
}

fn required<'a>(op: &'static str, name: &str, v: &'a str) -> Result<&'a str, GitError> {
    if v.is_empty() {
        return Err(GitError::Invalid { op, message: format!("{name} is required") });
    }
    Ok(v)
}

/// A required value that git would otherwise read as an option.
fn not_option<'a>(op: &'static str, name: &str, v: &'a str) -> Result<&'a str, GitError> {
    let v = required(op, name, v)?;
    if v.starts_with('-') {
        return Err(GitError::Invalid { op, message: format!("{name} must not start with '-': {v:?}") });
    }
    Ok(v)
}

/// An optional value (empty counts as absent) that must not look like an option.
fn optional<'a>(op: &'static str, name: &str, v: Option<&'a str>) -> Result<Option<&'a str>, GitError> {
    v.filter(|v| !v.is_empty()).map(|v| not_option(op, name, v)).transpose()
}

fn files_of<'a>(op: &'static str, files: &'a [String]) -> Result<Vec<&'a str>, GitError> {
    if files.is_empty() || files.iter().any(String::is_empty) {
        return Err(GitError::Invalid {
            op,
            message: "files must list at least one path (\".\" for all), none empty".into(),
        });
    }
    Ok(files.iter().map(String::as_str).collect())
}

/// The repository directory of `path`, which must exist.
fn repo_path(op: &'static str, workdir: &Path, path: Option<&str>) -> Result<PathBuf, GitError> {
    let p = resolve(workdir, Some(required(op, "path", path.unwrap_or_default())?));
    if !p.is_dir() {
        return Err(GitError::NoSuchPath { op, path: p.display().to_string() });
    }
    Ok(p)
}

/// A username and password for one git process.
pub struct Credentials {
    username: String,
    password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("username", &self.username).finish_non_exhaustive()
    }
}

impl Credentials {
    /// Both or neither (empty counts as absent); no line breaks or NULs, which would let a value
    /// add lines to git's credential protocol.
    fn from_request(
        op: &'static str,
        username: Option<&str>,
        password: Option<&str>,
    ) -> Result<Option<Self>, GitError> {
        let (u, p) = (username.filter(|u| !u.is_empty()), password.filter(|p| !p.is_empty()));
        let (username, password) = match (u, p) {
            (None, None) => return Ok(None),
            (Some(u), Some(p)) => (u, p),
            (Some(_), None) => {
                return Err(GitError::Invalid { op, message: "username was given without a password".into() });
            }
            (None, Some(_)) => {
                return Err(GitError::Invalid { op, message: "password was given without a username".into() });
            }
        };
        if [username, password].iter().any(|v| v.contains(['\n', '\r', '\0'])) {
            return Err(GitError::Invalid {
                op,
                message: "username and password must not contain line breaks or NUL".into(),
            });
        }
        Ok(Some(Credentials { username: username.to_string(), password: password.to_string() }))
    }
}

/// One git command to run.
struct Invocation<'a> {
    op: &'static str,
    cwd: &'a Path,
    args: Vec<String>,
    env: HashMap<&'static str, String>,
    stdin: Option<Vec<u8>>,
    ok_codes: &'a [i32],
}

impl<'a> Invocation<'a> {
    fn new(op: &'static str, cwd: &'a Path, args: &[&str]) -> Self {
        let args = args.iter().map(|a| a.to_string()).collect();
        Invocation { op, cwd, args, env: HashMap::new(), stdin: None, ok_codes: &[0] }
    }

    fn envs(mut self, vars: &[(&'static str, &str)]) -> Self {
        self.env.extend(vars.iter().map(|(k, v)| (*k, v.to_string())));
        self
    }

    fn stdin(mut self, data: &[u8]) -> Self {
        self.stdin = Some(data.to_vec());
        self
    }

    fn ok_codes(mut self, codes: &'a [i32]) -> Self {
        self.ok_codes = codes;
        self
    }

    /// Configuration through the environment (see the module docs).
    fn credentials(mut self, creds: Option<&Credentials>) -> Self {
        if let Some(c) = creds {
            self.env.extend([
                ("GIT_CONFIG_COUNT", "2".to_string()),
                ("GIT_CONFIG_KEY_0", "credential.helper".to_string()),
                ("GIT_CONFIG_VALUE_0", String::new()),
                ("GIT_CONFIG_KEY_1", "credential.helper".to_string()),
                ("GIT_CONFIG_VALUE_1", CREDENTIAL_HELPER.to_string()),
                ("COVE_GIT_USERNAME", c.username.clone()),
                ("COVE_GIT_PASSWORD", c.password.clone()),
            ]);
        }
        self
    }
}

/// What a git process did.
struct Outcome {
    code: i32,
    stdout: Vec<u8>,
}

/// The `git` binary found on `PATH`.
struct Git {
    bin: PathBuf,
}

impl Git {
    fn find() -> Result<Git, GitError> {
        which("git", std::env::var_os("PATH").as_deref()).map(|bin| Git { bin }).ok_or(GitError::NotInstalled)
    }

    /// Runs and answers stdout, failing on a non-zero exit.
    async fn run(&self, op: &'static str, cwd: &Path, args: &[&str]) -> Result<String, GitError> {
        let out = self.exec(Invocation::new(op, cwd, args)).await?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `Some(branch)`, or `None` when HEAD is detached.
    async fn current_branch(&self, repo: &Path) -> Result<Option<String>, GitError> {
        let inv = Invocation::new("current branch", repo, &["symbolic-ref", "--quiet", "--short", "HEAD"]);
        let out = self.exec(inv.ok_codes(&[0, 1])).await?;
        Ok((out.code == 0).then(|| String::from_utf8_lossy(&out.stdout).trim().to_string()))
    }

    async fn exec(&self, inv: Invocation<'_>) -> Result<Outcome, GitError> {
        let mut cmd = Command::new(&self.bin);
        prepare(&mut cmd, inv.cwd, None);
        for k in REMOVED_ENV {
            cmd.env_remove(k);
        }
        cmd.args(&inv.args)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("LC_ALL", "C")
            .envs(&inv.env)
            .stdin(if inv.stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let subcommand = inv.args.iter().find(|a| !a.starts_with('-') && !a.contains('=')).cloned().unwrap_or_default();
        tracing::debug!(op = inv.op, %subcommand, cwd = %inv.cwd.display(), "git");
        let spawn_err = |source| GitError::Spawn { op: inv.op, git: self.bin.display().to_string(), source };
        let mut child = cmd.spawn().map_err(spawn_err)?;
        if let (Some(data), Some(mut pipe)) = (inv.stdin, child.stdin.take()) {
            tokio::spawn(async move {
                // git may exit without reading everything (an error); EPIPE is not ours to report.
                let _ = pipe.write_all(&data).await;
            });
        }
        let out = child.wait_with_output().await.map_err(spawn_err)?;
        let code = crate::process::exit_code(out.status);
        if !inv.ok_codes.contains(&code) {
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
            let stderr =
                if stderr.is_empty() { String::from_utf8_lossy(&out.stdout).trim().to_string() } else { stderr };
            return Err(GitError::Failed { op: inv.op, subcommand, code, stderr });
        }
        Ok(Outcome { code, stdout: out.stdout })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        _dir: tempfile::TempDir,
        work: PathBuf,
        state: AppState,
    }

    fn fixture() -> Option<Fixture> {
        if which("git", std::env::var_os("PATH").as_deref()).is_none() {
            eprintln!("skipped: git is not installed");
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let config = crate::server::test_config(dir.path());
        let work = config.workdir.clone();
        Some(Fixture { _dir: dir, work, state: AppState::new(config) })
    }

    impl Fixture {
        async fn call(&self, method: &str, uri: &str, body: Option<serde_json::Value>) -> (u16, serde_json::Value) {
            use tower::ServiceExt;
            let b = axum::http::Request::builder().method(method).uri(uri);
            let req = match body {
                Some(v) => b.header("content-type", "application/json").body(axum::body::Body::from(v.to_string())),
                None => b.body(axum::body::Body::empty()),
            }
            .expect("request");
            let resp = crate::server::app(self.state.clone()).oneshot(req).await.expect("infallible");
            let status = resp.status().as_u16();
            let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.expect("body");
            (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
        }

        async fn ok(&self, method: &str, uri: &str, body: serde_json::Value) -> serde_json::Value {
            let (status, v) = self.call(method, uri, Some(body.clone())).await;
            assert_eq!(status, 200, "{method} {uri} {body}: {v}");
            v
        }
    }

    #[tokio::test]
    async fn a_repository_goes_through_init_commit_push_clone_branch_reset_and_restore() {
        use serde_json::json;
        let Some(f) = fixture() else { return };
        f.ok("POST", "/git/init", json!({"path": "origin.git", "bare": true, "initial_branch": "main"})).await;
        f.ok("POST", "/git/init", json!({"path": "a", "initial_branch": "main"})).await;
        f.ok("POST", "/git/config", json!({"key": "pull.rebase", "value": "false", "scope": "local", "path": "a"}))
            .await;
        let (_, v) = f.call("GET", "/git/config?key=pull.rebase&scope=local&path=a", None).await;
        assert_eq!(v, json!({"value": "false"}));
        let (_, v) = f.call("GET", "/git/config?key=no.such&scope=local&path=a", None).await;
        assert_eq!(v, json!({"value": null}));
        let origin = f.work.join("origin.git").display().to_string();
        f.ok("POST", "/git/remotes", json!({"path": "a", "name": "origin", "url": origin})).await;
        let (s, v) = f.call("POST", "/git/remotes", Some(json!({"path": "a", "name": "origin", "url": "/x"}))).await;
        assert_eq!(s, 409, "{v}");
        let (_, v) = f.call("GET", "/git/remotes?path=a", None).await;
        assert_eq!(v, json!({"remotes": [{"name": "origin", "url": origin}]}));

        std::fs::write(f.work.join("a/readme.txt"), "one\n").expect("write");
        let (_, v) = f.call("GET", "/git/status?path=a", None).await;
        assert_eq!(v["currentBranch"], "main");
        assert_eq!(
            v["fileStatus"],
            json!([{"name": "readme.txt", "staging": "Untracked", "worktree": "Untracked", "extra": ""}])
        );
        f.ok("POST", "/git/add", json!({"path": "a", "files": ["."]})).await;
        let commit = json!({"path": "a", "message": "first", "author": "Ann", "email": "ann@example.com"});
        let first = f.ok("POST", "/git/commit", commit).await["hash"].as_str().expect("hash").to_string();
        assert_eq!(first.len(), 40);
        let (s, v) = f
            .call("POST", "/git/commit", Some(json!({"path": "a", "message": "x", "author": "A", "email": "a@x"})))
            .await;
        assert_eq!(s, 400, "nothing to commit must fail: {v}");
        f.ok("POST", "/git/push", json!({"path": "a", "set_upstream": true})).await;
        let (_, v) = f.call("GET", "/git/status?path=a", None).await;
        assert_eq!(
            (v["upstream"].as_str(), v["branchPublished"].as_bool(), v["ahead"].as_u64()),
            (Some("origin/main"), Some(true), Some(0))
        );

        f.ok("POST", "/git/clone", json!({"url": origin, "path": "b"})).await;
        f.ok("POST", "/git/branches", json!({"path": "b", "name": "feature"})).await;
        let (_, v) = f.call("GET", "/git/branches?path=b", None).await;
        assert_eq!(v, json!({"branches": ["feature", "main"], "current": "feature"}));
        std::fs::write(f.work.join("b/readme.txt"), "two\n").expect("write");
        f.ok("POST", "/git/add", json!({"path": "b", "files": ["readme.txt"]})).await;
        f.ok(
            "POST",
            "/git/commit",
            json!({"path": "b", "message": "second\n\nbody", "author": "Bo", "email": "bo@example.com"}),
        )
        .await;
        f.ok("POST", "/git/push", json!({"path": "b", "set_upstream": true})).await;
        f.ok("POST", "/git/checkout", json!({"path": "b", "branch": "main"})).await;
        f.ok("POST", "/git/branches", json!({"path": "b", "name": "scratch"})).await;
        f.ok("POST", "/git/checkout", json!({"path": "b", "branch": "main"})).await;
        f.ok("DELETE", "/git/branches", json!({"path": "b", "name": "scratch"})).await;
        let (_, v) = f.call("GET", "/git/branches?path=b", None).await;
        assert_eq!(v["branches"], json!(["feature", "main"]));

        f.ok("POST", "/git/pull", json!({"path": "a", "branch": "feature"})).await;
        assert_eq!(std::fs::read_to_string(f.work.join("a/readme.txt")).expect("read"), "two\n");
        let (_, v) = f.call("GET", "/git/history?path=a", None).await;
        assert_eq!(v[0]["message"], "second\n\nbody");
        assert_eq!((v[1]["hash"].as_str(), v[1]["author"].as_str()), (Some(first.as_str()), Some("Ann")));

        // restore: the worktree from the index; with staged, the index from HEAD.
        std::fs::write(f.work.join("a/readme.txt"), "dirty\n").expect("write");
        f.ok("POST", "/git/restore", json!({"path": "a", "files": ["readme.txt"]})).await;
        assert_eq!(std::fs::read_to_string(f.work.join("a/readme.txt")).expect("read"), "two\n");
        std::fs::write(f.work.join("a/readme.txt"), "staged\n").expect("write");
        f.ok("POST", "/git/add", json!({"path": "a", "files": ["readme.txt"]})).await;
        f.ok("POST", "/git/restore", json!({"path": "a", "files": ["readme.txt"], "staged": true})).await;
        let (_, v) = f.call("GET", "/git/status?path=a", None).await;
        assert_eq!(
            (v["fileStatus"][0]["staging"].as_str(), v["fileStatus"][0]["worktree"].as_str()),
            (Some("Unmodified"), Some("Modified"))
        );
        // reset --hard to the first commit.
        f.ok("POST", "/git/reset", json!({"path": "a", "mode": "hard", "target": first})).await;
        assert_eq!(std::fs::read_to_string(f.work.join("a/readme.txt")).expect("read"), "one\n");

        // A clone at a commit is detached there.
        f.ok("POST", "/git/clone", json!({"url": origin, "path": "c", "branch": "feature", "commit_id": first})).await;
        let (_, v) = f.call("GET", "/git/status?path=c", None).await;
        assert_eq!((v["currentBranch"].as_str(), v["detached"].as_bool()), (Some("HEAD"), Some(true)));
    }

    #[tokio::test]
    async fn bad_requests_are_refused_by_name() {
        use serde_json::json;
        let Some(f) = fixture() else { return };
        let (s, v) = f.call("GET", "/git/status?path=nowhere", None).await;
        assert_eq!(s, 404, "{v}");
        let (s, v) = f.call("POST", "/git/add", Some(json!({"path": ".", "files": ["x"], "recursive": true}))).await;
        assert_eq!(s, 400);
        assert!(v["message"].as_str().unwrap_or_default().contains("recursive"), "{v}");
        let (s, v) = f.call("GET", "/git/status?path=.&verbose=1", None).await;
        assert_eq!(s, 400);
        assert!(v["message"].as_str().unwrap_or_default().contains("verbose"), "{v}");
        let (s, v) = f.call("GET", "/git/status?path=.", None).await;
        assert_eq!(s, 400);
        assert!(v["message"].as_str().unwrap_or_default().contains("not a git repository"), "{v}");
        let (s, _) = f.call("POST", "/git/reset", Some(json!({"path": ".", "mode": "sideways"}))).await;
        assert_eq!(s, 400);
        let (s, _) =
            f.call("POST", "/git/clone", Some(json!({"url": "--upload-pack=touch /tmp/x", "path": "x"}))).await;
        assert_eq!(s, 400);
        let (s, v) = f.call("POST", "/git/clone", Some(json!({"url": "/nowhere", "path": "x", "username": "u"}))).await;
        assert_eq!(s, 400);
        assert!(v["message"].as_str().unwrap_or_default().contains("without a password"), "{v}");
    }

    #[test]
    fn porcelain_v2_status_maps_to_the_sdk_file_states() {
        let out = "# branch.oid 0123\0# branch.head main\0# branch.upstream origin/main\0# branch.ab +2 -1\0\
                   1 .M N... 100644 100644 100644 aaa bbb changed file.txt\0\
                   1 A. N... 000000 100644 100644 000 ccc new.txt\0\
                   2 R. N... 100644 100644 100644 ddd eee R100 after.txt\0before.txt\0\
                   u UU N... 100644 100644 100644 100644 f1 f2 f3 both.txt\0\
                   ? dir/untracked\0";
        let st = parse_status(out);
        assert_eq!((st.current_branch.as_str(), st.ahead, st.behind), ("main", 2, 1));
        assert!(st.branch_published && !st.detached);
        assert_eq!(st.upstream, "origin/main");
        let f = |name: &str, staging, worktree, extra: &str| FileStatus {
            name: name.into(),
            staging,
            worktree,
            extra: extra.into(),
        };
        assert_eq!(
            st.file_status,
            vec![
                f("changed file.txt", "Unmodified", "Modified", ""),
                f("new.txt", "Added", "Unmodified", ""),
                f("after.txt", "Renamed", "Unmodified", "before.txt"),
                f("both.txt", UNMERGED, UNMERGED, ""),
                f("dir/untracked", "Untracked", "Untracked", ""),
            ]
        );
    }

    #[test]
    fn a_branch_whose_upstream_is_gone_is_not_published_and_detached_head_is_named_head() {
        let st = parse_status("# branch.oid 0123\0# branch.head topic\0# branch.upstream origin/topic\0");
        assert!(!st.branch_published);
        assert_eq!(st.upstream, "origin/topic");
        let st = parse_status("# branch.oid 0123\0# branch.head (detached)\0");
        assert!(st.detached);
        assert_eq!(st.current_branch, "HEAD");
    }

    #[test]
    fn credentials_come_in_pairs_without_line_breaks_and_are_not_printed() {
        assert!(Credentials::from_request("t", None, Some("")).expect("none").is_none());
        assert!(Credentials::from_request("t", Some("u"), None).is_err());
        assert!(Credentials::from_request("t", None, Some("p")).is_err());
        let e = Credentials::from_request("t", Some("u"), Some("p\nhost=evil")).expect_err("refused");
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        let c = Credentials::from_request("t", Some("u"), Some("s3cret")).expect("ok").expect("some");
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn values_that_git_would_read_as_options_are_refused() {
        assert!(not_option("t", "name", "--upload-pack=evil").is_err());
        assert!(optional("t", "branch", Some("-x")).is_err());
        assert_eq!(optional("t", "branch", Some("")).expect("absent"), None);
    }

    #[test]
    fn remote_urls_and_log_entries_are_parsed() {
        let r = parse_remote_urls("remote.origin.url\nhttp://h/r.git\0remote.a.b.url\n/srv/x\0");
        assert_eq!(
            r.iter().map(|r| (r.name.as_str(), r.url.as_str())).collect::<Vec<_>>(),
            [("origin", "http://h/r.git"), ("a.b", "/srv/x")]
        );
        let l = parse_log(
            "abc\x1fAnn\x1fa@x\x1f2024-01-01T00:00:00+00:00\x1fsubject\n\nbody\n\0\ndef\x1fBo\x1fb@x\x1f2023\x1fone\n\0",
        );
        assert_eq!(l.len(), 2);
        assert_eq!((l[0].hash.as_str(), l[0].message.as_str()), ("abc", "subject\n\nbody"));
        assert_eq!((l[1].hash.as_str(), l[1].author.as_str()), ("def", "Bo"));
    }
}
