//! The Git service through a real agent: clone a local repository made in
//! the test (by `file://` URL, inside the root), with progress, ref, shallow
//! and `.git` removal; failures leave no directory behind.

use std::path::Path;
use std::process::Command;

use proto::v1::git_client::GitClient;
use proto::v1::{CloneDone, CloneRequest, clone_response};
use tonic::transport::Channel;

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A repository with two commits on `main` and one more on `feature`.
fn make_repo(dir: &Path) -> String {
    std::fs::create_dir_all(dir.join("src")).unwrap();
    git(dir, &["init", "-q"]);
    std::fs::write(dir.join("README.md"), "# demo\n").unwrap();
    git(dir, &["add", "."]);
    git(dir, &["commit", "-qm", "one"]);
    std::fs::write(dir.join("src/app.js"), "console.log(1)\n").unwrap();
    git(dir, &["add", "."]);
    git(dir, &["commit", "-qm", "two"]);
    let main = git(dir, &["rev-parse", "HEAD"]);
    git(dir, &["checkout", "-qb", "feature"]);
    std::fs::write(dir.join("feature.txt"), "f\n").unwrap();
    git(dir, &["add", "."]);
    git(dir, &["commit", "-qm", "three"]);
    git(dir, &["checkout", "-q", "main"]);
    main
}

async fn clone(
    agent: &tests::Agent,
    client: &mut GitClient<Channel>,
    req: CloneRequest,
) -> Result<(Vec<String>, CloneDone), tonic::Status> {
    let mut stream = client.clone(agent.req(req)).await?.into_inner();
    let mut progress = Vec::new();
    while let Some(msg) = stream.message().await? {
        match msg.event {
            Some(clone_response::Event::Progress(p)) => progress.push(p),
            Some(clone_response::Event::Done(d)) => return Ok((progress, d)),
            None => {}
        }
    }
    panic!("stream ended without done");
}

fn leftovers(root: &Path) -> Vec<String> {
    std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(".agent-clone"))
        .collect()
}

#[tokio::test]
async fn clone_local_repository() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let root = tmp.path().canonicalize()?;
    let main = make_repo(&root.join("upstream"));
    let agent = tests::Agent::start(&root, &[]).await?;
    let mut client = GitClient::new(agent.channel().await?);
    let url = format!("file://{}/upstream", root.display());

    let (progress, done) = clone(
        &agent,
        &mut client,
        CloneRequest {
            url: url.clone(),
            dir: "work/app".into(),
            ..Default::default()
        },
    )
    .await?;
    assert!(!progress.is_empty(), "progress lines");
    assert!(
        progress.iter().all(|l| !l.contains(".agent-clone")),
        "{progress:?}"
    );
    assert_eq!(done.commit, main);
    assert_eq!(done.files, 2);
    assert_eq!(
        std::fs::read_to_string(root.join("work/app/src/app.js"))?,
        "console.log(1)\n"
    );
    assert!(root.join("work/app/.git").is_dir());
    assert_eq!(
        git(&root.join("work/app"), &["rev-list", "--count", "HEAD"]),
        "2"
    );

    // A branch, shallow, into an existing empty directory.
    std::fs::create_dir(root.join("shallow"))?;
    let (_, done) = clone(
        &agent,
        &mut client,
        CloneRequest {
            url: url.clone(),
            r#ref: "feature".into(),
            dir: "shallow".into(),
            shallow: true,
            ..Default::default()
        },
    )
    .await?;
    assert_eq!(done.files, 3);
    assert_eq!(
        git(&root.join("shallow"), &["rev-list", "--count", "HEAD"]),
        "1",
        "depth 1"
    );
    assert_eq!(
        done.commit,
        git(&root.join("upstream"), &["rev-parse", "feature"])
    );

    // A template copy: no .git.
    let (_, done) = clone(
        &agent,
        &mut client,
        CloneRequest {
            url,
            dir: "template".into(),
            drop_git_dir: true,
            ..Default::default()
        },
    )
    .await?;
    assert_eq!(done.commit, main);
    assert!(root.join("template/README.md").is_file());
    assert!(!root.join("template/.git").exists());
    assert!(leftovers(&root).is_empty());
    Ok(())
}

#[tokio::test]
async fn failed_clones_leave_nothing() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let root = tmp.path().canonicalize()?;
    make_repo(&root.join("upstream"));
    std::fs::create_dir(root.join("not-a-repo"))?;
    std::fs::create_dir(root.join("busy"))?;
    std::fs::write(root.join("busy/file"), "x")?;
    let agent = tests::Agent::start(&root, &[]).await?;
    let mut client = GitClient::new(agent.channel().await?);
    let good = format!("file://{}/upstream", root.display());

    // git itself fails: not a repository, then an unknown branch.
    let bad = format!("file://{}/not-a-repo", root.display());
    let err = clone(
        &agent,
        &mut client,
        CloneRequest {
            url: bad,
            dir: "dest".into(),
            ..Default::default()
        },
    )
    .await
    .expect_err("not a repo");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("git clone failed"), "{err:?}");
    let err = clone(
        &agent,
        &mut client,
        CloneRequest {
            url: good.clone(),
            r#ref: "no-such-branch".into(),
            dir: "dest".into(),
            ..Default::default()
        },
    )
    .await
    .expect_err("bad ref");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(!root.join("dest").exists());
    assert!(leftovers(&root).is_empty(), "{:?}", leftovers(&root));

    // Refused before git runs.
    let cases = [
        ("file:///etc", "dest", tonic::Code::InvalidArgument),
        (
            "ext::sh -c touch% /tmp/pwned",
            "dest",
            tonic::Code::InvalidArgument,
        ),
        (
            "--upload-pack=touch /tmp/pwned",
            "dest",
            tonic::Code::InvalidArgument,
        ),
        ("/etc", "dest", tonic::Code::InvalidArgument),
        ("", "dest", tonic::Code::InvalidArgument),
        (good.as_str(), "../dest", tonic::Code::InvalidArgument),
        (good.as_str(), "", tonic::Code::InvalidArgument),
        (good.as_str(), "busy", tonic::Code::AlreadyExists),
    ];
    for (url, dir, code) in cases {
        let err = clone(
            &agent,
            &mut client,
            CloneRequest {
                url: url.into(),
                dir: dir.into(),
                ..Default::default()
            },
        )
        .await
        .expect_err(url);
        assert_eq!(err.code(), code, "{url} -> {dir}: {err:?}");
    }
    let err = clone(
        &agent,
        &mut client,
        CloneRequest {
            url: good,
            r#ref: "--help".into(),
            dir: "dest".into(),
            ..Default::default()
        },
    )
    .await
    .expect_err("option as ref");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(!root.join("dest").exists());
    assert!(!Path::new("/tmp/pwned").exists());
    assert_eq!(std::fs::read_to_string(root.join("busy/file"))?, "x");
    Ok(())
}
