//! rustls's process-wide crypto provider, picked once for every TLS client
//! of the gateway (kube, PostgreSQL, S3): ring.

/// Installs ring as rustls's process-wide provider. rustls picks one itself
/// only when exactly one is compiled in, and a dependency's features can add
/// another (aws-lc), after which a client built without an explicit provider
/// would panic. Idempotent.
pub fn install_provider() {
    // An error only says a provider is already installed, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
