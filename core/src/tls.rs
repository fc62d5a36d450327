//! TLS for the worker API (the `tls` feature). The master makes a certificate
//! authority of its own when it starts (its key never leaves the process and is
//! dropped once it has signed), and a server certificate for the address it
//! listens on. The CA's certificate goes into `master.json` in the job's state,
//! which only the job's principals can read; workers and the CLI trust that CA
//! and nothing else (no system roots), so a worker talks only to its own job's
//! master, and the job token never crosses the network in clear.
//!
//! In `mayfly-core`'s flow (`core/tests/flow.rs` checks it) it must not import `api` or
//! anything above, nor its peers `ledger` and `build`; like its crate, it must not import
//! `mayfly-ops` or the binary.

use std::net::IpAddr;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType};

/// The master's side: the CA to publish and the acceptor for connections.
pub struct MasterTls {
    /// The job's CA certificate (PEM), for `master.json`.
    pub ca_pem: String,
    /// Accepts TLS connections with the server certificate.
    pub acceptor: tokio_rustls::TlsAcceptor,
}

impl std::fmt::Debug for MasterTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterTls").finish_non_exhaustive()
    }
}

/// Why the job's TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A key or a certificate could not be made.
    #[error("making the job's TLS certificate ({what}): {source}")]
    Certificate {
        /// Which: the CA, its key, the server's certificate or key.
        what: &'static str,
        /// The cause.
        source: rcgen::Error,
    },
    /// rustls refused the server's configuration.
    #[error("the job's TLS certificate: {0}")]
    Server(#[source] rustls::Error),
    /// The CA certificate a job's `master.json` holds is not one.
    #[error("the job's CA certificate in master.json: {0}")]
    Ca(#[source] ureq::Error),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A fresh CA for job `job`, and a server certificate for `ip` signed by it.
pub fn master_tls(job: &str, ip: IpAddr) -> Result<MasterTls, TlsError> {
    let e = |what: &'static str| move |source| TlsError::Certificate { what, source };
    let ca_key = KeyPair::generate().map_err(e("CA key"))?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(e("CA"))?;
    ca.distinguished_name.push(DnType::CommonName, format!("mayfly job {job} CA"));
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let ca_cert = ca.self_signed(&ca_key).map_err(e("CA"))?;

    let key = KeyPair::generate().map_err(e("server key"))?;
    let mut server = CertificateParams::new(Vec::<String>::new()).map_err(e("server"))?;
    server.distinguished_name.push(DnType::CommonName, format!("mayfly job {job} master"));
    server.subject_alt_names = vec![SanType::IpAddress(ip)];
    let server_cert = server.signed_by(&key, &ca_cert, &ca_key).map_err(e("server"))?;
    // The CA's key goes out of scope here: nothing else can ever be signed.

    let chain = vec![server_cert.der().clone()];
    let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Server)?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(TlsError::Server)?;
    Ok(MasterTls { ca_pem: ca_cert.pem(), acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)) })
}

/// Serves `app` over TLS on `listener` until `stop` says so; then it accepts
/// no more connections and ends the open ones (their tasks are this
/// future's: they end with it).
pub async fn serve(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    app: axum::Router,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        // Finished connections leave the set as they go.
        while connections.try_join_next().is_some() {}
        let tcp = tokio::select! {
            // Only ever told to stop (or its sender gone): either ends it.
            _ = stop.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of file descriptors, say: wait, do not spin.
                    mayfly_data::nodelog::line("WARN", "master", format_args!("accepting a connection: {e}"));
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (acceptor, app) = (acceptor.clone(), app.clone());
        connections.spawn(async move {
            // A failed or stalled handshake (a client without the job's CA, plain
            // HTTP, a silent peer) ends that connection only.
            let handshake = tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp));
            let Ok(Ok(tls)) = handshake.await else { return };
            let service = hyper_util::service::TowerToHyperService::new(app);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
        });
    }
}

/// The client's TLS settings: trust the job's CA (PEM) and nothing else.
pub fn client_config(ca_pem: &str) -> Result<ureq::tls::TlsConfig, TlsError> {
    let ca = ureq::tls::Certificate::from_pem(ca_pem.as_bytes()).map_err(TlsError::Ca)?;
    Ok(ureq::tls::TlsConfig::builder()
        .provider(ureq::tls::TlsProvider::Rustls)
        .root_certs(ureq::tls::RootCerts::Specific(Arc::new(vec![ca])))
        .build())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn told_to_stop_it_closes_its_listener_and_the_connections_it_holds() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tls = master_tls("j", addr.ip()).unwrap();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let server = tokio::spawn(serve(listener, tls.acceptor, axum::Router::new(), stopped));
        // A connection that has not finished its handshake: the server holds it
        // (for up to 10 s) in a task of its own.
        let open = tokio::net::TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(2), server).await.expect("serve returns when told").unwrap();
        // That connection is closed by the server, not left open until its handshake times out.
        let closed = tokio::time::timeout(Duration::from_secs(2), async {
            let mut buf = [0u8; 16];
            loop {
                open.readable().await.unwrap();
                match open.try_read(&mut buf) {
                    Ok(0) => return,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(_) => return,
                    Ok(_) => continue,
                }
            }
        });
        closed.await.expect("the open connection was closed");
        assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "still listening");
    }
}
