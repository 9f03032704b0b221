//! Unpacking a tar archive into a directory (the fresh ramdisk of a `uri` mount).
//!
//! Every entry is made relative to the root's fd with `*at` calls, its parent resolved beneath
//! the root with no symlink followed (`RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`): an entry named
//! with `..` or an absolute path, a hard link to a file outside, or an entry placed through a
//! symlink the archive made earlier is refused, never followed. Symlinks are made with their
//! target as it is: an absolute target means the image's root once the image is a container's
//! root. Modes (setuid, setgid and sticky bits too), numeric owners and modification times are
//! kept, and the extended attributes of regular files (file capabilities); device nodes only when
//! asked for.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use rustix::fs::{
    chmodat, chownat, fchmod, fchown, fsetxattr, futimens, linkat, mkdirat, mknodat, open, openat,
    statat, symlinkat, unlinkat, utimensat, AtFlags, FileType, Gid, Mode, OFlags, ResolveFlags,
    Timespec, Timestamps, Uid, XattrFlags,
};
use tar::EntryType;
use tracing::warn;

use crate::sys::beneath::open_resolved;
use crate::sys::errno_of_rustix;

/// What stops an unpack.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("entry {path:?} leaves the archive's root ({why})")]
    Escapes { path: String, why: &'static str },
    #[error("entry {path:?} is a device node (set devices to unpack them)")]
    Device { path: String },
    #[error("the ramdisk is full at entry {path:?}")]
    Full { path: String },
    #[error("corrupt archive: {0}")]
    Corrupt(String),
    #[error("entry {path:?}: {what}: {errno}")]
    Kernel {
        path: String,
        what: &'static str,
        errno: Errno,
    },
}

/// How much room the entries of an archive need on a tmpfs, in bytes: each file rounded up to
/// whole pages, and a page for each other entry (a long symlink's target takes one).
pub fn needed_bytes(archive: impl Read) -> Result<u64, ExtractError> {
    const PAGE: u64 = 4096;
    let mut archive = tar::Archive::new(archive);
    let mut total: u64 = 0;
    for entry in archive.entries().map_err(corrupt)? {
        let entry = entry.map_err(corrupt)?;
        let header = entry.header();
        total += match header.entry_type() {
            EntryType::Regular | EntryType::Continuous => entry.size().div_ceil(PAGE) * PAGE,
            _ => PAGE,
        };
    }
    Ok(total)
}

fn corrupt(err: io::Error) -> ExtractError {
    ExtractError::Corrupt(err.to_string())
}

/// A directory made by the unpack, whose time is set at the end (its entries change it).
struct MadeDir {
    path: Vec<String>,
    mtime: i64,
}

/// Unpacks `archive` into the directory `root`.
pub fn unpack(archive: impl Read, root: &Path, devices: bool) -> Result<u64, ExtractError> {
    let root_fd = open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|err| ExtractError::Kernel {
        path: root.display().to_string(),
        what: "open",
        errno: errno_of_rustix(err),
    })?;
    let mut archive = tar::Archive::new(archive);
    let mut dirs: Vec<MadeDir> = Vec::new();
    let mut count = 0;
    for entry in archive.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        let raw_path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let path = components(&raw_path)?;
        let header = entry.header().clone();
        let kind = header.entry_type();
        let mode = Mode::from_bits_truncate(header.mode().map_err(corrupt)? & 0o7777);
        let uid = header.uid().map_err(corrupt)? as u32;
        let gid = header.gid().map_err(corrupt)? as u32;
        let mtime = header.mtime().map_err(corrupt)? as i64;
        let at = |what: &'static str| {
            let path = raw_path.clone();
            move |errno: rustix::io::Errno| classify(&path, what, errno_of_rustix(errno))
        };
        let Some((name, parents)) = path.split_last() else {
            // The archive's root itself ("./"): it gives the ramdisk's root its owner and mode.
            if kind == EntryType::Directory {
                set_owner_and_mode(&root_fd, ".", uid, gid, mode)
                    .map_err(|(what, errno)| at(what)(errno))?;
                dirs.push(MadeDir { path, mtime });
            }
            continue;
        };
        let parent = open_dir(&root_fd, parents, &raw_path)?;
        match kind {
            EntryType::Directory => {
                let make = |parent: &OwnedFd| {
                    mkdirat(parent, name.as_str(), Mode::from_bits_truncate(0o700))
                };
                match make(&parent) {
                    Ok(()) => {}
                    Err(rustix::io::Errno::EXIST)
                        if statat(&parent, name.as_str(), AtFlags::SYMLINK_NOFOLLOW)
                            .is_ok_and(|stat| FileType::from_raw_mode(stat.st_mode).is_dir()) => {}
                    // A directory replaces an earlier non-directory of its name, as with tar.
                    Err(rustix::io::Errno::EXIST) => {
                        replace(&parent, name, make).map_err(at("mkdir"))?
                    }
                    Err(err) => return Err(at("mkdir")(err)),
                }
                set_owner_and_mode(&parent, name.as_str(), uid, gid, mode)
                    .map_err(|(what, errno)| at(what)(errno))?;
                dirs.push(MadeDir {
                    path: path.clone(),
                    mtime,
                });
            }
            EntryType::Regular | EntryType::Continuous => {
                let xattrs = xattrs_of(&mut entry)?;
                let file = replace(&parent, name, |parent| {
                    openat(
                        parent,
                        name.as_str(),
                        OFlags::WRONLY
                            | OFlags::CREATE
                            | OFlags::EXCL
                            | OFlags::NOFOLLOW
                            | OFlags::CLOEXEC,
                        Mode::from_bits_truncate(0o600),
                    )
                })
                .map_err(at("create"))?;
                let mut file = File::from(file);
                copy(&mut entry, &mut file, &raw_path)?;
                // chown clears the setuid and setgid bits: the mode comes after it.
                fchown(&file, Some(uid_of(uid)), Some(gid_of(gid))).map_err(at("chown"))?;
                fchmod(&file, mode).map_err(at("chmod"))?;
                // After the owner too: chown drops a file capability.
                for (xattr, value) in &xattrs {
                    match fsetxattr(&file, xattr.as_str(), value, XattrFlags::empty()) {
                        Ok(()) => {}
                        Err(rustix::io::Errno::OPNOTSUPP) => {
                            warn!(
                                path = raw_path,
                                xattr, "the ramdisk does not keep this extended attribute"
                            )
                        }
                        Err(errno) => return Err(at("setxattr")(errno)),
                    }
                }
                futimens(&file, &times(mtime)).map_err(at("utimens"))?;
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| {
                        ExtractError::Corrupt(format!("symlink {raw_path:?} has no target"))
                    })?
                    .into_owned();
                replace(&parent, name, |parent| {
                    symlinkat(target.as_slice(), parent, name.as_str())
                })
                .map_err(at("symlink"))?;
                chownat(
                    &parent,
                    name.as_str(),
                    Some(uid_of(uid)),
                    Some(gid_of(gid)),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(at("chown"))?;
                utimensat(
                    &parent,
                    name.as_str(),
                    &times(mtime),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(at("utimens"))?;
            }
            EntryType::Link => {
                let target = entry.link_name_bytes().ok_or_else(|| {
                    ExtractError::Corrupt(format!("hard link {raw_path:?} has no target"))
                })?;
                let target = String::from_utf8_lossy(&target).into_owned();
                let target_path = components(&target).map_err(|err| match err {
                    ExtractError::Escapes { why, .. } => ExtractError::Escapes {
                        path: format!("{raw_path} (a hard link to {target})"),
                        why,
                    },
                    other => other,
                })?;
                let Some((target_name, target_parents)) = target_path.split_last() else {
                    return Err(ExtractError::Corrupt(format!(
                        "hard link {raw_path:?} to the root"
                    )));
                };
                let target_parent = open_dir(&root_fd, target_parents, &target)?;
                replace(&parent, name, |parent| {
                    linkat(
                        &target_parent,
                        target_name.as_str(),
                        parent,
                        name.as_str(),
                        AtFlags::empty(),
                    )
                })
                .map_err(at("link"))?;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let file_type = match kind {
                    EntryType::Char => FileType::CharacterDevice,
                    EntryType::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                if file_type != FileType::Fifo && !devices {
                    return Err(ExtractError::Device { path: raw_path });
                }
                let major = header.device_major().map_err(corrupt)?.unwrap_or(0);
                let minor = header.device_minor().map_err(corrupt)?.unwrap_or(0);
                replace(&parent, name, |parent| {
                    mknodat(
                        parent,
                        name.as_str(),
                        file_type,
                        mode,
                        rustix::fs::makedev(major, minor),
                    )
                })
                .map_err(at("mknod"))?;
                set_owner_and_mode(&parent, name.as_str(), uid, gid, mode)
                    .map_err(|(what, errno)| at(what)(errno))?;
            }
            // A pax header for every following entry: what it says (times, names) is not kept.
            EntryType::XGlobalHeader => continue,
            other => {
                return Err(ExtractError::Corrupt(format!(
                    "entry {raw_path:?} is of a type this service does not unpack ({other:?})"
                )))
            }
        }
        count += 1;
    }
    // Deepest first, so that setting a directory's time is not undone by its subdirectory's.
    dirs.sort_by_key(|dir| std::cmp::Reverse(dir.path.len()));
    for dir in dirs {
        let (parent, name) = match dir.path.split_last() {
            Some((name, parents)) => (
                open_dir(&root_fd, parents, &dir.path.join("/"))?,
                name.as_str(),
            ),
            None => (
                root_fd.try_clone().map_err(|err| ExtractError::Kernel {
                    path: ".".into(),
                    what: "dup",
                    errno: crate::sys::errno_of_io(&err),
                })?,
                ".",
            ),
        };
        let path = dir.path.join("/");
        utimensat(&parent, name, &times(dir.mtime), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|errno| classify(&path, "utimens", errno_of_rustix(errno)))?;
    }
    Ok(count)
}

/// The extended attributes a pax header gives a file (`SCHILY.xattr.<name>`, as GNU tar and
/// bsdtar write them): file capabilities among them.
fn xattrs_of(
    entry: &mut tar::Entry<'_, impl Read>,
) -> Result<Vec<(String, Vec<u8>)>, ExtractError> {
    let Some(extensions) = entry.pax_extensions().map_err(corrupt)? else {
        return Ok(Vec::new());
    };
    let mut xattrs = Vec::new();
    for extension in extensions {
        let extension = extension.map_err(corrupt)?;
        let Ok(key) = extension.key() else { continue };
        if let Some(xattr) = key.strip_prefix("SCHILY.xattr.") {
            xattrs.push((xattr.to_string(), extension.value_bytes().to_vec()));
        }
    }
    Ok(xattrs)
}

/// Gives an entry the archive's owner, then its mode (in that order: a chown clears the setuid
/// and setgid bits). Errors name the call that failed.
fn set_owner_and_mode(
    dir: &impl AsFd,
    name: &str,
    uid: u32,
    gid: u32,
    mode: Mode,
) -> Result<(), (&'static str, rustix::io::Errno)> {
    chownat(
        dir,
        name,
        Some(uid_of(uid)),
        Some(gid_of(gid)),
        AtFlags::empty(),
    )
    .map_err(|errno| ("chown", errno))?;
    chmodat(dir, name, mode, AtFlags::empty()).map_err(|errno| ("chmod", errno))
}

fn uid_of(uid: u32) -> Uid {
    Uid::from_raw(uid)
}

fn gid_of(gid: u32) -> Gid {
    Gid::from_raw(gid)
}

fn times(mtime: i64) -> Timestamps {
    let at = Timespec {
        tv_sec: mtime,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: at,
        last_modification: at,
    }
}

fn classify(path: &str, what: &'static str, errno: Errno) -> ExtractError {
    match errno {
        Errno::ENOSPC | Errno::EDQUOT => ExtractError::Full { path: path.into() },
        // The archive's own doing: a file over a directory, a name too long for the kernel.
        Errno::EISDIR | Errno::ENOTDIR | Errno::EEXIST | Errno::ENOTEMPTY | Errno::ENAMETOOLONG => {
            ExtractError::Corrupt(format!(
                "entry {path:?} conflicts with an earlier entry or the kernel's limits ({what}: {errno})"
            ))
        }
        errno => ExtractError::Kernel {
            path: path.into(),
            what,
            errno,
        },
    }
}

/// The components of an entry's path, without `.` and empty ones; `..` and absolute paths are
/// refused.
fn components(path: &str) -> Result<Vec<String>, ExtractError> {
    if path.starts_with('/') {
        return Err(ExtractError::Escapes {
            path: path.into(),
            why: "an absolute path",
        });
    }
    if path.contains('\0') {
        return Err(ExtractError::Corrupt(format!(
            "entry {path:?} has a NUL byte"
        )));
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                return Err(ExtractError::Escapes {
                    path: path.into(),
                    why: "a .. component",
                })
            }
            part => parts.push(part.to_string()),
        }
    }
    Ok(parts)
}

/// Opens the directory `parents` beneath `root`, making the missing ones (mode 0755, as tar
/// does); a symlink on the way is refused, not followed.
fn open_dir(root: &OwnedFd, parents: &[String], entry: &str) -> Result<OwnedFd, ExtractError> {
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let mut dir = root.try_clone().map_err(|err| ExtractError::Kernel {
        path: entry.into(),
        what: "dup",
        errno: crate::sys::errno_of_io(&err),
    })?;
    for part in parents {
        let next = match open_resolved(&dir, part, flags, resolve) {
            Err(rustix::io::Errno::NOENT) => {
                match mkdirat(&dir, part.as_str(), Mode::from_bits_truncate(0o755)) {
                    Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                    Err(errno) => return Err(classify(entry, "mkdir", errno_of_rustix(errno))),
                }
                open_resolved(&dir, part, flags, resolve)
            }
            opened => opened,
        };
        dir = match next {
            Ok(fd) => fd,
            Err(rustix::io::Errno::LOOP | rustix::io::Errno::XDEV) => {
                return Err(ExtractError::Escapes {
                    path: entry.into(),
                    why: "it goes through a symlink",
                })
            }
            Err(errno) => return Err(classify(entry, "open", errno_of_rustix(errno))),
        };
    }
    Ok(dir)
}

/// Runs `make`; if the name is taken by a non-directory (a later entry of the same name
/// replaces an earlier one, as with tar), removes it and runs `make` again.
fn replace<T>(
    parent: &OwnedFd,
    name: &str,
    make: impl Fn(&OwnedFd) -> rustix::io::Result<T>,
) -> rustix::io::Result<T> {
    match make(parent) {
        Err(rustix::io::Errno::EXIST) => {
            unlinkat(parent.as_fd(), name, AtFlags::empty())?;
            make(parent)
        }
        done => done,
    }
}

/// Copies an entry's data; a read error is a corrupt archive, a write error the ramdisk's.
fn copy(entry: &mut impl Read, file: &mut File, path: &str) -> Result<(), ExtractError> {
    let mut buffer = vec![0u8; 256 * 1024];
    loop {
        let read = match entry.read(&mut buffer) {
            Ok(0) => return Ok(()),
            Ok(read) => read,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(ExtractError::Corrupt(format!("entry {path:?}: {err}"))),
        };
        file.write_all(&buffer[..read])
            .map_err(|err| classify(path, "write", crate::sys::errno_of_io(&err)))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar archive of `entries`: (path, type, link target or data, mode).
    fn archive(entries: &[(&str, EntryType, &str, u32)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, kind, content, mode) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_mode(*mode);
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(1_700_000_000);
            let data: &[u8] = if matches!(kind, EntryType::Symlink | EntryType::Link) {
                header.set_link_name(content).unwrap();
                header.set_size(0);
                &[]
            } else {
                header.set_size(content.len() as u64);
                content.as_bytes()
            };
            header.set_path(path).unwrap();
            header.set_cksum();
            builder.append(&header, data).unwrap();
        }
        builder.into_inner().unwrap()
    }

    #[test]
    fn entries_keep_their_modes_and_later_ones_replace_earlier_ones() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let root = tempfile::tempdir().unwrap();
        let tar = archive(&[
            ("./", EntryType::Directory, "", 0o755),
            ("bin/su", EntryType::Regular, "su", 0o4755),
            ("bin/sh", EntryType::Symlink, "busybox", 0o777),
            ("etc", EntryType::Symlink, "/etc", 0o777),
            ("etc/", EntryType::Directory, "", 0o750),
            ("etc/motd", EntryType::Regular, "hi", 0o644),
            ("motd", EntryType::Link, "etc/motd", 0o644),
        ]);
        assert_eq!(
            unpack(tar.as_slice(), root.path(), false).unwrap(),
            6,
            "the root is no entry of its own"
        );
        let su = std::fs::metadata(root.path().join("bin/su")).unwrap();
        assert_eq!(su.permissions().mode() & 0o7777, 0o4755);
        assert!(std::fs::symlink_metadata(root.path().join("etc"))
            .unwrap()
            .is_dir());
        assert_eq!(
            std::fs::read_to_string(root.path().join("etc/motd")).unwrap(),
            "hi"
        );
        let link = std::fs::metadata(root.path().join("motd")).unwrap();
        assert_eq!(
            link.ino(),
            std::fs::metadata(root.path().join("etc/motd"))
                .unwrap()
                .ino()
        );
        assert_eq!(link.mtime(), 1_700_000_000);
        assert!(needed_bytes(tar.as_slice()).unwrap() >= 3 * 4096);
    }

    /// A pax extended header giving the next entry `records` (key, value).
    fn pax(records: &[(&str, &[u8])]) -> Vec<u8> {
        let mut data = Vec::new();
        for (key, value) in records {
            let body = [b" ", key.as_bytes(), b"=", value, b"\n"].concat();
            let mut length = body.len() + 1;
            while (length.to_string().len() + body.len()) != length {
                length = length.to_string().len() + body.len();
            }
            data.extend_from_slice(length.to_string().as_bytes());
            data.extend_from_slice(&body);
        }
        data
    }

    #[test]
    fn file_xattrs_come_from_pax_headers() {
        let root = tempfile::tempdir().unwrap();
        let mut builder = tar::Builder::new(Vec::new());
        let records = pax(&[("SCHILY.xattr.user.imageapi", b"kept"), ("mtime", b"1")]);
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(EntryType::XHeader);
        header.set_path("PaxHeaders/file").unwrap();
        header.set_size(records.len() as u64);
        header.set_cksum();
        builder.append(&header, records.as_slice()).unwrap();
        let mut header = tar::Header::new_ustar();
        header.set_path("file").unwrap();
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_size(2);
        header.set_cksum();
        builder.append(&header, &b"hi"[..]).unwrap();
        let tar = builder.into_inner().unwrap();
        assert_eq!(unpack(tar.as_slice(), root.path(), false).unwrap(), 1);
        let mut value = [0u8; 16];
        let length =
            rustix::fs::getxattr(root.path().join("file"), "user.imageapi", &mut value).unwrap();
        assert_eq!(&value[..length], b"kept");
    }

    #[test]
    fn a_file_over_a_directory_and_a_path_through_a_symlink_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let over = archive(&[
            ("dir/", EntryType::Directory, "", 0o755),
            ("dir/x", EntryType::Regular, "x", 0o644),
            ("dir", EntryType::Regular, "file", 0o644),
        ]);
        assert!(matches!(
            unpack(over.as_slice(), root.path(), false),
            Err(ExtractError::Corrupt(_))
        ));
        let root = tempfile::tempdir().unwrap();
        let through = archive(&[
            ("up", EntryType::Symlink, "..", 0o777),
            ("up/evil", EntryType::Regular, "x", 0o644),
        ]);
        assert!(matches!(
            unpack(through.as_slice(), root.path(), false),
            Err(ExtractError::Escapes { .. })
        ));
    }

    #[test]
    fn paths_lose_dots_and_refuse_escapes() {
        assert_eq!(components("./usr//bin/").unwrap(), ["usr", "bin"]);
        assert!(components("./").unwrap().is_empty());
        assert!(matches!(
            components("a/../../etc"),
            Err(ExtractError::Escapes { .. })
        ));
        assert!(matches!(
            components("/etc/passwd"),
            Err(ExtractError::Escapes { .. })
        ));
    }
}
