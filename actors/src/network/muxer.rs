//! The stream muxer of lsync's connections: rust-yamux 0.14 (the one libp2p 0.57's
//! `libp2p::yamux` wraps), configured so that a peer writing yamux frames as large as the window
//! we grant never writes a frame we refuse (docs/protocol.md, "Framing").
//!
//! Why not `libp2p::yamux::Config`: rust-yamux refuses any data frame whose body is over 1 MiB
//! (`MAX_FRAME_BODY_LEN` in its `frame/io.rs`, a constant; the connection fails with
//! `FrameTooLarge` and every stream on it dies), while the receive window it grants a stream
//! starts at 256 KiB and is auto-tuned upwards up to the connection's limit (1 GiB by default).
//! A rust-yamux sender splits its writes into 16 KiB frames, but other implementations (e.g.
//! js-libp2p's) write a frame as large as the credit they hold, so a 4–16 MiB request over a
//! fast link closed the whole connection. libp2p-yamux 0.48 exposes only the number of streams,
//! so this module builds the same muxer (the adapter below follows libp2p-yamux 0.48's, MIT)
//! with a connection receive window of `streams × 256 KiB + 768 KiB`: rust-yamux keeps every
//! stream's window within `256 KiB + (limit − streams × 256 KiB)`, i.e. at most
//! [`MAX_YAMUX_FRAME`], so no peer that honours its credit can send a frame over 1 MiB. A frame
//! limit (`max_frame`, 16 MiB) is unaffected: a request is carried by as many yamux frames as
//! needed.

use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut};
use std::iter;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use futures::prelude::*;
use futures::ready;
use libp2p::core::muxing::{StreamMuxer, StreamMuxerEvent};
use libp2p::core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade, UpgradeInfo};

/// The largest yamux data frame rust-yamux 0.14 accepts (its `MAX_FRAME_BODY_LEN`).
pub const MAX_YAMUX_FRAME: usize = 1 << 20;

/// The window yamux grants a new stream (its `DEFAULT_CREDIT`, the spec's 256 KiB).
const STREAM_CREDIT: usize = yamux::DEFAULT_CREDIT as usize;

/// Streams per connection (rust-yamux's default).
const MAX_STREAMS: usize = 512;

/// How many inbound streams to buffer before resetting new ones (rust-yamux's ack backlog).
const MAX_BUFFERED_INBOUND_STREAMS: usize = 256;

/// The muxer upgrade of lsync's transport: `/yamux/1.0.0`, with a receive window that never
/// lets a stream's credit exceed [`MAX_YAMUX_FRAME`].
#[derive(Debug, Clone)]
pub struct Config(yamux::Config);

impl Default for Config {
    fn default() -> Self {
        Self::with_split_send_size(16 << 10)
    }
}

impl Config {
    /// lsync's configuration, writing data frames of at most `split_send_size` bytes (rust-yamux
    /// writes 16 KiB; a test peer writes larger ones, as other implementations do).
    pub fn with_split_send_size(split_send_size: usize) -> Self {
        let mut c = yamux::Config::default();
        c.set_max_num_streams(MAX_STREAMS);
        c.set_max_connection_receive_window(Some(connection_window(MAX_STREAMS)));
        c.set_split_send_size(split_send_size);
        Self(c)
    }
}

/// The connection receive window that keeps every stream's window within
/// [`MAX_YAMUX_FRAME`]: each of `streams` gets its 256 KiB, and what is left lets one stream
/// grow to 1 MiB.
pub const fn connection_window(streams: usize) -> usize {
    streams * STREAM_CREDIT + (MAX_YAMUX_FRAME - STREAM_CREDIT)
}

impl UpgradeInfo for Config {
    type Info = &'static str;
    type InfoIter = iter::Once<Self::Info>;

    fn protocol_info(&self) -> Self::InfoIter {
        iter::once("/yamux/1.0.0")
    }
}

impl<C> InboundConnectionUpgrade<C> for Config
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = Muxer<C>;
    type Error = io::Error;
    type Future = future::Ready<Result<Self::Output, Self::Error>>;

    fn upgrade_inbound(self, io: C, _: Self::Info) -> Self::Future {
        future::ready(Ok(Muxer::new(yamux::Connection::new(io, self.0, yamux::Mode::Server))))
    }
}

impl<C> OutboundConnectionUpgrade<C> for Config
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = Muxer<C>;
    type Error = io::Error;
    type Future = future::Ready<Result<Self::Output, Self::Error>>;

    fn upgrade_outbound(self, io: C, _: Self::Info) -> Self::Future {
        future::ready(Ok(Muxer::new(yamux::Connection::new(io, self.0, yamux::Mode::Client))))
    }
}

/// A yamux connection as a libp2p [`StreamMuxer`].
#[derive(Debug)]
pub struct Muxer<C> {
    connection: yamux::Connection<C>,
    /// Inbound streams accepted while [`StreamMuxer::poll`] ran (yamux only makes progress
    /// through `poll_next_inbound`), handed out by `poll_inbound`; at most
    /// [`MAX_BUFFERED_INBOUND_STREAMS`], further ones are dropped (reset).
    inbound: VecDeque<Stream>,
    inbound_waker: Option<Waker>,
}

impl<C> Muxer<C>
where
    C: AsyncRead + AsyncWrite + Unpin + 'static,
{
    fn new(connection: yamux::Connection<C>) -> Self {
        Self { connection, inbound: VecDeque::new(), inbound_waker: None }
    }

    fn poll_inner(&mut self, cx: &mut Context<'_>) -> Poll<Result<Stream, Error>> {
        let stream = ready!(self.connection.poll_next_inbound(cx))
            .ok_or(Error(yamux::ConnectionError::Closed))?
            .map_err(Error)?;
        Poll::Ready(Ok(Stream(stream)))
    }
}

impl<C> StreamMuxer for Muxer<C>
where
    C: AsyncRead + AsyncWrite + Unpin + 'static,
{
    type Substream = Stream;
    type Error = Error;

    fn poll_inbound(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        if let Some(stream) = self.inbound.pop_front() {
            return Poll::Ready(Ok(stream));
        }
        if let Poll::Ready(res) = self.poll_inner(cx) {
            return Poll::Ready(res);
        }
        self.inbound_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    fn poll_outbound(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        let stream = ready!(self.connection.poll_new_outbound(cx)).map_err(Error)?;
        Poll::Ready(Ok(Stream(stream)))
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.connection.poll_close(cx).map_err(Error)
    }

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<StreamMuxerEvent, Self::Error>> {
        let this = self.get_mut();
        let stream = ready!(this.poll_inner(cx))?;
        if this.inbound.len() >= MAX_BUFFERED_INBOUND_STREAMS {
            tracing::warn!("dropping an inbound yamux stream: too many buffered");
            drop(stream);
        } else {
            this.inbound.push_back(stream);
            if let Some(waker) = this.inbound_waker.take() {
                waker.wake();
            }
        }
        // let other code run, then poll again
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// A yamux stream.
#[derive(Debug)]
pub struct Stream(yamux::Stream);

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }

    fn poll_read_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_read_vectored(cx, bufs)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_close(cx)
    }
}

/// A yamux connection failure.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct Error(yamux::ConnectionError);

impl From<Error> for io::Error {
    fn from(err: Error) -> Self {
        match err.0 {
            yamux::ConnectionError::Io(e) => e,
            e => io::Error::other(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_stream_window_can_exceed_the_largest_frame_yamux_accepts() {
        // rust-yamux's own bound: a stream's window exceeds 256 KiB by at most the connection
        // limit minus every stream's 256 KiB
        let most = STREAM_CREDIT + (connection_window(MAX_STREAMS) - MAX_STREAMS * STREAM_CREDIT);
        assert_eq!(most, MAX_YAMUX_FRAME);
        // and the limit is one rust-yamux accepts (it asserts >= streams × 256 KiB)
        let _ = Config::default();
    }
}
