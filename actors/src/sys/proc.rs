//! What the runtime reads of a process in `/proc`: a few fields of `stat`, and its cgroups.

use std::fs;
use std::io;

/// Fields of `/proc/<pid>/stat`, as seen from the service's pid namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stat {
    /// The session id (field 6).
    pub session: i32,
    /// Clock ticks after boot at which the process started (field 22): with the pid, it names
    /// a process uniquely, as pids get reused.
    pub start_time: u64,
}

impl Stat {
    /// Reads the stat line of process `pid`.
    pub fn read(pid: i32) -> io::Result<Stat> {
        parse(&fs::read_to_string(format!("/proc/{pid}/stat"))?)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed /proc/<pid>/stat"))
    }
}

/// Parses a stat line. The command name (field 2) is in parentheses and may itself contain
/// spaces and parentheses, so fields are counted from the last `)`.
fn parse(line: &str) -> Option<Stat> {
    let (_, after_name) = line.rsplit_once(')')?;
    // After the name come field 3 (state), 4 (ppid), 5 (pgrp), 6 (session), ...
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    Some(Stat {
        session: fields.get(6 - 3)?.parse().ok()?,
        start_time: fields.get(22 - 3)?.parse().ok()?,
    })
}

/// The pids of the calling process's children, from every thread's `children` file (a child
/// belongs to the thread that made it). Entries may be missed while children exit meanwhile.
pub(crate) fn own_children() -> Vec<i32> {
    let Ok(tasks) = fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    let mut pids = Vec::new();
    for task in tasks.flatten() {
        if let Ok(list) = fs::read_to_string(task.path().join("children")) {
            pids.extend(
                list.split_whitespace()
                    .filter_map(|pid| pid.parse::<i32>().ok()),
            );
        }
    }
    pids
}

/// One line of `/proc/<pid>/cgroup`: a hierarchy the process is in, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Membership {
    /// The hierarchy: `""` for cgroup2, else its v1 controllers or name (`freezer`,
    /// `name=systemd`, `cpu,cpuacct`).
    pub hierarchy: String,
    /// The cgroup, below the hierarchy's root (as the reader's cgroup namespace shows it).
    pub path: String,
}

/// The cgroups of the calling process.
pub(crate) fn own_cgroups() -> io::Result<Vec<Membership>> {
    Ok(parse_cgroups(&fs::read_to_string("/proc/self/cgroup")?))
}

/// Parses `/proc/<pid>/cgroup` (`id:hierarchy:path` lines; the path may contain `:`).
fn parse_cgroups(text: &str) -> Vec<Membership> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (_, hierarchy, path) = (fields.next()?, fields.next()?, fields.next()?);
            Some(Membership {
                hierarchy: hierarchy.to_string(),
                path: path.to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_name_with_parentheses_and_spaces() {
        let line = "4242 (a) b (c) S 1 4242 4200 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 \
                    1000 10 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(
            parse(line),
            Some(Stat {
                session: 4200,
                start_time: 987654
            })
        );
    }

    #[test]
    fn parses_cgroup_lines() {
        let text = "12:name=systemd:/imageapi/x-1/init.scope\n0::/a:b\n3:cpu,cpuacct:/\n";
        let found = parse_cgroups(text);
        assert_eq!(found.len(), 3);
        assert_eq!(found[0].hierarchy, "name=systemd");
        assert_eq!(found[0].path, "/imageapi/x-1/init.scope");
        assert_eq!(
            (found[1].hierarchy.as_str(), found[1].path.as_str()),
            ("", "/a:b")
        );
        assert!(own_cgroups()
            .unwrap()
            .iter()
            .any(|m| m.hierarchy.is_empty()));
    }

    #[test]
    fn reads_our_own_stat() {
        let ours = Stat::read(std::process::id() as i32).unwrap();
        assert!(ours.start_time > 0);
    }
}
