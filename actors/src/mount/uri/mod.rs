//! `uri`: an image or archive behind a URL (`http`, `https`, `file`), downloaded into the
//! service's cache ([`cache`]), checked against its digest, then mounted: squashfs and ext4
//! through a read-only loop device of the cached file, erofs straight from the file, and tar
//! archives (plain, gzip, zstd, xz) unpacked into a fresh tmpfs ([`extract`]).
//!
//! The mount holds its cache entry (a [`Lease`]) for as long as it lives, so the entry is not
//! evicted under it; after a restart the adopted mount holds it again.

pub mod cache;
mod extract;
mod fetch;

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use nix::errno::Errno;
use nix::mount::MsFlags;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use self::cache::{Cache, Lease, Meta};
use self::extract::ExtractError;
use self::fetch::{Fetched, Source};
use super::{mount_on_fresh_dir, MountFacts, MountedFs};
use crate::driver::{Dep, DepViews, Driver, Host, Kinds, Parsed};
use crate::error::{Error, Origin};
use crate::model::spec::{field, invalid, Invalid};
use crate::model::wire::{Id, Mount, MountKind, MountUri, UriFormat};
use crate::registry::graph::ObjectKind;
use crate::sys::loopdev::{self, LoopDevice};
use crate::sys::mounts::{self, MountOptions};
use crate::sys::SysError;

pub(crate) const DOWNLOAD: Origin = Origin::new(ObjectKind::Mount, "uri/download");
const VERIFY: Origin = Origin::new(ObjectKind::Mount, "uri/verify");
const EXTRACT: Origin = Origin::new(ObjectKind::Mount, "uri/extract");
const MOUNT: Origin = Origin::new(ObjectKind::Mount, "uri/mount");

/// Added to an archive's unpacked size for the default ramdisk: room for what a system
/// writes at boot.
const RAMDISK_MARGIN: u64 = 16 << 20;

/// The driver's flags (`--uri-*`).
#[derive(Debug, Clone)]
pub struct UriConfig {
    /// Where downloads are kept.
    pub cache_dir: PathBuf,
    /// Bytes the cache may keep; past it, unused entries are evicted, oldest use first.
    pub cache_limit: u64,
    /// The largest download, in bytes.
    pub max_size: u64,
    /// How long a transfer may go without a byte (and a name lookup or a connect may take).
    pub stall_timeout: Duration,
    /// CA certificates (PEM) trusted for https instead of the system's roots.
    pub ca_file: Option<PathBuf>,
}

impl Default for UriConfig {
    /// The service's defaults (the cache under the default state dir).
    fn default() -> UriConfig {
        UriConfig {
            cache_dir: PathBuf::from("/var/lib/imageapi/uri-cache"),
            cache_limit: 10 << 30,
            max_size: 8 << 30,
            stall_timeout: Duration::from_secs(30),
            ca_file: None,
        }
    }
}

pub struct Uri {
    config: UriConfig,
    cache: Arc<Cache>,
    agent: OnceLock<Result<ureq::Agent, String>>,
}

impl Uri {
    pub fn new(config: UriConfig) -> Uri {
        Uri {
            cache: Arc::new(Cache::new(config.cache_dir.clone(), config.cache_limit)),
            config,
            agent: OnceLock::new(),
        }
    }
}

/// The checked definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UriSpec {
    pub url: String,
    /// Lower-case hex of the content's SHA-256.
    pub sha256: Option<String>,
    pub format: UriFormat,
    /// An archive's ramdisk, in bytes.
    pub size: Option<u64>,
    pub ro: bool,
    pub devices: bool,
}

/// The loop device a squashfs or ext4 image is mounted from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UriLoop {
    pub number: u32,
    pub backing_file: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UriFacts {
    pub mountpoint: PathBuf,
    pub fs_type: String,
    /// What the file turned out to be.
    pub format: UriFormat,
    /// The cache entry the mount holds.
    pub cache_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loop_device: Option<UriLoop>,
    /// An archive's ramdisk, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

/// A mounted image or unpacked archive, with what it holds.
pub struct UriMount {
    mounted: MountedFs,
    device: Option<LoopDevice>,
    lease: Lease,
}

/// The tag of the loop device of uri mount `id`: not the loopback driver's, whose sweep would
/// take it for one of its own.
fn loop_tag_prefix(instance: &str) -> String {
    format!("imageapi-uri:{instance}:")
}

fn is_archive(format: UriFormat) -> bool {
    matches!(
        format,
        UriFormat::Tar | UriFormat::TarGz | UriFormat::TarZst | UriFormat::TarXz
    )
}

impl Driver for Uri {
    type Object = Mount;
    type Spec = UriSpec;
    type Facts = UriFacts;
    type Resource = UriMount;
    const KIND: MountKind = MountKind::Uri;
    // Its loop devices carry the service's tag (see `sweep`) and its mountpoint is under the
    // mount dir, which a restart clears of what no object claims.
    const FOUND_WITHOUT_RECORD: bool = true;

    fn parse(&self, _: &Kinds, at: &str, wire: &Mount) -> Option<Result<Parsed<UriSpec>, Invalid>> {
        let uri = wire.uri.as_ref()?;
        Some(parse(&field(at, "uri"), uri).map(|spec| Parsed::new(spec, vec![])))
    }

    fn create(
        &self,
        host: &Host,
        id: Id,
        spec: &UriSpec,
        _: &[Dep],
    ) -> Result<(UriMount, UriFacts), Error> {
        let lease = self.obtain(id, spec)?;
        match mount_entry(host, id, spec, &lease) {
            Ok(made) => Ok(made.into_resource(lease)),
            Err(err) => {
                if matches!(err, Error::Rejected { .. }) {
                    lease.discard();
                }
                Err(err)
            }
        }
    }

    fn adopt(&self, _: &Host, _: Id, _: &UriSpec, facts: &UriFacts) -> Option<UriMount> {
        let mounted = MountedFs::adopt(&MountFacts {
            mountpoint: facts.mountpoint.clone(),
            fs_type: Some(facts.fs_type.clone()),
        })?;
        let device = match &facts.loop_device {
            Some(device) => {
                // A URL's entry replaced by a newer download while in use: the device still
                // holds the old file, which sysfs then names "<path> (deleted)".
                let replaced =
                    PathBuf::from(format!("{} (deleted)", device.backing_file.display()));
                Some(
                    LoopDevice::adopt(device.number, &device.backing_file)
                        .or_else(|| LoopDevice::adopt(device.number, &replaced))?,
                )
            }
            None => None,
        };
        let lease = self
            .cache
            .hold(&facts.cache_key)
            .map_err(|err| warn!(error = %err, "cannot read the uri cache"))
            .ok()?;
        Some(UriMount {
            mounted,
            device,
            lease,
        })
    }

    fn release(&self, _: &Host, resource: UriMount, _force: bool) -> Result<(), Error> {
        let UriMount {
            mounted,
            device,
            lease,
        } = resource;
        mounted.release()?;
        if let Some(device) = device {
            device.detach().map_err(Error::kernel(MOUNT))?;
        }
        drop(lease);
        Ok(())
    }

    fn provides<'f>(&self, facts: &'f UriFacts) -> &'f Path {
        &facts.mountpoint
    }

    fn describe(
        &self,
        spec: &UriSpec,
        facts: Option<&UriFacts>,
        _: &dyn DepViews,
        wire: &mut Mount,
    ) {
        wire.uri = Some(MountUri {
            url: spec.url.clone(),
            digest: spec.sha256.as_ref().map(|hex| format!("sha256:{hex}")),
            format: Some(facts.map_or(spec.format, |facts| facts.format)),
            size: facts
                .and_then(|facts| facts.size)
                .or(spec.size)
                .map(|size| size as i64),
            ro: spec.ro,
            devices: spec.devices,
        });
    }

    /// Loop devices tagged as this service's uri mounts' that no adopted mount holds (a crash
    /// between the attach and its record): detached. The mount on such a device is cleaned up
    /// with the unclaimed mountpoints.
    fn sweep(&self, host: &Host, held: &[&UriFacts]) {
        // A crashed run may have left half-written downloads and metadata: gone now, not at
        // the first mount.
        if let Err(err) = self.cache.load() {
            warn!(error = %err, "cannot read the uri cache");
        }
        crate::attach::loopback::detach_unheld(&loop_tag_prefix(&host.instance), |number| {
            held.iter().any(|facts| {
                facts
                    .loop_device
                    .as_ref()
                    .is_some_and(|device| device.number == number)
            })
        });
    }
}

/// Whether the part of an http(s) URL after `://` starts with `userinfo@` (RFC 3986: the
/// authority ends at the first `/`, `?` or `#`).
fn has_userinfo(rest: &str) -> bool {
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    authority.contains('@')
}

fn parse(at: &str, uri: &MountUri) -> Result<UriSpec, Invalid> {
    let url = &uri.url;
    let url_at = field(at, "url");
    if url.contains('\0') || url.chars().any(char::is_whitespace) {
        return Err(invalid(
            &url_at,
            "must not contain NUL bytes or white space",
        ));
    }
    match url.split_once("://") {
        // Credentials in the URL would come back in every answer and log line that shows it.
        Some(("http" | "https", rest)) if has_userinfo(rest) => return Err(invalid(
            &url_at,
            "must not carry credentials (user@ or user:password@): answers and logs show the URL",
        )),
        Some(("http" | "https", rest)) if !rest.is_empty() && !rest.starts_with('/') => {}
        Some(("file", path)) if path.starts_with('/') && path.len() > 1 => {}
        Some(("file", _)) => {
            return Err(invalid(
                &url_at,
                "a file URL names an absolute path: file:///path",
            ))
        }
        _ => return Err(invalid(&url_at, "must be an http, https or file URL")),
    }
    let sha256 = match &uri.digest {
        None => None,
        Some(digest) => {
            let hex = digest
                .strip_prefix("sha256:")
                .filter(|hex| hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()))
                .ok_or_else(|| invalid(&field(at, "digest"), "must be sha256:<64 hex digits>"))?;
            Some(hex.to_ascii_lowercase())
        }
    };
    let format = uri.format.unwrap_or(UriFormat::Auto);
    let size = match uri.size {
        None => None,
        Some(size) if size < 0 => return Err(invalid(&field(at, "size"), "must not be negative")),
        Some(_) if !is_archive(format) && format != UriFormat::Auto => {
            return Err(invalid(
                &field(at, "size"),
                format!(
                    "is the ramdisk of an archive: a {} image has none",
                    format.as_str()
                ),
            ))
        }
        Some(size) => Some(size as u64),
    };
    Ok(UriSpec {
        url: url.clone(),
        sha256,
        format,
        size,
        ro: uri.ro,
        devices: uri.devices,
    })
}

/// The cache key of a definition: its digest, else its URL (kept current with the server).
fn key_of(spec: &UriSpec) -> String {
    match &spec.sha256 {
        Some(hex) => format!("sha256-{hex}"),
        None => {
            use sha2::Digest;
            let url_hash = fetch::hex(&sha2::Sha256::digest(spec.url.as_bytes()));
            format!("url-{}", &url_hash[..32])
        }
    }
}

fn cache_failed(err: io::Error) -> Error {
    Error::Kernel {
        origin: DOWNLOAD,
        source: SysError {
            op: "uri cache".into(),
            errno: crate::sys::errno_of_io(&err),
        },
    }
}

impl Uri {
    fn agent(&self) -> Result<&ureq::Agent, Error> {
        self.agent
            .get_or_init(|| fetch::agent(&self.config))
            .as_ref()
            .map_err(|reason| Error::rejected(DOWNLOAD, reason.clone()))
    }

    /// The cache entry of `spec`: reused when it is there, intact, and (without a digest) the
    /// server says it is current; downloaded otherwise. A concurrent mount of the same entry
    /// waits for this one's download.
    fn obtain(&self, id: Id, spec: &UriSpec) -> Result<Lease, Error> {
        let key = key_of(spec);
        let turn = self.cache.turn(&key).map_err(cache_failed)?;
        // A digest's entry must hold that digest's content: its metadata says so, and its file
        // is hashed again before its first reuse in a run.
        let known = turn
            .existing()
            .filter(|meta| {
                spec.sha256
                    .as_ref()
                    .is_none_or(|digest| *digest == meta.sha256)
            })
            .filter(|_| turn.intact());
        if known.is_some() && spec.sha256.is_some() {
            info!(id, key, "image in the cache");
            return turn.reuse().map_err(cache_failed);
        }
        let validator = known.as_ref().map(Meta::validator).unwrap_or_default();
        let fetched = match Source::of(&spec.url) {
            Source::Http(url) => {
                info!(id, url, "downloading");
                fetch::http(
                    self.agent()?,
                    &self.config,
                    id,
                    &url,
                    &validator,
                    turn.partial(),
                )?
            }
            Source::File(path) => fetch::file(&self.config, id, &path, &validator, turn.partial())?,
        };
        match fetched {
            Fetched::NotModified => {
                info!(id, key, "the cached copy is current");
                turn.reuse().map_err(cache_failed)
            }
            Fetched::Body {
                sha256,
                size,
                validator,
            } => {
                if let Some(expected) = spec.sha256.as_ref().filter(|expected| **expected != sha256)
                {
                    return Err(Error::rejected(
                        VERIFY,
                        format!(
                            "{}: the download's sha256 is {sha256}, the definition's is {expected}",
                            spec.url
                        ),
                    ));
                }
                turn.commit(Meta {
                    url: spec.url.clone(),
                    sha256,
                    size,
                    etag: validator.etag,
                    last_modified: validator.last_modified,
                    last_used: 0,
                })
                .map_err(cache_failed)
            }
        }
    }
}

/// A mount made of a cache entry, before it holds its lease.
struct Made {
    mounted: MountedFs,
    device: Option<LoopDevice>,
    facts: UriFacts,
}

impl Made {
    fn into_resource(self, lease: Lease) -> (UriMount, UriFacts) {
        let resource = UriMount {
            mounted: self.mounted,
            device: self.device,
            lease,
        };
        (resource, self.facts)
    }
}

/// Mounts the cache entry `lease` holds: an image as it is, an archive unpacked.
fn mount_entry(host: &Host, id: Id, spec: &UriSpec, lease: &Lease) -> Result<Made, Error> {
    let path = lease.path();
    let format = match spec.format {
        UriFormat::Auto => detect(&path)?,
        format => format,
    };
    info!(id, format = format.as_str(), "mounting");
    let (mounted, device, size) = if is_archive(format) {
        let (mounted, size) = unpack(host, id, &path, format, spec)?;
        (mounted, None, Some(size))
    } else {
        let (mounted, device) = mount_image(host, id, &path, format)?;
        (mounted, device, None)
    };
    let loop_device = device.as_ref().map(|device| UriLoop {
        number: device.number(),
        backing_file: loopdev::backing_file(device.number()).unwrap_or_else(|| path.clone()),
    });
    let MountFacts {
        mountpoint,
        fs_type,
    } = mounted.facts();
    let facts = UriFacts {
        mountpoint,
        fs_type: fs_type.unwrap_or_default(),
        format,
        cache_key: lease.key().to_string(),
        loop_device,
        size,
    };
    info!(id, mountpoint = %facts.mountpoint.display(), "uri mounted");
    Ok(Made {
        mounted,
        device,
        facts,
    })
}

/// The format of a file by its magic bytes.
fn detect(path: &Path) -> Result<UriFormat, Error> {
    let mut head = Vec::with_capacity(2048);
    File::open(path)
        .and_then(|file| file.take(2048).read_to_end(&mut head))
        .map_err(|err| Error::Kernel {
            origin: VERIFY,
            source: SysError {
                op: format!("read {}", path.display()),
                errno: crate::sys::errno_of_io(&err),
            },
        })?;
    detect_bytes(&head).ok_or_else(|| {
        Error::rejected(
            VERIFY,
            "unknown format: not squashfs, erofs, ext4 or a tar archive (plain, gzip, zstd, xz)",
        )
    })
}

fn detect_bytes(head: &[u8]) -> Option<UriFormat> {
    let at = |offset: usize, magic: &[u8]| head.get(offset..offset + magic.len()) == Some(magic);
    [
        (at(0, b"hsqs"), UriFormat::Squashfs),
        (at(1024, &[0xe2, 0xe1, 0xf5, 0xe0]), UriFormat::Erofs),
        (at(1080, &[0x53, 0xef]), UriFormat::Ext4),
        (at(0, &[0x1f, 0x8b]), UriFormat::TarGz),
        (at(0, &[0x28, 0xb5, 0x2f, 0xfd]), UriFormat::TarZst),
        (
            at(0, &[0xfd, b'7', b'z', b'X', b'Z', 0x00]),
            UriFormat::TarXz,
        ),
        (at(257, b"ustar"), UriFormat::Tar),
    ]
    .into_iter()
    .find_map(|(matches, format)| matches.then_some(format))
}

fn mount_failed(fs_type: &'static str) -> impl Fn(SysError) -> Error {
    move |err| match err.errno {
        // mount(2)'s answer for a device without a filesystem of that type.
        Errno::EINVAL | Errno::EUCLEAN | Errno::EIO | Errno::EBADMSG => Error::rejected(
            MOUNT,
            format!("{err}: the file holds no intact {fs_type} filesystem"),
        ),
        Errno::ENODEV => Error::unsupported(MOUNT, format!("the kernel has no {fs_type} support")),
        _ => Error::kernel(MOUNT)(err),
    }
}

/// Mounts a filesystem image read-only: erofs from the file itself where the kernel can (file-
/// backed erofs), else, and for squashfs and ext4, from a read-only loop device of the file.
fn mount_image(
    host: &Host,
    id: Id,
    path: &Path,
    format: UriFormat,
) -> Result<(MountedFs, Option<LoopDevice>), Error> {
    let fs_type = format.as_str();
    let read_only = MountOptions {
        flags: MsFlags::MS_RDONLY,
        // A journal to replay would need a writable device: ext4 mounts without replaying it.
        data: if format == UriFormat::Ext4 {
            "noload".into()
        } else {
            String::new()
        },
    };
    if format == UriFormat::Erofs {
        let direct = mount_on_fresh_dir(&host.mount_dir, MOUNT, Some(fs_type), |target| {
            mounts::mount_filesystem(path, target, fs_type, &read_only).map_err(|err| {
                match err.errno {
                    // Before file-backed erofs (Linux 6.12) the source must be a block device.
                    Errno::ENOTBLK => Error::kernel(MOUNT)(err),
                    _ => mount_failed("erofs")(err),
                }
            })
        });
        match direct {
            Err(Error::Kernel {
                source:
                    SysError {
                        errno: Errno::ENOTBLK,
                        ..
                    },
                ..
            }) => {
                info!(
                    id,
                    "this kernel mounts erofs from block devices only: using a loop device"
                )
            }
            done => return done.map(|mounted| (mounted, None)),
        }
    }
    let file = File::open(path).map_err(|err| Error::Kernel {
        origin: MOUNT,
        source: SysError {
            op: format!("open {}", path.display()),
            errno: crate::sys::errno_of_io(&err),
        },
    })?;
    let tag = format!("{}{id}", loop_tag_prefix(&host.instance));
    let device = LoopDevice::attach_tagged(&file, true, false, &tag, &host.loop_turn)
        .map_err(Error::kernel(MOUNT))?;
    let mounted = mount_on_fresh_dir(&host.mount_dir, MOUNT, Some(fs_type), |target| {
        mounts::mount_filesystem(device.path(), target, fs_type, &read_only)
            .map_err(mount_failed(fs_type))
    });
    match mounted {
        Ok(mounted) => Ok((mounted, Some(device))),
        Err(err) => {
            if let Err(detach) = device.detach() {
                warn!(id, error = %detach, "cannot detach the loop device");
            }
            Err(err)
        }
    }
}

/// The tar stream of an archive file.
fn open_archive(path: &Path, format: UriFormat) -> Result<Box<dyn Read>, Error> {
    let file = File::open(path).map_err(|err| Error::Kernel {
        origin: EXTRACT,
        source: SysError {
            op: format!("open {}", path.display()),
            errno: crate::sys::errno_of_io(&err),
        },
    })?;
    let file = BufReader::with_capacity(256 * 1024, file);
    Ok(match format {
        UriFormat::TarGz => Box::new(flate2::read::MultiGzDecoder::new(file)),
        UriFormat::TarZst => Box::new(
            zstd::stream::read::Decoder::with_buffer(file)
                .map_err(|err| Error::rejected(EXTRACT, format!("corrupt archive: {err}")))?,
        ),
        UriFormat::TarXz => Box::new(liblzma::read::XzDecoder::new_multi_decoder(file)),
        _ => Box::new(file),
    })
}

fn extract_failed(size: u64) -> impl Fn(ExtractError) -> Error {
    move |err| match err {
        ExtractError::Kernel { path, what, errno } => Error::Kernel {
            origin: EXTRACT,
            source: SysError {
                op: format!("{what} {path}"),
                errno,
            },
        },
        ExtractError::Full { .. } => Error::rejected(
            EXTRACT,
            format!("{err}: the archive does not fit in {size} bytes (give a larger size)"),
        ),
        other => Error::rejected(EXTRACT, other.to_string()),
    }
}

/// Unpacks an archive into a fresh tmpfs of the definition's size (by default the archive's
/// unpacked size plus a margin, which takes a first read of the archive); answers its size.
fn unpack(
    host: &Host,
    id: Id,
    path: &Path,
    format: UriFormat,
    spec: &UriSpec,
) -> Result<(MountedFs, u64), Error> {
    let size = match spec.size {
        Some(size) => size,
        None => {
            let needed =
                extract::needed_bytes(open_archive(path, format)?).map_err(extract_failed(0))?;
            needed + needed / 10 + RAMDISK_MARGIN
        }
    };
    let mut flags = MsFlags::empty();
    if !spec.devices {
        flags |= MsFlags::MS_NODEV;
    }
    let tmpfs = MountOptions {
        flags,
        data: format!("size={size},mode=0755"),
    };
    let mounted = mount_on_fresh_dir(&host.mount_dir, EXTRACT, Some("tmpfs"), |target| {
        mounts::mount_filesystem(Path::new("tmpfs"), target, "tmpfs", &tmpfs)
            .map_err(Error::kernel(EXTRACT))?;
        let unpacked = open_archive(path, format)
            .and_then(|archive| {
                extract::unpack(archive, target, spec.devices).map_err(extract_failed(size))
            })
            .and_then(|entries| {
                if spec.ro {
                    let read_only = MountOptions {
                        flags: flags | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                        data: String::new(),
                    };
                    mounts::mount_filesystem(Path::new("tmpfs"), target, "tmpfs", &read_only)
                        .map_err(Error::kernel(EXTRACT))?;
                }
                Ok(entries)
            });
        match unpacked {
            Ok(entries) => {
                info!(id, entries, size, "archive unpacked");
                Ok(())
            }
            Err(err) => {
                if let Err(unmount) = mounts::unmount(target) {
                    warn!(id, error = %unmount, "cannot unmount the ramdisk");
                }
                Err(err)
            }
        }
    })?;
    Ok((mounted, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(value: serde_json::Value) -> MountUri {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn definitions_are_checked_field_by_field() {
        let bad = |value: serde_json::Value| parse("uri", &wire(value)).unwrap_err().field;
        assert_eq!(bad(serde_json::json!({"url": "ftp://x/a.tar"})), "uri.url");
        assert_eq!(
            bad(serde_json::json!({"url": "https://user:pw@x/a.tar"})),
            "uri.url"
        );
        assert!(!has_userinfo("x/a@b"));
        assert_eq!(
            bad(serde_json::json!({"url": "file://relative"})),
            "uri.url"
        );
        assert_eq!(
            bad(serde_json::json!({"url": "http://x/a", "digest": "md5:00"})),
            "uri.digest"
        );
        assert_eq!(
            bad(serde_json::json!({"url": "http://x/a", "size": -1})),
            "uri.size"
        );
        assert_eq!(
            bad(serde_json::json!({"url": "http://x/a", "format": "squashfs", "size": 4096})),
            "uri.size"
        );
        let spec = parse(
            "uri",
            &wire(serde_json::json!({"url": "https://x/a", "digest": format!("sha256:{}", "AB".repeat(32)),
                "format": "", "size": 0, "ro": null})),
        )
        .unwrap();
        assert_eq!(spec.sha256.as_deref(), Some("ab".repeat(32).as_str()));
        assert_eq!(
            (spec.format, spec.size, spec.ro),
            (UriFormat::Auto, None, false)
        );
    }

    #[test]
    fn formats_by_magic_bytes() {
        let mut head = vec![0u8; 2048];
        assert_eq!(detect_bytes(&head), None);
        head[1080..1082].copy_from_slice(&[0x53, 0xef]);
        assert_eq!(detect_bytes(&head), Some(UriFormat::Ext4));
        head[1024..1028].copy_from_slice(&[0xe2, 0xe1, 0xf5, 0xe0]);
        assert_eq!(detect_bytes(&head), Some(UriFormat::Erofs));
        assert_eq!(detect_bytes(b"hsqs...."), Some(UriFormat::Squashfs));
        assert_eq!(detect_bytes(&[0x1f, 0x8b, 8, 0]), Some(UriFormat::TarGz));
        let mut tar = vec![0u8; 512];
        tar[257..262].copy_from_slice(b"ustar");
        assert_eq!(detect_bytes(&tar), Some(UriFormat::Tar));
    }

    #[test]
    fn loop_tags_are_not_the_loopback_drivers() {
        let ours = loop_tag_prefix("abc");
        assert!(!ours.starts_with(&crate::attach::loopback::loop_tag_prefix("abc")));
        // lo_file_name keeps 63 bytes: the prefix and the id fit with an instance name.
        let instance = "0123456789abcdef0123456789abcdef";
        assert!(format!("{}{}", loop_tag_prefix(instance), 1_000_000_000i64).len() <= 63);
    }
}
