// The reuse matrix's Go side: a net/http origin that counts the
// connections it accepts, and a net/http client driven over stdin.
//
//	matrix-go origin          listens on 127.0.0.1:0 (and a stats port),
//	                          prints "origin ADDR stats ADDR"
//	matrix-go client MODE     MODE: default | nokeepalive | close
//
// The client reads one JSON command per line, {"method", "url", "body",
// "n", "proxy"}, sends the request n times and prints one JSON line,
// {"results": [[status, digest], ...], "error": "..."}.
//
// Go's http.ProxyFromEnvironment never proxies loopback destinations, so
// the proxy is set on the transport itself.
package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"sync/atomic"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: matrix-go origin | client MODE")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "origin":
		origin()
	case "client":
		if len(os.Args) < 3 {
			fmt.Fprintln(os.Stderr, "usage: matrix-go client default|nokeepalive|close")
			os.Exit(2)
		}
		client(os.Args[2])
	default:
		fmt.Fprintln(os.Stderr, "unknown command", os.Args[1])
		os.Exit(2)
	}
}

func origin() {
	var accepted int64
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprintf(w, "%s %d\n", r.Method, n)
	})
	srv := &http.Server{
		Handler:     handler,
		IdleTimeout: 75 * time.Second,
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateNew {
				atomic.AddInt64(&accepted, 1)
			}
		},
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	statsLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	stats := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, "%d\n", atomic.LoadInt64(&accepted))
	})}
	go stats.Serve(statsLn)
	fmt.Printf("origin %s stats %s\n", ln.Addr(), statsLn.Addr())
	os.Stdout.Sync()
	if err := srv.Serve(ln); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

type command struct {
	Method string `json:"method"`
	URL    string `json:"url"`
	Body   string `json:"body"`
	N      int    `json:"n"`
	Proxy  string `json:"proxy"`
}

type result struct {
	Results [][2]interface{} `json:"results"`
	Error   string           `json:"error,omitempty"`
}

// bodyBytes is the same deterministic content every driver sends.
func bodyBytes(kind string) []byte {
	size := map[string]int{"1k": 1024, "64k": 64 * 1024, "1m": 1024 * 1024, "chunked": 100 * 1024}[kind]
	pattern := []byte("0123456789abcdef")
	b := make([]byte, size)
	for i := range b {
		b[i] = pattern[i%len(pattern)]
	}
	return b
}

// pieces hides the length, so net/http sends the body chunked.
type pieces struct{ data []byte }

func (p *pieces) Read(out []byte) (int, error) {
	if len(p.data) == 0 {
		return 0, io.EOF
	}
	n := copy(out, p.data[:min(len(p.data), 10*1024)])
	p.data = p.data[n:]
	return n, nil
}

func min(a, b int) int {
	if a < b {
		return a
	}
	return b
}

func client(mode string) {
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 1<<20)
	out := json.NewEncoder(os.Stdout)
	for in.Scan() {
		var cmd command
		if err := json.Unmarshal(in.Bytes(), &cmd); err != nil {
			out.Encode(result{Error: err.Error()})
			continue
		}
		out.Encode(run(mode, cmd))
	}
}

func run(mode string, cmd command) result {
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.Proxy = nil
	if cmd.Proxy != "" {
		p, err := url.Parse(cmd.Proxy)
		if err != nil {
			return result{Error: err.Error()}
		}
		transport.Proxy = http.ProxyURL(p)
	}
	transport.DisableKeepAlives = mode == "nokeepalive"
	defer transport.CloseIdleConnections()
	c := &http.Client{Transport: transport, Timeout: 30 * time.Second}
	res := result{Results: [][2]interface{}{}}
	for i := 0; i < cmd.N; i++ {
		var body io.Reader
		if cmd.Body == "chunked" {
			body = &pieces{data: bodyBytes(cmd.Body)}
		} else if cmd.Body != "" {
			// A *bytes.Reader: net/http sends Content-Length.
			body = bytes.NewReader(bodyBytes(cmd.Body))
		}
		req, err := http.NewRequest(cmd.Method, cmd.URL, body)
		if err != nil {
			return result{Error: err.Error()}
		}
		req.Close = mode == "close"
		resp, err := c.Do(req)
		if err != nil {
			res.Error = err.Error()
			return res
		}
		data, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			res.Error = err.Error()
			return res
		}
		sum := sha256.Sum256(data)
		res.Results = append(res.Results, [2]interface{}{resp.StatusCode, hex.EncodeToString(sum[:8])})
	}
	return res
}
