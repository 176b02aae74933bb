//! The error classes every module's error type maps to (after containerd's errdefs).

/// What kind of failure happened, independent of which operation failed. The HTTP layer
/// maps it to a status code; nothing else should branch on error strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The named object does not exist (404).
    NotFound,
    /// An object with that name already exists (409).
    AlreadyExists,
    /// The request itself is malformed or names impossible values (400).
    InvalidArgument,
    /// The object is in a state where the verb is not allowed (400).
    FailedPrecondition,
    /// No or a wrong credential (401).
    Unauthenticated,
    /// The credential is valid but may not do this (403).
    PermissionDenied,
    /// Known but not built yet (501).
    Unimplemented,
    /// A dependency such as a registry could not be reached (503).
    Unavailable,
    /// A bug or an IO failure on our side (500).
    Internal,
    /// Everything of a limited resource (GPUs) is held by others now (409): the same request
    /// succeeds once some is released.
    Exhausted,
    /// The server's data filesystem is full (507): the message says where; freeing space
    /// (deleting sandboxes, snapshots) repairs it.
    DiskFull,
}

/// Renders an error and its causes on one line (`outer: inner: root`), skipping a cause whose
/// text the outer message already contains.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn a_chain_lists_each_cause_once() {
        let e = Outer(std::io::Error::other("disk full"));
        assert_eq!(chain(&e), "outer: disk full");
    }
}
