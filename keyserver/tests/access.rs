//! Role × endpoint matrix, uniform responses, malformed and oversized requests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use common::Harness;
use hyper::Method;
use pgseal_keyserver::client::{Client, ClientError};
use pgseal_keyserver::model::Role;

/// One endpoint call as (label, method, path, body).
fn endpoints() -> Vec<(&'static str, Method, &'static str, Option<&'static str>)> {
    vec![
        ("health", Method::GET, "/v1/health", None),
        ("keyring.list", Method::GET, "/v1/keyrings", None),
        (
            "keyring.create",
            Method::POST,
            "/v1/keyrings",
            Some(r#"{"name":"matrix"}"#),
        ),
        ("keyring.read", Method::GET, "/v1/keyrings/patients", None),
        (
            "keyring.rotate",
            Method::POST,
            "/v1/keyrings/patients/rotate",
            None,
        ),
        (
            "version.disable",
            Method::POST,
            "/v1/keyrings/patients/versions/1/disable",
            None,
        ),
        (
            "keyring.min",
            Method::PUT,
            "/v1/keyrings/patients/min-decryption-version",
            Some(r#"{"min_decryption_version":1}"#),
        ),
        (
            "material",
            Method::GET,
            "/v1/keyrings/patients/versions/2/material",
            None,
        ),
        (
            "index_material",
            Method::GET,
            "/v1/keyrings/patients/index/1/material",
            None,
        ),
        ("changes", Method::GET, "/v1/changes?since=0", None),
        ("token.list", Method::GET, "/v1/tokens", None),
        (
            "token.create",
            Method::POST,
            "/v1/tokens",
            Some(r#"{"name":"m","role":"auditor"}"#),
        ),
        (
            "token.revoke",
            Method::DELETE,
            "/v1/tokens/tok_00000000000000000000000000000000",
            None,
        ),
        ("proxy.list", Method::GET, "/v1/proxies", None),
        (
            "proxy.set",
            Method::PUT,
            "/v1/proxies/proxy-m",
            Some(r#"{"keyrings":["patients"]}"#),
        ),
        (
            "proxy.delete",
            Method::DELETE,
            "/v1/proxies/proxy-none",
            None,
        ),
        ("audit.list", Method::GET, "/v1/audit", None),
        ("audit.verify", Method::GET, "/v1/audit/verify", None),
    ]
}

fn expected(identity: &str, endpoint: &str) -> u16 {
    if endpoint == "health" {
        return 200;
    }
    match identity {
        "anonymous" | "revoked" | "expired" | "malformed-token" | "unknown-token" => 401,
        "proxy" => match endpoint {
            "keyring.read" | "material" | "index_material" | "changes" => 200,
            _ => 403,
        },
        "proxy-ungranted" => match endpoint {
            "keyring.read" | "material" | "index_material" => 404,
            "changes" => 200,
            _ => 403,
        },
        "key-admin" => match endpoint {
            "keyring.create" | "token.create" => 201,
            "material" | "index_material" | "audit.list" | "audit.verify" => 403,
            "token.revoke" | "proxy.delete" => 404,
            _ => 200,
        },
        "auditor" => match endpoint {
            "keyring.list" | "keyring.read" | "changes" | "proxy.list" | "audit.list"
            | "audit.verify" => 200,
            _ => 403,
        },
        other => panic!("unknown identity {other}"),
    }
}

async fn setup(h: &Harness) -> Vec<(&'static str, Client)> {
    let admin = h.admin();
    admin.create_keyring("patients").await.unwrap();
    admin.rotate("patients").await.unwrap();
    admin.create_keyring("billing").await.unwrap();
    admin
        .set_proxy("proxy-a", &["patients".into()])
        .await
        .unwrap();
    admin
        .set_proxy("proxy-b", &["billing".into()])
        .await
        .unwrap();
    let auditor = admin
        .create_token("auditor", Role::Auditor, None)
        .await
        .unwrap();
    let revoked = admin
        .create_token("gone", Role::KeyAdmin, None)
        .await
        .unwrap();
    admin.revoke_token(&revoked.info.id).await.unwrap();
    let expiring = admin
        .create_token("short", Role::KeyAdmin, Some(2))
        .await
        .unwrap();
    // The expiring token works before it expires.
    h.with_token(&expiring.token).list_keyrings().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(3100)).await;
    let unknown = format!("pgsk_tok_{}_{}", "1".repeat(32), "2".repeat(64));
    vec![
        ("anonymous", h.anonymous()),
        ("revoked", h.with_token(&revoked.token)),
        ("expired", h.with_token(&expiring.token)),
        ("malformed-token", h.with_token("not-a-token")),
        ("unknown-token", h.with_token(&unknown)),
        ("proxy", h.proxy("proxy-a")),
        ("proxy-ungranted", h.proxy("proxy-b")),
        ("auditor", h.with_token(&auditor.token)),
        // key-admin last: it changes state.
        ("key-admin", h.admin()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_endpoint_matrix() {
    let h = Harness::start().await;
    let identities = setup(&h).await;
    let mut failures = Vec::new();
    let mut unauthorized_bodies = std::collections::BTreeSet::new();
    for (who, client) in &identities {
        for (label, method, path, body) in endpoints() {
            let (status, bytes) = client
                .raw(method, path, body.map(|b| b.as_bytes().to_vec()))
                .await
                .unwrap();
            let want = expected(who, label);
            if status != want {
                failures.push(format!(
                    "{who} {label}: got {status}, want {want}: {}",
                    String::from_utf8_lossy(&bytes)
                ));
            }
            if status == 401 {
                unauthorized_bodies.insert(bytes);
            }
        }
    }
    assert!(
        failures.is_empty(),
        "matrix mismatches:\n{}",
        failures.join("\n")
    );
    assert_eq!(
        unauthorized_bodies.len(),
        1,
        "every 401 must have the same body"
    );

    // A certificate from another CA never gets past the TLS handshake.
    let rogue = h.proxy_wrong_ca("proxy-a");
    for (_, method, path, _) in endpoints() {
        let r = rogue.raw(method, path, None).await;
        assert!(
            r.is_err(),
            "{path}: rogue certificate must be refused, got {r:?}"
        );
    }
    // The audit log recorded the denials too, and the chain is intact.
    let auditor = &identities.iter().find(|(w, _)| *w == "auditor").unwrap().1;
    let report = auditor.audit_verify().await.unwrap();
    assert!(report.ok, "{report:?}");
    let records = auditor.audit(0, 1000).await.unwrap().records;
    assert!(records
        .iter()
        .any(|r| r.actor == "anonymous" && r.outcome == "unauthenticated"));
    assert!(records
        .iter()
        .any(|r| r.actor.starts_with("proxy:proxy-b") && r.outcome == "not_found"));
    assert!(records
        .iter()
        .any(|r| r.action == "material.read" && r.outcome == "ok" && r.actor == "proxy:proxy-a"));
    assert!(records.iter().any(|r| r.action == "index_material.read"
        && r.outcome == "ok"
        && r.actor == "proxy:proxy-a"
        && r.detail.as_deref() == Some("generation=1")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_forbidden_keyrings_look_the_same() {
    let h = Harness::start().await;
    let admin = h.admin();
    admin.create_keyring("patients").await.unwrap();
    admin.create_keyring("billing").await.unwrap();
    admin
        .set_proxy("proxy-a", &["patients".into()])
        .await
        .unwrap();
    let auditor_tok = admin
        .create_token("aud", Role::Auditor, None)
        .await
        .unwrap();
    let proxy = h.proxy("proxy-a");
    let stranger = h.proxy("proxy-unregistered");
    let auditor = h.with_token(&auditor_tok.token);
    let anon = h.anonymous();

    let cases: Vec<(&Client, Method, String)> = vec![
        (&proxy, Method::GET, "/v1/keyrings/{}".into()),
        (
            &proxy,
            Method::GET,
            "/v1/keyrings/{}/versions/1/material".into(),
        ),
        (
            &proxy,
            Method::GET,
            "/v1/keyrings/{}/versions/9/material".into(),
        ),
        (&stranger, Method::GET, "/v1/keyrings/{}".into()),
        (
            &stranger,
            Method::GET,
            "/v1/keyrings/{}/versions/1/material".into(),
        ),
        (
            &proxy,
            Method::GET,
            "/v1/keyrings/{}/index/1/material".into(),
        ),
        (
            &proxy,
            Method::GET,
            "/v1/keyrings/{}/index/9/material".into(),
        ),
        (
            &stranger,
            Method::GET,
            "/v1/keyrings/{}/index/1/material".into(),
        ),
        (&auditor, Method::POST, "/v1/keyrings/{}/rotate".into()),
        (&proxy, Method::POST, "/v1/keyrings/{}/rotate".into()),
        (&anon, Method::GET, "/v1/keyrings/{}".into()),
        (
            &admin,
            Method::GET,
            "/v1/keyrings/{}/versions/1/material".into(),
        ),
    ];
    for (client, method, tmpl) in cases {
        let existing = client
            .raw(method.clone(), &tmpl.replace("{}", "billing"), None)
            .await
            .unwrap();
        let missing = client
            .raw(method.clone(), &tmpl.replace("{}", "nosuch"), None)
            .await
            .unwrap();
        assert_eq!(
            existing, missing,
            "{method} {tmpl}: existing-but-forbidden and unknown must look the same"
        );
        assert!(existing.0 >= 400);
    }
    // Sanity: the granted keyring does work for the proxy.
    assert_eq!(proxy.keyring("patients").await.unwrap().name, "patients");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_requests_change_nothing() {
    let h = Harness::start().await;
    let admin = h.admin();
    admin.create_keyring("patients").await.unwrap();
    admin
        .set_proxy("proxy-a", &["patients".into()])
        .await
        .unwrap();
    let before_keyrings = admin.list_keyrings().await.unwrap();
    let before_tokens = admin.list_tokens().await.unwrap();
    let before_proxies = admin.list_proxies().await.unwrap();
    let before_rev = admin.changes(0, None).await.unwrap().revision;

    let big = format!(r#"{{"name":"{}"}}"#, "a".repeat(64 * 1024));
    let cases: Vec<(Method, &str, Vec<u8>, u16)> = vec![
        (Method::POST, "/v1/keyrings", b"{not json".to_vec(), 400),
        (Method::POST, "/v1/keyrings", b"".to_vec(), 400),
        (
            Method::POST,
            "/v1/keyrings",
            br#"{"name":"x","extra":1}"#.to_vec(),
            400,
        ),
        (
            Method::POST,
            "/v1/keyrings",
            br#"{"nam":"x"}"#.to_vec(),
            400,
        ),
        (
            Method::POST,
            "/v1/keyrings",
            br#"{"name":"Bad Name!"}"#.to_vec(),
            400,
        ),
        (
            Method::POST,
            "/v1/keyrings",
            br#"{"name":""}"#.to_vec(),
            400,
        ),
        (
            Method::POST,
            "/v1/keyrings",
            br#"{"name":"../etc"}"#.to_vec(),
            400,
        ),
        (
            Method::POST,
            "/v1/keyrings",
            br#"{"name":"patients"}"#.to_vec(),
            409,
        ),
        (Method::POST, "/v1/keyrings", big.into_bytes(), 413),
        (
            Method::PUT,
            "/v1/keyrings/patients/min-decryption-version",
            br#"{"min_decryption_version":"1"}"#.to_vec(),
            400,
        ),
        (
            Method::PUT,
            "/v1/keyrings/patients/min-decryption-version",
            br#"{"min_decryption_version":5}"#.to_vec(),
            400,
        ),
        (
            Method::PUT,
            "/v1/keyrings/patients/min-decryption-version",
            br#"{"min_decryption_version":0}"#.to_vec(),
            400,
        ),
        (
            Method::PUT,
            "/v1/keyrings/patients/min-decryption-version",
            br#"{"min_decryption_version":-1}"#.to_vec(),
            400,
        ),
        (
            Method::POST,
            "/v1/keyrings/patients/versions/abc/disable",
            vec![],
            400,
        ),
        (
            Method::POST,
            "/v1/keyrings/patients/versions/0/disable",
            vec![],
            400,
        ),
        (
            Method::POST,
            "/v1/keyrings/patients/versions/1/explode",
            vec![],
            404,
        ),
        (
            Method::POST,
            "/v1/keyrings/patients/versions/1/disable",
            vec![],
            409,
        ),
        (Method::POST, "/v1/keyrings/BAD/rotate", vec![], 400),
        (
            Method::POST,
            "/v1/tokens",
            br#"{"name":"x","role":"root"}"#.to_vec(),
            400,
        ),
        (
            Method::POST,
            "/v1/tokens",
            br#"{"name":"x","role":"auditor","expires_in_secs":0}"#.to_vec(),
            400,
        ),
        (
            Method::POST,
            "/v1/tokens",
            br#"{"name":"","role":"auditor"}"#.to_vec(),
            400,
        ),
        (Method::DELETE, "/v1/tokens/not-a-token-id", vec![], 400),
        (
            Method::PUT,
            "/v1/proxies/proxy-a",
            br#"{"keyrings":["nosuch"]}"#.to_vec(),
            400,
        ),
        (
            Method::PUT,
            "/v1/proxies/proxy-a",
            br#"{"keyrings":["BAD!"]}"#.to_vec(),
            400,
        ),
        (
            Method::PUT,
            "/v1/proxies/Proxy_A",
            br#"{"keyrings":[]}"#.to_vec(),
            400,
        ),
        (Method::GET, "/v1/changes?since=abc", vec![], 400),
        (Method::GET, "/v1/changes?bogus=1", vec![], 400),
        (Method::GET, "/v1/nonexistent", vec![], 404),
    ];
    for (method, path, body, want) in cases {
        // After the 413 the server closes that connection without reading the body; the client
        // may not have seen the close yet and fail the next request on it: retry that once on a
        // new connection (a client error, not an answer of the server).
        let (status, bytes) = match admin.raw(method.clone(), path, Some(body.clone())).await {
            Err(pgseal_keyserver::client::ClientError::Http(e))
                if e.contains("connection closed") =>
            {
                admin.raw(method.clone(), path, Some(body)).await.unwrap()
            }
            other => other.unwrap(),
        };
        assert_eq!(
            status,
            want,
            "{method} {path}: {}",
            String::from_utf8_lossy(&bytes)
        );
        let v: serde_json::Value = serde_json::from_slice(&bytes).expect("error bodies are JSON");
        assert!(
            v["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{path}: clear message expected: {v}"
        );
    }
    assert_eq!(admin.list_keyrings().await.unwrap(), before_keyrings);
    assert_eq!(admin.list_tokens().await.unwrap(), before_tokens);
    assert_eq!(admin.list_proxies().await.unwrap(), before_proxies);
    assert_eq!(admin.changes(0, None).await.unwrap().revision, before_rev);
    let unknown_field = admin
        .raw(
            Method::POST,
            "/v1/keyrings",
            Some(br#"{"name":"x","extra":1}"#.to_vec()),
        )
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&unknown_field.1).contains("unknown field"));
    // A client error is reported as an API error by the typed client.
    match admin.create_keyring("Bad!").await {
        Err(ClientError::Api { status: 400, .. }) => {}
        other => panic!("expected 400, got {other:?}", other = other.map(|m| m.name)),
    }
}
