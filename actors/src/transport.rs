//! The seam between the sync actors and the network.
//!
//! Actors send requests through a [`Transport`]; the real one is the libp2p
//! [`NetworkHandle`](crate::network::NetworkHandle), tests substitute a scripted one.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use libp2p::PeerId;
use lsync_protocol::SyncMessage;

/// A boxed, sendable future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Why a request got no response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetworkError {
    /// The network task has stopped.
    #[error("network stopped")]
    Closed,
    /// The network's command queue is full; try again later.
    #[error("network busy")]
    Busy,
    /// The peer could not be dialed (no address, refused, not allowed).
    #[error("cannot reach peer: {0}")]
    Dial(String),
    /// No response within the request timeout.
    #[error("request timed out")]
    Timeout,
    /// The connection closed before the response arrived.
    #[error("connection closed")]
    ConnectionClosed,
    /// The peer does not speak the sync protocol.
    #[error("peer does not support the sync protocol")]
    UnsupportedProtocol,
    /// Any other I/O failure (including a response that could not be decoded).
    #[error("i/o error: {0}")]
    Io(String),
}

/// Sends one request to a peer and resolves to its one response.
pub trait Transport: Send + Sync + 'static {
    /// Sends `msg` to `peer`; the future resolves to the peer's response. The request leaves
    /// when `request` is called, not when the future is first polled: callers pipeline
    /// requests by holding the future while they do other work.
    fn request(
        &self,
        peer: PeerId,
        msg: SyncMessage,
    ) -> BoxFuture<Result<SyncMessage, NetworkError>>;
}

impl<T: Transport + ?Sized> Transport for Arc<T> {
    fn request(
        &self,
        peer: PeerId,
        msg: SyncMessage,
    ) -> BoxFuture<Result<SyncMessage, NetworkError>> {
        (**self).request(peer, msg)
    }
}
