//! Integration tests for the mock OAuth2 server, over real loopback sockets.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tollgate::testkit::{base64_decode, form_decode, parse_form, MockOAuth, MockUpstream};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn form(url: &str, body: &str) -> (u16, Value) {
    let r = client()
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn started() -> MockOAuth {
    let o = MockOAuth::start().await.unwrap();
    o.add_client("app", "s3cret");
    o
}

const CC: &str = "grant_type=client_credentials&client_id=app&client_secret=s3cret";

#[tokio::test]
async fn client_credentials_form() {
    let o = started().await;
    assert_eq!(
        o.token_url(),
        format!("http://127.0.0.1:{}/oauth/token", o.addr().port())
    );
    let (status, v) = form(&o.token_url(), CC).await;
    assert_eq!(status, 200);
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["expires_in"], 3600);
    assert!(v.get("refresh_token").is_none());
    let token = v["access_token"].as_str().unwrap();
    assert!(o.is_valid(token));
    assert!(!o.is_valid("nope"));
    assert_eq!((o.token_requests(), o.issued()), (1, 1));
    assert_eq!(o.grants(), vec!["client_credentials"]);
    let req = &o.requests()[0];
    assert_eq!(req.method, "POST");
    assert!(req.params.contains(&("client_id".into(), "app".into())));
}

#[tokio::test]
async fn basic_auth_and_invalid_client() {
    let o = started().await;
    o.add_client("id with space", "p:w");
    let c = client();
    let r = c
        .post(o.token_url())
        .basic_auth("app", Some("s3cret"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // RFC 6749 §2.3.1: id and secret are form-encoded before Basic.
    let r = c
        .post(o.token_url())
        .basic_auth("id+with+space", Some("p%3Aw"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .post(o.token_url())
        .basic_auth("app", Some("wrong"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_client");
    let (status, v) = form(
        &o.token_url(),
        "grant_type=client_credentials&client_id=ghost&client_secret=x",
    )
    .await;
    assert_eq!((status, v["error"].as_str()), (401, Some("invalid_client")));
    let (status, v) = form(&o.token_url(), "grant_type=client_credentials").await;
    assert_eq!((status, v["error"].as_str()), (401, Some("invalid_client")));
    assert_eq!(o.issued(), 2);
    assert_eq!(o.token_requests(), 5);
}

#[tokio::test]
async fn baidu_query_style() {
    let o = started().await;
    let url = format!(
        "{}?grant_type=client_credentials&client_id=app&client_secret=s3cret",
        o.baidu_url()
    );
    let r = client().get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert!(o.is_valid(v["access_token"].as_str().unwrap()));
    let r = client().post(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let bad = format!(
        "{}?grant_type=client_credentials&client_id=app&client_secret=no",
        o.baidu_url()
    );
    let r = client().get(&bad).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_client");
    // The standard endpoint is POST only.
    assert_eq!(
        client().get(o.token_url()).send().await.unwrap().status(),
        404
    );
}

#[tokio::test]
async fn refresh_grant_and_errors() {
    let o = started().await;
    o.set_issue_refresh_tokens(true);
    let (_, v) = form(&o.token_url(), CC).await;
    let rt = v["refresh_token"].as_str().unwrap().to_owned();
    let (status, v2) = form(
        &o.token_url(),
        &format!("grant_type=refresh_token&refresh_token={rt}"),
    )
    .await;
    assert_eq!(status, 200);
    assert_ne!(v2["access_token"], v["access_token"]);
    assert!(o.is_valid(v2["access_token"].as_str().unwrap()));
    let (status, v3) = form(
        &o.token_url(),
        "grant_type=refresh_token&refresh_token=bogus",
    )
    .await;
    assert_eq!((status, v3["error"].as_str()), (400, Some("invalid_grant")));
    let (status, v4) = form(&o.token_url(), "grant_type=password&username=a").await;
    assert_eq!(
        (status, v4["error"].as_str()),
        (400, Some("unsupported_grant_type"))
    );
    assert!(o.revoke(&rt));
    let (status, _) = form(
        &o.token_url(),
        &format!("grant_type=refresh_token&refresh_token={rt}"),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        o.grants(),
        vec![
            "client_credentials",
            "refresh_token",
            "refresh_token",
            "password",
            "refresh_token"
        ]
    );
}

#[tokio::test]
async fn fail_next_then_recovers() {
    let o = started().await;
    o.fail_next(2, 503);
    for _ in 0..2 {
        let (status, v) = form(&o.token_url(), CC).await;
        assert_eq!((status, v["error"].as_str()), (503, Some("server_error")));
    }
    assert_eq!(form(&o.token_url(), CC).await.0, 200);
    assert_eq!((o.token_requests(), o.issued()), (3, 1));
}

#[tokio::test]
async fn revoke_and_bearer_check() {
    let o = started().await;
    let up = MockUpstream::start().await.unwrap();
    up.set_auth_check(Some(o.bearer_check()));
    let (_, v) = form(&o.token_url(), CC).await;
    let token = v["access_token"].as_str().unwrap().to_owned();
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    let url = up.url("/v1/chat/completions");
    let c = client();
    assert_eq!(
        c.post(&url)
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let with_query = format!("{url}?access_token={token}");
    assert_eq!(
        c.post(&with_query)
            .json(&body)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.post(&url)
            .bearer_auth("garbage")
            .json(&body)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(c.post(&url).json(&body).send().await.unwrap().status(), 401);
    assert_eq!(o.rejected_expired(), 0, "unknown tokens are not 'expired'");
    assert!(o.revoke(&token));
    assert!(!o.is_valid(&token));
    assert_eq!(
        c.post(&url)
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(o.rejected_expired(), 1);

    let (_, v) = form(&o.token_url(), CC).await;
    let t2 = v["access_token"].as_str().unwrap().to_owned();
    let minted = o.mint();
    assert!(o.is_valid(&t2) && o.is_valid(&minted));
    o.revoke_all();
    assert!(!o.is_valid(&t2) && !o.is_valid(&minted));
    assert!(!o.revoke("never-issued"));
}

#[tokio::test]
async fn expiry_on_wall_clock() {
    let o = started().await;
    o.set_lifetime(Duration::from_millis(300));
    let (_, v) = form(&o.token_url(), CC).await;
    assert_eq!(v["expires_in"], 1, "whole seconds, at least 1");
    let token = v["access_token"].as_str().unwrap().to_owned();
    assert!(o.is_valid(&token));
    let check = o.bearer_check();
    let mut headers = http::HeaderMap::new();
    headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
    assert!(check(&headers, None));
    // This test is about wall-clock expiry itself.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!o.is_valid(&token));
    assert!(!check(&headers, None));
    assert_eq!(o.rejected_expired(), 1);
}

#[tokio::test]
async fn expires_in_override() {
    let o = started().await;
    for (ov, expect) in [
        (Value::Null, None),
        (json!(0), Some(json!(0))),
        (json!(-5), Some(json!(-5))),
        (json!("3600"), Some(json!("3600"))),
        (json!(1e12), Some(json!(1e12))),
    ] {
        o.set_expires_in_override(Some(ov));
        let (status, v) = form(&o.token_url(), CC).await;
        assert_eq!(status, 200);
        assert_eq!(v.get("expires_in").cloned(), expect);
        assert!(
            o.is_valid(v["access_token"].as_str().unwrap()),
            "real lifetime unchanged"
        );
    }
    o.set_expires_in_override(None);
    assert_eq!(form(&o.token_url(), CC).await.1["expires_in"], 3600);
}

#[tokio::test]
async fn hang_and_delay() {
    let o = started().await;
    o.set_hang(true);
    let quick = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let r = quick
        .post(o.token_url())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(CC)
        .send()
        .await;
    assert!(r.unwrap_err().is_timeout());
    // A request pending while hung completes once the hang is lifted.
    let url = o.token_url();
    let pending = tokio::spawn(async move { form(&url, CC).await.0 });
    assert!(o.wait_token_requests(2, Duration::from_secs(5)).await);
    o.set_hang(false);
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), pending)
            .await
            .unwrap()
            .unwrap(),
        200
    );
    assert_eq!(o.token_requests(), 2);

    o.set_delay(Duration::from_millis(150));
    let start = Instant::now();
    assert_eq!(form(&o.token_url(), CC).await.0, 200);
    assert!(start.elapsed() >= Duration::from_millis(150));
}

#[tokio::test]
async fn shutdown_ends_hang() {
    let o = started().await;
    o.set_hang(true);
    let url = o.token_url();
    let pending = tokio::spawn(async move { form(&url, CC).await.0 });
    assert!(o.wait_token_requests(1, Duration::from_secs(5)).await);
    tokio::time::timeout(Duration::from_secs(5), o.shutdown())
        .await
        .unwrap();
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), pending)
            .await
            .unwrap()
            .unwrap(),
        503
    );
}

#[test]
fn helpers() {
    assert_eq!(base64_decode("YXBwOnMzY3JldA==").unwrap(), b"app:s3cret");
    assert_eq!(base64_decode("YQ").unwrap(), b"a");
    assert!(base64_decode("!!").is_none());
    assert_eq!(form_decode("a+b%20c%3D%zz%"), "a b c=%zz%");
    assert_eq!(
        parse_form("a=1&&b=x%26y&c"),
        vec![
            ("a".into(), "1".into()),
            ("b".into(), "x&y".into()),
            ("c".into(), String::new())
        ]
    );
}
