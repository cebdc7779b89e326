//! The outbound client against real HTTP servers on 127.0.0.1.
//!
//! Every request of these tests goes to loopback. The SSRF refusals of other addresses are
//! asserted to happen before any connection (IP literals are rejected before sending).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use sluice_runtime::outbound::breaker::{BreakerState, ManualClock};
use sluice_runtime::outbound::{
    send_with_retries, AddressClass, BreakerConfig, ClientConfig, EndpointSettings, Endpoints,
    FailureReason, LimitRefusal, LimitsConfig, NotAdmitted, Outbound, OutboundClient,
    OutboundMetrics, OutboundRequest, RefusalKind, RetryEnd, RetrySchedule, Verdict,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Requests each path received.
#[derive(Clone, Default)]
struct Hits(Arc<std::sync::Mutex<Vec<String>>>);

impl Hits {
    fn count(&self, path: &str) -> usize {
        self.0.lock().unwrap().iter().filter(|p| *p == path).count()
    }
}

/// A receiver with one behaviour per path.
async fn receiver() -> (String, Hits) {
    let hits = Hits::default();
    let flaky = Arc::new(AtomicUsize::new(0));
    let app = Router::new()
        .route("/ok", any(|| async { "ok" }))
        .route(
            "/status/{code}",
            any(|Path(code): Path<u16>| async move { StatusCode::from_u16(code).unwrap() }),
        )
        .route(
            "/retry-after/{code}/{value}",
            any(|Path((code, value)): Path<(u16, String)>| async move {
                (
                    StatusCode::from_u16(code).unwrap(),
                    [(header::RETRY_AFTER, value)],
                )
            }),
        )
        .route(
            "/hang",
            any(|| async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                "never"
            }),
        )
        .route(
            "/redirect",
            any(|| async { (StatusCode::FOUND, [(header::LOCATION, "/ok")]) }),
        )
        .route("/big", get(|| async { vec![b'x'; 1024 * 1024] }))
        .route(
            "/echo-headers",
            any(|headers: HeaderMap| async move {
                let sig = headers
                    .get("webhook-signature")
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default();
                let ua = headers
                    .get(header::USER_AGENT)
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default();
                format!("{sig}|{ua}")
            }),
        )
        .route(
            "/flaky",
            any(move || {
                let flaky = Arc::clone(&flaky);
                async move {
                    if flaky.fetch_add(1, Ordering::SeqCst) < 2 {
                        StatusCode::SERVICE_UNAVAILABLE.into_response()
                    } else {
                        "ok".into_response()
                    }
                }
            }),
        )
        .layer(axum::middleware::from_fn_with_state(
            hits.clone(),
            |State(hits): State<Hits>,
             req: axum::extract::Request,
             next: axum::middleware::Next| async move {
                hits.0.lock().unwrap().push(req.uri().path().to_owned());
                let response: Response = next.run(req).await;
                response
            },
        ));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, hits)
}

/// A server that reads each request, writes `reply` as it is (no HTTP framework to tidy
/// it), then hangs up, or, with `hold`, keeps the connection open without another byte.
async fn raw_server(reply: &'static [u8], hold: bool) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = socket.read(&mut buf).await;
                let _ = socket.write_all(reply).await;
                if hold {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
            });
        }
    });
    base
}

fn loopback_config(total: Duration) -> ClientConfig {
    ClientConfig {
        total_timeout: total,
        allow: vec!["127.0.0.1/32".into()],
        ..ClientConfig::default()
    }
}

fn client(total: Duration) -> OutboundClient {
    OutboundClient::new(loopback_config(total)).unwrap()
}

/// An `Outbound` with default endpoint settings.
fn outbound(total: Duration) -> Outbound {
    Outbound::new(client(total), Endpoints::new(EndpointSettings::default()))
}

/// An `Outbound` whose endpoints have `breaker`, on `clock`, counted in fresh metrics.
fn observed(breaker: BreakerConfig, clock: Arc<ManualClock>) -> (Outbound, OutboundMetrics) {
    let metrics = OutboundMetrics::new(&prometheus::Registry::new()).unwrap();
    let settings = EndpointSettings {
        breaker,
        ..EndpointSettings::default()
    };
    let outbound = Outbound::new(
        client(Duration::from_secs(5)),
        Endpoints::with_clock(settings, clock),
    )
    .with_metrics(metrics.clone());
    (outbound, metrics)
}

fn post(url: &str) -> OutboundRequest {
    OutboundRequest::post(url.parse().unwrap(), &b"{\"type\":\"test\"}"[..])
}

fn retry_later(reason: FailureReason) -> Verdict {
    Verdict::RetryLater {
        after: None,
        reason,
    }
}

#[tokio::test]
async fn a_2xx_is_delivered_and_the_answer_kept() {
    let (base, hits) = receiver().await;
    let attempt = client(Duration::from_secs(5))
        .attempt(&post(&format!("{base}/ok")))
        .await;
    assert_eq!(attempt.verdict, Verdict::Delivered, "{:?}", attempt.error);
    assert_eq!(attempt.status, Some(200));
    assert_eq!(&attempt.body_prefix[..], b"ok");
    assert!(!attempt.truncated);
    assert_eq!(attempt.error, None);
    assert!(attempt.headers.contains_key(header::CONTENT_TYPE));
    assert!(attempt.latency > Duration::ZERO);
    assert_eq!(hits.count("/ok"), 1);
}

#[tokio::test]
async fn request_headers_are_sent_with_the_client_user_agent() {
    let (base, _) = receiver().await;
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("webhook-signature", "v1,abc=".parse().unwrap());
    let attempt = client(Duration::from_secs(5))
        .attempt(&post(&format!("{base}/echo-headers")).with_headers(headers))
        .await;
    let body = String::from_utf8(attempt.body_prefix.to_vec()).unwrap();
    assert!(body.starts_with("v1,abc=|sluice/"), "{body}");
}

#[tokio::test]
async fn failing_statuses_are_retried_and_410_is_gone() {
    let (base, _) = receiver().await;
    let client = client(Duration::from_secs(5));
    let verdict = |path: String| {
        let client = client.clone();
        async move { client.attempt(&post(&path)).await.verdict }
    };
    assert_eq!(
        verdict(format!("{base}/status/500")).await,
        retry_later(FailureReason::Status(500))
    );
    assert_eq!(
        verdict(format!("{base}/status/400")).await,
        retry_later(FailureReason::Status(400))
    );
    assert_eq!(verdict(format!("{base}/status/410")).await, Verdict::Gone);
    assert_eq!(
        verdict(format!("{base}/retry-after/429/2")).await,
        Verdict::RetryLater {
            after: Some(Duration::from_secs(2)),
            reason: FailureReason::TooManyRequests
        }
    );
    assert_eq!(
        verdict(format!("{base}/retry-after/503/7")).await,
        Verdict::RetryLater {
            after: Some(Duration::from_secs(7)),
            reason: FailureReason::Status(503)
        }
    );
    // The cap (1 h by default) bounds what an endpoint can ask for; garbage is ignored.
    assert_eq!(
        verdict(format!("{base}/retry-after/503/999999999")).await,
        Verdict::RetryLater {
            after: Some(Duration::from_secs(3600)),
            reason: FailureReason::Status(503)
        }
    );
    assert_eq!(
        verdict(format!("{base}/retry-after/503/soon")).await,
        retry_later(FailureReason::Status(503))
    );
}

#[tokio::test]
async fn a_hanging_endpoint_times_out_within_the_total_timeout() {
    let (base, _) = receiver().await;
    let started = std::time::Instant::now();
    let attempt = client(Duration::from_millis(300))
        .attempt(&post(&format!("{base}/hang")))
        .await;
    assert_eq!(attempt.verdict, retry_later(FailureReason::Timeout));
    assert_eq!(attempt.status, None);
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    // A request's own timeout, shorter than the client's, wins.
    let attempt = client(Duration::from_secs(30))
        .attempt(&post(&format!("{base}/hang")).with_timeout(Duration::from_millis(200)))
        .await;
    assert_eq!(attempt.verdict, retry_later(FailureReason::Timeout));
}

#[tokio::test]
async fn a_hang_up_is_a_closed_connection_and_a_non_http_answer_a_protocol_failure() {
    let cases: [(&'static [u8], FailureReason); 2] = [
        (b"", FailureReason::Closed),
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", FailureReason::Protocol),
    ];
    for (reply, reason) in cases {
        let base = raw_server(reply, false).await;
        let attempt = client(Duration::from_secs(5))
            .attempt(&post(&format!("{base}/hook")))
            .await;
        assert_eq!(attempt.verdict, retry_later(reason), "{:?}", attempt.error);
        assert!(attempt.error.is_some());
    }
}

#[tokio::test]
async fn a_body_that_stalls_is_cut_by_the_total_timeout_and_the_status_stands() {
    let base = raw_server(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nX-Request-Id: r-1\r\nX-Other: no\r\n\r\nabc",
        true,
    )
    .await;
    let config = ClientConfig {
        keep_headers: vec!["x-request-id".into(), "retry-after".into()],
        ..loopback_config(Duration::from_millis(300))
    };
    let started = std::time::Instant::now();
    let attempt = OutboundClient::new(config)
        .unwrap()
        .attempt(&post(&format!("{base}/hook")))
        .await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "{took:?}");
    // The endpoint said 200: delivered, with what arrived of the body and why it stopped.
    assert_eq!(attempt.verdict, Verdict::Delivered);
    assert_eq!(&attempt.body_prefix[..], b"abc");
    assert!(!attempt.truncated);
    let error = attempt.error.expect("the body error is kept");
    assert!(error.starts_with("reading the response body"), "{error}");
    assert_eq!(attempt.headers.get("x-request-id").unwrap(), "r-1");
    assert!(!attempt.headers.contains_key("x-other"));
    assert_eq!(attempt.headers.len(), 1);
}

#[tokio::test]
async fn nothing_listening_is_a_connect_failure() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let attempt = client(Duration::from_secs(5))
        .attempt(&post(&format!("http://127.0.0.1:{port}/ok")))
        .await;
    assert_eq!(
        attempt.verdict,
        retry_later(FailureReason::Connect),
        "{:?}",
        attempt.error
    );
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let (base, hits) = receiver().await;
    let attempt = client(Duration::from_secs(5))
        .attempt(&post(&format!("{base}/redirect")))
        .await;
    assert_eq!(attempt.verdict, retry_later(FailureReason::Redirect(302)));
    assert_eq!(attempt.status, Some(302));
    assert_eq!(attempt.headers.get(header::LOCATION).unwrap(), "/ok");
    assert_eq!(hits.count("/ok"), 0, "the redirect target was never asked");
}

#[tokio::test]
async fn a_large_answer_keeps_exactly_the_prefix() {
    let (base, _) = receiver().await;
    let attempt = client(Duration::from_secs(10))
        .attempt(&OutboundRequest::get(
            format!("{base}/big").parse().unwrap(),
        ))
        .await;
    assert_eq!(attempt.verdict, Verdict::Delivered);
    assert_eq!(attempt.body_prefix.len(), 64 * 1024);
    assert!(attempt.truncated);
    assert!(attempt.body_prefix.iter().all(|b| *b == b'x'));
}

#[tokio::test]
async fn a_name_resolving_to_loopback_is_refused_unless_allowlisted() {
    let (base, hits) = receiver().await;
    let port = base.rsplit(':').next().unwrap();
    let url = format!("http://localhost:{port}/ok?token=s3cret");
    let strict = OutboundClient::new(ClientConfig::default()).unwrap();
    let attempt = strict.attempt(&post(&url)).await;
    assert_eq!(
        attempt.verdict,
        retry_later(FailureReason::Refused(RefusalKind::Address(
            AddressClass::Loopback
        )))
    );
    let error = attempt.error.unwrap();
    assert!(error.contains("loopback"), "{error}");
    assert!(
        !error.contains("s3cret") && !error.contains("/ok"),
        "{error}"
    );
    assert_eq!(hits.count("/ok"), 0);

    let allowing = client(Duration::from_secs(5));
    let attempt = allowing.attempt(&post(&url)).await;
    assert_eq!(attempt.verdict, Verdict::Delivered, "{:?}", attempt.error);
    assert_eq!(hits.count("/ok"), 1);
}

#[tokio::test]
async fn ip_literals_of_every_refused_class_are_rejected_before_connecting() {
    // None of these is ever connected to: the check runs before the request is built. A
    // connection attempt would show as Connect or Timeout, not Rejected.
    let cases = [
        ("http://127.0.0.1:9/", AddressClass::Loopback),
        ("http://[::1]:9/", AddressClass::Loopback),
        ("http://10.0.0.1/", AddressClass::Private),
        ("http://172.16.5.4/", AddressClass::Private),
        ("http://192.168.0.1/", AddressClass::Private),
        ("http://[fd00::1]/", AddressClass::UniqueLocal),
        (
            "http://169.254.169.254/latest/meta-data/",
            AddressClass::LinkLocal,
        ),
        ("http://[fe80::1]/", AddressClass::LinkLocal),
        ("http://100.64.0.1/", AddressClass::SharedCgnat),
        ("http://0.0.0.0/", AddressClass::Unspecified),
        ("http://[::]/", AddressClass::Unspecified),
        ("http://224.0.0.1/", AddressClass::Multicast),
        ("http://[ff02::1]/", AddressClass::Multicast),
        ("http://255.255.255.255/", AddressClass::Broadcast),
        ("http://192.0.2.10/", AddressClass::Documentation),
        ("http://[2001:db8::1]/", AddressClass::Documentation),
        ("http://198.18.0.1/", AddressClass::Benchmarking),
        ("http://[::ffff:169.254.169.254]/", AddressClass::LinkLocal),
        ("http://[::ffff:10.0.0.1]/", AddressClass::Private),
        ("http://2852039166/", AddressClass::LinkLocal),
    ];
    let strict = OutboundClient::new(ClientConfig::default()).unwrap();
    for (url, class) in cases {
        let attempt = strict.attempt(&post(url)).await;
        assert_eq!(
            attempt.verdict,
            Verdict::Rejected {
                reason: FailureReason::Refused(RefusalKind::Address(class))
            },
            "{url}"
        );
        assert_eq!(attempt.status, None);
    }
    // The allowlist opens exactly what it names.
    let attempt = client(Duration::from_secs(5))
        .attempt(&post("http://127.0.0.2:9/"))
        .await;
    assert!(matches!(attempt.verdict, Verdict::Rejected { .. }));
}

#[tokio::test]
async fn https_only_rejects_plain_http() {
    let config = ClientConfig {
        https_only: true,
        ..loopback_config(Duration::from_secs(5))
    };
    let (base, hits) = receiver().await;
    let attempt = OutboundClient::new(config)
        .unwrap()
        .attempt(&post(&format!("{base}/ok")))
        .await;
    assert_eq!(
        attempt.verdict,
        Verdict::Rejected {
            reason: FailureReason::Refused(RefusalKind::Scheme)
        }
    );
    assert_eq!(hits.count("/ok"), 0);
}

#[tokio::test]
async fn a_hanging_endpoint_does_not_delay_another() {
    let (base, _) = receiver().await;
    let outbound = outbound(Duration::from_secs(10));
    // More hanging attempts than the slow endpoint's in-flight cap and the idle pool size,
    // all to the same host and port as the fast endpoint.
    let hanging: Vec<_> = (0..12)
        .map(|_| {
            let outbound = outbound.clone();
            let request = post(&format!("{base}/hang"));
            tokio::spawn(async move { outbound.send("slow", &request).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    for _ in 0..5 {
        let attempt = outbound
            .send("fast", &post(&format!("{base}/ok")))
            .await
            .expect("admitted");
        assert_eq!(attempt.verdict, Verdict::Delivered);
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(
        hanging.iter().all(|h| !h.is_finished()),
        "the hanging attempts were still pending when the fast ones completed"
    );
    assert_eq!(outbound.endpoints().get("slow").limits.in_flight(), 8);
    for h in hanging {
        h.abort();
    }
}

#[tokio::test]
async fn the_breaker_opens_on_failures_and_counts_in_metrics() {
    let (base, hits) = receiver().await;
    let breaker = BreakerConfig {
        consecutive_failures: 3,
        cool_down: Duration::from_secs(60),
        ..BreakerConfig::default()
    };
    let (outbound, metrics) = observed(breaker, Arc::new(ManualClock::new()));
    let url = format!("{base}/status/502");
    for _ in 0..3 {
        let attempt = outbound.send("ep", &post(&url)).await.unwrap();
        assert_eq!(attempt.verdict, retry_later(FailureReason::Status(502)));
    }
    let refused = outbound.send("ep", &post(&url)).await.unwrap_err();
    assert!(
        matches!(refused, NotAdmitted::BreakerOpen(_)),
        "{refused:?}"
    );
    assert!(refused.retry_in().unwrap() > Duration::from_secs(50));
    assert_eq!(
        hits.count("/status/502"),
        3,
        "the open breaker sent nothing"
    );
    assert_eq!(
        outbound.endpoints().get("ep").breaker.state(),
        BreakerState::Open
    );
    // Another endpoint is unaffected.
    assert!(outbound
        .send("other", &post(&format!("{base}/ok")))
        .await
        .is_ok());

    let count = |verdict: &str, reason: &str| {
        metrics
            .attempts
            .with_label_values(&["ep", verdict, reason])
            .get()
    };
    assert_eq!(count("retry_later", "status_5xx"), 3);
    assert_eq!(
        metrics
            .attempts
            .with_label_values(&["other", "delivered", "none"])
            .get(),
        1
    );
    assert_eq!(metrics.breaker_state.with_label_values(&["ep"]).get(), 2);
    assert_eq!(
        metrics
            .not_admitted
            .with_label_values(&["ep", "breaker_open"])
            .get(),
        1
    );
    assert_eq!(
        metrics
            .latency_seconds
            .with_label_values(&["ep"])
            .get_sample_count(),
        3
    );
}

#[tokio::test]
async fn inline_retries_follow_the_schedule_until_delivered() {
    let (base, hits) = receiver().await;
    let outbound = outbound(Duration::from_secs(5));
    let schedule = RetrySchedule::parse("0s, 50ms, 50ms, 50ms").unwrap();
    let outcome = send_with_retries(
        &outbound,
        "flaky",
        &post(&format!("{base}/flaky")),
        &schedule,
        Duration::from_secs(10),
        1,
    )
    .await;
    assert_eq!(outcome.end, RetryEnd::Delivered);
    assert_eq!(outcome.attempts.len(), 3);
    assert_eq!(hits.count("/flaky"), 3);
    assert_eq!(outcome.last().unwrap().verdict, Verdict::Delivered);
}

#[tokio::test]
async fn inline_retries_stop_on_gone_exhaustion_and_deadline() {
    let (base, hits) = receiver().await;
    let outbound = Outbound::new(
        client(Duration::from_secs(5)),
        Endpoints::new(EndpointSettings {
            limits: LimitsConfig::default(),
            breaker: BreakerConfig {
                consecutive_failures: 100,
                ..BreakerConfig::default()
            },
        }),
    );
    let schedule = RetrySchedule::parse("0s, 10ms, 10ms").unwrap();
    let run = |path: &str, deadline: Duration| {
        let request = post(&format!("{base}{path}"));
        let (outbound, schedule) = (outbound.clone(), schedule.clone());
        async move { send_with_retries(&outbound, "ep", &request, &schedule, deadline, 7).await }
    };
    let gone = run("/status/410", Duration::from_secs(10)).await;
    assert_eq!((gone.end, gone.attempts.len()), (RetryEnd::Gone, 1));

    let exhausted = run("/status/500", Duration::from_secs(10)).await;
    assert_eq!(
        (exhausted.end, exhausted.attempts.len()),
        (RetryEnd::Exhausted, 3)
    );
    assert_eq!(hits.count("/status/500"), 3);

    // Retry-After of 2 s is longer than what is left of a 1 s deadline: no second attempt.
    let started = std::time::Instant::now();
    let deadline = run("/retry-after/503/2", Duration::from_secs(1)).await;
    assert_eq!(
        (deadline.end, deadline.attempts.len()),
        (RetryEnd::DeadlineExceeded, 1)
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "it did not wait in vain"
    );

    // A hanging endpoint's attempt is cut to the deadline.
    let started = std::time::Instant::now();
    let hung = run("/hang", Duration::from_millis(300)).await;
    assert_eq!(hung.end, RetryEnd::DeadlineExceeded);
    assert_eq!(
        hung.attempts[0].verdict,
        retry_later(FailureReason::Timeout)
    );
    assert!(started.elapsed() < Duration::from_secs(3));

    // A request that can never be sent is not retried.
    let rejected = send_with_retries(
        &outbound,
        "ep",
        &post("http://10.0.0.1/hook"),
        &schedule,
        Duration::from_secs(10),
        7,
    )
    .await;
    assert_eq!(
        (rejected.end, rejected.attempts.len()),
        (RetryEnd::Rejected, 1)
    );
}

#[tokio::test]
async fn an_open_breaker_probes_after_its_cool_down_and_closes_on_success() {
    let (base, _) = receiver().await;
    let clock = Arc::new(ManualClock::new());
    let breaker = BreakerConfig {
        consecutive_failures: 2,
        cool_down: Duration::from_secs(30),
        half_open_probes: 1,
        close_after: 1,
        ..BreakerConfig::default()
    };
    let (outbound, metrics) = observed(breaker, clock.clone());
    for _ in 0..2 {
        outbound
            .send("ep", &post(&format!("{base}/status/500")))
            .await
            .unwrap();
    }
    let ok = post(&format!("{base}/ok"));
    assert!(matches!(
        outbound.send("ep", &ok).await,
        Err(NotAdmitted::BreakerOpen(_))
    ));
    clock.advance(Duration::from_secs(30));
    let probe = outbound
        .send("ep", &ok)
        .await
        .expect("the probe goes through");
    assert_eq!(probe.verdict, Verdict::Delivered);
    assert_eq!(
        outbound.endpoints().get("ep").breaker.state(),
        BreakerState::Closed
    );
    let entered = |state: &str| {
        metrics
            .breaker_transitions
            .with_label_values(&["ep", state])
            .get()
    };
    assert_eq!(
        (entered("open"), entered("half_open"), entered("closed")),
        (1, 1, 1)
    );
    assert_eq!(metrics.breaker_state.with_label_values(&["ep"]).get(), 0);
}

/// Limits `endpoint` to one attempt in flight and fills that slot with a request to
/// `/hang`; returns the hanging send, to abort at the end.
async fn occupy_single_slot(
    outbound: &Outbound,
    base: &str,
    endpoint: &'static str,
    max_wait: Duration,
) -> tokio::task::JoinHandle<Result<sluice_runtime::outbound::Attempt, NotAdmitted>> {
    let tight = EndpointSettings {
        limits: LimitsConfig {
            max_in_flight: 1,
            max_wait,
            ..LimitsConfig::default()
        },
        ..EndpointSettings::default()
    };
    outbound.endpoints().configure(endpoint, &tight);
    let hanging = {
        let (outbound, request) = (outbound.clone(), post(&format!("{base}/hang")));
        tokio::spawn(async move { outbound.send(endpoint, &request).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    hanging
}

#[tokio::test]
async fn a_full_endpoint_is_busy_without_touching_the_others() {
    let (base, _) = receiver().await;
    let outbound = outbound(Duration::from_secs(10));
    let first = occupy_single_slot(
        &outbound,
        &base,
        "one-at-a-time",
        Duration::from_millis(100),
    )
    .await;
    let second = outbound
        .send("one-at-a-time", &post(&format!("{base}/ok")))
        .await
        .unwrap_err();
    assert_eq!(
        second,
        NotAdmitted::Limit(LimitRefusal::Busy { max_in_flight: 1 })
    );
    assert_eq!(second.as_str(), "busy");
    assert!(outbound
        .send("another", &post(&format!("{base}/ok")))
        .await
        .is_ok());
    assert!(!first.is_finished());
    first.abort();
}

#[tokio::test]
async fn inline_retries_do_not_wait_for_a_full_endpoint_past_the_deadline() {
    let (base, _) = receiver().await;
    let outbound = outbound(Duration::from_secs(10));
    let hanging = occupy_single_slot(&outbound, &base, "ep", Duration::from_secs(30)).await;
    let started = std::time::Instant::now();
    let outcome = send_with_retries(
        &outbound,
        "ep",
        &post(&format!("{base}/ok")),
        &RetrySchedule::webhook_default(),
        Duration::from_millis(300),
        3,
    )
    .await;
    assert_eq!(outcome.end, RetryEnd::DeadlineExceeded);
    assert!(outcome.attempts.is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    hanging.abort();
}
