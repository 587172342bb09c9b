//! Listening sockets. Every worker binds its own socket to the same address
//! with SO_REUSEPORT, so the kernel spreads connections across workers.

use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

pub fn bind_reuseport(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}
