//! Byte-stream wrappers: most of Warden's wrap a stream to watch or rewrite what it
//! reads and pass writes straight through; [`delegate_async_write!`] writes that
//! pass-through once.
//!
//! [`delegate_async_write!`]: crate::delegate_async_write

/// Implements `tokio::io::AsyncWrite` for `Type<IO>` by forwarding every method
/// (vectored writes included) to its field `field: IO`:
/// `warden_common::delegate_async_write!(Rewind, io);`.
#[macro_export]
macro_rules! delegate_async_write {
    ($ty:ident, $field:ident) => {
        impl<IO: ::tokio::io::AsyncWrite + ::std::marker::Unpin> ::tokio::io::AsyncWrite
            for $ty<IO>
        {
            fn poll_write(
                mut self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
                buf: &[u8],
            ) -> ::std::task::Poll<::std::io::Result<usize>> {
                ::std::pin::Pin::new(&mut self.$field).poll_write(cx, buf)
            }

            fn poll_write_vectored(
                mut self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
                bufs: &[::std::io::IoSlice<'_>],
            ) -> ::std::task::Poll<::std::io::Result<usize>> {
                ::std::pin::Pin::new(&mut self.$field).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.$field.is_write_vectored()
            }

            fn poll_flush(
                mut self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
            ) -> ::std::task::Poll<::std::io::Result<()>> {
                ::std::pin::Pin::new(&mut self.$field).poll_flush(cx)
            }

            fn poll_shutdown(
                mut self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
            ) -> ::std::task::Poll<::std::io::Result<()>> {
                ::std::pin::Pin::new(&mut self.$field).poll_shutdown(cx)
            }
        }
    };
}
