//! The create walk, rollback and forced removal through the real registry and actors, with
//! recording fakes of the driver trait in place of the kernel (as youki tests its rootfs code
//! through a recording `Syscall`): no root, no kernel resource.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::driver::{Dep, DepViews, Driver, Host, Kinds, Parsed};
use crate::engine::{Engine, EngineConfig};
use crate::error::{Error, Origin};
use crate::model::spec::{attach_child, Invalid};
use crate::model::wire::{Attach, AttachKind, AttachLocal, Id, Mount, MountAttach, MountKind};
use crate::registry::graph::{GraphError, ObjectKind};

/// What the fakes were asked to do, in order; and a gate the release of a device called `hang`
/// waits at until opened.
#[derive(Clone, Default)]
struct Calls(
    Arc<Mutex<Vec<String>>>,
    Arc<(Mutex<bool>, std::sync::Condvar)>,
);

impl Calls {
    fn open_gate(&self) {
        *self.1 .0.lock().unwrap() = true;
        self.1 .1.notify_all();
    }
    fn wait_at_gate(&self) {
        let (open, opened) = &*self.1;
        let guard = open.lock().unwrap();
        drop(opened.wait_while(guard, |open| !*open).unwrap());
    }
    fn push(&self, call: String) {
        self.0.lock().unwrap().push(call);
    }
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct FakeSpec {
    name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct FakeFacts {
    path: PathBuf,
}

/// An attachment kind (as `local`): `path` names it; `fail` fails its kernel step.
struct FakeDevice(Calls);

/// A mount kind (as `attach`) on one attachment: `fs_type` names it; `fail` fails.
struct FakeFs(Calls);

fn made(
    calls: &Calls,
    what: &str,
    id: Id,
    spec: &FakeSpec,
    deps: &[Dep],
) -> Result<((), FakeFacts), Error> {
    let deps: Vec<Id> = deps.iter().map(|dep| dep.id).collect();
    calls.push(format!("create {what} {id} {} {deps:?}", spec.name));
    if spec.name == "fail" {
        return Err(Error::rejected(
            Origin::new(ObjectKind::Attach, "fake"),
            "asked to fail",
        ));
    }
    Ok((
        (),
        FakeFacts {
            path: PathBuf::from(format!("/fake/{id}")),
        },
    ))
}

impl Driver for FakeDevice {
    type Object = Attach;
    type Spec = FakeSpec;
    type Facts = FakeFacts;
    /// Its name.
    type Resource = String;
    const KIND: AttachKind = AttachKind::Local;

    fn parse(
        &self,
        _: &Kinds,
        _: &str,
        wire: &Attach,
    ) -> Option<Result<Parsed<FakeSpec>, Invalid>> {
        let local = wire.local.as_ref()?;
        Some(Ok(Parsed::new(
            FakeSpec {
                name: local.path.clone(),
            },
            vec![],
        )))
    }
    fn create(
        &self,
        _: &Host,
        id: Id,
        spec: &FakeSpec,
        deps: &[Dep],
    ) -> Result<(String, FakeFacts), Error> {
        made(&self.0, "device", id, spec, deps).map(|((), facts)| (spec.name.clone(), facts))
    }
    fn adopt(&self, _: &Host, _: Id, spec: &FakeSpec, _: &FakeFacts) -> Option<String> {
        Some(spec.name.clone())
    }
    fn release(&self, _: &Host, name: String, force: bool) -> Result<(), Error> {
        if name == "hang" {
            self.0.wait_at_gate();
        }
        self.0.push(format!("release device force={force}"));
        Ok(())
    }
    fn provides<'f>(&self, facts: &'f FakeFacts) -> &'f Path {
        &facts.path
    }
    fn describe(
        &self,
        spec: &FakeSpec,
        _: Option<&FakeFacts>,
        _: &dyn DepViews,
        wire: &mut Attach,
    ) {
        wire.local = Some(AttachLocal {
            path: spec.name.clone(),
        });
    }
}

impl Driver for FakeFs {
    type Object = Mount;
    type Spec = FakeSpec;
    type Facts = FakeFacts;
    type Resource = ();
    const KIND: MountKind = MountKind::Attach;

    fn parse(
        &self,
        kinds: &Kinds,
        at: &str,
        wire: &Mount,
    ) -> Option<Result<Parsed<FakeSpec>, Invalid>> {
        let spec = wire.attach.as_ref()?;
        Some(attach_child(kinds, at, &spec.attach).map(|child| {
            Parsed::new(
                FakeSpec {
                    name: spec.fs_type.clone(),
                },
                vec![child],
            )
        }))
    }
    fn create(
        &self,
        _: &Host,
        id: Id,
        spec: &FakeSpec,
        deps: &[Dep],
    ) -> Result<((), FakeFacts), Error> {
        made(&self.0, "fs", id, spec, deps)
    }
    fn adopt(&self, _: &Host, _: Id, _: &FakeSpec, _: &FakeFacts) -> Option<()> {
        Some(())
    }
    fn release(&self, _: &Host, (): (), force: bool) -> Result<(), Error> {
        self.0.push(format!("release fs force={force}"));
        Ok(())
    }
    fn provides<'f>(&self, facts: &'f FakeFacts) -> &'f Path {
        &facts.path
    }
    fn describe(
        &self,
        spec: &FakeSpec,
        _: Option<&FakeFacts>,
        deps: &dyn DepViews,
        wire: &mut Mount,
    ) {
        wire.attach = Some(MountAttach {
            attach: deps.attach(0),
            fs_type: spec.name.clone(),
            mount_options: vec![],
        });
    }
}

fn device(name: &str) -> Attach {
    Attach {
        kind: Some(AttachKind::Local),
        local: Some(AttachLocal {
            path: name.to_string(),
        }),
        ..Attach::default()
    }
}

fn fs_on(attach: Attach, name: &str) -> Mount {
    Mount {
        kind: Some(MountKind::Attach),
        attach: Some(MountAttach {
            attach,
            fs_type: name.to_string(),
            mount_options: vec![],
        }),
        ..Mount::default()
    }
}

/// Runs `test` against an engine with only the fakes as drivers.
fn with_engine(test: impl AsyncFnOnce(Engine, Calls)) {
    let dir = tempfile::tempdir().unwrap();
    let calls = Calls::default();
    let kinds = Kinds::default()
        .with(FakeDevice(calls.clone()))
        .with(FakeFs(calls.clone()));
    let config = EngineConfig {
        mount_dir: dir.path().join("mounts"),
        log_dir: dir.path().join("logs"),
        state_dir: None,
        cleanup_on_exit: true,
        uri: Default::default(),
        event_buffer: crate::events::DEFAULT_BUFFER,
        // These walks start no container.
        init_program: PathBuf::from("/nonexistent"),
    };
    actix_rt::System::new().block_on(async move {
        let engine = Engine::start_with(config, kinds).await.unwrap();
        test(engine.clone(), calls).await;
        engine.shutdown().await;
    });
}

#[test]
fn a_nested_create_goes_bottom_up_and_its_delete_top_down() {
    with_engine(async |engine, calls| {
        let mount = engine
            .create_mount(fs_on(device("disk"), "ext4"))
            .await
            .unwrap();
        assert_eq!(mount.id, Some(2));
        assert_eq!(mount.mountpoint.as_deref(), Some("/fake/2"));
        let attach = mount.attach.unwrap().attach;
        assert_eq!((attach.id, attach.refs), (Some(1), 1));
        assert_eq!(attach.device_file.as_deref(), Some("/fake/1"));
        assert_eq!(
            calls.take(),
            ["create device 1 disk []", "create fs 2 ext4 [1]"]
        );

        engine.delete_mount(2, false).await.unwrap();
        assert_eq!(
            calls.take(),
            ["release fs force=false", "release device force=false"]
        );
        assert!(engine.list_attach(None, None).await.unwrap().is_empty());
    })
}

#[test]
fn a_failed_step_rolls_back_what_the_request_made() {
    with_engine(async |engine, calls| {
        let err = engine
            .create_mount(fs_on(device("disk"), "fail"))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Rejected { .. }), "{err}");
        assert_eq!(
            calls.take(),
            [
                "create device 1 disk []",
                "create fs 2 fail [1]",
                "release device force=true"
            ]
        );
        assert!(engine.list_attach(None, None).await.unwrap().is_empty());
        assert!(engine.list_mount(None, None).await.unwrap().is_empty());
    })
}

#[test]
fn forced_removal_takes_the_users_first_and_keeps_what_they_referenced() {
    with_engine(async |engine, calls| {
        let attach = engine.create_attach(device("disk")).await.unwrap();
        let reference = Attach {
            id: attach.id,
            ..Attach::default()
        };
        engine
            .create_mount(fs_on(reference.clone(), "a"))
            .await
            .unwrap();
        calls.take();

        let refused = engine.delete_attach(1, false).await.unwrap_err();
        assert!(
            matches!(refused, Error::Graph(GraphError::InUse { .. })),
            "{refused}"
        );
        assert!(calls.take().is_empty(), "a refused delete releases nothing");

        let gone = engine.delete_attach(1, true).await.unwrap();
        assert_eq!(gone.refs, 0);
        assert_eq!(
            calls.take(),
            ["release fs force=true", "release device force=true"]
        );
        assert!(engine.list_mount(None, None).await.unwrap().is_empty());
    })
}

#[test]
fn two_engines_in_one_process_share_nothing() {
    with_engine(async |first, calls| {
        let dir = tempfile::tempdir().unwrap();
        let config = EngineConfig {
            mount_dir: dir.path().join("mounts"),
            log_dir: dir.path().join("logs"),
            state_dir: None,
            cleanup_on_exit: true,
            uri: Default::default(),
            event_buffer: crate::events::DEFAULT_BUFFER,
            // These walks start no container.
            init_program: PathBuf::from("/nonexistent"),
        };
        let kinds = Kinds::default().with(FakeDevice(calls.clone()));
        let second = Engine::start_with(config, kinds).await.unwrap();
        let a = first.create_attach(device("a")).await.unwrap();
        let b = second.create_attach(device("b")).await.unwrap();
        assert_eq!(
            (a.id, b.id),
            (Some(1), Some(1)),
            "each engine counts its own ids"
        );
        assert_eq!(first.list_attach(None, None).await.unwrap(), [a]);
        assert_eq!(second.list_attach(None, None).await.unwrap(), [b]);
        second.shutdown().await;
    })
}

#[test]
fn a_release_that_hangs_holds_up_only_what_depends_on_it() {
    with_engine(async |engine, calls| {
        engine.create_attach(device("hang")).await.unwrap();
        engine.create_attach(device("other")).await.unwrap();
        calls.take();
        let stuck = engine.clone();
        let hanging = actix_rt::spawn(async move { stuck.delete_attach(1, false).await });
        let other = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            engine.delete_attach(2, false),
        )
        .await;
        assert!(other.expect("an unrelated release is not held up").is_ok());
        assert_eq!(calls.take(), ["release device force=false"]);
        assert!(!hanging.is_finished());
        calls.open_gate();
        hanging.await.unwrap().unwrap();
    })
}
