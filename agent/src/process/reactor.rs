//! The one place the agent hands raw descriptors to Tokio's reactor (the
//! PTY master, pidfds). Tokio's registration is `unsafe` because it cannot
//! check that a descriptor outlives its registration; [`Owned`] types own
//! theirs, which is exactly that condition, so this module holds the crate's
//! only `unsafe` block.

use std::os::fd::{AsRawFd, OwnedFd};

use filedescriptor::FileDescriptor;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// A value that owns its descriptor: it stays open, and `as_raw_fd` keeps
/// answering the same number, until the value is dropped.
pub(crate) trait Owned: AsRawFd {}

impl Owned for OwnedFd {}
impl Owned for FileDescriptor {}

/// Registers `inner` with the reactor for `interest`.
pub(crate) fn register<T: Owned>(inner: T, interest: Interest) -> std::io::Result<AsyncFd<T>> {
    #[allow(unsafe_code)]
    // SAFETY: `T: Owned` owns its descriptor, which therefore stays open
    // and refers to the same file description while the `AsyncFd` holds
    // `inner` (it closes only when `inner` is dropped), and `as_raw_fd`
    // always answers that one number.
    let registered = unsafe { AsyncFd::register_with_interest(inner, interest) };
    registered.map_err(|e| e.into_parts().1)
}
