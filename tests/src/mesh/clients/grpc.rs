//! A gRPC client over tonic with a raw-bytes codec, so a test needs no generated code.

use std::net::SocketAddr;

use bytes::Bytes;

/// gRPC messages as raw bytes, so a test needs no generated code.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut as _;
        dst.put(item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Bytes>, tonic::Status> {
        use bytes::Buf as _;
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n)))
    }
}

/// `/warden.test.Echo/Say` with tonic over h2c to `addr` (a proxy's outbound port),
/// with `:authority` `authority` (`host:port` of the service).
pub async fn grpc_say(
    addr: SocketAddr,
    authority: &str,
    msg: Bytes,
) -> Result<Bytes, tonic::Status> {
    grpc_call(addr, authority, "/warden.test.Echo/Say", msg).await
}

/// A unary call of `method` (raw bytes) with tonic over h2c to `addr`, with
/// `:authority` `authority`, on a new connection.
pub async fn grpc_call(
    addr: SocketAddr,
    authority: &str,
    method: &'static str,
    msg: Bytes,
) -> Result<Bytes, tonic::Status> {
    let unavailable = |e: &dyn std::fmt::Display| tonic::Status::unavailable(e.to_string());
    let origin: http::Uri = format!("http://{authority}")
        .parse()
        .map_err(|e| unavailable(&e))?;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| unavailable(&e))?
        .origin(origin)
        .connect()
        .await
        .map_err(|e| unavailable(&e))?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| unavailable(&e))?;
    let path = http::uri::PathAndQuery::from_static(method);
    grpc.unary(tonic::Request::new(msg), path, RawCodec)
        .await
        .map(tonic::Response::into_inner)
}
