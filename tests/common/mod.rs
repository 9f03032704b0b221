//! Shared fixture of the end-to-end tests: the `test_support` crate (the service under test, a
//! minimal HTTP/1.1 client, image builders, JSON request builders and kernel-state checks),
//! with [`Service`] started from this package's `imageapi-server`.
//!
//! Every test starts its own [`Service`] with its own temp dir; kernel checks only look at
//! resources under that dir, so tests can run in parallel.

#![allow(dead_code)]

use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};

pub use test_support::*;

/// The service binary under test, as Cargo built it for these tests.
pub const SERVER: &str = env!("CARGO_BIN_EXE_imageapi-server");

/// Where built test images are kept between runs (`target/test-images`): the guest suite
/// reads the ones the host suite built.
pub fn test_images_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target dir")
        .join("test-images")
}

/// [`test_support::Service`] running [`SERVER`]; every method of that type works on it.
pub struct Service(test_support::Service);

impl Service {
    /// Starts the service on a unix socket and waits until it answers.
    pub fn start() -> Service {
        Service::start_with(ServiceOptions::default())
    }

    /// Starts the service on a unix socket and on plain HTTP (127.0.0.1, a free port).
    pub fn start_with_http() -> Service {
        Service::start_with(ServiceOptions {
            http: true,
            ..ServiceOptions::default()
        })
    }

    pub fn start_with(options: ServiceOptions) -> Service {
        Service(test_support::Service::launch(Path::new(SERVER), options))
    }
}

impl Deref for Service {
    type Target = test_support::Service;

    fn deref(&self) -> &test_support::Service {
        &self.0
    }
}

impl DerefMut for Service {
    fn deref_mut(&mut self) -> &mut test_support::Service {
        &mut self.0
    }
}
