//! The kernel's mount table, `/proc/<pid>/mountinfo`: the one parser of it in the crate.

use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

/// One line of mountinfo, the fields the service reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Where it is mounted, in the reader's mount namespace (field 5).
    pub mount_point: PathBuf,
    /// The file system type (the first field after the ` - ` separator).
    pub fs_type: String,
    /// The super block options (`rw,freezer`, `rw,xattr,name=systemd`, ...), split at commas.
    pub super_options: Vec<String>,
}

/// The mount table of the calling process's mount namespace, in the kernel's order (parents
/// before the mounts stacked on them).
pub fn read_own() -> io::Result<Vec<MountEntry>> {
    Ok(parse(&std::fs::read_to_string("/proc/self/mountinfo")?))
}

/// Parses mountinfo text; lines that are not of its shape are skipped.
pub fn parse(mountinfo: &str) -> Vec<MountEntry> {
    mountinfo.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<MountEntry> {
    let (mount, fs) = line.split_once(" - ")?;
    let mount_point = mount.split(' ').nth(4)?;
    let mut fs = fs.split(' ');
    let fs_type = fs.next()?;
    let super_options = fs.nth(1).unwrap_or_default();
    Some(MountEntry {
        mount_point: PathBuf::from(OsString::from_vec(unescape(mount_point))),
        fs_type: fs_type.to_string(),
        super_options: super_options.split(',').map(str::to_string).collect(),
    })
}

/// Undoes the kernel's octal escapes (`\040` for a space, `\011` tab, `\012` newline, `\134`
/// backslash): any `\` followed by three octal digits is one byte.
fn unescape(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|digits| {
            let text = std::str::from_utf8(digits).ok()?;
            u8::from_str_radix(text, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn parses_escapes_types_and_options() {
        let text = "\
41 31 0:38 / /sys/fs/cgroup/uni\\040fied rw,relatime shared:5 - cgroup2 cgroup2 rw
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
50 1 0:40 / /mnt/a\\134b\\011c rw - tmpfs tmpfs rw
not a mountinfo line
";
        let entries = parse(text);
        assert_eq!(entries.len(), 3);
        assert_eq!(
            entries[0].mount_point,
            PathBuf::from("/sys/fs/cgroup/uni fied")
        );
        assert_eq!(entries[0].fs_type, "cgroup2");
        assert_eq!(entries[1].super_options, ["rw", "xattr", "name=systemd"]);
        assert_eq!(entries[2].mount_point, PathBuf::from("/mnt/a\\b\tc"));
    }

    #[test]
    fn reads_our_own_root() {
        let own = read_own().unwrap();
        assert!(own.iter().any(|entry| entry.mount_point == Path::new("/")));
    }
}
