//! Fault injection for crash tests: `COVE_FAULT=<point>[,<point>…]` in the environment makes
//! the process abort (no destructors, no cleanup: what a `kill -9` leaves behind) the first
//! time it reaches one of the named points. Without the variable a point costs one relaxed
//! load. Points are named `<subsystem>.<step>` (e.g. `gc.image_removal`) and listed where they
//! are placed; tests set the variable on the server they start and check what a restart makes
//! of the state left behind.

use std::sync::OnceLock;

fn armed() -> &'static [String] {
    static ARMED: OnceLock<Vec<String>> = OnceLock::new();
    ARMED.get_or_init(|| {
        std::env::var("COVE_FAULT")
            .map(|v| v.split(',').map(str::trim).filter(|p| !p.is_empty()).map(String::from).collect())
            .unwrap_or_default()
    })
}

/// Whether `name` is armed by `COVE_FAULT`.
pub fn armed_at(name: &str) -> bool {
    armed().iter().any(|p| p == name)
}

/// Aborts the process here when `COVE_FAULT` names `name`.
pub fn point(name: &str) {
    if armed_at(name) {
        eprintln!("cove: COVE_FAULT: aborting at {name}");
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_unarmed_point_does_nothing() {
        super::point("no.such.point");
        assert!(!super::armed_at("no.such.point"));
    }
}
