//! The engine's error type. The HTTP layer maps each variant to a status in one place.

use std::fmt;

use crate::model::spec::Invalid;
use crate::model::wire::{ContainerState, Id};
use crate::registry::graph::{GraphError, ObjectKind};
use crate::sys::SysError;

/// Which object of a (possibly nested) request failed, and in which driver or step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    pub object: ObjectKind,
    /// The driver or step, e.g. `loopback`, `overlay`, `launch`.
    pub stage: &'static str,
}

impl Origin {
    pub const fn new(object: ObjectKind, stage: &'static str) -> Self {
        Origin { object, stage }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.object.as_str(), self.stage)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request does not fit the contract.
    #[error("invalid request: {0}")]
    Invalid(#[from] Invalid),
    /// A registry rule refused the operation (unknown id, name taken, object in use).
    #[error(transparent)]
    Graph(#[from] GraphError),
    #[error("no container named {0:?}")]
    NameNotFound(String),
    /// The container's state does not allow the operation.
    #[error("container {id} is {}: {hint}", state.as_str())]
    ContainerBusy {
        id: Id,
        state: ContainerState,
        hint: &'static str,
    },
    /// The host refused what the request names (not a block device, a path outside its base, no such file).
    #[error("{origin}: {reason}")]
    Rejected { origin: Origin, reason: String },
    /// A kind this service or this kernel has no driver for.
    #[error("{origin}: {reason}")]
    Unsupported { origin: Origin, reason: String },
    /// A storage server (Ceph monitor or OSD, NFS server, iSCSI target) could not be reached or
    /// did not answer within the driver's bounded time.
    #[error("{origin}: {reason}")]
    Unreachable { origin: Origin, reason: String },
    /// A kernel operation failed.
    #[error("{origin}: {source}")]
    Kernel {
        origin: Origin,
        #[source]
        source: SysError,
    },
    #[error("the service is shutting down")]
    ShuttingDown,
    /// The state store could not record a change; the change was not made.
    #[error("state store: {0}")]
    Store(String),
}

impl Error {
    pub fn rejected(origin: Origin, reason: impl Into<String>) -> Self {
        Error::Rejected {
            origin,
            reason: reason.into(),
        }
    }

    pub fn unsupported(origin: Origin, reason: impl Into<String>) -> Self {
        Error::Unsupported {
            origin,
            reason: reason.into(),
        }
    }

    pub fn unreachable(origin: Origin, reason: impl Into<String>) -> Self {
        Error::Unreachable {
            origin,
            reason: reason.into(),
        }
    }

    pub fn kernel(origin: Origin) -> impl FnOnce(SysError) -> Error {
        move |source| Error::Kernel { origin, source }
    }

    /// The failing object and stage, for errors that happened inside a driver.
    pub fn origin(&self) -> Option<Origin> {
        match self {
            Error::Rejected { origin, .. }
            | Error::Unsupported { origin, .. }
            | Error::Unreachable { origin, .. }
            | Error::Kernel { origin, .. } => Some(*origin),
            _ => None,
        }
    }

    /// Why the failing driver step failed: the kernel's errno text, or what the host refused.
    pub fn reason(&self) -> Option<String> {
        match self {
            Error::Kernel { source, .. } => Some(source.errno.to_string()),
            Error::Rejected { reason, .. }
            | Error::Unsupported { reason, .. }
            | Error::Unreachable { reason, .. } => Some(reason.clone()),
            _ => None,
        }
    }
}
