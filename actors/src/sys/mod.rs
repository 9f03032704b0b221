//! Kernel-facing code: small, safe wrappers over the syscalls the engine needs.
