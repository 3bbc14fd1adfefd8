//! gRPC over unix sockets: a tonic channel that dials a socket path.

use std::path::Path;

use tonic::transport::{Channel, Endpoint};

/// Connects a tonic channel to the unix socket at `path` (the URI tonic needs is a
/// placeholder; every connection dials the socket).
pub async fn channel(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path = path.to_path_buf();
    Endpoint::from_static("http://unix.socket")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                tokio::net::UnixStream::connect(path)
                    .await
                    .map(hyper_util::rt::TokioIo::new)
            }
        }))
        .await
}
