//! The one resolver of client paths: every RPC opens files through `Root`.
//! TODO(agent-core): race-free resolution relative to a directory handle.

use std::path::Path;

use crate::error::{Error, Result};

/// The served directory, held open as a capability.
pub struct Root {
    pub dir: cap_std::fs::Dir,
    pub path: std::path::PathBuf,
}

impl Root {
    pub fn open(path: &Path) -> std::io::Result<Root> {
        let dir = cap_std::fs::Dir::open_ambient_dir(path, cap_std::ambient_authority())?;
        Ok(Root { dir, path: path.canonicalize()? })
    }

    /// Checks a client path's syntax and returns it normalised ('' = the root).
    pub fn clean(p: &str) -> Result<String> {
        if p.contains('\0') || p.starts_with('/') {
            return Err(Error::PathOutsideRoot(p.replace('\0', "\\0")));
        }
        let mut parts = Vec::new();
        for seg in p.split('/') {
            match seg {
                "" | "." => {}
                ".." => return Err(Error::PathOutsideRoot(p.to_owned())),
                s => parts.push(s),
            }
        }
        Ok(parts.join("/"))
    }
}
