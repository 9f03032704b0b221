//! Kernel modules a driver needs: loaded on first use, so that a node whose kernel lacks the
//! support gets an error naming it rather than a bare ENOENT from sysfs.

use std::path::Path;
use std::process::Command;

/// Makes sure the kernel has `module`'s support, telling by `present` (a sysfs or procfs path
/// that exists once it has, e.g. `/sys/bus/rbd`). Loads the module with `modprobe` when the
/// path is missing (module dependencies and aliases are modprobe's job). Blocking.
///
/// On failure, the error says which support is missing and what modprobe answered.
pub fn ensure(module: &str, present: &Path) -> Result<(), String> {
    if present.exists() {
        return Ok(());
    }
    let answer = match Command::new("modprobe").arg("--").arg(module).output() {
        Ok(output) if output.status.success() => None,
        Ok(output) => Some(String::from_utf8_lossy(&output.stderr).trim().to_string()),
        Err(err) => Some(format!("cannot run modprobe: {err}")),
    };
    if present.exists() {
        return Ok(());
    }
    let answer = answer.unwrap_or_else(|| format!("loaded, but {} is missing", present.display()));
    Err(format!(
        "this node's kernel has no {module} support (modprobe {module}: {answer})"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn present_support_needs_no_modprobe() {
        assert_eq!(
            ensure("no-such-module-imageapi", Path::new("/proc")),
            Ok(())
        );
    }

    #[test]
    fn missing_support_names_the_module() {
        let err = ensure("no-such-module-imageapi", Path::new("/sys/bus/no-such-bus")).unwrap_err();
        assert!(err.contains("no no-such-module-imageapi support"), "{err}");
        assert!(err.contains("modprobe no-such-module-imageapi:"), "{err}");
    }
}
