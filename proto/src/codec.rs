//! The codec of every generated service and client: prost's, except that a body that does not
//! decode is the caller's error. prost's codec answers `INTERNAL` for it, which told a client that
//! sent three bad bytes that the server had failed; this one answers `INVALID_ARGUMENT` with
//! `ledger.malformed_request`, naming prost's reason (a field path, never a value).

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::Status;

use crate::codes::ErrorCode;

/// `application/grpc+proto` through prost, with decode errors mapped to the registry.
#[derive(Debug, Clone, Copy)]
pub struct ApiCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for ApiCodec<T, U> {
    fn default() -> Self {
        ApiCodec(PhantomData)
    }
}

impl<T, U> Codec for ApiCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = tonic_prost::ProstEncoder<T>;
    type Decoder = ApiDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ApiDecoder(PhantomData)
    }
}

/// Decodes one message; a malformed one is `ledger.malformed_request`.
#[derive(Debug)]
pub struct ApiDecoder<U>(PhantomData<U>);

impl<U: Message + Default> Decoder for ApiDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf)
            .map(Some)
            .map_err(|e| ErrorCode::MalformedRequest.status(format!("the message is not a valid protobuf message of this method: {e}")))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}
