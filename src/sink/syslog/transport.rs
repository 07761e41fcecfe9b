//! The ways a message reaches a collector: a local datagram socket (`/dev/log`), TCP with
//! octet-counting framing (RFC 6587), and TLS (RFC 5425) with rustls. All blocking, with
//! timeouts, for the sink's own delivery thread.

use super::frame::octet_counted;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Where messages go.
#[derive(Clone)]
pub enum Target {
    /// A local syslog socket: one datagram per message.
    Local(PathBuf),
    /// TCP, `host:port`.
    Tcp(String),
    /// TLS over TCP, `host:port`, checked against `server_name`.
    Tls {
        /// `host:port`.
        address: String,
        /// The name the collector's certificate must carry.
        server_name: ServerName<'static>,
        /// Trust anchors, protocol versions and the optional client certificate.
        config: Arc<rustls::ClientConfig>,
    },
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// The TLS client configuration: the collector's certificate must chain to a certificate
/// of `ca_file`; `cert_file` and `key_file` (PEM) identify keytrail when the collector
/// asks for a client certificate.
pub fn tls_config(
    ca_file: &Path,
    client: Option<(&Path, &Path)>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca_file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("the CA file {} cannot be read: {e}", ca_file.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "the CA file {} holds no PEM certificate",
            ca_file.display()
        ));
    }
    for c in certs {
        roots
            .add(c)
            .map_err(|e| format!("the CA file {}: {e}", ca_file.display()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    format!(
                        "the certificate file {} cannot be read: {e}",
                        cert.display()
                    )
                })?;
            // The key file must be as private as the HMAC key file.
            let pem = crate::sink::chain::read_key_file(key)?;
            let key_der = PrivateKeyDer::from_pem_slice(&pem)
                .map_err(|e| format!("the key file {} cannot be read: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| format!("the client certificate {}: {e}", cert.display()))?
        }
    };
    Ok(Arc::new(config))
}

impl Target {
    /// How the target is named in diagnostics and in the trail's loss records.
    pub fn describe(&self) -> String {
        match self {
            Target::Local(p) => format!("syslog local {}", p.display()),
            Target::Tcp(a) => format!("syslog tcp {a}"),
            Target::Tls { address, .. } => format!("syslog tls {address}"),
        }
    }

    /// Whether records sent shortly before a broken connection may be lost unseen, so
    /// they are sent again after reconnecting.
    pub fn resends(&self) -> bool {
        !matches!(self, Target::Local(_))
    }

    /// Opens a connection, waiting at most `timeout` for each step.
    pub fn connect(&self, timeout: Duration) -> io::Result<Connection> {
        match self {
            Target::Local(path) => {
                let s = UnixDatagram::unbound()?;
                s.set_write_timeout(Some(timeout))?;
                s.connect(path)?;
                Ok(Connection::Local(s))
            }
            Target::Tcp(address) => Ok(Connection::Tcp(tcp(address, timeout)?)),
            Target::Tls {
                address,
                server_name,
                config,
            } => {
                let mut sock = tcp(address, timeout)?;
                sock.set_read_timeout(Some(timeout))?;
                let mut conn = rustls::ClientConnection::new(config.clone(), server_name.clone())
                    .map_err(io::Error::other)?;
                // The handshake now, so that a refused certificate is a connection failure
                // with its reason, not a write failure later.
                while conn.is_handshaking() {
                    conn.complete_io(&mut sock)?;
                }
                Ok(Connection::Tls(Box::new(rustls::StreamOwned::new(
                    conn, sock,
                ))))
            }
        }
    }
}

fn tcp(address: &str, timeout: Duration) -> io::Result<TcpStream> {
    let mut last = io::Error::new(
        io::ErrorKind::NotFound,
        format!("{address} resolves to no address"),
    );
    for addr in address.to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => {
                s.set_write_timeout(Some(timeout))?;
                s.set_nodelay(true)?;
                return Ok(s);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// An open connection to a collector.
pub enum Connection {
    /// A connected datagram socket.
    Local(UnixDatagram),
    /// A TCP stream.
    Tcp(TcpStream),
    /// A TLS stream.
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Connection {
    /// Sends `messages` in order; returns how many were handed over before an error.
    /// Over TCP and TLS they go in one write, octet-counted, so either all were handed
    /// over or, on an error, none counts as sent.
    pub fn send(
        &mut self,
        messages: &[Vec<u8>],
        scratch: &mut Vec<u8>,
    ) -> (usize, Option<io::Error>) {
        match self {
            Connection::Local(s) => {
                for (i, m) in messages.iter().enumerate() {
                    if let Err(e) = s.send(m) {
                        return (i, Some(e));
                    }
                }
                (messages.len(), None)
            }
            Connection::Tcp(_) | Connection::Tls(_) => {
                scratch.clear();
                for m in messages {
                    octet_counted(m, scratch);
                }
                let written = match self {
                    Connection::Tcp(s) => s.write_all(scratch).and_then(|()| s.flush()),
                    Connection::Tls(s) => s.write_all(scratch).and_then(|()| s.flush()),
                    Connection::Local(_) => Ok(()),
                };
                match written {
                    Ok(()) => (messages.len(), None),
                    Err(e) => (0, Some(e)),
                }
            }
        }
    }

    /// Whether the collector has closed the connection (read without waiting): a write
    /// to a closed connection would seem to succeed and lose the records.
    pub fn closed_by_peer(&mut self) -> bool {
        let sock = match self {
            Connection::Local(_) => return false,
            Connection::Tcp(s) => s,
            Connection::Tls(s) => &s.sock,
        };
        if sock.set_nonblocking(true).is_err() {
            return true;
        }
        let mut probe = [0u8; 1];
        let state = sock.peek(&mut probe);
        let _ = sock.set_nonblocking(false);
        match state {
            Ok(0) => true,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
            Err(_) => true,
            Ok(_) => match self {
                // A collector has nothing to say over plain TCP; whatever it sent is
                // ignored, the connection is still open.
                Connection::Tcp(s) => {
                    let mut sink = [0u8; 4096];
                    let _ = s.set_nonblocking(true);
                    let gone = matches!(s.read(&mut sink), Ok(0));
                    let _ = s.set_nonblocking(false);
                    gone
                }
                // TLS: session tickets, or a close_notify.
                Connection::Tls(s) => {
                    let _ = s.sock.set_nonblocking(true);
                    let read = s.conn.read_tls(&mut s.sock);
                    let _ = s.sock.set_nonblocking(false);
                    match read {
                        Ok(0) => true,
                        Ok(_) => match s.conn.process_new_packets() {
                            Ok(io) => io.peer_has_closed(),
                            Err(_) => true,
                        },
                        Err(e) => e.kind() != io::ErrorKind::WouldBlock,
                    }
                }
                Connection::Local(_) => false,
            },
        }
    }
}
