//! Project-file primitives shared by the agent and the gateway's local reads:
//! the one path resolver ([`Root`]), file metadata and etags ([`Stat`]), the
//! read window and range helpers ([`read`]), and the names of the agent's
//! temporary files ([`temp`]). No protobuf, no gRPC: each caller maps
//! [`Error`] to its own protocol, by [`Error::kind`].

mod error;
pub mod read;
mod root;
mod stat;
pub mod temp;

pub use error::{Error, ErrorKind, Result, is_escape};
pub use root::{Root, join, split_parent};
pub use stat::{Kind, Stat};
