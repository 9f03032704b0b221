//! Mounting filesystems, binds and overlays, and taking them down again.
//!
//! Everything here mounts in the caller's mount namespace: the service runs in the host's, so its mounts are
//! visible on the host (and the service's unit must not isolate it with `PrivateMounts=` or `MountFlags=`).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use linux_raw_sys::general::{mount_attr, AT_RECURSIVE, MOUNT_ATTR_RDONLY};
use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::NixPath;
use rustix::fs::{statx, AtFlags, StatxAttributes, StatxFlags, CWD};
use rustix::mount::{
    fsconfig_create, fsconfig_set_string, fsmount, fsopen, move_mount, FsMountFlags, FsOpenFlags,
    MountAttrFlags, MoveMountFlags,
};

use super::{errno_of_rustix, sys_err, SysError};

/// mount(2) copies at most one page of data and silently cuts the rest: longer overlay options need fsconfig.
const MOUNT_DATA_MAX: usize = 4096;

/// mount(8)-style option words split into MsFlags and the data string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    /// Generic flags for mount(2).
    pub flags: MsFlags,
    /// Filesystem-specific options, comma-separated, handed to the filesystem as they are.
    pub data: String,
}

/// The option words mount(8) turns into flags: (word, flag, whether the word sets or clears it).
const FLAG_WORDS: &[(&str, MsFlags, bool)] = &[
    ("ro", MsFlags::MS_RDONLY, true),
    ("rw", MsFlags::MS_RDONLY, false),
    ("nosuid", MsFlags::MS_NOSUID, true),
    ("suid", MsFlags::MS_NOSUID, false),
    ("nodev", MsFlags::MS_NODEV, true),
    ("dev", MsFlags::MS_NODEV, false),
    ("noexec", MsFlags::MS_NOEXEC, true),
    ("exec", MsFlags::MS_NOEXEC, false),
    ("sync", MsFlags::MS_SYNCHRONOUS, true),
    ("async", MsFlags::MS_SYNCHRONOUS, false),
    ("dirsync", MsFlags::MS_DIRSYNC, true),
    ("mand", MsFlags::MS_MANDLOCK, true),
    ("nomand", MsFlags::MS_MANDLOCK, false),
    ("noatime", MsFlags::MS_NOATIME, true),
    ("atime", MsFlags::MS_NOATIME, false),
    ("nodiratime", MsFlags::MS_NODIRATIME, true),
    ("diratime", MsFlags::MS_NODIRATIME, false),
    ("relatime", MsFlags::MS_RELATIME, true),
    ("norelatime", MsFlags::MS_RELATIME, false),
    ("strictatime", MsFlags::MS_STRICTATIME, true),
    ("nostrictatime", MsFlags::MS_STRICTATIME, false),
    ("lazytime", MsFlags::MS_LAZYTIME, true),
    ("nolazytime", MsFlags::MS_LAZYTIME, false),
    // nix has no name for MS_NOSYMFOLLOW (Linux 5.10).
    (
        "nosymfollow",
        MsFlags::from_bits_retain(libc::MS_NOSYMFOLLOW),
        true,
    ),
    (
        "symfollow",
        MsFlags::from_bits_retain(libc::MS_NOSYMFOLLOW),
        false,
    ),
    ("silent", MsFlags::MS_SILENT, true),
    ("loud", MsFlags::MS_SILENT, false),
    // mount(8)'s defaults (rw, suid, dev, exec, async) are all "flag clear": the word changes nothing.
    ("defaults", MsFlags::empty(), true),
];

/// Parses options like mount(8): each element may itself be comma-separated ("ro,noexec").
///
/// Flag words set or clear flags, later words winning; every other word goes, in order, into `data`, joined by ','.
/// Empty words are skipped.
pub fn parse_mount_options(options: &[String]) -> MountOptions {
    let mut flags = MsFlags::empty();
    let mut data: Vec<&str> = Vec::new();
    for word in options
        .iter()
        .flat_map(|option| option.split(','))
        .filter(|word| !word.is_empty())
    {
        match FLAG_WORDS.iter().find(|(name, _, _)| *name == word) {
            Some(&(_, flag, true)) => flags.insert(flag),
            Some(&(_, flag, false)) => flags.remove(flag),
            None => data.push(word),
        }
    }
    MountOptions {
        flags,
        data: data.join(","),
    }
}

/// Mounts the filesystem of type `fs_type` on `device` (a block device, or a file for filesystems that read one,
/// like erofs) at `target`.
pub fn mount_filesystem(
    device: &Path,
    target: &Path,
    fs_type: &str,
    options: &MountOptions,
) -> Result<(), SysError> {
    let data = (!options.data.is_empty()).then_some(options.data.as_str());
    mount(Some(device), target, Some(fs_type), options.flags, data).map_err(sys_err(format!(
        "mount {fs_type} {} on {}",
        device.display(),
        target.display()
    )))
}

/// Bind-mounts `source` onto `target`; `recursive` also binds the mounts below `source`.
///
/// mount(2) ignores MS_RDONLY on a new bind, so `read_only` takes a second call: `mount_setattr` rather than an
/// `MS_BIND|MS_REMOUNT|MS_RDONLY` remount, because it also covers the submounts of a recursive bind and keeps
/// nosuid/nodev/noexec inherited from the source, which a remount would clear. If that call fails the bind is
/// taken down again, so no writable bind is left behind. `source` may be a `/proc/self/fd/N` path of an O_PATH fd.
pub fn bind(
    source: &Path,
    target: &Path,
    recursive: bool,
    read_only: bool,
) -> Result<(), SysError> {
    let mut flags = MsFlags::MS_BIND;
    if recursive {
        flags |= MsFlags::MS_REC;
    }
    mount(Some(source), target, None::<&str>, flags, None::<&str>).map_err(sys_err(format!(
        "bind {} on {}",
        source.display(),
        target.display()
    )))?;
    if read_only {
        if let Err(errno) = set_read_only(target, recursive) {
            // Detach: with a recursive bind a plain umount would fail on the submounts; nobody uses it yet.
            let _ = umount2(target, MntFlags::MNT_DETACH);
            return Err(sys_err(format!("mount_setattr ro {}", target.display()))(
                errno,
            ));
        }
    }
    Ok(())
}

fn set_read_only(target: &Path, recursive: bool) -> Result<(), Errno> {
    let attr = mount_attr {
        attr_set: MOUNT_ATTR_RDONLY.into(),
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let at_flags = if recursive { AT_RECURSIVE } else { 0 };
    let ret = target.with_nix_path(|path| {
        // SAFETY: `path` is a NUL-terminated string and `attr` a fully initialised mount_attr, both alive for the
        // call, and the size passed is that of `attr`; the kernel only reads them.
        unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                libc::AT_FDCWD,
                path.as_ptr(),
                at_flags,
                &raw const attr,
                std::mem::size_of::<mount_attr>(),
            )
        }
    })?;
    Errno::result(ret).map(drop)
}

/// Overlay with `lowers` in order (first is the topmost), read-write with upper and work dirs.
///
/// `upper` and `work` must be on the same filesystem and `work` must be empty. Options that fit in mount(2)'s
/// data page go through mount(2) with ':' ',' and '\' escaped; beyond that, each layer is passed on its own
/// through fsconfig (Linux 6.8 "lowerdir+"), where a path is limited to 255 bytes.
pub fn overlay(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<(), SysError> {
    let upper = escaped(upper);
    let work = escaped(work);
    let mut data = b"lowerdir=".to_vec();
    for (i, lower) in lowers.iter().enumerate() {
        if i > 0 {
            data.push(b':');
        }
        data.extend_from_slice(&escaped(lower));
    }
    data.extend_from_slice(b",upperdir=");
    data.extend_from_slice(&upper);
    data.extend_from_slice(b",workdir=");
    data.extend_from_slice(&work);

    // The page must also hold the terminating NUL.
    if data.len() < MOUNT_DATA_MAX {
        mount(
            Some("overlay"),
            target,
            Some("overlay"),
            MsFlags::empty(),
            Some(OsStr::from_bytes(&data)),
        )
        .map_err(sys_err(format!("mount overlay on {}", target.display())))
    } else {
        overlay_by_fsconfig(lowers, &upper, &work, target)
    }
}

/// overlayfs splits mount(2) options at ',' and lowerdir at ':', and unescapes '\' in every layer path, except
/// in "lowerdir+", which takes one path as it is.
fn escaped(path: &Path) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.as_os_str().len());
    for &byte in path.as_os_str().as_bytes() {
        if matches!(byte, b':' | b',' | b'\\') {
            out.push(b'\\');
        }
        out.push(byte);
    }
    out
}

/// `upper` and `work` come escaped: overlayfs unescapes them even when they arrive through fsconfig.
fn overlay_by_fsconfig(
    lowers: &[PathBuf],
    upper: &[u8],
    work: &[u8],
    target: &Path,
) -> Result<(), SysError> {
    let err = |step: &str| {
        let op = format!("{step} overlay on {}", target.display());
        move |e: rustix::io::Errno| sys_err(op)(errno_of_rustix(e))
    };
    let fs = fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC).map_err(err("fsopen"))?;
    fsconfig_set_string(&fs, "source", "overlay").map_err(err("fsconfig source"))?;
    for lower in lowers {
        fsconfig_set_string(&fs, "lowerdir+", lower)
            .map_err(err(&format!("fsconfig lowerdir+ {}", lower.display())))?;
    }
    fsconfig_set_string(&fs, "upperdir", OsStr::from_bytes(upper))
        .map_err(err("fsconfig upperdir"))?;
    fsconfig_set_string(&fs, "workdir", OsStr::from_bytes(work))
        .map_err(err("fsconfig workdir"))?;
    fsconfig_create(&fs).map_err(err("fsconfig create"))?;
    let mnt = fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, MountAttrFlags::empty())
        .map_err(err("fsmount"))?;
    move_mount(
        &mnt,
        "",
        CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(err("move_mount"))
}

/// Unmounts `target`. A busy mount is an error (EBUSY) for the caller to report: no lazy detach here, as a
/// detached but busy filesystem would keep its device pinned out of sight.
pub fn unmount(target: &Path) -> Result<(), SysError> {
    umount2(target, MntFlags::empty()).map_err(sys_err(format!("umount {}", target.display())))
}

/// Whether `path` (symlinks followed, as mount(2) does with a target) is the root of a mount.
///
/// This asks statx for STATX_ATTR_MOUNT_ROOT instead of comparing device numbers with the parent, which misses a
/// bind of a directory onto the same filesystem.
pub fn is_mountpoint(path: &Path) -> Result<bool, SysError> {
    let op = || format!("statx {}", path.display());
    let stx = statx(CWD, path, AtFlags::NO_AUTOMOUNT, StatxFlags::empty())
        .map_err(|e| sys_err(op())(errno_of_rustix(e)))?;
    if !stx
        .stx_attributes_mask
        .contains(StatxAttributes::MOUNT_ROOT)
    {
        // Only kernels before 5.8 leave it out.
        return Err(sys_err(op())(Errno::EOPNOTSUPP));
    }
    Ok(stx.stx_attributes.contains(StatxAttributes::MOUNT_ROOT))
}

/// The filesystem type of the mount whose mountpoint is exactly `path`, from
/// `/proc/self/mountinfo` (the topmost one when several are stacked).
///
/// Only the parent of `path` is resolved: a stat of `path` itself would look into the mount,
/// and wait for its server if that is a dead NFS server.
pub fn mounted_fs_type(path: &Path) -> Option<String> {
    let mounts = super::mountinfo::read_own().ok()?;
    let wanted = std::fs::canonicalize(path.parent()?)
        .ok()?
        .join(path.file_name()?);
    mounts
        .into_iter()
        .rev()
        .find(|entry| entry.mount_point == wanted)
        .map(|entry| entry.fs_type)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(options: &[&str]) -> MountOptions {
        parse_mount_options(&options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn nothing_gives_no_flags_and_no_data() {
        assert_eq!(
            parse(&[]),
            MountOptions {
                flags: MsFlags::empty(),
                data: String::new()
            }
        );
    }

    #[test]
    fn flag_words_set_flags() {
        let options = parse(&["ro", "noexec,nosuid", "nodev"]);
        assert_eq!(
            options.flags,
            MsFlags::MS_RDONLY | MsFlags::MS_NOEXEC | MsFlags::MS_NOSUID | MsFlags::MS_NODEV
        );
        assert_eq!(options.data, "");
    }

    #[test]
    fn later_words_win() {
        assert_eq!(parse(&["ro,rw"]).flags, MsFlags::empty());
        assert_eq!(parse(&["rw", "ro"]).flags, MsFlags::MS_RDONLY);
        assert_eq!(parse(&["noexec", "exec,nodev"]).flags, MsFlags::MS_NODEV);
    }

    #[test]
    fn every_flag_word_is_known() {
        for (word, flag) in [
            ("sync", MsFlags::MS_SYNCHRONOUS),
            ("dirsync", MsFlags::MS_DIRSYNC),
            ("mand", MsFlags::MS_MANDLOCK),
            ("noatime", MsFlags::MS_NOATIME),
            ("nodiratime", MsFlags::MS_NODIRATIME),
            ("relatime", MsFlags::MS_RELATIME),
            ("strictatime", MsFlags::MS_STRICTATIME),
            ("lazytime", MsFlags::MS_LAZYTIME),
            (
                "nosymfollow",
                MsFlags::from_bits_retain(libc::MS_NOSYMFOLLOW),
            ),
            ("silent", MsFlags::MS_SILENT),
        ] {
            assert_eq!(parse(&[word]).flags, flag, "{word}");
        }
        for (set, clear) in [
            ("sync", "async"),
            ("mand", "nomand"),
            ("noatime", "atime"),
            ("nodiratime", "diratime"),
            ("relatime", "norelatime"),
            ("strictatime", "nostrictatime"),
            ("lazytime", "nolazytime"),
            ("nosymfollow", "symfollow"),
            ("silent", "loud"),
            ("nosuid", "suid"),
            ("nodev", "dev"),
        ] {
            let options = parse(&[set, clear]);
            assert_eq!(options.flags, MsFlags::empty(), "{set},{clear}");
            assert_eq!(options.data, "", "{set},{clear}");
        }
    }

    #[test]
    fn defaults_changes_nothing() {
        let options = parse(&["ro,defaults"]);
        assert_eq!(options.flags, MsFlags::MS_RDONLY);
        assert_eq!(options.data, "");
    }

    #[test]
    fn other_words_go_to_data_in_order() {
        let options = parse(&["errors=remount-ro,ro", "noload", "data=ordered", "remount"]);
        assert_eq!(options.flags, MsFlags::MS_RDONLY);
        assert_eq!(
            options.data,
            "errors=remount-ro,noload,data=ordered,remount"
        );
    }

    #[test]
    fn empty_words_are_skipped() {
        let options = parse(&["", ",ro,,size=1m,", ","]);
        assert_eq!(options.flags, MsFlags::MS_RDONLY);
        assert_eq!(options.data, "size=1m");
    }

    #[test]
    fn overlay_escapes_separators_and_backslash() {
        assert_eq!(escaped(Path::new("/a:b,c\\d/e")), b"/a\\:b\\,c\\\\d/e");
    }
}
