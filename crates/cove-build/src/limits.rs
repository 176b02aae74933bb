//! The limits every build input is held to. Dockerfiles and build contexts are untrusted: a
//! few lines can multiply a value (`ARG B=$A$A$A$A`, line after line), and a context or a
//! RUN step can nest directories deeper than the host can name. Each limit is checked while
//! the work happens (an expansion stops at the byte that crosses it), so nothing is ever
//! allocated far past a limit, and each is refused with an error naming it.
//!
//! | limit | value | checked in |
//! |---|---|---|
//! | Dockerfile size | [`MAX_DOCKERFILE_BYTES`] | [`crate::dockerfile::parse`] |
//! | instructions | [`MAX_INSTRUCTIONS`] | [`crate::dockerfile::parse`] |
//! | stages (FROM lines) | [`MAX_STAGES`] | [`crate::dockerfile::parse`] |
//! | one expanded word | [`MAX_EXPANDED_WORD_BYTES`] | [`crate::expand`] |
//! | one expanded instruction | [`MAX_EXPANDED_INSTRUCTION_BYTES`] | [`crate::plan`] |
//! | a stage's config and ARG values | [`MAX_STAGE_VARIABLES_BYTES`] | [`crate::plan`] |
//! | a path in the image or context | [`MAX_PATH_BYTES`], [`MAX_PATH_DEPTH`] | plan, context, copy, layer |

use std::fmt;

/// Largest Dockerfile accepted (1 MiB). Real Dockerfiles are a few KiB; heredocs make some
/// larger, none near this.
pub const MAX_DOCKERFILE_BYTES: usize = 1 << 20;

/// Most instructions in one Dockerfile (FROM lines included). Each becomes a step with its
/// own cache key and config, so this also bounds the work a build plans.
pub const MAX_INSTRUCTIONS: usize = 1000;

/// Most stages (FROM lines): a finished stage is kept until the build ends.
pub const MAX_STAGES: usize = 100;

/// Largest value one word may expand to (64 KiB): the word after quote removal and
/// variable substitution. Values of variables that a substitution only tests
/// (`${A:+x}`) count too, so the work is bounded as well as the result.
pub const MAX_EXPANDED_WORD_BYTES: usize = 64 << 10;

/// Largest total of one instruction's expanded words and heredoc bodies (256 KiB).
pub const MAX_EXPANDED_INSTRUCTION_BYTES: usize = 256 << 10;

/// Largest total of a stage's image config values (ENV, LABEL, VOLUME, EXPOSE, …, the base
/// image's included) and its ARG values after any instruction (512 KiB). They are copied
/// into every step's config and every RUN's environment.
pub const MAX_STAGE_VARIABLES_BYTES: usize = 512 << 10;

/// Longest path in an image or a build context, in bytes (3 KiB): the host names it below a
/// data directory prefix, and Linux refuses paths past `PATH_MAX` (4096 bytes) in one call.
pub const MAX_PATH_BYTES: usize = 3 << 10;

/// Most directories a path in an image or build context may nest (512).
pub const MAX_PATH_DEPTH: usize = 512;

/// A byte count or limit for people: `64 KiB`, `1 MiB`, `1.5 MiB`, `300 B`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub usize);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (unit, shift) in [("GiB", 30), ("MiB", 20), ("KiB", 10)] {
            let one = 1usize << shift;
            if n >= one {
                return if n.is_multiple_of(one) {
                    write!(f, "{} {unit}", n >> shift)
                } else {
                    write!(f, "{:.1} {unit}", n as f64 / one as f64)
                };
            }
        }
        write!(f, "{n} B")
    }
}

/// A path shown in an error: long ones keep their start and end and say how long they are,
/// so a 10 000-byte path does not make a 10 000-byte message.
#[derive(Debug, Clone, Copy)]
pub struct ShortPath<'a>(pub &'a str);

impl fmt::Display for ShortPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const KEEP: usize = 48;
        let p = self.0;
        if p.len() <= 3 * KEEP {
            return f.write_str(p);
        }
        let head = floor_char_boundary(p, KEEP);
        let tail = ceil_char_boundary(p, p.len() - KEEP);
        write!(f, "{}…{} ({} bytes)", &p[..head], &p[tail..], p.len())
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil_char_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

/// Why a path is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathProblem {
    /// Longer than [`MAX_PATH_BYTES`].
    #[error("is {len} bytes long, over the limit of {} for a path", Size(MAX_PATH_BYTES))]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// Nested deeper than [`MAX_PATH_DEPTH`].
    #[error("nests {depth} directories deep, over the limit of {MAX_PATH_DEPTH}")]
    TooDeep {
        /// How many components it has.
        depth: usize,
    },
}

/// Checks a `/`-separated path (absolute or relative) against [`MAX_PATH_BYTES`] and
/// [`MAX_PATH_DEPTH`].
pub fn check_path(path: &str) -> Result<(), PathProblem> {
    if path.len() > MAX_PATH_BYTES {
        return Err(PathProblem::TooLong { len: path.len() });
    }
    check_depth(path.split('/').filter(|c| !c.is_empty() && *c != ".").count())
}

/// Checks a nesting depth against [`MAX_PATH_DEPTH`].
pub fn check_depth(depth: usize) -> Result<(), PathProblem> {
    if depth > MAX_PATH_DEPTH {
        return Err(PathProblem::TooDeep { depth });
    }
    Ok(())
}

/// Nests `depth` directories named `name` under `root` through relative paths, as a RUN
/// step can (the host path of the deepest may be longer than PATH_MAX).
#[cfg(test)]
pub(crate) fn nest_dirs(root: &std::path::Path, name: &str, depth: usize) {
    use rustix::fs::{Mode, OFlags};
    let mut fd = rustix::fs::open(root, OFlags::DIRECTORY | OFlags::RDONLY, Mode::empty()).unwrap();
    for _ in 0..depth {
        rustix::fs::mkdirat(&fd, name, Mode::from_raw_mode(0o755)).unwrap();
        fd = rustix::fs::openat(&fd, name, OFlags::DIRECTORY | OFlags::RDONLY, Mode::empty()).unwrap();
    }
}

/// Runs `f` on a thread with the stack of a tokio blocking thread (2 MiB): a walk that
/// recursed once per directory level would overflow it, and abort the server, long before
/// the depth limit.
#[cfg(test)]
pub(crate) fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new().stack_size(2 << 20).spawn(f).unwrap().join().unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_shown_in_binary_units_exactly_when_they_can_be() {
        assert_eq!(Size(MAX_EXPANDED_WORD_BYTES).to_string(), "64 KiB");
        assert_eq!(Size(MAX_DOCKERFILE_BYTES).to_string(), "1 MiB");
        assert_eq!(Size(3 << 19).to_string(), "1.5 MiB");
        assert_eq!(Size(300).to_string(), "300 B");
    }

    #[test]
    fn long_paths_are_shortened_in_messages_with_their_length() {
        let p = "a/".repeat(5000);
        let shown = ShortPath(&p).to_string();
        assert!(shown.len() < 200, "{shown}");
        assert!(shown.ends_with("(10000 bytes)"), "{shown}");
        assert_eq!(ShortPath("/app/x").to_string(), "/app/x");
        let multibyte = "é".repeat(200);
        assert!(ShortPath(&multibyte).to_string().contains('…'));
    }

    #[test]
    fn paths_past_the_length_or_depth_limit_are_refused() {
        assert_eq!(check_path(&"a/".repeat(5000)), Err(PathProblem::TooLong { len: 10_000 }));
        assert_eq!(check_path(&"/a".repeat(600)), Err(PathProblem::TooDeep { depth: 600 }));
        assert!(check_path("/usr/local/lib/python3.12/site-packages/x").is_ok());
        assert_eq!(
            PathProblem::TooLong { len: 5000 }.to_string(),
            "is 5000 bytes long, over the limit of 3 KiB for a path"
        );
    }
}
