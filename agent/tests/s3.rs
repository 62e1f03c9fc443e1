//! Archives to and from a real S3-compatible server (moto on loopback):
//! upload and extract round trip, error paths, and what an interrupted
//! upload leaves: after SIGKILL no object under the key; after SIGTERM the
//! upload finishes within the grace period and the object is whole.

mod archive_tree;

use std::io::Cursor;
use std::time::Duration;

use archive_tree::{file_count, make_big, make_project, snapshot};
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use proto::v1::archive_client::ArchiveClient;
use proto::v1::{ArchiveOptions, ExtractFromS3Request, S3Location, UploadArchiveRequest};
use sha2::Digest as _;

fn s3_client(s3: &tests::S3Server) -> aws_sdk_s3::Client {
    use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .http_client(http)
        .endpoint_url(&s3.endpoint)
        .region(Region::new(tests::S3_REGION))
        .credentials_provider(Credentials::new(
            tests::S3_ACCESS_KEY,
            tests::S3_SECRET_KEY,
            None,
            None,
            "test",
        ))
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

fn loc(bucket: &str, key: &str) -> Option<S3Location> {
    Some(S3Location {
        bucket: bucket.into(),
        key: key.into(),
    })
}

async fn keys(client: &aws_sdk_s3::Client, bucket: &str) -> Vec<String> {
    let out = client
        .list_objects_v2()
        .bucket(bucket)
        .send()
        .await
        .expect("list objects");
    out.contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_owned))
        .collect()
}

async fn get(client: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Vec<u8> {
    let out = client
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .expect("get object");
    out.body.collect().await.unwrap().into_bytes().to_vec()
}

#[tokio::test]
async fn upload_and_extract_from_s3() -> anyhow::Result<()> {
    let s3 = tests::S3Server::start().await?;
    s3.create_bucket("archives").await?;
    let tmp = tempfile::tempdir()?;
    let agent = tests::Agent::start(tmp.path(), &s3.env()).await?;
    let mut client = ArchiveClient::new(agent.channel().await?);
    let proj = tmp.path().join("proj");
    make_project(&proj);
    // More than one 8 MiB part, so the parts really are put together.
    make_big(&proj.join("big"), 3, 4 << 20);
    let expected = snapshot(&proj, &["node_modules", ".git", "__pycache__"]);

    let summary = client
        .upload(agent.req(UploadArchiveRequest {
            options: Some(ArchiveOptions {
                path: "proj".into(),
                ..Default::default()
            }),
            location: loc("archives", "p/1.zip"),
        }))
        .await?
        .into_inner();
    assert_eq!(summary.files, file_count(&expected));
    assert_eq!(summary.location, loc("archives", "p/1.zip"));
    let s3c = s3_client(&s3);
    let object = get(&s3c, "archives", "p/1.zip").await;
    assert_eq!(object.len() as u64, summary.size);
    assert_eq!(hex::encode(sha2::Sha256::digest(&object)), summary.sha256);
    assert_eq!(
        zip::ZipArchive::new(Cursor::new(&object))?.len(),
        expected.len(),
        "files, links and directories"
    );

    let out = client
        .extract_from_s3(agent.req(ExtractFromS3Request {
            path: "restored".into(),
            location: loc("archives", "p/1.zip"),
        }))
        .await?
        .into_inner();
    assert_eq!(out.files, summary.files);
    assert_eq!(snapshot(&tmp.path().join("restored"), &[]), expected);
    Ok(())
}

#[tokio::test]
async fn s3_error_paths() -> anyhow::Result<()> {
    let s3 = tests::S3Server::start().await?;
    s3.create_bucket("archives").await?;
    let tmp = tempfile::tempdir()?;
    make_project(tmp.path());
    let agent = tests::Agent::start(tmp.path(), &s3.env()).await?;
    let mut client = ArchiveClient::new(agent.channel().await?);

    let err = client
        .upload(agent.req(UploadArchiveRequest {
            options: None,
            location: loc("no-such-bucket", "k.zip"),
        }))
        .await
        .expect_err("missing bucket");
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    let err = client
        .upload(agent.req(UploadArchiveRequest {
            options: None,
            location: None,
        }))
        .await
        .expect_err("no location");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = client
        .upload(agent.req(UploadArchiveRequest {
            options: Some(ArchiveOptions {
                path: "missing".into(),
                ..Default::default()
            }),
            location: loc("archives", "k.zip"),
        }))
        .await
        .expect_err("missing dir");
    assert_eq!(err.code(), tonic::Code::NotFound);
    let err = client
        .extract_from_s3(agent.req(ExtractFromS3Request {
            path: "x".into(),
            location: loc("archives", "nope.zip"),
        }))
        .await
        .expect_err("missing key");
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    assert!(!tmp.path().join("x").exists());
    assert!(keys(&s3_client(&s3), "archives").await.is_empty());
    Ok(())
}

/// Starts an upload of a big tree and waits until the multipart upload
/// exists on the server (the agent is mid-upload).
async fn upload_in_flight(
    s3: &tests::S3Server,
    agent: &tests::Agent,
) -> anyhow::Result<tokio::task::JoinHandle<Result<proto::v1::ArchiveSummary, tonic::Status>>> {
    let mut client = ArchiveClient::new(agent.channel().await?);
    let req = agent.req(UploadArchiveRequest {
        options: None,
        location: loc("archives", "big.zip"),
    });
    let call = tokio::spawn(async move { client.upload(req).await.map(|r| r.into_inner()) });
    let s3c = s3_client(s3);
    tests::eventually(
        Duration::from_secs(30),
        "a multipart upload in progress",
        || {
            let s3c = s3c.clone();
            async move {
                let out = s3c
                    .list_multipart_uploads()
                    .bucket("archives")
                    .send()
                    .await
                    .ok()?;
                (!out.uploads().is_empty()).then_some(())
            }
        },
    )
    .await?;
    Ok(call)
}

#[tokio::test]
async fn sigkill_during_upload_leaves_no_object() -> anyhow::Result<()> {
    let s3 = tests::S3Server::start().await?;
    s3.create_bucket("archives").await?;
    let tmp = tempfile::tempdir()?;
    make_big(tmp.path(), 48, 1 << 20);
    let mut agent = tests::Agent::start(tmp.path(), &s3.env()).await?;
    let call = upload_in_flight(&s3, &agent).await?;

    agent.proc.0.kill()?;
    agent.proc.0.wait()?;
    assert!(call.await?.is_err(), "the call fails with the agent gone");
    let s3c = s3_client(&s3);
    assert!(
        keys(&s3c, "archives").await.is_empty(),
        "no object may appear"
    );
    let head = s3c
        .head_object()
        .bucket("archives")
        .key("big.zip")
        .send()
        .await;
    assert!(head.is_err(), "nothing under the key");
    Ok(())
}

#[tokio::test]
async fn sigterm_during_upload_finishes_it() -> anyhow::Result<()> {
    let s3 = tests::S3Server::start().await?;
    s3.create_bucket("archives").await?;
    let tmp = tempfile::tempdir()?;
    make_big(tmp.path(), 48, 1 << 20);
    let mut agent = tests::Agent::start(tmp.path(), &s3.env()).await?;
    let call = upload_in_flight(&s3, &agent).await?;

    let status = std::process::Command::new("kill")
        .args(["-TERM", &agent.pid().to_string()])
        .status()?;
    assert!(status.success());
    let summary = call.await?.expect("the upload completes after SIGTERM");
    assert_eq!(summary.files, 48);
    let exit = tests::eventually(Duration::from_secs(25), "the agent to exit", || {
        let st = agent.proc.0.try_wait().ok().flatten();
        async move { st }
    })
    .await?;
    assert!(exit.success(), "exit status {exit:?}");

    let s3c = s3_client(&s3);
    let object = get(&s3c, "archives", "big.zip").await;
    assert_eq!(object.len() as u64, summary.size);
    assert_eq!(hex::encode(sha2::Sha256::digest(&object)), summary.sha256);
    let archive = zip::ZipArchive::new(Cursor::new(&object))?;
    assert_eq!(archive.len(), 48 + 8, "48 files in 8 directories");
    Ok(())
}

#[tokio::test]
async fn cancelled_upload_is_aborted() -> anyhow::Result<()> {
    let s3 = tests::S3Server::start().await?;
    s3.create_bucket("archives").await?;
    let tmp = tempfile::tempdir()?;
    make_big(tmp.path(), 48, 1 << 20);
    let agent = tests::Agent::start(tmp.path(), &s3.env()).await?;
    let call = upload_in_flight(&s3, &agent).await?;

    // The caller goes away: the agent aborts the multipart upload.
    call.abort();
    let s3c = s3_client(&s3);
    tests::eventually(
        Duration::from_secs(30),
        "the multipart upload to be aborted",
        || {
            let s3c = s3c.clone();
            async move {
                let out = s3c
                    .list_multipart_uploads()
                    .bucket("archives")
                    .send()
                    .await
                    .ok()?;
                out.uploads().is_empty().then_some(())
            }
        },
    )
    .await?;
    assert!(
        keys(&s3c, "archives").await.is_empty(),
        "no object may appear"
    );
    // The agent is still serving.
    let mut client = ArchiveClient::new(agent.channel().await?);
    let err = client
        .upload(agent.req(UploadArchiveRequest {
            options: None,
            location: None,
        }))
        .await
        .expect_err("no location");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    Ok(())
}
