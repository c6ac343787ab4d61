//! TLS (rustls) for the gateway port, the admin API and the optional TLS connection port (the
//! same MPush protocol inside TLS; the plain connection port stays as it is for MPush's SDKs).
//!
//! The certificate chain and key come from PEM files (`tls.cert_file`, `tls.key_file`) and are
//! read again on SIGHUP: connections accepted after a successful reload use the new pair, those
//! already open keep theirs, and a reload that fails (missing file, bad PEM, key not matching)
//! is logged and leaves the old pair in place. Every TLS handshake has a deadline; one that
//! fails (wrong CA on the client, plaintext on a TLS port, a peer that goes quiet) closes that
//! connection alone and counts in `pushgate_tls_handshake_failures_total{port}`.
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// The server's certificate and key, reloadable.
#[derive(Debug)]
pub struct TlsFiles {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: RwLock<Arc<ServerConfig>>,
    handshake_timeout: Duration,
}

impl TlsFiles {
    /// Reads the PEM files; an error names the file and what is wrong with it.
    pub fn load(
        cert_file: &Path,
        key_file: &Path,
        handshake_timeout: Duration,
    ) -> anyhow::Result<Arc<Self>> {
        let config = server_config(cert_file, key_file)?;
        Ok(Arc::new(Self {
            cert_file: cert_file.to_owned(),
            key_file: key_file.to_owned(),
            current: RwLock::new(Arc::new(config)),
            handshake_timeout,
        }))
    }

    /// Reads the files again; on error the pair in use stays.
    pub fn reload(&self) -> anyhow::Result<()> {
        let config = server_config(&self.cert_file, &self.key_file)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
        Ok(())
    }

    fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }

    /// Runs the TLS handshake on `stream` within the deadline; a failure is counted for
    /// `port` and logged at debug level (it concerns one peer).
    pub async fn accept(
        &self,
        stream: TcpStream,
        port: &'static str,
    ) -> Option<TlsStream<TcpStream>> {
        let peer = stream.peer_addr().ok();
        let error = match tokio::time::timeout(
            self.handshake_timeout,
            self.acceptor().accept(stream),
        )
        .await
        {
            Ok(Ok(tls)) => return Some(tls),
            Ok(Err(error)) => error.to_string(),
            Err(_) => "no TLS handshake within the deadline".to_owned(),
        };
        crate::metrics::tls_handshake_failed(port);
        tracing::debug!(?peer, port, %error, "TLS handshake failed");
        None
    }
}

/// Reads the chain and key and builds the server side of rustls (TLS 1.2 and 1.3).
fn server_config(cert_file: &Path, key_file: &Path) -> anyhow::Result<ServerConfig> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| anyhow::anyhow!("tls.cert_file {}: {e}", cert_file.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "tls.cert_file {}: no CERTIFICATE in it",
        cert_file.display()
    );
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| anyhow::anyhow!("tls.key_file {}: {e}", key_file.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow::anyhow!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            anyhow::anyhow!(
                "tls.cert_file / tls.key_file ({} / {}): {e}",
                cert_file.display(),
                key_file.display()
            )
        })
}

/// Reloads `files` on every SIGHUP until the task is aborted.
pub fn reload_on_sighup(files: Arc<TlsFiles>) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups = signal(SignalKind::hangup())?;
    Ok(tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            match files.reload() {
                Ok(()) => tracing::info!(
                    cert = %files.cert_file.display(),
                    "TLS certificate and key reloaded"
                ),
                Err(error) => tracing::error!(
                    %error,
                    "TLS reload failed; the previous certificate stays in use"
                ),
            }
        }
    }))
}

/// Most connections of one TLS listener whose handshake is done but which its HTTP server has not taken
/// yet.
const TLS_READY_QUEUE: usize = 64;

/// An HTTP listener over TLS (the admin API, the WebSocket port): handshakes run in their own
/// tasks (a slow peer delays no other), and the HTTP server takes the connections whose
/// handshake succeeded.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    acceptor_task: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    /// Serves TLS on `listener` with `files`; failed handshakes count under `port` (the
    /// metric's label: `admin`, `ws`).
    pub fn new(
        listener: TcpListener,
        files: Arc<TlsFiles>,
        port: &'static str,
    ) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(TLS_READY_QUEUE);
        let acceptor_task = tokio::spawn(async move {
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, port, "TLS accept failed; pausing");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let files = files.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    if let Some(tls) = files.accept(stream, port).await {
                        let _ = tx.send((tls, peer)).await;
                    }
                });
            }
        });
        Ok(Self {
            ready,
            local,
            acceptor_task,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor_task.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(ready) => ready,
            // The acceptor task only ends when aborted, with the listener: never reached while
            // the server runs.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert_file = dir.join(format!("{name}.crt"));
        let key_file = dir.join(format!("{name}.key"));
        std::fs::write(&cert_file, cert.cert.pem()).unwrap();
        std::fs::write(&key_file, cert.key_pair.serialize_pem()).unwrap();
        (cert_file, key_file)
    }

    #[test]
    fn pem_files_load_reload_and_name_what_is_wrong() {
        let dir = std::env::temp_dir().join(format!("pushgate-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = write_pair(&dir, "a");
        let files = TlsFiles::load(&cert, &key, Duration::from_secs(1)).unwrap();
        let before = files.current.read().unwrap().clone();
        files.reload().unwrap();
        assert!(!Arc::ptr_eq(&before, &files.current.read().unwrap()));
        // A key that does not match the certificate: the reload fails, the old pair stays.
        let (_, other_key) = write_pair(&dir, "b");
        std::fs::copy(&other_key, &key).unwrap();
        let error = files.reload().unwrap_err().to_string();
        assert!(error.contains("tls.cert_file"), "{error}");
        let missing = TlsFiles::load(&dir.join("nope.crt"), &key, Duration::from_secs(1));
        assert!(missing.unwrap_err().to_string().contains("nope.crt"));
        std::fs::write(&cert, "not pem").unwrap();
        let empty = TlsFiles::load(&cert, &other_key, Duration::from_secs(1));
        assert!(empty.unwrap_err().to_string().contains("no CERTIFICATE"));
        std::fs::remove_dir_all(&dir).ok();
    }
}
