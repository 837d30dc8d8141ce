// hbonepeer: an independent HBONE peer built on Go's net/http HTTP/2 and crypto/tls.
// It shares no code with meshcore; the tests run it against meshcore in both roles.
//
//	inbound:  an mTLS HTTP/2 server; each CONNECT is dialed to its :authority and relayed
//	          (200 once connected, 503 if not), half-close and resets carried through.
//	outbound: a TCP listener; each connection becomes a CONNECT for -authority over
//	          pooled mTLS HTTP/2 connections to -peer, and is relayed.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"
)

func loadTLS(certFile, keyFile, caFile string) (tls.Certificate, *x509.CertPool) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		log.Fatalf("loading %s/%s: %v", certFile, keyFile, err)
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		log.Fatalf("reading %s: %v", caFile, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		log.Fatalf("%s holds no certificate", caFile)
	}
	return cert, pool
}

// spiffeOf returns the certificate's SPIFFE URI SAN.
func spiffeOf(cert *x509.Certificate) string {
	for _, u := range cert.URIs {
		if u.Scheme == "spiffe" {
			return u.String()
		}
	}
	return ""
}

// verifyChain checks the peer's chain against roots (no DNS name: identity is the URI SAN).
func verifyChain(roots *x509.CertPool, raw [][]byte, usage x509.ExtKeyUsage) (*x509.Certificate, error) {
	if len(raw) == 0 {
		return nil, errors.New("no certificate")
	}
	certs := make([]*x509.Certificate, len(raw))
	for i, der := range raw {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, err
		}
		certs[i] = c
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	_, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter,
		KeyUsages: []x509.ExtKeyUsage{usage}})
	return certs[0], err
}

func closeWrite(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.CloseWrite()
	}
}

func reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
}

// ------------------------------------------------------------------ inbound

func inbound(listen, certFile, keyFile, caFile, trustDomain string) {
	cert, roots := loadTLS(certFile, keyFile, caFile)
	cfg := &tls.Config{
		Certificates: []tls.Certificate{cert},
		MinVersion:   tls.VersionTLS13,
		NextProtos:   []string{"h2"},
		ClientAuth:   tls.RequireAnyClientCert,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			leaf, err := verifyChain(roots, raw, x509.ExtKeyUsageClientAuth)
			if err != nil {
				return err
			}
			if !strings.HasPrefix(spiffeOf(leaf), "spiffe://"+trustDomain+"/") {
				return fmt.Errorf("client identity %q is not of trust domain %s", spiffeOf(leaf), trustDomain)
			}
			return nil
		},
	}
	ln, err := tls.Listen("tcp", listen, cfg)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("listening %s\n", ln.Addr())
	srv := &http.Server{Handler: http.HandlerFunc(serveConnect), ErrorLog: log.Default()}
	log.Fatal(srv.Serve(ln))
}

func serveConnect(w http.ResponseWriter, r *http.Request) {
	if r.Method != "CONNECT" {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	up, err := net.DialTimeout("tcp", r.Host, 10*time.Second)
	if err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	defer up.Close()
	w.WriteHeader(http.StatusOK)
	flusher := w.(http.Flusher)
	flusher.Flush()
	requestDone := make(chan error, 1)
	go func() { // client -> upstream
		_, err := io.Copy(up, r.Body)
		if err != nil {
			reset(up)
		} else {
			closeWrite(up)
		}
		requestDone <- err
	}()
	buf := make([]byte, 256<<10)
	for { // upstream -> client
		n, err := up.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				reset(up)
				<-requestDone
				return
			}
			flusher.Flush()
		}
		if err == io.EOF {
			break
		}
		if err != nil { // upstream reset: the stream must not end as if complete
			<-requestDone
			panic(http.ErrAbortHandler)
		}
	}
	// END_STREAM goes out when the handler returns: after the client's side is done too
	if err := <-requestDone; err != nil {
		panic(http.ErrAbortHandler)
	}
}

// ----------------------------------------------------------------- outbound

func outbound(listen, peer, authority, certFile, keyFile, caFile, expect string) {
	cert, roots := loadTLS(certFile, keyFile, caFile)
	cfg := &tls.Config{
		Certificates:       []tls.Certificate{cert},
		MinVersion:         tls.VersionTLS13,
		NextProtos:         []string{"h2"},
		InsecureSkipVerify: true, // the chain and the SPIFFE identity are checked below
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			leaf, err := verifyChain(roots, raw, x509.ExtKeyUsageServerAuth)
			if err != nil {
				return err
			}
			if spiffeOf(leaf) != expect {
				return fmt.Errorf("server identity %q, expected %q", spiffeOf(leaf), expect)
			}
			return nil
		},
	}
	dialer := &tls.Dialer{Config: cfg}
	transport := &http.Transport{
		ForceAttemptHTTP2: true,
		TLSClientConfig:   cfg,
		DialTLSContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return dialer.DialContext(ctx, "tcp", peer)
		},
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("listening %s\n", ln.Addr())
	for {
		conn, err := ln.Accept()
		if err != nil {
			log.Fatal(err)
		}
		go relayOut(conn, transport, peer, authority)
	}
}

// requestBody tells when the transport is done with it: net/http closes a request
// body once it has been sent whole, and closing the response before then would reset
// the stream with its tail unsent.
type requestBody struct {
	*io.PipeReader
	once sync.Once
	sent chan struct{}
}

func (b *requestBody) Close() error {
	b.once.Do(func() { close(b.sent) })
	return b.PipeReader.Close()
}

func relayOut(conn net.Conn, transport *http.Transport, peer, authority string) {
	defer conn.Close()
	pipeReader, bodyWriter := io.Pipe()
	body := &requestBody{PipeReader: pipeReader, sent: make(chan struct{})}
	req, _ := http.NewRequest("CONNECT", "https://"+peer, body)
	req.Host = authority
	resp, err := transport.RoundTrip(req)
	if err != nil {
		log.Printf("CONNECT %s: %v", authority, err)
		reset(conn)
		return
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		log.Printf("CONNECT %s: status %d", authority, resp.StatusCode)
		reset(conn)
		return
	}
	go func() { // client -> tunnel; EOF becomes END_STREAM
		_, err := io.Copy(bodyWriter, conn)
		bodyWriter.CloseWithError(err)
	}()
	if _, err := io.Copy(conn, resp.Body); err != nil { // tunnel -> client
		reset(conn)
		return
	}
	closeWrite(conn)
	<-body.sent // the other direction is sent whole before the stream is closed
}

func main() {
	mode := flag.String("mode", "", "inbound | outbound")
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on")
	certFile := flag.String("cert", "", "certificate chain (PEM)")
	keyFile := flag.String("key", "", "private key (PEM)")
	caFile := flag.String("ca", "", "trust bundle (PEM)")
	trustDomain := flag.String("trust-domain", "cluster.local", "inbound: the clients' trust domain")
	peer := flag.String("peer", "", "outbound: the HBONE server host:port")
	authority := flag.String("authority", "", "outbound: the CONNECT :authority")
	expect := flag.String("expect", "", "outbound: the server's SPIFFE identity")
	flag.Parse()
	log.SetFlags(log.Lmicroseconds)
	switch *mode {
	case "inbound":
		inbound(*listen, *certFile, *keyFile, *caFile, *trustDomain)
	case "outbound":
		outbound(*listen, *peer, *authority, *certFile, *keyFile, *caFile, *expect)
	default:
		log.Fatalf("-mode must be inbound or outbound, not %q", *mode)
	}
}
