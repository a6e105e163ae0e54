//! The codec the swarm runs: [`SyncCodec`] framing, with unreadable requests surfaced.
//!
//! libp2p's request-response handler drops an inbound stream whose request fails to decode and
//! logs it at debug level only, without the peer. [`NetworkCodec`] turns such a failure into a
//! [`WireRequest::Unreadable`] instead, so the event loop sees it with the peer, logs it, counts
//! it and answers `Error(BadRequest)` — the sender learns why instead of seeing a reset stream.
//! A request read is tagged with the protocol version of its stream
//! ([`version_of`]), which the event loop needs to know what the
//! peer speaks.

use std::io;

use futures::{AsyncRead, AsyncWrite};
use libp2p::request_response::Codec;
use libp2p::StreamProtocol;
use lsync_protocol::{SyncCodec, SyncMessage};

use super::version::version_of;

/// A request on the wire: one to send, or what the network read from an inbound stream.
#[derive(Debug)]
pub(super) enum WireRequest {
    /// A request to send (on whatever protocol its stream negotiated).
    Message(SyncMessage),
    /// A well-formed request read from a stream of protocol `version` (1 or 2).
    Received { message: SyncMessage, version: u32 },
    /// The bytes could not be read as a request: oversized, truncated or undecodable frame.
    Unreadable(io::Error),
}

/// [`SyncCodec`] with requests wrapped in [`WireRequest`].
#[derive(Debug, Clone, Copy)]
pub(super) struct NetworkCodec(pub(super) SyncCodec);

impl Codec for NetworkCodec {
    type Protocol = StreamProtocol;
    type Request = WireRequest;
    type Response = SyncMessage;

    async fn read_request<T>(
        &mut self,
        protocol: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<WireRequest>
    where
        T: AsyncRead + Unpin + Send,
    {
        Ok(match self.0.read_request(protocol, io).await {
            Ok(message) => WireRequest::Received { message, version: version_of(protocol) },
            Err(error) => WireRequest::Unreadable(error),
        })
    }

    async fn read_response<T>(
        &mut self,
        protocol: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<SyncMessage>
    where
        T: AsyncRead + Unpin + Send,
    {
        self.0.read_response(protocol, io).await
    }

    async fn write_request<T>(
        &mut self,
        protocol: &StreamProtocol,
        io: &mut T,
        request: WireRequest,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        match request {
            WireRequest::Message(message) => self.0.write_request(protocol, io, message).await,
            WireRequest::Received { .. } => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a received request is not sent on",
            )),
            WireRequest::Unreadable(error) => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cannot send an unreadable request: {error}"),
            )),
        }
    }

    async fn write_response<T>(
        &mut self,
        protocol: &StreamProtocol,
        io: &mut T,
        response: SyncMessage,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        self.0.write_response(protocol, io, response).await
    }
}
