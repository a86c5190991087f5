//! The test harness itself: throwaway PostgreSQL, the moto S3 server and the
//! fault-injecting proxy do what the other integration tests rely on.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{
    FaultProxy, Faults, Postgres, S3Server, block_on, fixture, s3_client, unique_bucket_name,
};

/// Sends one raw HTTP/1.1 request and returns everything the server sent
/// back before closing (empty if it closed without answering).
fn raw_request(endpoint: &str, method: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let authority = endpoint.trim_start_matches("http://");
    let mut stream = TcpStream::connect(authority).expect("connect to the proxy");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut response = Vec::new();
    // A reset connection is an answer too: nothing.
    let _ = stream.read_to_end(&mut response);
    response
}

/// An endpoint where nothing listens.
fn closed_endpoint() -> String {
    format!("http://127.0.0.1:{}", common::free_port())
}

fn status_of(response: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(response.get(..12)?).ok()?;
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

#[test]
fn postgres_loads_the_awkward_fixture() {
    let pg = Postgres::start();
    pg.createdb("awkward");
    pg.psql_file("awkward", fixture("awkward.sql"));

    assert_eq!(
        pg.psql("awkward", "SELECT count(*) FROM app.measurements"),
        "5000"
    );
    assert_eq!(
        pg.psql("awkward", "SELECT count(*) FROM app.events_2024"),
        "3"
    );
    assert_eq!(
        pg.psql(
            "awkward",
            r#"SELECT count(*) FROM "Über Schema"."Tåble ☃ Mixed""#
        ),
        "3"
    );
    assert_eq!(
        pg.psql("awkward", "SELECT count(*) FROM pg_largeobject_metadata"),
        "3"
    );
    assert_eq!(
        pg.psql(
            "awkward",
            "SELECT length(blob) FROM app.everything WHERE id = 1"
        ),
        "256"
    );
    assert_eq!(
        pg.psql("awkward", "SELECT count(*) FROM app.no_columns"),
        "3"
    );
    assert_eq!(
        pg.psql("awkward", "SELECT last_value FROM app.ticket_seq"),
        "123456"
    );
    assert!(
        pg.url("awkward")
            .ends_with(&format!("127.0.0.1:{}/awkward", pg.port()))
    );
}

#[test]
fn postgres_checks_passwords_and_can_stop_and_start_again() {
    let mut pg = Postgres::start();
    assert_eq!(pg.psql("postgres", "SELECT 1"), "1");

    let mut wrong = pg.psql_command("postgres");
    wrong
        .env("PGPASSWORD", "not-the-password")
        .args(["-c", "SELECT 1"]);
    let output = common::output_within(&mut wrong, b"", Duration::from_secs(30));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("password authentication failed"),
        "{stderr}"
    );

    pg.psql(
        "postgres",
        "CREATE TABLE kept (x int); INSERT INTO kept VALUES (7);",
    );
    pg.stop();
    assert!(
        TcpStream::connect(("127.0.0.1", pg.port())).is_err(),
        "a stopped server refuses connections"
    );
    pg.start_again();
    assert_eq!(pg.psql("postgres", "SELECT x FROM kept"), "7");
}

#[test]
fn s3_round_trip_through_a_proxy_without_faults() {
    let s3 = S3Server::start();
    let proxy = FaultProxy::start(&s3.endpoint(), Faults::none());
    let bucket = unique_bucket_name("Selftest_Bucket");
    let data: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();

    block_on(async {
        s3.create_bucket(&bucket, true).await;
        let client = s3_client(&proxy.endpoint());
        let put = client
            .put_object()
            .bucket(&bucket)
            .key("dir/ünïcödé key.bin")
            .body(data.clone().into())
            .send()
            .await
            .expect("put through the proxy");
        assert!(
            put.version_id().is_some(),
            "a versioned bucket returns a version id"
        );
        let got = client
            .get_object()
            .bucket(&bucket)
            .key("dir/ünïcödé key.bin")
            .send()
            .await
            .expect("get through the proxy");
        let bytes = got
            .body
            .collect()
            .await
            .expect("read the body")
            .into_bytes();
        assert!(
            bytes.as_ref() == data.as_slice(),
            "the proxy returns the bytes unchanged"
        );
        assert_eq!(
            s3.list_keys(&bucket, "dir/").await,
            vec!["dir/ünïcödé key.bin".to_owned()]
        );
        assert_eq!(s3.list_versions(&bucket, "").await.len(), 1);
        assert_eq!(s3.list_multipart_uploads(&bucket).await, 0);
    });
    assert!(proxy.forwarded() >= 2);
    assert_eq!((proxy.injected_503(), proxy.injected_drops()), (0, 0));
}

#[test]
fn proxy_answers_slowdown_when_told_to() {
    // No upstream is needed: every request is refused before forwarding.
    let proxy = FaultProxy::start(
        &closed_endpoint(),
        Faults {
            slowdown_503: 1.0,
            ..Faults::none()
        },
    );
    let response = raw_request(&proxy.endpoint(), "PUT", "/bucket/key", b"some body");
    assert_eq!(
        status_of(&response),
        Some(503),
        "{}",
        String::from_utf8_lossy(&response)
    );
    let text = String::from_utf8_lossy(&response);
    assert!(text.contains("<Code>SlowDown</Code>"), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("content-type: application/xml"),
        "{text}"
    );
    assert_eq!(
        (
            proxy.injected_503(),
            proxy.injected_drops(),
            proxy.forwarded()
        ),
        (1, 0, 0)
    );

    // The SDK sees a throttling error it can name.
    let config = s3_client(&proxy.endpoint())
        .config()
        .to_builder()
        .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled())
        .build();
    let client = aws_sdk_s3::Client::from_conf(config);
    let error =
        block_on(client.get_object().bucket("bucket").key("key").send()).expect_err("a 503");
    let code = aws_sdk_s3::error::ProvideErrorMetadata::code(&error).map(str::to_owned);
    assert_eq!(code.as_deref(), Some("SlowDown"));
    assert_eq!(proxy.injected_503(), 2);
}

#[test]
fn proxy_drops_connections_when_told_to() {
    let proxy = FaultProxy::start(
        &closed_endpoint(),
        Faults {
            drop_connection: 1.0,
            ..Faults::none()
        },
    );
    for _ in 0..4 {
        let response = raw_request(&proxy.endpoint(), "PUT", "/bucket/key", &[7u8; 100_000]);
        assert!(
            response.is_empty(),
            "expected no response, got {}",
            String::from_utf8_lossy(&response)
        );
    }
    assert_eq!(
        (
            proxy.injected_503(),
            proxy.injected_drops(),
            proxy.forwarded()
        ),
        (0, 4, 0)
    );
}

#[test]
fn proxy_faults_repeat_for_the_same_seed() {
    let faults = Faults {
        slowdown_503: 0.3,
        drop_connection: 0.3,
        seed: 42,
    };
    let run = || {
        // The upstream port is closed, so forwarded requests answer 502.
        let proxy = FaultProxy::start(&closed_endpoint(), faults);
        let statuses: Vec<Option<u16>> = (0..30)
            .map(|_| status_of(&raw_request(&proxy.endpoint(), "GET", "/", b"")))
            .collect();
        (
            statuses,
            proxy.injected_503(),
            proxy.injected_drops(),
            proxy.forwarded(),
        )
    };
    let first = run();
    assert_eq!(first, run());
    let (statuses, slow, drops, forwarded) = first;
    assert_eq!(slow + drops + forwarded, 30);
    assert!(slow > 0 && drops > 0 && forwarded > 0, "{statuses:?}");
    assert_eq!(
        statuses.iter().filter(|s| **s == Some(503)).count() as u64,
        slow
    );
    assert_eq!(
        statuses.iter().filter(|s| s.is_none()).count() as u64,
        drops
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == Some(502)).count() as u64,
        forwarded
    );
}
