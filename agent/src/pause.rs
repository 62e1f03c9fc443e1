//! The crash tests' fault hook (`DEVGATE_TEST_PAUSE_AT`), shared with the
//! gateway in the `devgate-pause` crate; debug builds only.

pub(crate) use devgate_pause::{at, at_blocking};
