//! Framing: a u32 big-endian length, then the message as MessagePack with named fields.
//!
//! The length is checked against [`SyncCodec::max_frame`] before anything is read or
//! allocated; the body is read through `take(len)` into a buffer that grows with the bytes that
//! actually arrive, so a peer announcing a large frame and sending little costs nothing.
//! Every failure is an `io::Error` (`InvalidData` for an oversized or undecodable frame, or a
//! term out of range; `UnexpectedEof` for a truncated one), never a panic.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use serde::de::{Deserialize, Deserializer, Visitor};

use crate::message::SyncMessage;

/// Default upper bound of a frame body: 16 MiB.
pub const DEFAULT_MAX_FRAME: usize = 16 * 1024 * 1024;

/// Initial capacity of a read buffer; it grows only as bytes arrive.
const INITIAL_READ_CAPACITY: usize = 8 * 1024;

/// The request–response codec of the sync protocol.
#[derive(Debug, Clone, Copy)]
pub struct SyncCodec {
    max_frame: usize,
}

impl Default for SyncCodec {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME)
    }
}

impl SyncCodec {
    /// A codec refusing frames whose body is longer than `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        Self { max_frame: max_frame.min(u32::MAX as usize) }
    }

    /// The configured limit of a frame body, in bytes.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }
}

/// Encodes `msg` as one frame (length prefix included).
///
/// Nothing is written anywhere: a message that cannot be encoded, or whose body would exceed
/// `max_frame` bytes (or `u32::MAX`, whatever `max_frame` says), is an `InvalidData` error.
pub fn encode_frame(msg: &SyncMessage, max_frame: usize) -> io::Result<Vec<u8>> {
    // The prefix is a u32: a larger limit must not let `len as u32` below wrap around.
    let max_frame = max_frame.min(u32::MAX as usize);
    let mut buf = vec![0u8; 4];
    rmp_serde::encode::write_named(&mut buf, msg)
        .map_err(|e| invalid(format!("encode failed: {e}")))?;
    let len = buf.len() - 4;
    if len > max_frame {
        return Err(invalid(format!(
            "frame of {len} bytes exceeds the limit of {max_frame} bytes"
        )));
    }
    buf[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(buf)
}

/// Decodes a frame body (without its length prefix).
///
/// The body must be exactly one MessagePack value: bytes left over after the message are
/// refused with `InvalidData` like any other malformed frame; so is a message carrying a term
/// above [`crate::MAX_TERM`] ([`SyncMessage::check_terms`], docs/protocol.md §6): such a term
/// could not be stored, and adopting it would leave the library without a leader for good.
pub fn decode_body(body: &[u8]) -> io::Result<SyncMessage> {
    let mut de = rmp_serde::Deserializer::from_read_ref(body);
    let msg = SyncMessage::deserialize(&mut de)
        .map_err(|e| invalid(format!("undecodable frame: {e}")))?;
    // The borrowing reader does not expose its position, so probe for one more value: failing
    // to read even its first byte (the marker) is the proof that nothing is left. `EndOfFrame`
    // refuses whatever it is shown before looking inside it, so a trailing container header
    // never makes the probe read on.
    match (&mut de).deserialize_any(EndOfFrame) {
        Err(rmp_serde::decode::Error::InvalidMarkerRead(e))
            if e.kind() == io::ErrorKind::UnexpectedEof =>
        {
            msg.check_terms().map_err(invalid)?;
            Ok(msg)
        }
        _ => Err(invalid(format!("trailing bytes after the {} message", msg.kind()))),
    }
}

/// A visitor that accepts nothing (every `visit_*` keeps its refusing default).
struct EndOfFrame;

impl<'de> Visitor<'de> for EndOfFrame {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the end of the frame")
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Reads one frame from `io` and decodes it.
pub async fn read_frame<T>(io: &mut T, max_frame: usize) -> io::Result<SyncMessage>
where
    T: AsyncRead + Unpin + Send,
{
    let mut prefix = [0u8; 4];
    io.read_exact(&mut prefix).await?;
    let len = u32::from_be_bytes(prefix) as usize;
    if len > max_frame {
        return Err(invalid(format!(
            "frame of {len} bytes exceeds the limit of {max_frame} bytes"
        )));
    }
    let mut body = Vec::with_capacity(len.min(INITIAL_READ_CAPACITY));
    (&mut *io).take(len as u64).read_to_end(&mut body).await?;
    if body.len() < len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("truncated frame: {} of {len} bytes", body.len()),
        ));
    }
    decode_body(&body)
}

/// Encodes `msg` completely, then writes it (so nothing borrowed is held across the write).
pub async fn write_frame<T>(io: &mut T, msg: &SyncMessage, max_frame: usize) -> io::Result<()>
where
    T: AsyncWrite + Unpin + Send,
{
    let buf = encode_frame(msg, max_frame)?;
    io.write_all(&buf).await?;
    io.flush().await
}

impl libp2p::request_response::Codec for SyncCodec {
    type Protocol = StreamProtocol;
    type Request = SyncMessage;
    type Response = SyncMessage;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<SyncMessage>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io, self.max_frame).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<SyncMessage>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io, self.max_frame).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: SyncMessage,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let buf = encode_frame(&req, self.max_frame)?;
        drop(req);
        io.write_all(&buf).await?;
        io.flush().await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: SyncMessage,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let buf = encode_frame(&res, self.max_frame)?;
        drop(res);
        io.write_all(&buf).await?;
        io.flush().await
    }
}
