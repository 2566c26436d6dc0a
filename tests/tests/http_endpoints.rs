//! The loop both of the monitor's HTTP endpoints run (`--metrics`, `--dashboard`): a request
//! for a host that is not a loopback one gets `403` on `/metrics` too (DNS rebinding: a page
//! elsewhere that rebinds its name to 127.0.0.1 must not read the node's metrics), and a client
//! that sends half a header and stalls is cut within a few seconds without keeping its slot
//! (slowloris).

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use p2pos_tests::{Node, free_port, http_get, http_get_with, http_status, status_when};

/// Most connections the metrics endpoint serves at once (`services/monitor/src/http.rs`).
const METRICS_SLOTS: usize = 16;

#[tokio::test(flavor = "multi_thread")]
async fn metrics_answer_only_a_loopback_host() {
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut node = Node::start(&["--metrics", &metrics]);
    let client = node.client().await;
    status_when(&client, "metrics are on", |s| !s.metrics_url.is_empty()).await;

    assert_eq!(http_status(&http_get(&metrics, "/metrics")), 200);
    for host in ["evil.example", "evil.example:80", "127.0.0.1.evil.example"] {
        let response = http_get_with(&metrics, "/metrics", &[("Host", host)]);
        assert_eq!(http_status(&response), 403, "Host: {host}: {response}");
        assert!(
            !response.contains("p2pos_"),
            "no metric for {host}: {response}"
        );
    }
    let response = http_get_with(&metrics, "/metrics", &[]);
    assert_eq!(http_status(&response), 403, "no Host: {response}");
    for host in ["localhost", &metrics, &format!("[::1]:{}", free_port())] {
        let response = http_get_with(&metrics, "/metrics", &[("Host", host)]);
        assert_eq!(http_status(&response), 200, "Host: {host}");
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stalls_in_its_header_is_cut_and_frees_its_slot() {
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut node = Node::start(&["--metrics", &metrics]);
    let client = node.client().await;
    status_when(&client, "metrics are on", |s| !s.metrics_url.is_empty()).await;

    // Every slot taken by a client that sends half a header and stalls.
    let stalled: Vec<TcpStream> = (0..METRICS_SLOTS)
        .map(|_| {
            let mut stream = TcpStream::connect(&metrics).expect("connect");
            write!(stream, "GET /metrics HTTP/1.1\r\nHost: 127.0").expect("half a header");
            stream
        })
        .collect();
    let started = Instant::now();

    // A real scrape behind them is answered once they are cut (the 3 s header limit), well
    // before the 10 s a whole request gets.
    let scrape = tokio::task::spawn_blocking({
        let metrics = metrics.clone();
        move || http_get(&metrics, "/metrics")
    });
    let response = tokio::time::timeout(Duration::from_secs(20), scrape)
        .await
        .expect("the scrape is answered")
        .expect("scrape");
    let answered = started.elapsed();
    assert_eq!(http_status(&response), 200, "{response}");
    assert!(
        answered < Duration::from_secs(8),
        "a scrape waited {answered:?} behind stalled clients"
    );

    // Each stalled client was cut (end of stream, maybe after a 408), none after 8 s.
    for mut stream in stalled {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        let mut rest = Vec::new();
        let cut = match stream.read_to_end(&mut rest) {
            Ok(_) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        };
        assert!(cut, "a stalled client still connected");
        let rest = String::from_utf8_lossy(&rest);
        assert!(
            !rest.contains("p2pos_"),
            "a half request got metrics: {rest}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "stalled clients held on for {:?}",
        started.elapsed()
    );
    node.stop().await;
}
