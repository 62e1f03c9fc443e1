//! Port-forward access, for a gateway outside the cluster (a laptop against
//! minikube): one loopback listener per (namespace, component, port), each
//! accepted connection carried to a ready pod of that component through the
//! API server's port-forward (`pods/portforward`, WebSocket). Callers then
//! dial `127.0.0.1:{local}` exactly as they would dial the in-cluster Service.
//! Opt-in (`--k8s-agent-access port-forward`), with its own RBAC
//! (`k8s/port-forward/`); in the cluster the gateway dials
//! Services and pods directly and needs no `pods/portforward`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::pods::{Kube, ready_pod, running_pod};
use crate::error::{Error, Result};

/// (namespace, label selector, port) → the loopback listener and its stop switch.
type Listeners = HashMap<(String, String, u16), (SocketAddr, CancellationToken)>;

/// The listeners of this gateway.
#[derive(Default)]
pub(crate) struct Forwards {
    listeners: Mutex<Listeners>,
}

impl Forwards {
    /// The loopback address that forwards to `port` of a ready pod matching
    /// `selector` in `ns` (of a running one, ready or not, with
    /// `ready_only` false: a dev pod's agent); made on first use.
    pub(crate) async fn local(
        self: &Arc<Self>,
        kube: &Kube,
        ns: &str,
        selector: &str,
        port: u16,
        ready_only: bool,
    ) -> Result<SocketAddr> {
        let key = (ns.to_owned(), selector.to_owned(), port);
        if let Some((addr, _)) = self.lock().get(&key) {
            return Ok(*addr);
        }
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let cancel = CancellationToken::new();
        {
            let mut map = self.lock();
            // Another caller may have raced us; keep theirs, drop ours.
            if let Some((existing, _)) = map.get(&key) {
                return Ok(*existing);
            }
            map.insert(key.clone(), (addr, cancel.clone()));
        }
        let pods: Api<Pod> = Api::namespaced(kube.client.clone(), ns);
        let kube = kube.clone();
        let selector = selector.to_owned();
        tokio::spawn(async move {
            loop {
                let conn = tokio::select! {
                    () = cancel.cancelled() => return,
                    conn = listener.accept() => conn,
                };
                match conn {
                    Ok((stream, _)) => {
                        let (kube, pods, selector) = (kube.clone(), pods.clone(), selector.clone());
                        tokio::spawn(async move {
                            if let Err(error) =
                                carry(&kube, &pods, &selector, port, ready_only, stream).await
                            {
                                tracing::warn!(%error, selector, port, "port-forward connection failed");
                            }
                        });
                    }
                    Err(error) => {
                        tracing::warn!(%error, "port-forward listener failed");
                        return;
                    }
                }
            }
        });
        tracing::debug!(ns, port, %addr, "port-forward listener");
        Ok(addr)
    }

    /// Closes every listener of a namespace (after teardown or stop).
    pub(crate) fn forget(&self, ns: &str, selector: Option<&str>) {
        self.lock().retain(|(n, s, _), (_, cancel)| {
            let hit = n == ns && selector.is_none_or(|sel| sel == s);
            if hit {
                cancel.cancel();
            }
            !hit
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Listeners> {
        // The map stays consistent under a panic (single inserts and removals).
        self.listeners.lock().unwrap_or_else(|p| p.into_inner())
    }
}

async fn carry(
    kube: &Kube,
    pods: &Api<Pod>,
    selector: &str,
    port: u16,
    ready_only: bool,
    mut stream: TcpStream,
) -> Result<()> {
    let pod = if ready_only {
        ready_pod(kube, pods, selector).await?
    } else {
        running_pod(kube, pods, selector).await?
    };
    let mut forwarder = kube
        .call(
            &format!("port-forward {pod}:{port}"),
            pods.portforward(&pod, &[port]),
        )
        .await?;
    let mut upstream = forwarder
        .take_stream(port)
        .ok_or_else(|| Error::internal("port-forward gave no stream"))?;
    tokio::io::copy_bidirectional(&mut stream, &mut upstream).await?;
    drop(upstream);
    forwarder
        .join()
        .await
        .map_err(|e| Error::Unavailable(format!("port-forward ended: {e}")))?;
    Ok(())
}
