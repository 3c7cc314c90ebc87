//! The gRPC service `tern.v1.SyncService`, written out rather than generated, for two
//! things the generated server cannot do:
//!
//! - send bytes encoded once for many agents: a stream yields [`Outgoing::Encoded`], a
//!   `ControllerMessage` already encoded (a Delta every view gains the same way is
//!   encoded once per revision and its bytes shared by every stream), or
//!   [`Outgoing::Message`], encoded as it is sent;
//! - keep the per-stream codec buffers small ([`BUFFER_BYTES`], against tonic's 8 KiB
//!   for each direction): with 10,000 agents these buffers were a quarter of the
//!   memory a connected agent costs. They grow for large messages (snapshot chunks)
//!   like any buffer.
//!
//! The wire format is the generated one's: same path, same messages.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{BufMut as _, Bytes};
use prost::Message as _;
use tern::proto;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::server::{Grpc, NamedService};
use tonic::{Request, Response, Status, Streaming};

use super::SyncApi;

/// A message to an agent: encoded when sent, or already encoded.
#[derive(Debug, Clone)]
pub enum Outgoing {
    Message(proto::ControllerMessage),
    /// The encoding of a `ControllerMessage`.
    Encoded(Bytes),
}

/// Initial size of the per-stream encode and decode buffers.
pub const BUFFER_BYTES: usize = 512;

/// Settle for yielding encoded messages to HTTP/2 at this many buffered bytes.
const YIELD_BYTES: usize = 32 * 1024;

fn buffers() -> BufferSettings {
    BufferSettings::new(BUFFER_BYTES, YIELD_BYTES)
}

#[derive(Debug, Clone, Copy, Default)]
struct SyncCodec;

#[derive(Debug)]
struct OutgoingEncoder;

impl Encoder for OutgoingEncoder {
    type Item = Outgoing;
    type Error = Status;

    fn encode(&mut self, item: Outgoing, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        match item {
            Outgoing::Message(m) => m
                .encode(dst)
                .map_err(|e| Status::internal(format!("encoding a message: {e}"))),
            Outgoing::Encoded(b) => {
                dst.put_slice(&b);
                Ok(())
            }
        }
    }

    fn buffer_settings(&self) -> BufferSettings {
        buffers()
    }
}

#[derive(Debug)]
struct AgentMessageDecoder;

impl Decoder for AgentMessageDecoder {
    type Item = proto::AgentMessage;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<proto::AgentMessage>, Status> {
        proto::AgentMessage::decode(src)
            .map(Some)
            .map_err(|e| Status::internal(format!("decoding an agent message: {e}")))
    }

    fn buffer_settings(&self) -> BufferSettings {
        buffers()
    }
}

impl Codec for SyncCodec {
    type Encode = Outgoing;
    type Decode = proto::AgentMessage;
    type Encoder = OutgoingEncoder;
    type Decoder = AgentMessageDecoder;

    fn encoder(&mut self) -> OutgoingEncoder {
        OutgoingEncoder
    }

    fn decoder(&mut self) -> AgentMessageDecoder {
        AgentMessageDecoder
    }
}

/// `tern.v1.SyncService` over a [`SyncApi`].
#[derive(Debug, Clone)]
pub struct SyncServer {
    api: Arc<SyncApi>,
    max_decoding_message_size: usize,
}

impl SyncServer {
    pub fn new(api: SyncApi, max_decoding_message_size: usize) -> Self {
        SyncServer {
            api: Arc::new(api),
            max_decoding_message_size,
        }
    }
}

impl NamedService for SyncServer {
    const NAME: &'static str = "tern.v1.SyncService";
}

/// The one method, as a tonic streaming service.
struct SyncMethod(Arc<SyncApi>);

impl tower::Service<Request<Streaming<proto::AgentMessage>>> for SyncMethod {
    type Response = Response<super::stream::AgentStream>;
    type Error = Status;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Status>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Streaming<proto::AgentMessage>>) -> Self::Future {
        let api = self.0.clone();
        Box::pin(async move { api.sync(req).await })
    }
}

impl<B> tower::Service<http::Request<B>> for SyncServer
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let api = self.api.clone();
        let max = self.max_decoding_message_size;
        Box::pin(async move {
            if req.uri().path() != "/tern.v1.SyncService/Sync" {
                return Ok(Status::unimplemented("no such method").into_http());
            }
            let mut grpc = Grpc::new(SyncCodec).apply_max_message_size_config(Some(max), None);
            Ok(grpc.streaming(SyncMethod(api), req).await)
        })
    }
}
