//! Bundled container templates: each folder of `--templates-dir` is made into
//! a bare git repository `<data-dir>/templates/<name>.git` at start-up, served
//! by the gateway over git's "dumb" HTTP protocol at `/templates/<name>.git`,
//! so a container is created from it with the agent's ordinary git clone (an
//! agent refuses `file://` repositories outside its root, rightly).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

/// Builds a repository per template folder; answers `(name, file:// URL)`
/// sorted by name. A folder whose name is not a DNS label is skipped.
pub fn build(templates_dir: &Path, data_dir: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let out_dir = std::path::absolute(data_dir.join("templates"))?;
    std::fs::create_dir_all(&out_dir)?;
    let mut built = Vec::new();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(templates_dir)
        .with_context(|| format!("cannot read templates dir {}", templates_dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    for dir in dirs {
        let Some(name) = dir.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
            continue;
        };
        if !crate::ids::is_dns_label(&name) {
            tracing::warn!(template = %name, "skipping template: its name is not a DNS label");
            continue;
        }
        let repo = out_dir.join(format!("{name}.git"));
        build_one(&dir, &repo).with_context(|| format!("cannot build template {name}"))?;
        built.push((name, format!("file://{}", repo.display())));
    }
    Ok(built)
}

fn git(args: &[&str], cwd: &Path) -> anyhow::Result<()> {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=devgate",
            "-c",
            "user.email=devgate@localhost",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(cwd)
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .context("cannot run git")?;
    if !out.status.success() {
        bail!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Commits the folder's files (skipping `node_modules` and any `.git`) into a
/// fresh bare repository, then swaps it into place.
fn build_one(src: &Path, repo: &Path) -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    copy_tree(src, work.path())?;
    git(&["init", "-q"], work.path())?;
    git(&["add", "-A"], work.path())?;
    git(&["commit", "-q", "-m", "template"], work.path())?;
    let parent = repo.parent().context("repository path has no parent")?;
    let tmp = parent.join(format!(".{}.tmp", uuid::Uuid::new_v4()));
    let out = Command::new("git")
        .args(["clone", "-q", "--bare"])
        .arg(work.path())
        .arg(&tmp)
        .output()
        .context("cannot run git")?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&tmp);
        bail!(
            "git clone --bare failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    // The dumb HTTP protocol needs info/refs and objects/info/packs.
    git(&["update-server-info"], &tmp)?;
    if repo.exists() {
        std::fs::remove_dir_all(repo)?;
    }
    std::fs::rename(&tmp, repo)?;
    Ok(())
}

fn copy_tree(src: &Path, dst: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        let name = entry.file_name();
        if name == "node_modules" || name == ".git" || name == "dist" {
            continue;
        }
        let from = entry.path();
        let to = dst.join(&name);
        let meta = std::fs::symlink_metadata(&from)?;
        if meta.is_dir() {
            std::fs::create_dir_all(&to)?;
            copy_tree(&from, &to)?;
        } else if meta.file_type().is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&from)?, &to)?;
        } else {
            std::fs::copy(&from, &to)?;
            std::fs::set_permissions(
                &to,
                std::fs::Permissions::from_mode(meta.permissions().mode()),
            )?;
        }
    }
    Ok(())
}
