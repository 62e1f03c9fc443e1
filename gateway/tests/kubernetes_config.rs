//! Starting the gateway with `--runtime kubernetes`: a bad setting of the
//! runtime, a folder archive store not declared shared by the replicas, or
//! no cluster to talk to, stops it with one clear line before it serves
//! anything.

use std::process::Command;

fn gateway(args: &[&str], envs: &[(&str, &str)]) -> (i32, String) {
    let data = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
    cmd.args([
        "--runtime",
        "kubernetes",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
    ])
    .arg(data.path());
    // A folder archive store on Kubernetes must be declared shared; the
    // tests of other settings do, unless they set it themselves.
    if !args.contains(&"--archive-shared") {
        cmd.args(["--archive-shared", "true"]);
    }
    cmd.args(args)
        // No kubeconfig and no in-cluster service account: nothing to reach.
        .env("KUBECONFIG", data.path().join("no-kubeconfig"))
        .env("HOME", data.path())
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .env("RUST_LOG", "off");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run gateway");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_bad_runtime_setting_is_one_line_naming_the_flag() {
    let (code, err) = gateway(&["--k8s-storage-size", "5GB"], &[]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("--k8s-storage-size") && err.contains("5GB"),
        "{err}"
    );

    let (code, err) = gateway(&[], &[("GATEWAY_K8S_NAMESPACE_PREFIX", "Proj_")]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--k8s-namespace-prefix"), "{err}");

    let (code, err) = gateway(&["--k8s-access-mode", "ReadWriteSometimes"], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("ReadWriteSometimes"), "{err}");
}

#[test]
fn no_cluster_to_talk_to_fails_at_start_up_saying_so() {
    let (code, err) = gateway(&[], &[]);
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains("cannot configure the kubernetes client"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_folder_store_not_shared_by_the_replicas_is_refused() {
    let (code, err) = gateway(&["--archive-shared", "false"], &[]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("--archive-shared") && err.contains("ReadWriteMany"),
        "{err}"
    );
    // An S3 store is shared by nature: the start goes on to the cluster.
    let (code, err) = gateway(
        &[
            "--archive-shared",
            "false",
            "--archive",
            "s3://bucket/prefix",
        ],
        &[],
    );
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains("cannot configure the kubernetes client"),
        "{err}"
    );
    // The object route's address must be an http(s) URL.
    let (code, err) = gateway(&["--objects-base-url", "gateway:8080"], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--objects-base-url"), "{err}");
}
