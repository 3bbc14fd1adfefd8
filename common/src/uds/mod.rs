//! gRPC over unix sockets: a tonic channel that dials a socket path, and the listener
//! side, [`incoming`], which wraps each accepted connection in [`AuthorityFix`] so
//! grpc-core clients (py-spiffe, grpcio, C++) are served (see [`authority`]).

pub mod authority;
mod hpack;
mod huffman;

use std::path::Path;

use tokio::net::{UnixListener, UnixStream};
use tokio_stream::{Stream, StreamExt as _};
use tonic::transport::{Channel, Endpoint};

pub use authority::{AuthorityFix, RewriteError};
pub use hpack::HpackError;
pub use huffman::HuffmanError;

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

/// The connections accepted on `listener`, each wrapped in [`AuthorityFix`], for
/// tonic's `serve_with_incoming(_shutdown)`. Every gRPC server of Warden's on a unix
/// socket uses it.
pub fn incoming(
    listener: UnixListener,
) -> impl Stream<Item = std::io::Result<AuthorityFix<UnixStream>>> {
    tokio_stream::wrappers::UnixListenerStream::new(listener).map(|r| r.map(AuthorityFix::new))
}
