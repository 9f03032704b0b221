//! Loop devices: binding an image file to `/dev/loopN` with one `LOOP_CONFIGURE`.
//!
//! The old `LOOP_SET_FD` + `LOOP_SET_STATUS64` pair costs milliseconds and leaves a window where the device is
//! bound but not yet configured; `LOOP_CONFIGURE` (Linux 5.8) does both atomically in about 150 µs.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use linux_raw_sys::loop_device::{loop_config, loop_info64, LO_FLAGS_PARTSCAN, LO_FLAGS_READ_ONLY};
use nix::errno::Errno;
use nix::sys::stat::{makedev, mknod, Mode, SFlag};

use super::{errno_of_io, sys_err, SysError};

/// How often [`LoopDevice::attach`] asks for another free device after losing one to another process's attach or
/// detach. Each round has a winner among the contenders, so this only runs out under absurd contention.
const MAX_ATTACH_TRIES: usize = 64;

const LOOP_CONTROL: &str = "/dev/loop-control";

/// What the attaches of one engine take turns on: LOOP_CTL_GET_FREE hands every concurrent
/// caller the same lowest free device and only one of them wins it, so the engine's threads
/// attach one at a time, and the retries are left for other processes (and other engines). The
/// engine owns one and passes it to [`LoopDevice::attach_tagged`].
#[derive(Debug, Default)]
pub struct AttachTurn(Mutex<()>);

impl AttachTurn {
    /// A turn no attach holds.
    pub const fn new() -> AttachTurn {
        AttachTurn(Mutex::new(()))
    }
}

mod ioctl {
    use linux_raw_sys::loop_device::{
        loop_config, loop_info64, LOOP_CLR_FD, LOOP_CONFIGURE, LOOP_CTL_GET_FREE, LOOP_GET_STATUS64,
    };

    nix::ioctl_none_bad!(loop_ctl_get_free, LOOP_CTL_GET_FREE);
    nix::ioctl_read_bad!(loop_get_status64, LOOP_GET_STATUS64, loop_info64);
    nix::ioctl_write_ptr_bad!(loop_configure, LOOP_CONFIGURE, loop_config);
    nix::ioctl_none_bad!(loop_clr_fd, LOOP_CLR_FD);
}

/// A loop device this process bound, with its device node held open.
///
/// Dropping it without [`LoopDevice::detach`] only closes the fd: the binding stays in the kernel (no autoclear),
/// so an attachment outlives the service process and can be adopted again through [`backing_file`].
#[derive(Debug)]
pub struct LoopDevice {
    number: u32,
    path: PathBuf,
    fd: OwnedFd,
}

impl LoopDevice {
    /// Binds `backing` (an open regular file) to a free loop device.
    ///
    /// `backing` may be opened read-only when `read_only` is set. With `partscan`, the kernel scans the partition
    /// table, but `/dev/loopNpM` appear asynchronously: wait for them under `/sys/block/loopN/` before use.
    /// Attaches of one `turn` run one at a time (see [`AttachTurn`]).
    pub fn attach(
        backing: &File,
        read_only: bool,
        partscan: bool,
        turn: &AttachTurn,
    ) -> Result<LoopDevice, SysError> {
        Self::attach_tagged(backing, read_only, partscan, "", turn)
    }

    /// [`LoopDevice::attach`], with `tag` (at most 63 bytes) stored as the device's
    /// `lo_file_name`, where [`tag_of`] reads it back: it tells the service's devices apart
    /// from everyone else's after a crash.
    pub fn attach_tagged(
        backing: &File,
        read_only: bool,
        partscan: bool,
        tag: &str,
        turn: &AttachTurn,
    ) -> Result<LoopDevice, SysError> {
        let mut file_name = [0u8; 64];
        for (slot, byte) in file_name.iter_mut().zip(tag.bytes().take(63)) {
            *slot = byte;
        }
        let mut flags = 0;
        if read_only {
            flags |= LO_FLAGS_READ_ONLY as u32;
        }
        if partscan {
            flags |= LO_FLAGS_PARTSCAN as u32;
        }
        let config = loop_config {
            fd: backing.as_raw_fd() as u32,
            block_size: 0,
            info: loop_info64 {
                lo_device: 0,
                lo_inode: 0,
                lo_rdevice: 0,
                lo_offset: 0,
                lo_sizelimit: 0,
                lo_number: 0,
                lo_encrypt_type: 0,
                lo_encrypt_key_size: 0,
                lo_flags: flags,
                lo_file_name: file_name,
                lo_crypt_name: [0; 64],
                lo_encrypt_key: [0; 32],
                lo_init: [0; 2],
            },
            __reserved: [0; 8],
        };

        let control = open_rw(Path::new(LOOP_CONTROL))
            .map_err(|e| sys_err(format!("open {LOOP_CONTROL}"))(errno_of_io(&e)))?;
        // The lock guards no data, so a panic while holding it leaves nothing to repair.
        let _turn = turn.0.lock().unwrap_or_else(PoisonError::into_inner);
        let mut tries = 0;
        loop {
            tries += 1;
            // SAFETY: `control` is an open fd of /dev/loop-control and LOOP_CTL_GET_FREE takes no argument.
            let number = unsafe { ioctl::loop_ctl_get_free(control.as_raw_fd()) }
                .map_err(sys_err(format!("LOOP_CTL_GET_FREE {LOOP_CONTROL}")))?
                as u32;
            let path = PathBuf::from(format!("/dev/loop{number}"));
            let fd = match open_loop_node(number, &path) {
                Ok(fd) => fd,
                // The device was bound and is already being detached again (Lo_rundown) by someone else.
                Err(err) if err.errno == Errno::ENXIO && tries < MAX_ATTACH_TRIES => continue,
                Err(err) => return Err(err),
            };
            // SAFETY: `fd` is an open loop device and `config` is a fully initialised loop_config that outlives
            // the call; the kernel only reads it.
            match unsafe { ioctl::loop_configure(fd.as_raw_fd(), &config) } {
                Ok(_) => return Ok(LoopDevice { number, path, fd }),
                // Someone bound the device GET_FREE handed out before we could: ask again.
                Err(Errno::EBUSY) if tries < MAX_ATTACH_TRIES => continue,
                Err(errno) => {
                    return Err(SysError {
                        op: format!("LOOP_CONFIGURE {}", path.display()),
                        errno,
                    })
                }
            }
        }
    }

    /// The N of `/dev/loopN`.
    pub fn number(&self) -> u32 {
        self.number
    }

    /// `/dev/loopN`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Unbinds (`LOOP_CLR_FD`) and closes the device.
    ///
    /// `LOOP_CLR_FD` only marks the device for autoclear: the kernel frees it at its last close, which is this
    /// one unless a mount or another opener still holds the device, so [`backing_file`] may report it a while longer.
    pub fn detach(self) -> Result<(), SysError> {
        // SAFETY: `self.fd` is an open loop device and LOOP_CLR_FD takes no argument.
        unsafe { ioctl::loop_clr_fd(self.fd.as_raw_fd()) }
            .map_err(sys_err(format!("LOOP_CLR_FD {}", self.path.display())))?;
        Ok(())
    }
}

impl LoopDevice {
    /// Takes up again a device this service bound before it restarted: `/dev/loop<number>`
    /// must still be bound to `expected_backing` (as sysfs shows it), else `None`.
    pub fn adopt(number: u32, expected_backing: &Path) -> Option<LoopDevice> {
        if backing_file(number).as_deref() != Some(expected_backing) {
            return None;
        }
        let path = PathBuf::from(format!("/dev/loop{number}"));
        let fd = open_rw(&path).ok()?;
        Some(LoopDevice { number, path, fd })
    }
}

/// The tag [`LoopDevice::attach_tagged`] stored on `/dev/loop<number>`; `None` when the device
/// is not bound or cannot be asked.
pub fn tag_of(number: u32) -> Option<String> {
    let device = File::open(format!("/dev/loop{number}")).ok()?;
    let mut info = std::mem::MaybeUninit::<loop_info64>::zeroed();
    // SAFETY: `device` is an open loop device node and `info` is a writable loop_info64 the
    // kernel fills in completely on success.
    unsafe { ioctl::loop_get_status64(device.as_raw_fd(), info.as_mut_ptr()) }.ok()?;
    // SAFETY: zero-initialised above and filled by the kernel: every field is plain data.
    let info = unsafe { info.assume_init() };
    let name = info.lo_file_name;
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    Some(String::from_utf8_lossy(&name[..end]).into_owned())
}

/// The numbers of the loop devices that are bound to a file.
pub fn bound_devices() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            entry
                .file_name()
                .to_str()?
                .strip_prefix("loop")?
                .parse()
                .ok()
        })
        .filter(|number| backing_file(*number).is_some())
        .collect()
}

/// The sysfs `backing_file` of `/dev/loopN`, if bound.
pub fn backing_file(number: u32) -> Option<PathBuf> {
    let text =
        std::fs::read_to_string(format!("/sys/block/loop{number}/loop/backing_file")).ok()?;
    Some(PathBuf::from(text.trim_end_matches('\n')))
}

fn open_rw(path: &Path) -> std::io::Result<OwnedFd> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map(OwnedFd::from)
}

/// Opens `/dev/loopN`, creating the node when nothing (devtmpfs, udev) made it: a /dev without them, e.g. in a
/// container, must still get past the devices that happen to exist.
fn open_loop_node(number: u32, path: &Path) -> Result<OwnedFd, SysError> {
    let open_err = |e: std::io::Error| sys_err(format!("open {}", path.display()))(errno_of_io(&e));
    match open_rw(path) {
        Ok(fd) => return Ok(fd),
        Err(e) if e.kind() != ErrorKind::NotFound => return Err(open_err(e)),
        Err(_) => {}
    }
    // The minor is N only with max_part=0; sysfs knows the real numbers of the device GET_FREE just created.
    let dev_file = format!("/sys/block/loop{number}/dev");
    let text = std::fs::read_to_string(&dev_file)
        .map_err(|e| sys_err(format!("read {dev_file}"))(errno_of_io(&e)))?;
    let (major, minor) = text
        .trim_end()
        .split_once(':')
        .and_then(|(major, minor)| Some((major.parse().ok()?, minor.parse().ok()?)))
        .ok_or_else(|| sys_err(format!("parse {dev_file}"))(Errno::EINVAL))?;
    match mknod(
        path,
        SFlag::S_IFBLK,
        Mode::from_bits_truncate(0o660),
        makedev(major, minor),
    ) {
        // A concurrent attach of the same number may have created it first.
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(errno) => return Err(sys_err(format!("mknod {}", path.display()))(errno)),
    }
    open_rw(path).map_err(open_err)
}
