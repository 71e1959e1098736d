//! Accepting client connections and serving HTTP/1 on them.
//!
//! # One client connection, from accept to close
//!
//! 1. **Accept** (`accept`). The listener's loop takes a permit out of
//!    `max_client_connections` *before* it accepts, so at the limit the
//!    kernel backlog holds new clients instead of eddy taking and dropping
//!    them. Accept errors (`EMFILE`) back off and retry; only shutdown ends
//!    the loop. The accepted socket already has its options (`socket`):
//!    on Linux they were set once on the listening socket.
//! 2. **Watch the bytes** (`io`). Before hyper reads a byte, the socket
//!    wrapper runs it through the request head scanner. A head the scanner
//!    refuses (too large, malformed, conflicting framing) is answered right
//!    there, on the wire, with eddy's own error response, and the
//!    connection ends; hyper never sees it. A refused pipelined head lets
//!    the requests before it be answered, then closes. The wrapper also
//!    reports reads and writes to the connection's timeouts.
//! 3. **Serve** (`conn`). hyper's HTTP/1 server (keep-alive, upgrades)
//!    hands each request to the proxy with the listener's context of that
//!    moment, so a reload applies to the next request on a kept-alive
//!    connection. A CONNECT tunnel or upgrade keeps the connection's hold
//!    (its permit, its place in graceful shutdown) after hyper lets go.
//! 4. **Park** (`conn`, `timeouts`). Once no request is in flight, hyper
//!    has read every byte the client sent and written every byte of the
//!    response, and 10 ms have passed since that response (at once for a
//!    connection that has sent nothing), hyper is dropped and the
//!    connection waits for its next request with the socket alone: about
//!    1.3 KiB instead of hyper's 16 KiB or more of buffers. The next byte
//!    starts a fresh hyper connection on the same socket.
//! 5. **Time out** (`timeouts`). `client_header_timeout` bounds a head
//!    arriving, `client_idle_timeout` the gap between requests and, while a
//!    request is in flight, a client that stops reading its response.
//! 6. **Close.** The client leaves, a timeout fires, a refused head was
//!    answered, or shutdown asks the connection to finish its requests in
//!    flight first (hyper's graceful shutdown). Dropping the hold gives the
//!    permit back to the accept loop.
//!
//! # Why it is shaped this way
//!
//! hyper serves the connection but does not own its edges. The limit on
//! connections has to act before `accept`, which hyper never sees. The
//! scanner has to sit below hyper's parser, because hyper answers a bad
//! head with a bare error of its own and resolves conflicting framing
//! before eddy could refuse it. And hyper's own header timer cannot express
//! the three phases of a connection (a head arriving, the gap between
//! requests, a response the client stops reading), so it is off and the
//! connection task keeps one timer of its own. hyper also keeps its read
//! and write buffers for as long as a connection lives, which for a pod
//! holding thousands of idle keep-alive clients is most of eddy's memory;
//! parking frees them between requests, as HAProxy does. Each of these
//! edges has its
//! file here, next to the sockets and to hyper's serving loop; what happens
//! to a request is the proxy's business.
//!

mod accept;
mod conn;
mod io;
mod socket;
mod timeouts;

pub(crate) use accept::serve;
pub(crate) use socket::{prepare_tcp_listener, Bound};
