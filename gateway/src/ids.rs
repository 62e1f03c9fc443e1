//! Identifier and path checks done before anything reaches the store or an
//! agent: project ids and container names are DNS labels; file paths are
//! relative, `/`-separated and never leave the project root.

use crate::error::Error;

/// `^[a-z]([a-z0-9-]{0,38}[a-z0-9])?$`, the contract's rule for project ids and container names.
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    if b.is_empty() || b.len() > 40 {
        return false;
    }
    if !b[0].is_ascii_lowercase() {
        return false;
    }
    let last = b[b.len() - 1];
    if !(last.is_ascii_lowercase() || last.is_ascii_digit()) {
        return false;
    }
    b.iter()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// A dotted domain whose labels are letters, digits and hyphens (for --preview-domain).
pub fn is_dns_label_domain(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// Checks a project id, 400 otherwise.
pub fn project_id(s: &str) -> Result<(), Error> {
    if is_dns_label(s) {
        Ok(())
    } else {
        Err(Error::BadRequest(format!(
            "invalid project id {s:?}: ids are DNS labels"
        )))
    }
}

/// Checks a container name, 400 otherwise.
pub fn container_name(s: &str) -> Result<(), Error> {
    if is_dns_label(s) {
        tracing::Span::current().record("container", s);
        Ok(())
    } else {
        Err(Error::BadRequest(format!(
            "invalid container name {s:?}: names are DNS labels"
        )))
    }
}

/// Normalises a client file path (already percent-decoded) to the agent's form:
/// relative, no empty or `.` segments. `..` segments, absolute paths and NUL
/// bytes are refused here, before any agent sees them; symlinks are the agent's
/// to check, since only it can see them.
pub fn file_path(raw: &str) -> Result<String, Error> {
    if raw.contains('\0') {
        return Err(Error::PathOutsideProject("path contains a NUL byte".into()));
    }
    if raw.contains('\\') {
        // Not a separator on Unix, but nothing good comes of it in a web path.
        return Err(Error::PathOutsideProject(
            "path contains a backslash".into(),
        ));
    }
    if raw.starts_with('/') {
        return Err(Error::PathOutsideProject(format!(
            "path {raw:?} is absolute"
        )));
    }
    let mut out: Vec<&str> = Vec::new();
    for seg in raw.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                return Err(Error::PathOutsideProject(format!(
                    "path {raw:?} leaves the project"
                )));
            }
            s => out.push(s),
        }
    }
    Ok(out.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        for ok in ["a", "demo", "a1", "my-app-2", &"a".repeat(40)] {
            assert!(is_dns_label(ok), "{ok}");
        }
        for bad in [
            "",
            "1a",
            "-a",
            "a-",
            "A",
            "a_b",
            "a.b",
            &"a".repeat(41),
            "é",
        ] {
            assert!(!is_dns_label(bad), "{bad}");
        }
    }

    #[test]
    fn file_paths() {
        assert_eq!(file_path("a/b/c.txt").unwrap(), "a/b/c.txt");
        assert_eq!(file_path("a//./b/").unwrap(), "a/b");
        assert!(matches!(
            file_path("/etc/passwd"),
            Err(Error::PathOutsideProject(_))
        ));
        assert_eq!(file_path("").unwrap(), "");
        assert!(matches!(
            file_path("../x"),
            Err(Error::PathOutsideProject(_))
        ));
        assert!(matches!(
            file_path("a/../../x"),
            Err(Error::PathOutsideProject(_))
        ));
        assert!(matches!(
            file_path("a/.."),
            Err(Error::PathOutsideProject(_))
        ));
        assert!(matches!(
            file_path("a\0b"),
            Err(Error::PathOutsideProject(_))
        ));
    }
}
