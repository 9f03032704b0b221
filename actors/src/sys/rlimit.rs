//! The process's own resource limits.

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// Raises the soft limit of open files to the hard one; answers the limits before and after
/// when it changed (`None` in a limit is unlimited). Each running container holds descriptors
/// (its init's pidfds, two in the service): a thousand of them need more than the soft limit
/// of 1024 most hosts start a process with, while the hard limit stays the host's choice.
/// Children (container inits among them) inherit the raised soft limit.
pub fn raise_open_files() -> rustix::io::Result<Option<(Option<u64>, Option<u64>)>> {
    let limit = getrlimit(Resource::Nofile);
    if limit.current == limit.maximum {
        return Ok(None);
    }
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        },
    )?;
    Ok(Some((limit.current, limit.maximum)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_open_file_limit_is_raised_to_the_hard_one_once() {
        raise_open_files().expect("raising the open file limit");
        let limit = getrlimit(Resource::Nofile);
        assert_eq!(limit.current, limit.maximum);
        assert_eq!(raise_open_files().expect("raising again"), None);
    }
}
