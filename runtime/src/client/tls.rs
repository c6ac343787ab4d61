//! TLS for [`super::PushClient`] links to a gateway that serves TLS (`--gateway-tls`): the
//! certificate authorities trusted come from a PEM file, and the gateway's certificate must
//! name the server name given (by default the address connected to: its IP, or the host name a
//! cluster route names). pushgate's gateway token, when set, is the first frame inside TLS.
//!
//! Used by `pushgate push --tls-ca FILE`, by [`super::cluster::ClusterPushClient`] and by a
//! node forwarding a push to another node (`tls.gateway_ca_file`). The simulator has no TLS:
//! there [`GatewayTls::from_ca_file`] refuses.
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// A client-side stream: plain TCP or TLS over it.
pub(crate) trait ClientIo: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> ClientIo for T {}

/// How to reach a TLS gateway: the trusted CAs and the name its certificate must carry.
#[derive(Clone)]
pub struct GatewayTls {
    #[cfg(not(madsim))]
    connector: tokio_rustls::TlsConnector,
    /// The name checked against the certificate; `None`: the address connected to.
    server_name: Option<String>,
}

impl std::fmt::Debug for GatewayTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl GatewayTls {
    /// Trusts the certificates in the PEM file `ca_file` (a CA, or a self-signed gateway
    /// certificate); checks `server_name` when given, else the address connected to.
    #[cfg(not(madsim))]
    pub fn from_ca_file(ca_file: &Path, server_name: Option<&str>) -> anyhow::Result<Arc<Self>> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::CertificateDer;
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca_file)
            .and_then(|certs| certs.collect::<Result<_, _>>())
            .map_err(|e| anyhow::anyhow!("CA file {}: {e}", ca_file.display()))?;
        anyhow::ensure!(
            !certs.is_empty(),
            "CA file {}: no CERTIFICATE in it",
            ca_file.display()
        );
        let mut roots = rustls::RootCertStore::empty();
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| anyhow::anyhow!("CA file {}: {e}", ca_file.display()))?;
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow::anyhow!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        if let Some(name) = server_name {
            rustls::pki_types::ServerName::try_from(name.to_owned())
                .map_err(|e| anyhow::anyhow!("TLS server name {name:?}: {e}"))?;
        }
        Ok(Arc::new(Self {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            server_name: server_name.map(str::to_owned),
        }))
    }

    /// The simulator has no TLS.
    #[cfg(madsim)]
    pub fn from_ca_file(ca_file: &Path, _server_name: Option<&str>) -> anyhow::Result<Arc<Self>> {
        anyhow::bail!(
            "CA file {}: TLS is not available in the simulator",
            ca_file.display()
        )
    }

    /// The same trust, checking `name` unless a server name was given explicitly (a cluster
    /// route's host name, so a certificate for that name is accepted).
    // Under the simulator the rustls configuration is compiled out and the name is all there is.
    #[cfg_attr(madsim, allow(clippy::needless_update))]
    pub fn for_host(self: &Arc<Self>, name: &str) -> Arc<Self> {
        if self.server_name.is_some() || name.is_empty() {
            return self.clone();
        }
        Arc::new(Self {
            server_name: Some(name.to_owned()),
            ..(**self).clone()
        })
    }

    /// The TLS handshake over `tcp`, connected to `addr`.
    #[cfg(not(madsim))]
    pub(crate) async fn connect(
        &self,
        tcp: TcpStream,
        addr: SocketAddr,
    ) -> std::io::Result<Box<dyn ClientIo>> {
        use rustls::pki_types::ServerName;
        let name = match &self.server_name {
            Some(name) => ServerName::try_from(name.clone())
                .map_err(|e| std::io::Error::other(format!("TLS server name {name:?}: {e}")))?,
            None => ServerName::IpAddress(addr.ip().into()),
        };
        let stream = self.connector.connect(name, tcp).await?;
        Ok(Box::new(stream))
    }

    #[cfg(madsim)]
    pub(crate) async fn connect(
        &self,
        _tcp: TcpStream,
        _addr: SocketAddr,
    ) -> std::io::Result<Box<dyn ClientIo>> {
        Err(std::io::Error::other(
            "TLS is not available in the simulator",
        ))
    }
}
