//! The kernel rbd driver's sysfs interface (Documentation/ABI/testing/sysfs-bus-rbd): map and
//! unmap requests written to `/sys/bus/rbd`, and what `/sys/bus/rbd/devices/<id>/` says of a
//! mapped image.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use rustix::fs::{FileType, Mode, CWD};

use super::{errno_of_io, errno_of_rustix, sys_err, SysError};

/// Where the rbd driver shows itself once loaded.
pub const BUS: &str = "/sys/bus/rbd";

/// The files a request to map or unmap goes to: the single-major one where the driver has it
/// (its default), else the old one (which refuses requests when single-major is on).
fn control_file(single_major: &str, old: &str) -> PathBuf {
    let preferred = Path::new(BUS).join(single_major);
    if preferred.exists() {
        preferred
    } else {
        Path::new(BUS).join(old)
    }
}

/// Writes `request` to the bus's `add_single_major` (or `add`) file: the kernel maps the image
/// before the write returns. The request carries the secret, so the errno is all that comes
/// back; callers must not log or repeat `request`. Blocking, for as long as the kernel takes
/// (bounded by the request's `mount_timeout` on the monitor side).
pub fn map(request: &[u8]) -> Result<(), Errno> {
    write_request(&control_file("add_single_major", "add"), request)
}

/// Writes `request` (`"<id>"` or `"<id> force"`) to `remove_single_major` (or `remove`).
pub fn unmap(request: &str) -> Result<(), SysError> {
    let file = control_file("remove_single_major", "remove");
    write_request(&file, request.as_bytes())
        .map_err(sys_err(format!("write {request:?} to {}", file.display())))
}

/// One `write(2)` of the whole request: sysfs hands each write to the driver as one command.
fn write_request(file: &Path, request: &[u8]) -> Result<(), Errno> {
    let mut control = OpenOptions::new()
        .write(true)
        .open(file)
        .map_err(|err| errno_of_io(&err))?;
    match control.write(request) {
        Ok(written) if written == request.len() => Ok(()),
        Ok(_) => Err(Errno::EIO),
        Err(err) => Err(errno_of_io(&err)),
    }
}

/// The ids of the mapped devices, in no particular order.
pub fn device_ids() -> Vec<u32> {
    let Ok(entries) = fs::read_dir(Path::new(BUS).join("devices")) else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// What sysfs says device `id` maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedImage {
    pub pool: String,
    /// Empty for the pool's default namespace.
    pub pool_ns: String,
    pub image: String,
    /// `None` for the image's head (sysfs shows `-`).
    pub snapshot: Option<String>,
}

impl MappedImage {
    /// Device `id`'s image, or `None` when no such device is mapped.
    pub fn of_device(id: u32) -> Option<MappedImage> {
        let dir = device_dir(id);
        let read = |name: &str| fs::read_to_string(dir.join(name)).ok();
        Some(MappedImage::from_attributes(
            &read("pool")?,
            // Kernels before 5.0 have no namespaces, and no file for them.
            read("pool_ns").as_deref().unwrap_or(""),
            &read("name")?,
            &read("current_snap")?,
        ))
    }

    /// From the contents of the device's `pool`, `pool_ns`, `name` and `current_snap` files.
    pub fn from_attributes(pool: &str, pool_ns: &str, name: &str, current_snap: &str) -> Self {
        let line = |text: &str| text.strip_suffix('\n').unwrap_or(text).to_string();
        let snapshot = line(current_snap);
        MappedImage {
            pool: line(pool),
            pool_ns: line(pool_ns),
            image: line(name),
            snapshot: (snapshot != "-").then_some(snapshot),
        }
    }
}

fn device_dir(id: u32) -> PathBuf {
    Path::new(BUS).join("devices").join(id.to_string())
}

/// The block device numbers of device `id`, from its `major` and `minor` files.
pub fn device_numbers(id: u32) -> Option<(u32, u32)> {
    let dir = device_dir(id);
    let read = |name: &str| fs::read_to_string(dir.join(name)).ok()?.trim().parse().ok();
    Some((read("major")?, read("minor")?))
}

/// Makes the block device node `path` for `major:minor` (mode 0600), for a host whose `/dev`
/// gets no node from devtmpfs or udev.
pub fn make_device_node(path: &Path, (major, minor): (u32, u32)) -> Result<(), SysError> {
    rustix::fs::mknodat(
        CWD,
        path,
        FileType::BlockDevice,
        Mode::RUSR | Mode::WUSR,
        rustix::fs::makedev(major, minor),
    )
    .map_err(|err| SysError {
        op: format!("mknod {} {major}:{minor}", path.display()),
        errno: errno_of_rustix(err),
    })
}

/// The numbers of the block device node at `path`, if it is one.
pub fn node_numbers(path: &Path) -> Option<(u32, u32)> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let metadata = fs::metadata(path).ok()?;
    if !metadata.file_type().is_block_device() {
        return None;
    }
    let rdev = metadata.rdev();
    Some((rustix::fs::major(rdev), rustix::fs::minor(rdev)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_mapping_has_no_snapshot() {
        assert_eq!(
            MappedImage::from_attributes("rbd\n", "\n", "node-image\n", "-\n"),
            MappedImage {
                pool: "rbd".into(),
                pool_ns: String::new(),
                image: "node-image".into(),
                snapshot: None,
            }
        );
    }

    #[test]
    fn a_snapshot_mapping_names_it_with_its_namespace() {
        assert_eq!(
            MappedImage::from_attributes("images\n", "kraken\n", "bookworm\n", "v1\n"),
            MappedImage {
                pool: "images".into(),
                pool_ns: "kraken".into(),
                image: "bookworm".into(),
                snapshot: Some("v1".into()),
            }
        );
    }

    #[test]
    fn a_device_that_is_not_mapped_reads_as_none() {
        assert_eq!(MappedImage::of_device(u32::MAX), None);
        assert_eq!(device_numbers(u32::MAX), None);
    }
}
