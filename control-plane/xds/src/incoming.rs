//! Serving connections the caller accepts itself.
//!
//! tonic's own TLS ([`XdsServer::serve_with`]) fixes the serving
//! certificate for the life of the server. A control plane whose
//! certificate comes from its own CA with a TTL must rotate it without a
//! restart and without dropping the proxies connected meanwhile: it runs
//! the TLS handshakes itself (e.g. rustls with a `ResolvesServerCert` that
//! swaps certificates, so each new handshake gets the current one while
//! established connections keep theirs) and hands the connections here.
use std::future::Future;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_stream::Stream;
use tonic::service::Routes;
use tonic::transport::server::Connected;

use crate::generator::BoxError;
use crate::server::XdsServer;

impl<S: Send + Sync + 'static> XdsServer<S> {
    /// Serves `routes` (usually [`XdsServer::routes`], with other gRPC
    /// services added, as the CA on 15012) with the server's HTTP/2
    /// settings on `incoming` connections until `shutdown` completes, then
    /// ends every xDS stream.
    ///
    /// The connections are used as they are: TLS must be done already.
    /// For client certificates to reach the identity checks
    /// ([`crate::identity`], and any service reading
    /// `Request::peer_certs`), they must be
    /// `tokio_rustls::server::TlsStream<tokio::net::TcpStream>` (tonic's
    /// `TlsConnectInfo<TcpConnectInfo>`); other streams count as plaintext.
    pub async fn serve_incoming<I, IO, IE>(
        &self,
        incoming: I,
        routes: Routes,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), tonic::transport::Error>
    where
        I: Stream<Item = Result<IO, IE>>,
        IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
        IE: Into<BoxError>,
    {
        let options = self.options();
        let server = self.clone();
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(options.keepalive_interval))
            .http2_keepalive_timeout(Some(options.keepalive_timeout))
            .max_concurrent_streams(options.max_concurrent_streams)
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, async move {
                shutdown.await;
                server.disconnect_all();
            })
            .await
    }
}
