//! The agent starts, answers health checks, and refuses calls without its token.

use proto::v1::filesystem_client::FilesystemClient;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

#[tokio::test]
async fn health_and_token() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let agent = tests::Agent::start(root.path(), &[]).await?;
    let ch = agent.channel().await?;

    let resp = HealthClient::new(ch.clone())
        .check(HealthCheckRequest { service: String::new() })
        .await?;
    assert_eq!(resp.into_inner().status, 1, "SERVING");

    let mut fs = FilesystemClient::new(ch);
    let err = fs
        .stat(proto::v1::StatRequest { path: String::new() })
        .await
        .expect_err("no token");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let err = fs
        .stat(tests::authed(proto::v1::StatRequest { path: String::new() }, "wrong"))
        .await
        .expect_err("wrong token");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    Ok(())
}
