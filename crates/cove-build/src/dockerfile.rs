//! Dockerfile parsing into owned instructions.
//!
//! The syntax (line continuations, JSON forms, heredocs, the `escape` parser directive) is
//! handled by the `parse-dockerfile` crate; this module turns its borrowed tree into
//! [`Instruction`]s with line numbers, checks each instruction's flags, and reports problems as
//! `dockerfile line N: …`. Words keep their quotes and `$VAR`s: substitution happens in the
//! planner, which knows the variables in scope.
//!
//! Not supported (refused with the line named): `RUN --mount` other than `type=cache` (cache
//! mounts are ignored, their writes land in the layer), `COPY --parents`/`--exclude`, and
//! heredocs after a command (`RUN cat <<EOF`); `RUN <<EOF` and `COPY <<EOF` work.
//!
//! Texts over [`MAX_DOCKERFILE_BYTES`], with more than [`MAX_INSTRUCTIONS`] instructions or
//! more than [`MAX_STAGES`] FROM lines are refused before anything is converted.

use parse_dockerfile as pd;

use crate::limits::{MAX_DOCKERFILE_BYTES, MAX_INSTRUCTIONS, MAX_STAGES, Size};

/// A failed parse.
#[derive(Debug, thiserror::Error)]
pub enum DockerfileError {
    /// The text is not a Dockerfile (as the syntax parser reports it).
    #[error("dockerfile line {line}: {message}")]
    Syntax {
        /// 1-based line.
        line: usize,
        /// The parser's message.
        message: String,
    },
    /// There is no FROM instruction.
    #[error("the Dockerfile has no FROM instruction")]
    NoFrom,
    /// The text is longer than [`MAX_DOCKERFILE_BYTES`].
    #[error("the Dockerfile is {} ({size} bytes), over the limit of {}", Size(*size), Size(MAX_DOCKERFILE_BYTES))]
    TooLarge {
        /// Its size in bytes.
        size: usize,
    },
    /// More instructions than [`MAX_INSTRUCTIONS`].
    #[error("dockerfile line {line}: the Dockerfile has {count} instructions, over the limit of {MAX_INSTRUCTIONS}")]
    TooManyInstructions {
        /// 1-based line of the first instruction past the limit.
        line: usize,
        /// How many it has.
        count: usize,
    },
    /// More FROM lines than [`MAX_STAGES`].
    #[error("dockerfile line {line}: the Dockerfile has {count} stages (FROM lines), over the limit of {MAX_STAGES}")]
    TooManyStages {
        /// 1-based line of the first FROM past the limit.
        line: usize,
        /// How many it has.
        count: usize,
    },
    /// A flag the instruction does not accept.
    #[error("dockerfile line {line}: {instruction} does not support the flag --{flag}")]
    UnknownFlag {
        /// 1-based line.
        line: usize,
        /// The instruction keyword.
        instruction: &'static str,
        /// The flag name.
        flag: String,
    },
    /// A feature Cove's builder deliberately does not implement.
    #[error("dockerfile line {line}: {what} is not supported by this builder")]
    Unsupported {
        /// 1-based line.
        line: usize,
        /// What was used.
        what: String,
    },
    /// An instruction whose arguments make no sense.
    #[error("dockerfile line {line}: invalid {instruction}: {problem}")]
    Invalid {
        /// 1-based line.
        line: usize,
        /// The instruction keyword.
        instruction: &'static str,
        /// What is wrong.
        problem: String,
    },
}

impl DockerfileError {
    /// Every parse failure is the caller's input.
    pub fn kind(&self) -> cove_types::ErrorKind {
        cove_types::ErrorKind::InvalidArgument
    }
}

/// A parsed Dockerfile.
#[derive(Debug, Clone)]
pub struct Dockerfile {
    /// The escape character (`\`, or `` ` `` with `# escape=`` ` ``).
    pub escape: char,
    /// All instructions in order, global ARGs first.
    pub instructions: Vec<Instruction>,
}

/// One instruction with where it came from.
#[derive(Debug, Clone)]
pub struct Instruction {
    /// 1-based line of its keyword.
    pub line: usize,
    /// Its text on one line (continuations joined, heredoc bodies left out), for logs.
    pub source: String,
    /// What it says.
    pub kind: InstructionKind,
}

/// Shell form or exec form of RUN, CMD, ENTRYPOINT and HEALTHCHECK.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum CommandForm {
    /// A JSON array, run as is.
    Exec(Vec<String>),
    /// A command line for the image's shell (continuations already joined).
    Shell(String),
}

/// A COPY/ADD source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopySource {
    /// A path or glob (raw, before substitution).
    Path(String),
    /// A heredoc that becomes a file named `name`.
    HereDoc {
        /// The delimiter, used as the file name when the destination is a directory.
        name: String,
        /// The body.
        content: String,
        /// Whether variables in the body are expanded (unquoted delimiter).
        expand: bool,
    },
}

/// FROM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FromInstruction {
    /// The image, stage name or `scratch` (raw).
    pub image: String,
    /// `--platform` (raw).
    pub platform: Option<String>,
    /// `AS name`.
    pub alias: Option<String>,
}

/// RUN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunInstruction {
    /// What to run; a heredoc body is already turned into a shell script.
    pub command: CommandForm,
    /// `--network` (`default`, `none`, `host`), recorded for the backend.
    pub network: Option<String>,
    /// Whether the command came from a heredoc.
    pub heredoc: bool,
}

/// COPY or ADD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyInstruction {
    /// ADD rather than COPY.
    pub add: bool,
    /// Sources (raw).
    pub sources: Vec<CopySource>,
    /// Destination (raw).
    pub dest: String,
    /// `--from` (COPY only).
    pub from: Option<String>,
    /// `--chown`.
    pub chown: Option<String>,
    /// `--chmod`.
    pub chmod: Option<String>,
}

/// HEALTHCHECK (flags raw, as Go durations).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthcheckInstruction {
    /// The probe command; `None` for `HEALTHCHECK NONE`.
    pub test: Option<CommandForm>,
    /// `--interval`.
    pub interval: Option<String>,
    /// `--timeout`.
    pub timeout: Option<String>,
    /// `--start-period`.
    pub start_period: Option<String>,
    /// `--start-interval`.
    pub start_interval: Option<String>,
    /// `--retries`.
    pub retries: Option<String>,
}

/// What an instruction says. Key/value lists keep their quotes (the planner removes them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstructionKind {
    /// FROM.
    From(FromInstruction),
    /// ARG `name[=default]…`.
    Arg(Vec<(String, Option<String>)>),
    /// ENV `key=value…`.
    Env(Vec<(String, String)>),
    /// LABEL `key=value…`.
    Label(Vec<(String, String)>),
    /// RUN.
    Run(RunInstruction),
    /// COPY or ADD.
    Copy(CopyInstruction),
    /// WORKDIR.
    Workdir(String),
    /// USER.
    User(String),
    /// ENTRYPOINT.
    Entrypoint(CommandForm),
    /// CMD.
    Cmd(CommandForm),
    /// EXPOSE (raw text of each argument).
    Expose(Vec<String>),
    /// VOLUME.
    Volume(Vec<String>),
    /// STOPSIGNAL.
    Stopsignal(String),
    /// HEALTHCHECK.
    Healthcheck(HealthcheckInstruction),
    /// SHELL.
    Shell(Vec<String>),
    /// ONBUILD: the trigger's text, stored in the image config and not run here.
    Onbuild(String),
    /// MAINTAINER (deprecated): becomes the config's `author`.
    Maintainer(String),
}

impl InstructionKind {
    /// The keyword, upper case.
    pub fn keyword(&self) -> &'static str {
        match self {
            InstructionKind::From(_) => "FROM",
            InstructionKind::Arg(_) => "ARG",
            InstructionKind::Env(_) => "ENV",
            InstructionKind::Label(_) => "LABEL",
            InstructionKind::Run(_) => "RUN",
            InstructionKind::Copy(c) if c.add => "ADD",
            InstructionKind::Copy(_) => "COPY",
            InstructionKind::Workdir(_) => "WORKDIR",
            InstructionKind::User(_) => "USER",
            InstructionKind::Entrypoint(_) => "ENTRYPOINT",
            InstructionKind::Cmd(_) => "CMD",
            InstructionKind::Expose(_) => "EXPOSE",
            InstructionKind::Volume(_) => "VOLUME",
            InstructionKind::Stopsignal(_) => "STOPSIGNAL",
            InstructionKind::Healthcheck(_) => "HEALTHCHECK",
            InstructionKind::Shell(_) => "SHELL",
            InstructionKind::Onbuild(_) => "ONBUILD",
            InstructionKind::Maintainer(_) => "MAINTAINER",
        }
    }
}

/// Parses Dockerfile text, refusing texts, instruction counts and stage counts past the
/// limits in [`crate::limits`] before any instruction is converted.
pub fn parse(text: &str) -> Result<Dockerfile, DockerfileError> {
    if text.len() > MAX_DOCKERFILE_BYTES {
        return Err(DockerfileError::TooLarge { size: text.len() });
    }
    let parsed = pd::parse(text).map_err(|e| syntax_error(text, &e))?;
    let escape = parsed.parser_directives.escape.as_ref().map(|d| d.value.value).unwrap_or('\\');
    let cx = Cx { text, escape, newlines: text.match_indices('\n').map(|(i, _)| i).collect() };
    let count = parsed.instructions.len();
    if count > MAX_INSTRUCTIONS {
        let line = cx.line_of(keyword_span(&parsed.instructions[MAX_INSTRUCTIONS]).start);
        return Err(DockerfileError::TooManyInstructions { line, count });
    }
    let froms: Vec<&pd::Instruction<'_>> =
        parsed.instructions.iter().filter(|i| matches!(i, pd::Instruction::From(_))).collect();
    if froms.len() > MAX_STAGES {
        let line = cx.line_of(keyword_span(froms[MAX_STAGES]).start);
        return Err(DockerfileError::TooManyStages { line, count: froms.len() });
    }
    let mut instructions = Vec::with_capacity(count);
    for ins in &parsed.instructions {
        instructions.push(cx.convert(ins)?);
    }
    if !instructions.iter().any(|i| matches!(i.kind, InstructionKind::From(_))) {
        return Err(DockerfileError::NoFrom);
    }
    Ok(Dockerfile { escape, instructions })
}

fn syntax_error(text: &str, e: &pd::Error) -> DockerfileError {
    let full = e.to_string();
    if full.contains("at least one FROM") {
        return DockerfileError::NoFrom;
    }
    // The crate appends " at line N column M"; the variant carries the line already.
    let mut message = match full.find(" at line ") {
        Some(i) => full[..i].to_string(),
        None => full.clone(),
    };
    let line = e.line().max(1);
    if message.starts_with("unknown instruction") {
        let before: Vec<&str> = text.lines().take(line.saturating_sub(1)).collect();
        if before.iter().any(|l| l.contains("<<")) {
            message.push_str(
                " (heredocs are supported only right after RUN or COPY, as in `RUN <<EOF`, \
                 not after a command such as `RUN cat <<EOF`)",
            );
        }
    }
    DockerfileError::Syntax { line, message }
}

struct Cx<'t> {
    text: &'t str,
    escape: char,
    /// Byte offsets of every `\n`, so a line number costs a binary search, not a scan.
    newlines: Vec<usize>,
}

impl Cx<'_> {
    fn line_of(&self, pos: usize) -> usize {
        self.newlines.partition_point(|&nl| nl < pos.min(self.text.len())) + 1
    }

    /// The instruction starting at `pos` as one line: continuations joined, comment lines
    /// inside them dropped, heredoc bodies left out.
    fn logical_line(&self, pos: usize) -> String {
        let rest = &self.text[pos.min(self.text.len())..];
        let mut out = String::new();
        let mut first = true;
        for line in rest.split('\n') {
            let trimmed = line.trim_end_matches('\r');
            if !first && (trimmed.trim_start().starts_with('#') || trimmed.trim().is_empty()) {
                continue;
            }
            first = false;
            let t = trimmed.trim_end();
            if let Some(stripped) = t.strip_suffix(self.escape) {
                out.push_str(stripped);
                continue;
            }
            out.push_str(trimmed);
            break;
        }
        out.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    fn convert(&self, ins: &pd::Instruction<'_>) -> Result<Instruction, DockerfileError> {
        let start = keyword_span(ins).start;
        let line = self.line_of(start);
        let kind = self.kind(ins, line)?;
        Ok(Instruction { line, source: self.logical_line(start), kind })
    }

    fn kind(&self, ins: &pd::Instruction<'_>, line: usize) -> Result<InstructionKind, DockerfileError> {
        Ok(match ins {
            pd::Instruction::From(f) => {
                let mut platform = None;
                for flag in &f.options {
                    match &*flag.name.value {
                        "platform" => platform = Some(flag_value(flag)),
                        other => return Err(unknown_flag(line, "FROM", other)),
                    }
                }
                InstructionKind::From(FromInstruction {
                    image: f.image.value.to_string(),
                    platform,
                    alias: f.as_.as_ref().map(|(_, n)| n.value.to_string()),
                })
            }
            pd::Instruction::Arg(a) => {
                let mut decls = Vec::new();
                for w in crate::expand::split_words(&a.arguments.value, self.escape) {
                    match w.split_once('=') {
                        Some((k, v)) => decls.push((k.to_string(), Some(v.to_string()))),
                        None => decls.push((w, None)),
                    }
                }
                if decls.is_empty() {
                    return Err(invalid(line, "ARG", "a name is required"));
                }
                InstructionKind::Arg(decls)
            }
            pd::Instruction::Env(e) => InstructionKind::Env(self.key_values(&e.arguments.value, line, "ENV")?),
            pd::Instruction::Label(l) => InstructionKind::Label(self.key_values(&l.arguments.value, line, "LABEL")?),
            pd::Instruction::Run(r) => {
                let mut network = None;
                for flag in &r.options {
                    match &*flag.name.value {
                        "network" => network = Some(flag_value(flag)),
                        "mount" => {
                            let v = flag_value(flag);
                            let is_cache = v.split(',').any(|kv| kv.trim() == "type=cache");
                            if !is_cache {
                                return Err(DockerfileError::Unsupported {
                                    line,
                                    what: format!("RUN --mount={v} (only type=cache, which is ignored)"),
                                });
                            }
                            tracing::debug!(line, mount = %v, "RUN cache mount ignored");
                        }
                        "security" => {
                            if flag_value(flag) == "insecure" {
                                return Err(DockerfileError::Unsupported {
                                    line,
                                    what: "RUN --security=insecure".into(),
                                });
                            }
                        }
                        other => return Err(unknown_flag(line, "RUN", other)),
                    }
                }
                let (command, heredoc) = if r.here_docs.is_empty() {
                    (self.command(&r.arguments), false)
                } else {
                    (self.run_heredoc(r, line)?, true)
                };
                InstructionKind::Run(RunInstruction { command, network, heredoc })
            }
            pd::Instruction::Copy(c) => {
                let mut out = CopyInstruction {
                    add: false,
                    sources: Vec::new(),
                    dest: c.dest.value.to_string(),
                    from: None,
                    chown: None,
                    chmod: None,
                };
                for flag in &c.options {
                    match &*flag.name.value {
                        "from" => out.from = Some(flag_value(flag)),
                        "chown" => out.chown = Some(flag_value(flag)),
                        "chmod" => out.chmod = Some(flag_value(flag)),
                        "link" => {}
                        "parents" | "exclude" => {
                            return Err(DockerfileError::Unsupported {
                                line,
                                what: format!("COPY --{}", flag.name.value),
                            });
                        }
                        other => return Err(unknown_flag(line, "COPY", other)),
                    }
                }
                out.sources = self.sources(&c.src, c.copy.span.start)?;
                InstructionKind::Copy(out)
            }
            pd::Instruction::Add(a) => {
                let mut out = CopyInstruction {
                    add: true,
                    sources: Vec::new(),
                    dest: a.dest.value.to_string(),
                    from: None,
                    chown: None,
                    chmod: None,
                };
                for flag in &a.options {
                    match &*flag.name.value {
                        "chown" => out.chown = Some(flag_value(flag)),
                        "chmod" => out.chmod = Some(flag_value(flag)),
                        "link" | "checksum" | "keep-git-dir" => {}
                        other => return Err(unknown_flag(line, "ADD", other)),
                    }
                }
                out.sources = self.sources(&a.src, a.add.span.start)?;
                InstructionKind::Copy(out)
            }
            pd::Instruction::Workdir(w) => InstructionKind::Workdir(w.arguments.value.trim().to_string()),
            pd::Instruction::User(u) => InstructionKind::User(u.arguments.value.trim().to_string()),
            pd::Instruction::Entrypoint(e) => InstructionKind::Entrypoint(self.command(&e.arguments)),
            pd::Instruction::Cmd(c) => InstructionKind::Cmd(self.command(&c.arguments)),
            pd::Instruction::Expose(e) => {
                InstructionKind::Expose(e.arguments.iter().map(|a| a.value.to_string()).collect())
            }
            pd::Instruction::Volume(v) => InstructionKind::Volume(match &v.arguments {
                pd::JsonOrStringArray::Json(j) => j.value.iter().map(|a| a.value.to_string()).collect(),
                pd::JsonOrStringArray::String(s) => s.iter().map(|a| a.value.to_string()).collect(),
            }),
            pd::Instruction::Stopsignal(s) => InstructionKind::Stopsignal(s.arguments.value.trim().to_string()),
            pd::Instruction::Healthcheck(h) => {
                let mut out = HealthcheckInstruction {
                    test: None,
                    interval: None,
                    timeout: None,
                    start_period: None,
                    start_interval: None,
                    retries: None,
                };
                for flag in &h.options {
                    let v = Some(flag_value(flag));
                    match &*flag.name.value {
                        "interval" => out.interval = v,
                        "timeout" => out.timeout = v,
                        "start-period" => out.start_period = v,
                        "start-interval" => out.start_interval = v,
                        "retries" => out.retries = v,
                        other => return Err(unknown_flag(line, "HEALTHCHECK", other)),
                    }
                }
                if let pd::HealthcheckArguments::Cmd { arguments, .. } = &h.arguments {
                    out.test = Some(self.command(arguments));
                }
                InstructionKind::Healthcheck(out)
            }
            pd::Instruction::Shell(s) => {
                InstructionKind::Shell(s.arguments.iter().map(|a| a.value.to_string()).collect())
            }
            pd::Instruction::Onbuild(o) => {
                let inner = keyword_span(&o.instruction).start;
                InstructionKind::Onbuild(self.logical_line(inner))
            }
            pd::Instruction::Maintainer(m) => InstructionKind::Maintainer(m.name.value.trim().to_string()),
            _ => {
                return Err(DockerfileError::Unsupported { line, what: "this instruction".into() });
            }
        })
    }

    /// ENV/LABEL `k=v k2=v2`, or the legacy `KEY value with spaces`.
    fn key_values(
        &self,
        args: &str,
        line: usize,
        instruction: &'static str,
    ) -> Result<Vec<(String, String)>, DockerfileError> {
        let words = crate::expand::split_words(args, self.escape);
        let Some(first) = words.first() else {
            return Err(invalid(line, instruction, "at least one key=value is required"));
        };
        if !first.contains('=') {
            let rest = args.trim_start()[first.len()..].trim().to_string();
            if rest.is_empty() {
                return Err(invalid(line, instruction, &format!("{first} needs a value")));
            }
            return Ok(vec![(first.clone(), rest)]);
        }
        let mut out = Vec::new();
        for w in words {
            match w.split_once('=') {
                Some((k, v)) if !k.is_empty() => out.push((k.to_string(), v.to_string())),
                _ => return Err(invalid(line, instruction, &format!("{w:?} is not of the form key=value"))),
            }
        }
        Ok(out)
    }

    fn command(&self, c: &pd::Command<'_>) -> CommandForm {
        match c {
            pd::Command::Exec(v) => CommandForm::Exec(v.value.iter().map(|a| a.value.to_string()).collect()),
            pd::Command::Shell(s) => CommandForm::Shell(join_continuations(s.value, self.escape)),
            _ => CommandForm::Exec(Vec::new()),
        }
    }

    fn run_heredoc(&self, r: &pd::RunInstruction<'_>, line: usize) -> Result<CommandForm, DockerfileError> {
        let rest = match &r.arguments {
            pd::Command::Shell(s) => s.value.trim(),
            _ => "",
        };
        if r.here_docs.len() != 1 || !rest.is_empty() {
            return Err(DockerfileError::Unsupported {
                line,
                what: "a RUN with several heredocs or a command around the heredoc".into(),
            });
        }
        let body = &r.here_docs[0].value;
        if body.starts_with("#!") {
            // BuildKit runs a script with a shebang as a file; do the same through the shell so
            // that the backend only ever runs argv.
            let delim = "COVE_HEREDOC_EOF_7f3a";
            let script = format!(
                "f=$(mktemp) && cat > \"$f\" <<'{delim}'\n{body}{nl}{delim}\nchmod +x \"$f\" && \"$f\"; rc=$?; rm -f \"$f\"; exit $rc",
                nl = if body.ends_with('\n') { "" } else { "\n" }
            );
            return Ok(CommandForm::Shell(script));
        }
        Ok(CommandForm::Shell(body.to_string()))
    }

    fn sources(&self, src: &[pd::Source<'_>], keyword_start: usize) -> Result<Vec<CopySource>, DockerfileError> {
        let first_line = self.text[keyword_start..].split('\n').next().unwrap_or("");
        let mut names = heredoc_names(first_line).into_iter();
        let mut out = Vec::new();
        for s in src {
            match s {
                pd::Source::Path(p) => out.push(CopySource::Path(p.value.to_string())),
                pd::Source::HereDoc(h) => out.push(CopySource::HereDoc {
                    name: names.next().unwrap_or_else(|| "EOF".to_string()),
                    content: h.value.to_string(),
                    expand: h.expand,
                }),
                _ => {
                    return Err(DockerfileError::Unsupported {
                        line: self.line_of(keyword_start),
                        what: "this COPY source".into(),
                    });
                }
            }
        }
        Ok(out)
    }
}

fn keyword_span(ins: &pd::Instruction<'_>) -> std::ops::Range<usize> {
    match ins {
        pd::Instruction::Add(i) => i.add.span.clone(),
        pd::Instruction::Arg(i) => i.arg.span.clone(),
        pd::Instruction::Cmd(i) => i.cmd.span.clone(),
        pd::Instruction::Copy(i) => i.copy.span.clone(),
        pd::Instruction::Entrypoint(i) => i.entrypoint.span.clone(),
        pd::Instruction::Env(i) => i.env.span.clone(),
        pd::Instruction::Expose(i) => i.expose.span.clone(),
        pd::Instruction::From(i) => i.from.span.clone(),
        pd::Instruction::Healthcheck(i) => i.healthcheck.span.clone(),
        pd::Instruction::Label(i) => i.label.span.clone(),
        pd::Instruction::Maintainer(i) => i.maintainer.span.clone(),
        pd::Instruction::Onbuild(i) => i.onbuild.span.clone(),
        pd::Instruction::Run(i) => i.run.span.clone(),
        pd::Instruction::Shell(i) => i.shell.span.clone(),
        pd::Instruction::Stopsignal(i) => i.stopsignal.span.clone(),
        pd::Instruction::User(i) => i.user.span.clone(),
        pd::Instruction::Volume(i) => i.volume.span.clone(),
        pd::Instruction::Workdir(i) => i.workdir.span.clone(),
        _ => 0..0,
    }
}

fn flag_value(f: &pd::Flag<'_>) -> String {
    f.value.as_ref().map(|v| v.value.to_string()).unwrap_or_default()
}

fn unknown_flag(line: usize, instruction: &'static str, flag: &str) -> DockerfileError {
    DockerfileError::UnknownFlag { line, instruction, flag: flag.to_string() }
}

fn invalid(line: usize, instruction: &'static str, problem: &str) -> DockerfileError {
    DockerfileError::Invalid { line, instruction, problem: problem.to_string() }
}

/// Joins shell-form continuation lines the way Docker does: the escape character and the
/// newline go, comment and empty lines inside the continuation are dropped.
pub fn join_continuations(s: &str, escape: char) -> String {
    if !s.contains('\n') {
        return s.to_string();
    }
    let mut out = String::new();
    let mut continuing = false;
    for line in s.split('\n') {
        let line = line.trim_end_matches('\r');
        if continuing && (line.trim_start().starts_with('#') || line.trim().is_empty()) {
            continue;
        }
        let t = line.trim_end();
        match t.strip_suffix(escape) {
            Some(stripped) => {
                out.push_str(stripped);
                continuing = true;
            }
            None => {
                out.push_str(line);
                continuing = false;
            }
        }
    }
    out
}

/// Delimiters of the heredocs opened on a line (`<<EOF`, `<<-"EOF"`, `<<'EOF'`), in order.
fn heredoc_names(line: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = line;
    while let Some(i) = rest.find("<<") {
        rest = &rest[i + 2..];
        let after = rest.trim_start_matches('-');
        let after = after.trim_start_matches(['"', '\'']);
        let name: String = after.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        if !name.is_empty() {
            names.push(name);
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Vec<InstructionKind> {
        parse(text).unwrap().instructions.into_iter().map(|i| i.kind).collect()
    }

    #[test]
    fn the_python_sdk_generated_dockerfile_parses_as_written() {
        let text = "FROM python:3.12.10-slim-bookworm\nRUN apt-get update\n\
            RUN apt-get install -y gcc gfortran build-essential\nRUN pip install --upgrade pip\n\
            RUN echo 'debconf debconf/frontend select Noninteractive' | debconf-set-selections\n\
            RUN python -m pip install numpy requests\nRUN echo hi\nRUN \"bash\" \"-c\" \"echo \\'x\\'\"\n\
            ENV A='b c'\nWORKDIR /home/daytona\nCOPY [\"home/u/ctx/a.txt\", \"/app/a.txt\"]\n";
        let d = parse(text).unwrap();
        assert_eq!(d.instructions.len(), 11);
        assert_eq!(
            d.instructions[0].kind,
            InstructionKind::From(FromInstruction {
                image: "python:3.12.10-slim-bookworm".into(),
                platform: None,
                alias: None
            })
        );
        let InstructionKind::Run(r) = &d.instructions[7].kind else { panic!() };
        assert_eq!(r.command, CommandForm::Shell(r#""bash" "-c" "echo \'x\'""#.into()));
        assert_eq!(d.instructions[8].kind, InstructionKind::Env(vec![("A".into(), "'b c'".into())]));
        assert_eq!(d.instructions[9].kind, InstructionKind::Workdir("/home/daytona".into()));
        let InstructionKind::Copy(c) = &d.instructions[10].kind else { panic!() };
        assert_eq!(c.sources, [CopySource::Path("home/u/ctx/a.txt".into())]);
        assert_eq!(c.dest, "/app/a.txt");
        assert_eq!(d.instructions[6].source, "RUN echo hi");
        assert_eq!(d.instructions[6].line, 7);
    }

    #[test]
    fn the_typescript_sdk_copy_form_parses() {
        let k = kinds("FROM alpine:3.20\nCOPY ctx/a.txt /app/a.txt\n");
        let InstructionKind::Copy(c) = &k[1] else { panic!() };
        assert_eq!(c.sources, [CopySource::Path("ctx/a.txt".into())]);
        assert_eq!(c.dest, "/app/a.txt");
    }

    #[test]
    fn heredoc_run_becomes_a_shell_script_and_heredoc_copy_a_file() {
        let k = kinds("FROM x\nRUN <<EOF\necho hi\necho there\nEOF\nCOPY <<conf <<'raw' /etc/\nv=$X\nconf\n$Y\nraw\n");
        let InstructionKind::Run(r) = &k[1] else { panic!() };
        assert_eq!(r.command, CommandForm::Shell("echo hi\necho there\n".into()));
        assert!(r.heredoc);
        let InstructionKind::Copy(c) = &k[2] else { panic!() };
        assert_eq!(
            c.sources,
            [
                CopySource::HereDoc { name: "conf".into(), content: "v=$X\n".into(), expand: true },
                CopySource::HereDoc { name: "raw".into(), content: "$Y\n".into(), expand: false },
            ]
        );
    }

    #[test]
    fn a_heredoc_with_a_shebang_is_run_as_a_script_file() {
        let k = kinds("FROM x\nRUN <<EOF\n#!/usr/bin/env python3\nprint(1)\nEOF\n");
        let InstructionKind::Run(r) = &k[1] else { panic!() };
        let CommandForm::Shell(s) = &r.command else { panic!() };
        assert!(s.contains("#!/usr/bin/env python3\nprint(1)\n"), "{s}");
        assert!(s.contains("mktemp"), "{s}");
    }

    #[test]
    fn the_escape_directive_changes_line_continuation() {
        let d = parse("# escape=`\nFROM x\nRUN echo a `\n  b\nCOPY a\\b c\n").unwrap();
        assert_eq!(d.escape, '`');
        let InstructionKind::Run(r) = &d.instructions[1].kind else { panic!() };
        assert_eq!(r.command, CommandForm::Shell("echo a   b".into()));
        assert_eq!(d.instructions[1].source, "RUN echo a b");
        let InstructionKind::Copy(c) = &d.instructions[2].kind else { panic!() };
        assert_eq!(c.sources, [CopySource::Path("a\\b".into())]);
    }

    #[test]
    fn continuations_drop_comment_lines() {
        let k = kinds("FROM x\nRUN echo a \\\n# note\n  b\n");
        let InstructionKind::Run(r) = &k[1] else { panic!() };
        assert_eq!(r.command, CommandForm::Shell("echo a   b".into()));
    }

    #[test]
    fn flags_and_aliases_are_recorded() {
        let k = kinds(
            "FROM --platform=linux/amd64 golang:1.22 AS build\nRUN --network=none make\n\
             COPY --from=build --chown=app:app --chmod=755 --link /out /bin/\n\
             HEALTHCHECK --interval=5s --retries=3 CMD curl -f localhost\nONBUILD RUN echo hi\nMAINTAINER me\n",
        );
        assert_eq!(
            k[0],
            InstructionKind::From(FromInstruction {
                image: "golang:1.22".into(),
                platform: Some("linux/amd64".into()),
                alias: Some("build".into())
            })
        );
        let InstructionKind::Run(r) = &k[1] else { panic!() };
        assert_eq!(r.network.as_deref(), Some("none"));
        let InstructionKind::Copy(c) = &k[2] else { panic!() };
        assert_eq!(
            (c.from.as_deref(), c.chown.as_deref(), c.chmod.as_deref()),
            (Some("build"), Some("app:app"), Some("755"))
        );
        let InstructionKind::Healthcheck(h) = &k[3] else { panic!() };
        assert_eq!(h.test, Some(CommandForm::Shell("curl -f localhost".into())));
        assert_eq!((h.interval.as_deref(), h.retries.as_deref()), (Some("5s"), Some("3")));
        assert_eq!(k[4], InstructionKind::Onbuild("RUN echo hi".into()));
        assert_eq!(k[5], InstructionKind::Maintainer("me".into()));
    }

    #[test]
    fn env_supports_several_pairs_and_the_legacy_form() {
        let k = kinds("FROM x\nENV A=1 B=\"2 3\" \\\n  C=${A}\nENV LEGACY some value\nLABEL \"a b\"=c\n");
        assert_eq!(
            k[1],
            InstructionKind::Env(vec![
                ("A".into(), "1".into()),
                ("B".into(), "\"2 3\"".into()),
                ("C".into(), "${A}".into())
            ])
        );
        assert_eq!(k[2], InstructionKind::Env(vec![("LEGACY".into(), "some value".into())]));
        assert_eq!(k[3], InstructionKind::Label(vec![("\"a b\"".into(), "c".into())]));
    }

    #[test]
    fn errors_name_the_line_and_the_problem() {
        let e = parse("FROM x\nFOO bar\n").unwrap_err();
        assert_eq!(e.to_string(), "dockerfile line 2: unknown instruction 'FOO'");
        assert!(matches!(parse("RUN x\n").unwrap_err(), DockerfileError::Syntax { line: 1, .. }));
        assert!(matches!(parse("").unwrap_err(), DockerfileError::NoFrom));
        assert!(matches!(parse("# just a comment\n").unwrap_err(), DockerfileError::NoFrom));
        let e = parse("FROM x\nCOPY --bogus a b\n").unwrap_err();
        assert_eq!(e.to_string(), "dockerfile line 2: COPY does not support the flag --bogus");
        let e = parse("FROM x\nRUN --mount=type=secret,id=a cat /run/secrets/a\n").unwrap_err();
        assert!(e.to_string().starts_with("dockerfile line 2: RUN --mount=type=secret"), "{e}");
        let e = parse("FROM x\nRUN cat <<EOF > /f\nhello\nEOF\n").unwrap_err();
        assert!(e.to_string().contains("heredocs are supported only right after RUN"), "{e}");
    }

    #[test]
    fn a_dockerfile_over_the_size_limit_is_refused_naming_the_limit() {
        let text = format!("FROM x\n{}", "# padding\n".repeat(MAX_DOCKERFILE_BYTES / 10));
        let e = parse(&text).unwrap_err();
        assert!(matches!(e, DockerfileError::TooLarge { size } if size == text.len()), "{e}");
        assert!(e.to_string().contains("over the limit of 1 MiB"), "{e}");
        assert!(e.kind() == cove_types::ErrorKind::InvalidArgument);
    }

    #[test]
    fn more_instructions_than_the_limit_are_refused_naming_the_first_line_past_it() {
        let ok = format!("FROM x\n{}", "RUN true\n".repeat(MAX_INSTRUCTIONS - 1));
        assert_eq!(parse(&ok).unwrap().instructions.len(), MAX_INSTRUCTIONS);
        let e = parse(&format!("{ok}RUN true\nRUN true\n")).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("dockerfile line 1001: the Dockerfile has 1002 instructions, over the limit of {MAX_INSTRUCTIONS}")
        );
    }

    #[test]
    fn more_stages_than_the_limit_are_refused() {
        let e = parse(&"FROM x\n".repeat(MAX_STAGES + 1)).unwrap_err();
        assert!(matches!(e, DockerfileError::TooManyStages { line: 101, count: 101 }), "{e}");
    }

    #[test]
    fn line_numbers_stay_right_for_many_instructions_and_continuations() {
        let d = parse("FROM x\n\nRUN a \\\n  b\n# c\nENV A=1\n").unwrap();
        let lines: Vec<usize> = d.instructions.iter().map(|i| i.line).collect();
        assert_eq!(lines, [1, 3, 6]);
    }
}
