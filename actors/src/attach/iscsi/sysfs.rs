//! What sysfs shows of iSCSI sessions and their SCSI devices: the session an iface logged in,
//! its SCSI host, the device of one LUN and its block queue. Read from the tree itself, not
//! from udev's `/dev/disk/by-path` (a node without udev has none).

use std::fs;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The part of sysfs this driver reads, rooted at `/sys` (a test's own tree in unit tests).
#[derive(Debug, Clone)]
pub(super) struct Sysfs {
    root: PathBuf,
}

/// A SCSI device's address, `host:channel:target:lun` as sysfs names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ScsiAddress {
    pub host: u32,
    pub channel: u32,
    pub target: u32,
    pub lun: u64,
}

impl FromStr for ScsiAddress {
    type Err = ();

    fn from_str(name: &str) -> Result<Self, ()> {
        let mut parts = name.split(':');
        let mut next = || parts.next().ok_or(());
        let address = ScsiAddress {
            host: next()?.parse().map_err(drop)?,
            channel: next()?.parse().map_err(drop)?,
            target: next()?.parse().map_err(drop)?,
            lun: next()?.parse().map_err(drop)?,
        };
        match parts.next() {
            None => Ok(address),
            Some(_) => Err(()),
        }
    }
}

impl std::fmt::Display for ScsiAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}:{}",
            self.host, self.channel, self.target, self.lun
        )
    }
}

/// A block queue's schedulers: the one in use and every one the kernel offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Schedulers {
    pub active: Option<String>,
    pub offered: Vec<String>,
}

impl Schedulers {
    /// Parses `queue/scheduler`: `"[mq-deadline] kyber none"`.
    pub(super) fn parse(text: &str) -> Schedulers {
        let mut active = None;
        let mut offered = Vec::new();
        for word in text.split_whitespace() {
            match word.strip_prefix('[').and_then(|w| w.strip_suffix(']')) {
                Some(name) => {
                    active = Some(name.to_string());
                    offered.push(name.to_string());
                }
                None => offered.push(word.to_string()),
            }
        }
        Schedulers { active, offered }
    }
}

/// Parses a `dev` file: `"8:16"`.
pub(super) fn parse_dev(text: &str) -> Option<(u64, u64)> {
    let (major, minor) = text.trim().split_once(':')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// Parses the number of a sysfs entry `<prefix><number>` (`session3`, `host6`).
fn number_after(name: &str, prefix: &str) -> Option<u32> {
    name.strip_prefix(prefix)?.parse().ok()
}

fn read_attr(path: &Path) -> Option<String> {
    fs::read_to_string(path)
        .ok()
        .map(|text| text.trim_end_matches('\n').to_string())
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}

impl Sysfs {
    pub(super) fn new(root: impl Into<PathBuf>) -> Sysfs {
        Sysfs { root: root.into() }
    }

    fn session_dir(&self, session: u32) -> PathBuf {
        self.root
            .join("class/iscsi_session")
            .join(format!("session{session}"))
    }

    /// One attribute of session `session` (`targetname`, `ifacename`, `state`).
    pub(super) fn session_attr(&self, session: u32, name: &str) -> Option<String> {
        read_attr(&self.session_dir(session).join(name))
    }

    /// Every iSCSI session the kernel has.
    pub(super) fn sessions(&self) -> Vec<u32> {
        let mut sessions: Vec<u32> = entries(&self.root.join("class/iscsi_session"))
            .iter()
            .filter_map(|name| number_after(name, "session"))
            .collect();
        sessions.sort_unstable();
        sessions
    }

    /// The sessions logged in through iface `iface`.
    pub(super) fn sessions_of_iface(&self, iface: &str) -> Vec<u32> {
        self.sessions()
            .into_iter()
            .filter(|&session| self.session_attr(session, "ifacename").as_deref() == Some(iface))
            .collect()
    }

    /// The SCSI host of a session: its device lives in `.../host<N>/session<M>`.
    pub(super) fn host_of(&self, session: u32) -> Option<u32> {
        let device = fs::canonicalize(self.session_dir(session).join("device")).ok()?;
        let host = device.parent()?.file_name()?.to_str()?;
        number_after(host, "host")
    }

    /// Asks the kernel to probe LUN `lun` on `host` (synchronous: when the write returns, the
    /// LUN's SCSI device exists if the target has that LUN).
    pub(super) fn scan_lun(&self, host: u32, lun: u64) -> std::io::Result<()> {
        let scan = self
            .root
            .join("class/scsi_host")
            .join(format!("host{host}"))
            .join("scan");
        fs::write(scan, format!("- - {lun}"))
    }

    /// The SCSI devices of a session (`device/target*/H:C:T:L`).
    pub(super) fn devices_of(&self, session: u32) -> Vec<ScsiAddress> {
        let device = self.session_dir(session).join("device");
        let mut devices: Vec<ScsiAddress> = entries(&device)
            .iter()
            .filter(|name| name.starts_with("target"))
            .flat_map(|target| entries(&device.join(target)))
            .filter_map(|name| name.parse().ok())
            .collect();
        devices.sort_by_key(|address| address.lun);
        devices
    }

    fn device_dir(&self, session: u32, address: ScsiAddress) -> PathBuf {
        let target = format!(
            "target{}:{}:{}",
            address.host, address.channel, address.target
        );
        self.session_dir(session)
            .join("device")
            .join(target)
            .join(address.to_string())
    }

    /// The block device (`sdX`) of a session's SCSI device, once the disk driver made it.
    pub(super) fn disk_of(&self, session: u32, address: ScsiAddress) -> Option<String> {
        entries(&self.device_dir(session, address).join("block"))
            .into_iter()
            .next()
    }

    fn block_dir(&self, disk: &str) -> PathBuf {
        self.root.join("class/block").join(disk)
    }

    /// A block device's major and minor numbers.
    pub(super) fn dev_numbers(&self, disk: &str) -> Option<(u64, u64)> {
        parse_dev(&read_attr(&self.block_dir(disk).join("dev"))?)
    }

    pub(super) fn schedulers(&self, disk: &str) -> Option<Schedulers> {
        Some(Schedulers::parse(&read_attr(
            &self.block_dir(disk).join("queue/scheduler"),
        )?))
    }

    /// Sets a block queue's scheduler (the kernel loads its module if it has to).
    pub(super) fn set_scheduler(&self, disk: &str, scheduler: &str) -> std::io::Result<()> {
        fs::write(self.block_dir(disk).join("queue/scheduler"), scheduler)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    /// The tree a login to a target with LUN 1 gives: session 3 on host 6, disk sdb.
    fn logged_in_tree() -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let host = root.join("devices/platform/host6");
        let session = host.join("session3");
        let lun = session.join("target6:0:0/6:0:0:1");
        fs::create_dir_all(lun.join("block/sdb")).unwrap();
        fs::create_dir_all(session.join("iscsi_session/session3")).unwrap();
        let class = root.join("class/iscsi_session/session3");
        fs::create_dir_all(&class).unwrap();
        symlink(&session, class.join("device")).unwrap();
        fs::write(class.join("targetname"), "iqn.2026-01.test:t1\n").unwrap();
        fs::write(class.join("ifacename"), "imageapi-abc-1\n").unwrap();
        fs::create_dir_all(root.join("class/iscsi_session/session4")).unwrap();
        fs::write(
            root.join("class/iscsi_session/session4/ifacename"),
            "default\n",
        )
        .unwrap();
        let block = root.join("class/block/sdb");
        fs::create_dir_all(block.join("queue")).unwrap();
        fs::write(block.join("dev"), "8:16\n").unwrap();
        fs::write(block.join("queue/scheduler"), "[mq-deadline] none\n").unwrap();
        fs::create_dir_all(root.join("class/scsi_host/host6")).unwrap();
        tmp
    }

    #[test]
    fn finds_the_session_of_an_iface_its_host_and_the_lun_device() {
        let tree = logged_in_tree();
        let sysfs = Sysfs::new(tree.path());
        assert_eq!(sysfs.sessions(), [3, 4]);
        assert_eq!(sysfs.sessions_of_iface("imageapi-abc-1"), [3]);
        assert!(sysfs.sessions_of_iface("imageapi-abc-2").is_empty());
        assert_eq!(
            sysfs.session_attr(3, "targetname").as_deref(),
            Some("iqn.2026-01.test:t1")
        );
        assert_eq!(sysfs.host_of(3), Some(6));
        let lun1 = ScsiAddress {
            host: 6,
            channel: 0,
            target: 0,
            lun: 1,
        };
        assert_eq!(sysfs.devices_of(3), [lun1]);
        assert_eq!(sysfs.disk_of(3, lun1).as_deref(), Some("sdb"));
        assert_eq!(sysfs.dev_numbers("sdb"), Some((8, 16)));
        assert_eq!(
            sysfs.schedulers("sdb"),
            Some(Schedulers {
                active: Some("mq-deadline".into()),
                offered: vec!["mq-deadline".into(), "none".into()],
            })
        );
    }

    #[test]
    fn the_scan_names_only_the_lun() {
        let tree = logged_in_tree();
        let sysfs = Sysfs::new(tree.path());
        sysfs.scan_lun(6, 1).unwrap();
        assert_eq!(
            fs::read_to_string(tree.path().join("class/scsi_host/host6/scan")).unwrap(),
            "- - 1"
        );
    }

    #[test]
    fn scsi_addresses_and_dev_numbers_parse() {
        assert_eq!(
            "6:0:0:1".parse(),
            Ok(ScsiAddress {
                host: 6,
                channel: 0,
                target: 0,
                lun: 1
            })
        );
        assert_eq!("target6:0:0".parse::<ScsiAddress>(), Err(()));
        assert_eq!("6:0:0:1:2".parse::<ScsiAddress>(), Err(()));
        assert_eq!("6:0:0".parse::<ScsiAddress>(), Err(()));
        assert_eq!(parse_dev("8:16\n"), Some((8, 16)));
        assert_eq!(parse_dev("8"), None);
    }

    #[test]
    fn schedulers_parse_with_and_without_an_active_one() {
        assert_eq!(
            Schedulers::parse("[none] mq-deadline bfq \n"),
            Schedulers {
                active: Some("none".into()),
                offered: vec!["none".into(), "mq-deadline".into(), "bfq".into()],
            }
        );
        assert_eq!(Schedulers::parse("none").active, None);
    }
}
