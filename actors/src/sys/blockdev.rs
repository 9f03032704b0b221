//! Checking that a path the API was given really is a block device before it is mounted or handed to a container.

use std::io::ErrorKind;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use super::errno_of_io;

/// Why [`check_block_device`] refused a path.
#[derive(Debug, thiserror::Error)]
pub enum BlockDeviceError {
    /// Nothing at the path, or a dangling symlink.
    #[error("block device {path:?} does not exist")]
    Missing {
        /// The path as given.
        path: PathBuf,
    },
    /// Something other than a block device is there.
    #[error("{path:?} is a {found}, not a block device")]
    NotBlockDevice {
        /// The path as given.
        path: PathBuf,
        /// What it is: "regular file", "character device", "directory", ...
        found: &'static str,
    },
    /// stat failed for another reason (EACCES, ELOOP, ...).
    #[error("stat {path:?}: {errno}")]
    Stat {
        /// The path as given.
        path: PathBuf,
        /// What the kernel answered.
        errno: Errno,
    },
}

/// Checks that `path` is a block device node, following symlinks such as those in /dev/disk/by-id.
pub fn check_block_device(path: &Path) -> Result<(), BlockDeviceError> {
    let file_type = match std::fs::metadata(path) {
        Ok(metadata) => metadata.file_type(),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(BlockDeviceError::Missing {
                path: path.to_owned(),
            })
        }
        Err(e) => {
            return Err(BlockDeviceError::Stat {
                path: path.to_owned(),
                errno: errno_of_io(&e),
            })
        }
    };
    if file_type.is_block_device() {
        return Ok(());
    }
    let found = if file_type.is_file() {
        "regular file"
    } else if file_type.is_dir() {
        "directory"
    } else if file_type.is_char_device() {
        "character device"
    } else if file_type.is_fifo() {
        "fifo"
    } else if file_type.is_socket() {
        "socket"
    } else {
        "file of unknown type"
    };
    Err(BlockDeviceError::NotBlockDevice {
        path: path.to_owned(),
        found,
    })
}
