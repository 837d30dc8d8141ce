//! hbonepeer: an independent HBONE peer built on the Rust h2 crate, tokio and rustls
//! (the stack Istio's ztunnel uses). It shares no code with meshcore; the tests run it
//! against meshcore in both roles, with the same flags as the Go peer in tests/peers/go.
//!
//!   inbound:  an mTLS HTTP/2 server; each CONNECT is dialed to its :authority and
//!             relayed (200 once connected, 503 if not), half-close and resets carried.
//!   outbound: a TCP listener; each connection becomes a CONNECT for -authority over one
//!             shared mTLS HTTP/2 connection to -peer (reopened if it ends), and is relayed.
//!
//! HTTP/2 settings are ztunnel's: 4 MiB stream window, 16 MiB connection window, 1 MiB
//! frames, 200 concurrent streams advertised by the server.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use futures_util::future::poll_fn;
use h2::{client, server, Reason, RecvStream, SendStream};
use http::{Method, Request, Response, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio_rustls::rustls;
use tokio_rustls::{TlsAcceptor, TlsConnector};

type Error = Box<dyn std::error::Error + Send + Sync>;

const STREAM_WINDOW: u32 = 4 << 20;
const CONNECTION_WINDOW: u32 = 16 << 20;
const MAX_FRAME: u32 = 1 << 20;
const READ_CHUNK: usize = 256 << 10;

fn fatal(message: String) -> ! {
    eprintln!("hbonepeer: {}", message);
    std::process::exit(2)
}

fn parse_flags() -> HashMap<String, String> {
    let mut flags = HashMap::new();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_else(|| fatal(format!("{} needs a value", flag)));
        flags.insert(flag.trim_start_matches('-').to_string(), value);
    }
    flags
}

// ------------------------------------------------------------------ identity

fn read_pem(path: &str) -> Vec<rustls_pemfile::Item> {
    let pem = std::fs::read(path).unwrap_or_else(|e| fatal(format!("reading {}: {}", path, e)));
    rustls_pemfile::read_all(&mut &pem[..]).unwrap_or_else(|e| fatal(format!("parsing {}: {}", path, e)))
}

fn certificates(path: &str) -> Vec<rustls::Certificate> {
    let certs: Vec<_> = read_pem(path)
        .into_iter()
        .filter_map(|item| match item {
            rustls_pemfile::Item::X509Certificate(der) => Some(rustls::Certificate(der)),
            _ => None,
        })
        .collect();
    if certs.is_empty() {
        fatal(format!("{} holds no certificate", path));
    }
    certs
}

fn private_key(path: &str) -> rustls::PrivateKey {
    for item in read_pem(path) {
        match item {
            rustls_pemfile::Item::PKCS8Key(der)
            | rustls_pemfile::Item::ECKey(der)
            | rustls_pemfile::Item::RSAKey(der) => return rustls::PrivateKey(der),
            _ => {}
        }
    }
    fatal(format!("{} holds no private key", path))
}

/// One DER TLV: (tag, contents, what follows).
fn tlv(data: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, data) = data.split_first()?;
    let (&first, mut data) = data.split_first()?;
    let length = if first < 0x80 {
        first as usize
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || data.len() < n {
            return None;
        }
        let length = data[..n].iter().fold(0usize, |acc, &b| acc << 8 | b as usize);
        data = &data[n..];
        length
    };
    if data.len() < length {
        return None;
    }
    Some((tag, &data[..length], &data[length..]))
}

/// The URI subject alternative names of a DER certificate. A small DER walk of its own,
/// so that this peer shares no X.509 parser with meshcore.
fn uri_names(der: &[u8]) -> Option<Vec<String>> {
    const SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];
    let mut names = Vec::new();
    let (_, certificate, _) = tlv(der)?;
    let (_, mut tbs, _) = tlv(certificate)?;
    while let Some((tag, contents, rest)) = tlv(tbs) {
        if tag == 0xa3 {
            let (_, mut extensions, _) = tlv(contents)?;
            while let Some((_, extension, next)) = tlv(extensions) {
                let (_, oid, fields) = tlv(extension)?;
                if oid == SUBJECT_ALT_NAME {
                    let (mut tag, mut value, rest) = tlv(fields)?;
                    if tag == 0x01 {
                        // the optional `critical` BOOLEAN
                        let (t, v, _) = tlv(rest)?;
                        tag = t;
                        value = v;
                    }
                    if tag != 0x04 {
                        return None;
                    }
                    let (_, mut general_names, _) = tlv(value)?;
                    while let Some((tag, name, next_name)) = tlv(general_names) {
                        if tag == 0x86 {
                            names.push(String::from_utf8_lossy(name).into_owned());
                        }
                        general_names = next_name;
                    }
                }
                extensions = next;
            }
        }
        tbs = rest;
    }
    Some(names)
}

fn spiffe_id(der: &[u8]) -> Option<String> {
    uri_names(der)?.into_iter().find(|name| name.starts_with("spiffe://"))
}

static SIGNATURE_ALGORITHMS: &[&webpki::SignatureAlgorithm] = &[
    &webpki::ECDSA_P256_SHA256,
    &webpki::ECDSA_P384_SHA384,
    &webpki::ED25519,
    &webpki::RSA_PKCS1_2048_8192_SHA256,
    &webpki::RSA_PKCS1_2048_8192_SHA384,
    &webpki::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
];

/// Verifies the server's chain against the trust bundle and its SPIFFE identity against
/// the one expected: HBONE peers have no DNS names, so rustls' name check cannot serve.
struct SpiffeServerVerifier {
    roots: Vec<Vec<u8>>,
    expect: String,
}

impl rustls::client::ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::Certificate,
        intermediates: &[rustls::Certificate],
        _server_name: &rustls::ServerName,
        _scts: &mut dyn Iterator<Item = &[u8]>,
        _ocsp: &[u8],
        now: SystemTime,
    ) -> Result<rustls::client::ServerCertVerified, rustls::Error> {
        let invalid = |what: String| rustls::Error::InvalidCertificateData(what);
        let leaf = webpki::EndEntityCert::try_from(end_entity.0.as_ref())
            .map_err(|e| invalid(format!("server certificate: {:?}", e)))?;
        let anchors = self
            .roots
            .iter()
            .map(|der| webpki::TrustAnchor::try_from_cert_der(der))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(format!("trust bundle: {:?}", e)))?;
        let chain: Vec<&[u8]> = intermediates.iter().map(|c| c.0.as_ref()).collect();
        let time = webpki::Time::try_from(now).map_err(|_| invalid("clock before 1970".into()))?;
        leaf.verify_is_valid_tls_server_cert(
            SIGNATURE_ALGORITHMS,
            &webpki::TlsServerTrustAnchors(&anchors),
            &chain,
            time,
        )
        .map_err(|e| invalid(format!("server chain: {:?}", e)))?;
        match spiffe_id(&end_entity.0) {
            Some(id) if id == self.expect => Ok(rustls::client::ServerCertVerified::assertion()),
            other => Err(invalid(format!("server identity {:?}, expected {:?}", other, self.expect))),
        }
    }
}

fn root_store(path: &str) -> (rustls::RootCertStore, Vec<Vec<u8>>) {
    let mut store = rustls::RootCertStore::empty();
    let roots = certificates(path);
    for root in &roots {
        store.add(root).unwrap_or_else(|e| fatal(format!("{}: {}", path, e)));
    }
    (store, roots.into_iter().map(|c| c.0).collect())
}

// -------------------------------------------------------------------- relay

/// HTTP/2 DATA to the TCP side; END_STREAM becomes a FIN. Window credit is given back
/// only once the bytes are written, so a slow TCP reader slows the sender.
async fn h2_to_tcp(recv: &mut RecvStream, tcp: &mut WriteHalf<'_>) -> Result<(), Error> {
    while let Some(chunk) = recv.data().await {
        let chunk = chunk?;
        tcp.write_all(&chunk).await?;
        recv.flow_control().release_capacity(chunk.len())?;
    }
    tcp.shutdown().await?;
    Ok(())
}

/// TCP bytes to HTTP/2 DATA within the peer's window; EOF becomes END_STREAM.
async fn tcp_to_h2(tcp: &mut ReadHalf<'_>, send: &mut SendStream<Bytes>) -> Result<(), Error> {
    loop {
        let mut buffer = BytesMut::with_capacity(READ_CHUNK);
        if tcp.read_buf(&mut buffer).await? == 0 {
            send.send_data(Bytes::new(), true)?;
            return Ok(());
        }
        let mut data = buffer.freeze();
        while !data.is_empty() {
            send.reserve_capacity(data.len());
            let granted = match poll_fn(|cx| send.poll_capacity(cx)).await {
                Some(granted) => granted?,
                None => return Err("stream closed while sending".into()),
            };
            if granted > 0 {
                send.send_data(data.split_to(granted.min(data.len())), false)?;
            }
        }
    }
}

/// Both directions until both end; any failure resets the stream (CONNECT_ERROR, as RFC
/// 9113 §8.5 asks of a proxy whose TCP side failed: HBONE peers read CANCEL as an end)
/// and the TCP side, so a broken tunnel never looks complete.
async fn relay(mut tcp: TcpStream, mut recv: RecvStream, mut send: SendStream<Bytes>, what: &str) {
    let _ = tcp.set_nodelay(true);
    let outcome = {
        let (mut tcp_reader, mut tcp_writer) = tcp.split();
        tokio::try_join!(
            h2_to_tcp(&mut recv, &mut tcp_writer),
            tcp_to_h2(&mut tcp_reader, &mut send)
        )
    };
    if let Err(e) = outcome {
        eprintln!("{}: reset: {}", what, e);
        send.send_reset(Reason::CONNECT_ERROR);
        let _ = tcp.set_linger(Some(Duration::ZERO));
    }
}

// ------------------------------------------------------------------ inbound

async fn inbound(flags: HashMap<String, String>) {
    let (roots, _) = root_store(&flags["ca"]);
    let trust_domain = flags.get("trust-domain").cloned().unwrap_or_else(|| "cluster.local".into());
    let mut config = rustls::ServerConfig::builder()
        .with_safe_default_cipher_suites()
        .with_safe_default_kx_groups()
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_client_cert_verifier(rustls::server::AllowAnyAuthenticatedClient::new(roots))
        .with_single_cert(certificates(&flags["cert"]), private_key(&flags["key"]))
        .unwrap_or_else(|e| fatal(format!("server certificate: {}", e)));
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listen = flags.get("listen").map(String::as_str).unwrap_or("127.0.0.1:0");
    let listener = TcpListener::bind(listen).await.unwrap_or_else(|e| fatal(format!("{}: {}", listen, e)));
    println!("listening {}", listener.local_addr().unwrap());
    loop {
        let (tcp, client) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                eprintln!("accept: {}", e);
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let prefix = format!("spiffe://{}/", trust_domain);
        tokio::spawn(async move {
            if let Err(e) = serve_connection(tcp, acceptor, &prefix).await {
                eprintln!("connection from {}: {}", client, e);
            }
        });
    }
}

async fn serve_connection(tcp: TcpStream, acceptor: TlsAcceptor, prefix: &str) -> Result<(), Error> {
    tcp.set_nodelay(true)?;
    let tls = acceptor.accept(tcp).await?;
    let client_id = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(|c| spiffe_id(&c.0));
    match client_id {
        Some(ref id) if id.starts_with(prefix) => {}
        other => return Err(format!("client identity {:?} is not under {}", other, prefix).into()),
    }
    let mut connection = server::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_concurrent_streams(200)
        .handshake::<_, Bytes>(tls)
        .await?;
    while let Some(request) = connection.accept().await {
        let (request, respond) = request?;
        tokio::spawn(serve_connect(request, respond));
    }
    Ok(())
}

fn status(code: StatusCode) -> Response<()> {
    Response::builder().status(code).body(()).unwrap()
}

async fn serve_connect(request: Request<RecvStream>, mut respond: server::SendResponse<Bytes>) {
    let authority = match request.uri().authority() {
        Some(authority) if request.method() == Method::CONNECT => authority.to_string(),
        _ => {
            let _ = respond.send_response(status(StatusCode::BAD_REQUEST), true);
            return;
        }
    };
    let upstream = match tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(&authority)).await {
        Ok(Ok(upstream)) => upstream,
        _ => {
            let _ = respond.send_response(status(StatusCode::SERVICE_UNAVAILABLE), true);
            return;
        }
    };
    if let Ok(send) = respond.send_response(status(StatusCode::OK), false) {
        relay(upstream, request.into_body(), send, &authority).await;
    }
}

// ----------------------------------------------------------------- outbound

/// One shared HTTP/2 connection to the peer, reopened when it has ended.
struct Pool {
    peer: String,
    connector: TlsConnector,
    sender: Mutex<Option<client::SendRequest<Bytes>>>,
}

impl Pool {
    async fn sender(&self) -> Result<client::SendRequest<Bytes>, Error> {
        let mut slot = self.sender.lock().await;
        if let Some(sender) = slot.as_ref() {
            if let Ok(ready) = sender.clone().ready().await {
                return Ok(ready);
            }
        }
        let tcp = TcpStream::connect(&self.peer).await?;
        tcp.set_nodelay(true)?;
        let name = rustls::ServerName::try_from("hbone.invalid").unwrap();
        let tls = self.connector.connect(name, tcp).await?;
        let (sender, connection) = client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME)
            .enable_push(false)
            .handshake::<_, Bytes>(tls)
            .await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                eprintln!("connection to peer: {}", e);
            }
        });
        *slot = Some(sender.clone());
        Ok(sender.ready().await?)
    }
}

async fn outbound(flags: HashMap<String, String>) {
    let (_, roots) = root_store(&flags["ca"]);
    let verifier = SpiffeServerVerifier { roots, expect: flags["expect"].clone() };
    let mut config = rustls::ClientConfig::builder()
        .with_safe_default_cipher_suites()
        .with_safe_default_kx_groups()
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_single_cert(certificates(&flags["cert"]), private_key(&flags["key"]))
        .unwrap_or_else(|e| fatal(format!("client certificate: {}", e)));
    config.alpn_protocols = vec![b"h2".to_vec()];
    let pool = Arc::new(Pool {
        peer: flags["peer"].clone(),
        connector: TlsConnector::from(Arc::new(config)),
        sender: Mutex::new(None),
    });
    let authority = flags["authority"].clone();
    let listen = flags.get("listen").map(String::as_str).unwrap_or("127.0.0.1:0");
    let listener = TcpListener::bind(listen).await.unwrap_or_else(|e| fatal(format!("{}: {}", listen, e)));
    println!("listening {}", listener.local_addr().unwrap());
    loop {
        let (client, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                eprintln!("accept: {}", e);
                continue;
            }
        };
        let pool = pool.clone();
        let authority = authority.clone();
        tokio::spawn(async move {
            if let Err(e) = relay_out(client, &pool, &authority).await {
                eprintln!("CONNECT {}: {}", authority, e);
            }
        });
    }
}

async fn relay_out(client: TcpStream, pool: &Pool, authority: &str) -> Result<(), Error> {
    let result = async {
        let mut sender = pool.sender().await?;
        let request = Request::builder().method(Method::CONNECT).uri(authority).body(())?;
        let (response, send) = sender.send_request(request, false)?;
        let response = response.await?;
        if response.status() != StatusCode::OK {
            return Err(format!("status {}", response.status()).into());
        }
        Ok((response.into_body(), send))
    }
    .await;
    match result {
        Ok((recv, send)) => {
            relay(client, recv, send, authority).await;
            Ok(())
        }
        Err(e) => {
            let _ = client.set_linger(Some(Duration::ZERO));
            Err(e)
        }
    }
}

fn main() {
    let flags = parse_flags();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    match flags.get("mode").map(String::as_str) {
        Some("inbound") => runtime.block_on(inbound(flags)),
        Some("outbound") => runtime.block_on(outbound(flags)),
        other => fatal(format!("-mode must be inbound or outbound, not {:?}", other)),
    }
}
