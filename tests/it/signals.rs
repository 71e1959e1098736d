//! SIGTERM and SIGINT stop eddy gracefully. Requests in flight may finish
//! within `shutdown_grace`; whatever is still running then is cut off and the
//! process exits. The in-process tests call `shutdown()` directly; this one
//! sends the real signals to the binary.

use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

use crate::cli::{addresses, signal, spawn_eddy};
use crate::support::client::{get, open};
use crate::support::origin::{Behavior, Origin};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_and_sigint_finish_in_flight_work_within_shutdown_grace() {
    for sig in ["-TERM", "-INT"] {
        let quick = Origin::start(Behavior {
            delay: Duration::from_millis(500),
            ..Behavior::default()
        })
        .await;
        let stuck = Origin::start(Behavior {
            never_respond: true,
            ..Behavior::default()
        })
        .await;
        let config = "shutdown_grace = \"2s\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
                      [log]\nformat = \"json\"\naccess_log = false\n\
                      [[listener]]\nlisten = \"127.0.0.1:0\"\n\
                      [pool]\nresponse_header_timeout = \"60s\"\n";
        let (mut child, rx) = spawn_eddy(config, "signals", &[]);
        let (proxy, _admin) = addresses(&rx);
        let quick_url = quick.url();
        let finishing = tokio::spawn(async move { get(proxy, &quick_url).await });
        let req = format!("GET {}/ HTTP/1.1\r\nHost: x\r\n\r\n", stuck.url());
        let mut cut = open(proxy, req.as_bytes()).await;
        for (origin, what) in [(&quick, "the quick request"), (&stuck, "the stuck request")] {
            origin
                .wait_for(
                    &format!("{what} reaches its origin"),
                    Duration::from_secs(10),
                    |s| s.requests() == 1,
                )
                .await;
        }
        let sent = Instant::now();
        signal(child.id(), sig);
        let r = finishing.await.expect("task");
        assert_eq!(r.status, 200, "{sig}: the request in flight finished");
        crate::support::eventually(
            &format!("eddy exits after {sig}"),
            Duration::from_secs(15),
            || std::future::ready(matches!(child.try_wait(), Ok(Some(_)))),
        )
        .await;
        let took = sent.elapsed();
        let status = child.wait().expect("exit status");
        assert!(status.success(), "{sig}: {status}");
        // It waited for the stuck request, but only for the grace.
        assert!(
            took >= Duration::from_millis(1500) && took < Duration::from_secs(8),
            "{sig}: exited {took:?} after the signal with shutdown_grace = 2s"
        );
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), cut.read_to_end(&mut rest))
            .await
            .expect("the stuck request's connection is closed when eddy exits");
        assert!(
            !rest.starts_with(b"HTTP/1.1 200"),
            "{sig}: {}",
            String::from_utf8_lossy(&rest)
        );
    }
}
