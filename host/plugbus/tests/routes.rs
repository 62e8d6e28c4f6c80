//! The HTTP routes in process, called with `tower::ServiceExt::oneshot`
//! (no socket): who may call what (401 naming what is wrong, a tenant's
//! routes scoped to its own token), ingest's refusals, and the admin and
//! operator routes. The answers are read with the API's own types
//! (`plugbus::api::types`), as the CLI reads them. Where the bytes on the
//! wire matter (connection limits, timeouts, framing), tests/http.rs goes
//! through a socket instead.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use plugbus::api::types::{
    DeadLettersAnswer, ErrorBody, FailuresAnswer, IngestAnswer, PluginState, PluginsAnswer,
    TenantsAnswer,
};
use plugbus::api::{Api, ApiConfig, ApiLimits};
use plugbus_artifacts as artifacts;
use serde::de::DeserializeOwned;
use tower::ServiceExt as _;

const ACME: &str = "acme-pos";
const GLOBEX: &str = "globex-retail";
const ACME_TOKEN: &str = "acme-route-token";
const GLOBEX_TOKEN: &str = "globex-route-token";
const ADMIN_TOKEN: &str = "admin-route-token";

/// The API over a durable bus, with acme's `audit` plugin loaded when
/// asked for.
struct Routes {
    api: Arc<Api>,
    _plugins: tempfile::TempDir,
    _data: tempfile::TempDir,
}

/// An answer: its status, headers and body.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    /// The body as the API type `T`.
    fn read<T: DeserializeOwned>(&self) -> T {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{}: {e}: {}",
                std::any::type_name::<T>(),
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The refusal, after checking its status.
    fn refused(&self, status: StatusCode) -> ErrorBody {
        assert_eq!(
            self.status,
            status,
            "{}",
            String::from_utf8_lossy(&self.body)
        );
        self.read()
    }
}

impl Routes {
    async fn new(with_plugin: bool) -> Self {
        let plugins = tempfile::tempdir().expect("plugins");
        let data = tempfile::tempdir().expect("data");
        let host = Arc::new(plugbus::Host::new(plugbus::HostConfig::default()).expect("a host"));
        if with_plugin {
            let acme = plugins.path().join(ACME);
            std::fs::create_dir_all(&acme).expect("tenant directory");
            std::fs::copy(artifacts::AUDIT_LOG, acme.join("audit.wasm")).expect("copy");
            host.load_dir(plugins.path()).expect("load");
        }
        let log =
            plugbus::log::SqliteLog::open(data.path(), plugbus::log::SqliteLogConfig::default())
                .expect("the log");
        let bus = Arc::new(
            plugbus::durable::DurableBus::start(
                host,
                Arc::new(log),
                plugbus::durable::DurableConfig::default(),
            )
            .await
            .expect("the bus"),
        );
        let hash = plugbus::config::hash_token;
        let api = Api::with_limits(
            bus,
            ApiConfig {
                max_body_bytes: 4096,
                max_batch_events: 3,
                tenant_tokens: [
                    (ACME.to_owned(), hash(ACME_TOKEN)),
                    (GLOBEX.to_owned(), hash(GLOBEX_TOKEN)),
                ]
                .into(),
                admin_token: Some(hash(ADMIN_TOKEN)),
                plugins_dir: with_plugin.then(|| plugins.path().to_owned()),
            },
            ApiLimits::default(),
            None,
        );
        Self {
            api,
            _plugins: plugins,
            _data: data,
        }
    }

    async fn call(&self, request: Request<Body>) -> Answer {
        let response = plugbus::api::router(self.api.clone())
            .oneshot(request)
            .await
            .expect("infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("the body");
        Answer {
            status,
            headers,
            body,
        }
    }

    /// A request without a body, with `token` as a bearer token.
    async fn send(&self, method: Method, path: &str, token: Option<&str>) -> Answer {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        self.call(request.body(Body::empty()).expect("a request"))
            .await
    }

    /// Posts `body` to `/v1/events` as `content_type` with `token`.
    async fn ingest(&self, token: &str, content_type: &str, body: impl Into<Body>) -> Answer {
        self.call(
            Request::post("/v1/events")
                .header(header::AUTHORIZATION, format!("Bearer {token}"))
                .header(header::CONTENT_TYPE, content_type)
                .body(body.into())
                .expect("a request"),
        )
        .await
    }
}

const STRUCTURED: &str = "application/cloudevents+json";
const BATCH: &str = "application/cloudevents-batch+json";

fn event(id: &str) -> String {
    format!(r#"{{"specversion":"1.0","id":"{id}","source":"/pos","type":"order.placed"}}"#)
}

/// Every way of not being let in is a 401 with `WWW-Authenticate: Bearer`
/// and a message naming what is wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_is_told_what_is_wrong() {
    let routes = Routes::new(false).await;
    let unauthorized = |answer: &Answer, needle: &str| {
        let refusal = answer.refused(StatusCode::UNAUTHORIZED);
        assert_eq!(refusal.error, "unauthorized");
        assert!(
            refusal.message.contains(needle),
            "{needle:?} not in {refusal:?}"
        );
        assert_eq!(
            answer
                .headers
                .get(header::WWW_AUTHENTICATE)
                .map(|v| v.as_bytes()),
            Some(&b"Bearer"[..])
        );
    };

    let answer = routes.send(Method::GET, "/v1/admin/plugins", None).await;
    unauthorized(&answer, "missing Authorization");

    let answer = routes
        .call(
            Request::get("/v1/admin/plugins")
                .header(header::AUTHORIZATION, "Basic YWRtaW46YWRtaW4=")
                .body(Body::empty())
                .expect("a request"),
        )
        .await;
    unauthorized(&answer, "not Bearer <token>");

    let answer = routes
        .send(Method::GET, "/v1/admin/plugins", Some("not-a-token"))
        .await;
    unauthorized(&answer, "not valid");

    // The admin token does not publish: events are a tenant's.
    let answer = routes.ingest(ADMIN_TOKEN, STRUCTURED, event("a-1")).await;
    unauthorized(&answer, "tenant's token");

    // A tenant's token does not open the admin routes.
    for (method, path) in [
        (Method::GET, "/v1/admin/plugins"),
        (Method::GET, "/v1/admin/tenants"),
        (Method::POST, "/v1/admin/reload"),
    ] {
        let answer = routes.send(method, path, Some(ACME_TOKEN)).await;
        unauthorized(&answer, "needs the admin token");
    }
}

/// A tenant's routes answer its own token and the admin's; another
/// tenant's token finds nothing there, as if the tenant did not exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_sees_only_its_own() {
    let routes = Routes::new(false).await;
    let paths = [
        (Method::GET, format!("/v1/tenants/{ACME}/plugins")),
        (Method::GET, format!("/v1/tenants/{ACME}/failures")),
        (
            Method::GET,
            format!("/v1/tenants/{ACME}/plugins/audit/dead-letters"),
        ),
        (
            Method::POST,
            format!("/v1/tenants/{ACME}/plugins/audit/resume"),
        ),
        (
            Method::POST,
            format!("/v1/tenants/{ACME}/plugins/audit/dead-letters/1/redrive"),
        ),
        (
            Method::DELETE,
            format!("/v1/tenants/{ACME}/plugins/audit/dead-letters/1"),
        ),
    ];
    for (method, path) in &paths {
        let answer = routes.send(method.clone(), path, Some(GLOBEX_TOKEN)).await;
        let refusal = answer.refused(StatusCode::NOT_FOUND);
        assert_eq!(refusal.error, "not_found", "{method} {path}");
        assert!(
            refusal.message.contains(&format!("no tenant {ACME:?}")),
            "{method} {path}: {refusal:?}"
        );
        let answer = routes.send(method.clone(), path, None).await;
        answer.refused(StatusCode::UNAUTHORIZED);
    }
    for token in [ACME_TOKEN, ADMIN_TOKEN] {
        let answer = routes
            .send(
                Method::GET,
                &format!("/v1/tenants/{ACME}/plugins"),
                Some(token),
            )
            .await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.read::<PluginsAnswer>(), PluginsAnswer::default());
        let answer = routes
            .send(
                Method::GET,
                &format!("/v1/tenants/{ACME}/failures"),
                Some(token),
            )
            .await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.read::<FailuresAnswer>(), FailuresAnswer::default());
    }
}

/// Ingest refuses what it cannot store with a 400 or 413 naming the
/// attribute, the event of the batch or the bound at fault, and stores
/// the rest once (a duplicate is recognised).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_names_what_it_refuses() {
    let routes = Routes::new(false).await;

    let answer = routes.ingest(ACME_TOKEN, STRUCTURED, "{not json").await;
    let refusal = answer.refused(StatusCode::BAD_REQUEST);
    assert_eq!(refusal.error, "invalid_event");

    let answer = routes
        .ingest(
            ACME_TOKEN,
            STRUCTURED,
            r#"{"specversion":"1.0","id":"x","type":"order.placed"}"#,
        )
        .await;
    let refusal = answer.refused(StatusCode::BAD_REQUEST);
    assert_eq!(refusal.attribute.as_deref(), Some("source"), "{refusal:?}");

    // The tenant is the token's.
    let answer = routes
        .ingest(
            ACME_TOKEN,
            STRUCTURED,
            format!(
                r#"{{"specversion":"1.0","id":"x","source":"/pos","type":"t","tenant":"{GLOBEX}"}}"#
            ),
        )
        .await;
    let refusal = answer.refused(StatusCode::BAD_REQUEST);
    assert_eq!(refusal.attribute.as_deref(), Some("tenant"), "{refusal:?}");

    let answer = routes.ingest(ACME_TOKEN, BATCH, event("b-1")).await;
    let refusal = answer.refused(StatusCode::BAD_REQUEST);
    assert_eq!(refusal.error, "invalid_batch");

    let answer = routes
        .ingest(
            ACME_TOKEN,
            BATCH,
            format!(
                r#"[{},{{"specversion":"1.0","id":"b-2","source":"/pos"}}]"#,
                event("b-1")
            ),
        )
        .await;
    let refusal = answer.refused(StatusCode::BAD_REQUEST);
    assert_eq!(refusal.index, Some(1), "{refusal:?}");
    assert_eq!(refusal.attribute.as_deref(), Some("type"), "{refusal:?}");

    let four = (0..4).map(|i| event(&format!("c-{i}"))).collect::<Vec<_>>();
    let answer = routes
        .ingest(ACME_TOKEN, BATCH, format!("[{}]", four.join(",")))
        .await;
    let refusal = answer.refused(StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(refusal.limit.as_deref(), Some("max_batch_events"));

    let answer = routes
        .ingest(ACME_TOKEN, STRUCTURED, format!("{:5000}", event("big")))
        .await;
    let refusal = answer.refused(StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(refusal.limit.as_deref(), Some("max_body_bytes"));

    // Binary mode without ce-specversion.
    let answer = routes
        .ingest(ACME_TOKEN, "application/json", r#"{"sku":"A"}"#)
        .await;
    let refusal = answer.refused(StatusCode::BAD_REQUEST);
    assert!(refusal.message.contains("ce-specversion"), "{refusal:?}");

    // Nothing of the refused requests was stored: the first event stored
    // is at position 1, and sent again it is a duplicate.
    let answer = routes.ingest(ACME_TOKEN, STRUCTURED, event("ok-1")).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED);
    let first = answer.read::<IngestAnswer>();
    assert_eq!(first.accepted.len(), 1);
    assert_eq!(first.accepted[0].id, "ok-1");
    assert_eq!(first.accepted[0].seq, 1);
    assert!(!first.accepted[0].duplicate);
    let again = routes
        .ingest(ACME_TOKEN, STRUCTURED, event("ok-1"))
        .await
        .read::<IngestAnswer>();
    assert_eq!(again.accepted[0].seq, 1);
    assert!(again.accepted[0].duplicate);

    let empty = routes.ingest(ACME_TOKEN, BATCH, "[]").await;
    assert_eq!(empty.status, StatusCode::ACCEPTED);
    assert_eq!(empty.read::<IngestAnswer>(), IngestAnswer::default());
}

/// The admin routes: every tenant and plugin, and a reload of the
/// plugins directory; the operator routes answer 404 naming what is not
/// there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_and_operator_routes() {
    let routes = Routes::new(true).await;

    let answer = routes
        .send(Method::GET, "/v1/admin/tenants", Some(ADMIN_TOKEN))
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    let tenants = answer.read::<TenantsAnswer>().tenants;
    let summary: Vec<_> = tenants
        .iter()
        .map(|t| (t.tenant.as_str(), t.has_token, t.plugins))
        .collect();
    assert_eq!(summary, [(ACME, true, 1), (GLOBEX, true, 0)]);

    let answer = routes
        .send(Method::GET, "/v1/admin/plugins", Some(ADMIN_TOKEN))
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    let plugins = answer.read::<PluginsAnswer>().plugins;
    assert_eq!(plugins.len(), 1, "{plugins:?}");
    let audit = &plugins[0];
    assert_eq!(
        (audit.tenant.as_str(), audit.plugin.as_str()),
        (ACME, "audit")
    );
    assert_eq!(audit.status, PluginState::Active);
    assert!(audit.version.is_some());
    assert!(audit.limits.is_some_and(|l| l.fuel > 0));
    assert_eq!(audit.quarantine, None);
    // The same view through the tenant's own route.
    let own = routes
        .send(
            Method::GET,
            &format!("/v1/tenants/{ACME}/plugins"),
            Some(ACME_TOKEN),
        )
        .await
        .read::<PluginsAnswer>();
    assert_eq!(own.plugins.len(), 1);
    assert_eq!(own.plugins[0].plugin, "audit");

    let answer = routes
        .send(Method::POST, "/v1/admin/reload", Some(ADMIN_TOKEN))
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    let reloaded = answer.read::<plugbus::api::types::ReloadAnswer>();
    assert_eq!((reloaded.plugins, reloaded.with_errors), (1, 0));

    let letters = routes
        .send(
            Method::GET,
            &format!("/v1/tenants/{ACME}/plugins/audit/dead-letters"),
            Some(ADMIN_TOKEN),
        )
        .await;
    assert_eq!(letters.status, StatusCode::OK);
    assert_eq!(
        letters.read::<DeadLettersAnswer>(),
        DeadLettersAnswer::default()
    );
    for (method, path, needle) in [
        (
            Method::GET,
            format!("/v1/tenants/{ACME}/plugins/audit/dead-letters/7"),
            "no dead letter at 7",
        ),
        (
            Method::POST,
            format!("/v1/tenants/{ACME}/plugins/audit/dead-letters/7/redrive"),
            "no dead letter at 7",
        ),
        (
            Method::DELETE,
            format!("/v1/tenants/{ACME}/plugins/audit/dead-letters/7"),
            "no dead letter at 7",
        ),
        (
            Method::POST,
            format!("/v1/tenants/{ACME}/plugins/audit/resume"),
            "is not quarantined",
        ),
    ] {
        let refusal = routes
            .send(method.clone(), &path, Some(ACME_TOKEN))
            .await
            .refused(StatusCode::NOT_FOUND);
        assert!(
            refusal.message.contains(needle),
            "{method} {path}: {refusal:?}"
        );
    }
    // Neither a position nor a time.
    let refusal = routes
        .send(
            Method::POST,
            &format!("/v1/tenants/{ACME}/plugins/audit/replay?from=yesterday"),
            Some(ACME_TOKEN),
        )
        .await
        .refused(StatusCode::BAD_REQUEST);
    assert_eq!(refusal.error, "invalid_replay", "{refusal:?}");
    assert!(refusal.message.contains("yesterday"), "{refusal:?}");
    // The loaded plugin has a cursor (at 0, nothing delivered yet).
    let answer = routes
        .send(
            Method::POST,
            &format!("/v1/tenants/{ACME}/plugins/audit/replay?from=1"),
            Some(ACME_TOKEN),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        answer.read::<plugbus::api::types::ReplayAnswer>(),
        plugbus::api::types::ReplayAnswer {
            before: 0,
            first: 1
        }
    );
    // A plugin that is not there has no cursor to move.
    let refusal = routes
        .send(
            Method::POST,
            &format!("/v1/tenants/{ACME}/plugins/ghost/replay?from=1"),
            Some(ACME_TOKEN),
        )
        .await
        .refused(StatusCode::NOT_FOUND);
    assert_eq!(refusal.error, "not_found", "{refusal:?}");
    assert!(refusal.message.contains("ghost"), "{refusal:?}");
}

/// A host without plugins directory has nothing to reload; without a
/// Prometheus recorder, `/metrics` is off; health and readiness answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_metrics_and_health_without_their_setup() {
    let routes = Routes::new(false).await;
    let refusal = routes
        .send(Method::POST, "/v1/admin/reload", Some(ADMIN_TOKEN))
        .await
        .refused(StatusCode::NOT_FOUND);
    assert!(
        refusal.message.contains("no plugins directory"),
        "{refusal:?}"
    );
    let refusal = routes
        .send(Method::GET, "/metrics", None)
        .await
        .refused(StatusCode::NOT_FOUND);
    assert_eq!(refusal.message, "metrics are off");
    let health = routes.send(Method::GET, "/healthz", None).await;
    assert_eq!(
        (health.status, &health.body[..]),
        (StatusCode::OK, &b"ok\n"[..])
    );
    let ready = routes.send(Method::GET, "/readyz", None).await;
    assert_eq!(
        (ready.status, &ready.body[..]),
        (StatusCode::OK, &b"ready\n"[..])
    );
}

/// A refusal names what the publisher sent: the header in binary mode
/// (`ce-id`, not the attribute `id`), the JSON member and the event's
/// index in a batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_name_the_header_or_the_member_sent() {
    let routes = Routes::new(false).await;
    let binary = Request::post("/v1/events")
        .header(header::AUTHORIZATION, format!("Bearer {ACME_TOKEN}"))
        .header(header::CONTENT_TYPE, "application/json")
        .header("ce-specversion", "1.0")
        .header("ce-source", "/pos")
        .header("ce-type", "order.placed")
        .body(Body::from(r#"{"sku":"A"}"#))
        .expect("a request");
    let refusal = routes.call(binary).await.refused(StatusCode::BAD_REQUEST);
    assert_eq!(refusal.error, "invalid_event");
    assert_eq!(refusal.attribute.as_deref(), Some("id"), "{refusal:?}");
    assert_eq!(
        refusal.message, "required header 'ce-id' is missing",
        "{refusal:?}"
    );

    let answer = routes
        .ingest(
            ACME_TOKEN,
            BATCH,
            format!(
                r#"[{},{{"specversion":"1.0","id":"b-2","source":"/pos","type":"t","time":"now"}}]"#,
                event("b-1")
            ),
        )
        .await;
    let refusal = answer.refused(StatusCode::BAD_REQUEST);
    assert_eq!(refusal.index, Some(1), "{refusal:?}");
    assert!(
        refusal.message.starts_with("event 1: attribute 'time': "),
        "{refusal:?}"
    );
    assert!(!refusal.message.contains("header"), "{refusal:?}");
}

/// `GET /v1/whoami` says whose a token is: the admin's, or a tenant's
/// and which; without a valid token it is a 401 naming what is wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whoami_names_the_token_s_role_and_tenant() {
    use plugbus::api::types::WhoAmI;
    let routes = Routes::new(false).await;
    let whoami = |token| routes.send(Method::GET, "/v1/whoami", token);
    let answer = whoami(Some(ADMIN_TOKEN)).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.read::<WhoAmI>(), WhoAmI::Admin);
    assert_eq!(&answer.body[..], br#"{"role":"admin"}"#);
    for (token, tenant) in [(ACME_TOKEN, ACME), (GLOBEX_TOKEN, GLOBEX)] {
        let answer = whoami(Some(token)).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(
            answer.read::<WhoAmI>(),
            WhoAmI::Tenant {
                tenant: tenant.to_owned()
            }
        );
    }
    let answer = whoami(Some(ACME_TOKEN)).await;
    assert_eq!(
        &answer.body[..],
        format!(r#"{{"role":"tenant","tenant":"{ACME}"}}"#).as_bytes()
    );
    let refusal = whoami(Some("not-a-token"))
        .await
        .refused(StatusCode::UNAUTHORIZED);
    assert!(refusal.message.contains("not valid"), "{refusal:?}");
    let refusal = whoami(None).await.refused(StatusCode::UNAUTHORIZED);
    assert!(
        refusal.message.contains("missing Authorization"),
        "{refusal:?}"
    );
}

/// [`Routes`] with acme's `audit` plugin, and its log, into which a test
/// commits the plugin's state and emits as its deliveries would.
async fn inspected() -> (Routes, Arc<plugbus::log::SqliteLog>) {
    let plugins = tempfile::tempdir().expect("plugins");
    let data = tempfile::tempdir().expect("data");
    let host = Arc::new(plugbus::Host::new(plugbus::HostConfig::default()).expect("a host"));
    let acme = plugins.path().join(ACME);
    std::fs::create_dir_all(&acme).expect("tenant directory");
    std::fs::copy(artifacts::AUDIT_LOG, acme.join("audit.wasm")).expect("copy");
    host.load_dir(plugins.path()).expect("load");
    let log = Arc::new(
        plugbus::log::SqliteLog::open(data.path(), plugbus::log::SqliteLogConfig::default())
            .expect("the log"),
    );
    let bus = Arc::new(
        plugbus::durable::DurableBus::start(
            host,
            log.clone(),
            plugbus::durable::DurableConfig::default(),
        )
        .await
        .expect("the bus"),
    );
    let hash = plugbus::config::hash_token;
    let api = Api::new(
        bus,
        ApiConfig {
            tenant_tokens: [
                (ACME.to_owned(), hash(ACME_TOKEN)),
                (GLOBEX.to_owned(), hash(GLOBEX_TOKEN)),
            ]
            .into(),
            admin_token: Some(hash(ADMIN_TOKEN)),
            ..ApiConfig::default()
        },
        None,
    );
    let routes = Routes {
        api,
        _plugins: plugins,
        _data: data,
    };
    (routes, log)
}

/// `GET base` answers the admin as it answered acme (`expected`), and
/// globex's token finds no tenant acme.
async fn seen_by_the_admin_not_by_globex<T>(routes: &Routes, base: &str, expected: &T)
where
    T: DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let admin = routes.send(Method::GET, base, Some(ADMIN_TOKEN)).await;
    assert_eq!(&admin.read::<T>(), expected);
    let refusal = routes
        .send(Method::GET, base, Some(GLOBEX_TOKEN))
        .await
        .refused(StatusCode::NOT_FOUND);
    assert!(
        refusal.message.contains(&format!("no tenant {ACME:?}")),
        "{refusal:?}"
    );
}

/// Commits `state` and `emitted` as a delivery of acme's `audit` would,
/// leaving its cursor where it is.
async fn commit_as_audit(
    log: &plugbus::log::SqliteLog,
    state: Vec<plugbus::state::StateWrite>,
    emitted: Vec<plugbus::Event>,
) -> Vec<u64> {
    use plugbus::log::CursorStore as _;
    log.commit(plugbus::log::Commit {
        tenant: ACME.into(),
        plugin: "audit".into(),
        cursor: 0,
        // Not its cursor: the cursor stays, the rest is committed.
        expected: Some(u64::MAX),
        state,
        emitted,
        ..plugbus::log::Commit::default()
    })
    .await
    .expect("commit")
    .emitted
}

/// A plugin's state through `GET .../state` and `GET .../state/{key}`:
/// JSON values as JSON, other bytes in base64, in key order, by prefix, a
/// page at a time; its tenant and the admin see it, another tenant finds
/// nothing, and an unknown tenant, plugin or key is a 404 naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugins_state_is_seen_by_its_tenant_and_the_admin() {
    use plugbus::api::types::{Encoding, StateAnswer, StateEntryView};
    let (routes, log) = inspected().await;
    fn set(key: &str, value: &[u8]) -> plugbus::state::StateWrite {
        plugbus::state::StateWrite {
            key: key.into(),
            value: Some(value.to_vec()),
        }
    }
    commit_as_audit(
        &log,
        vec![
            set("order/1", br#"{"status":"paid","total":12}"#),
            set("order/2", b"[1, 2]"),
            set("count", b"7"),
            set("blob", &[0, 159, 146, 150]),
            set("text", b"hello"),
            set("padded", b" 1\n"),
        ],
        Vec::new(),
    )
    .await;
    let base = format!("/v1/tenants/{ACME}/plugins/audit/state");

    let answer = routes.send(Method::GET, &base, Some(ACME_TOKEN)).await;
    assert_eq!(answer.status, StatusCode::OK);
    // A JSON value is the JSON itself on the wire.
    let body = String::from_utf8_lossy(&answer.body).into_owned();
    assert!(
        body.contains(
            r#"{"key":"order/1","encoding":"json","value":{"status":"paid","total":12}}"#
        ),
        "{body}"
    );
    let state = answer.read::<StateAnswer>();
    assert_eq!(
        (state.tenant.as_str(), state.plugin.as_str()),
        (ACME, "audit")
    );
    let shown: Vec<(&str, Encoding, &str)> = state
        .entries
        .iter()
        .map(|e| (e.key.as_str(), e.encoding, e.value.get()))
        .collect();
    assert_eq!(
        shown,
        [
            ("blob", Encoding::Base64, r#""AJ+Slg==""#),
            ("count", Encoding::Json, "7"),
            ("order/1", Encoding::Json, r#"{"status":"paid","total":12}"#),
            ("order/2", Encoding::Json, "[1, 2]"),
            // Its whitespace would be lost as JSON: base64, exact.
            ("padded", Encoding::Base64, r#""IDEK""#),
            ("text", Encoding::Base64, r#""aGVsbG8=""#),
        ]
    );
    assert_eq!(state.next_after, None);
    assert_eq!(
        state.entries[0].stored().bytes(),
        Some(vec![0, 159, 146, 150])
    );
    assert_eq!(state.entries[4].stored().bytes(), Some(b" 1\n".to_vec()));

    // The admin sees the same; another tenant finds no such tenant.
    seen_by_the_admin_not_by_globex(&routes, &base, &state).await;
    let refusal = routes
        .send(Method::GET, &format!("{base}/count"), Some(GLOBEX_TOKEN))
        .await
        .refused(StatusCode::NOT_FOUND);
    assert!(
        refusal.message.contains(&format!("no tenant {ACME:?}")),
        "{refusal:?}"
    );
    routes
        .send(Method::GET, &base, None)
        .await
        .refused(StatusCode::UNAUTHORIZED);

    // By prefix, a page at a time.
    let page = routes
        .send(
            Method::GET,
            &format!("{base}?prefix=order%2F&limit=1"),
            Some(ACME_TOKEN),
        )
        .await
        .read::<StateAnswer>();
    let keys: Vec<_> = page.entries.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["order/1"]);
    assert_eq!(page.next_after.as_deref(), Some("order/1"));
    let page = routes
        .send(
            Method::GET,
            &format!("{base}?prefix=order/&after=order%2F1&limit=1"),
            Some(ACME_TOKEN),
        )
        .await
        .read::<StateAnswer>();
    let keys: Vec<_> = page.entries.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["order/2"]);
    assert_eq!(page.next_after, None);
    let page = routes
        .send(
            Method::GET,
            &format!("{base}?after=padded"),
            Some(ACME_TOKEN),
        )
        .await
        .read::<StateAnswer>();
    let keys: Vec<_> = page.entries.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["text"]);
    for query in ["limit=0", "limit=1001", "limit=many"] {
        let refusal = routes
            .send(Method::GET, &format!("{base}?{query}"), Some(ACME_TOKEN))
            .await
            .refused(StatusCode::BAD_REQUEST);
        assert_eq!(refusal.error, "invalid_query", "{query}: {refusal:?}");
    }

    // One key, its slash as it is or percent-encoded.
    for path in [format!("{base}/order/1"), format!("{base}/order%2F1")] {
        let answer = routes.send(Method::GET, &path, Some(ACME_TOKEN)).await;
        assert_eq!(answer.status, StatusCode::OK, "{path}");
        assert_eq!(answer.read::<StateEntryView>(), state.entries[2], "{path}");
    }
    let refusal = routes
        .send(Method::GET, &format!("{base}/order/9"), Some(ADMIN_TOKEN))
        .await
        .refused(StatusCode::NOT_FOUND);
    assert!(refusal.message.contains(r#""order/9""#), "{refusal:?}");

    // A plugin or a tenant the host does not know.
    for (path, needle) in [
        (format!("/v1/tenants/{ACME}/plugins/ghost/state"), "ghost"),
        (format!("/v1/tenants/{ACME}/plugins/ghost/state/k"), "ghost"),
        (format!("/v1/tenants/{ACME}/plugins/ghost/emits"), "ghost"),
        (
            "/v1/tenants/nobody/plugins/audit/state".to_owned(),
            "nobody",
        ),
        (
            "/v1/tenants/nobody/plugins/audit/emits".to_owned(),
            "nobody",
        ),
    ] {
        let refusal = routes
            .send(Method::GET, &path, Some(ADMIN_TOKEN))
            .await
            .refused(StatusCode::NOT_FOUND);
        assert_eq!(refusal.error, "not_found", "{path}");
        assert!(refusal.message.contains(needle), "{path}: {refusal:?}");
    }
    // A tenant with a token and no plugins is known; its plugin is not.
    let refusal = routes
        .send(
            Method::GET,
            &format!("/v1/tenants/{GLOBEX}/plugins/audit/state"),
            Some(GLOBEX_TOKEN),
        )
        .await
        .refused(StatusCode::NOT_FOUND);
    assert!(
        refusal.message.contains("no plugin \"audit\""),
        "{refusal:?}"
    );
}

/// What a plugin emitted through `GET .../emits`: newest first, with its
/// causation and its data, a page at a time; published events are not
/// among them; scoped to the tenant as the other routes are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugins_emits_are_listed_newest_first() {
    use plugbus::api::types::{EmitsAnswer, Encoding};
    let (routes, log) = inspected().await;
    let published = routes.ingest(ACME_TOKEN, STRUCTURED, event("e-1")).await;
    assert_eq!(published.status, StatusCode::ACCEPTED);
    let emitted = |id: &str, data: serde_json::Value| {
        let mut event = serde_json::json!({
            "specversion": "1.0",
            "id": id,
            "source": format!("plugbus://{ACME}/audit"),
            "type": "audit.recorded",
            "subject": "order-1",
            "time": "2026-11-30T08:00:00Z",
            "causationid": "e-1",
            "tenant": ACME,
        });
        let object = event.as_object_mut().expect("an object");
        for (name, value) in data.as_object().expect("an object") {
            object.insert(name.clone(), value.clone());
        }
        plugbus::Event::from_json_value(event).expect("a valid event")
    };
    let first = commit_as_audit(
        &log,
        Vec::new(),
        vec![emitted("x-1", serde_json::json!({"data": {"n": 1}}))],
    )
    .await;
    let later = commit_as_audit(
        &log,
        Vec::new(),
        vec![
            emitted("x-2", serde_json::json!({"data_base64": "AP8="})),
            emitted("x-3", serde_json::json!({})),
        ],
    )
    .await;
    let base = format!("/v1/tenants/{ACME}/plugins/audit/emits");

    let answer = routes.send(Method::GET, &base, Some(ACME_TOKEN)).await;
    assert_eq!(answer.status, StatusCode::OK);
    let emits = answer.read::<EmitsAnswer>();
    let ids: Vec<_> = emits.emits.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["x-3", "x-2", "x-1"], "newest first, none published");
    let seqs: Vec<_> = emits.emits.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [later[1], later[0], first[0]]);
    assert_eq!(emits.next_before, None);
    let x1 = &emits.emits[2];
    assert_eq!(x1.ty, "audit.recorded");
    assert_eq!(x1.subject.as_deref(), Some("order-1"));
    assert_eq!(x1.time.as_deref(), Some("2026-11-30T08:00:00Z"));
    assert_eq!(x1.causation_id.as_deref(), Some("e-1"));
    assert!(!x1.appended_at.is_empty());
    let data = x1.data.as_ref().expect("data");
    assert_eq!(
        (data.encoding, data.value.get()),
        (Encoding::Json, r#"{"n":1}"#)
    );
    let data = emits.emits[1].data.as_ref().expect("data");
    assert_eq!(data.encoding, Encoding::Base64);
    assert_eq!(data.bytes(), Some(vec![0, 255]));
    assert_eq!(emits.emits[0].data, None, "no data");

    // A page at a time.
    let page = routes
        .send(Method::GET, &format!("{base}?limit=2"), Some(ACME_TOKEN))
        .await
        .read::<EmitsAnswer>();
    assert_eq!(page.emits.len(), 2);
    assert_eq!(page.next_before, Some(later[0]));
    let rest = routes
        .send(
            Method::GET,
            &format!("{base}?limit=2&before={}", later[0]),
            Some(ACME_TOKEN),
        )
        .await
        .read::<EmitsAnswer>();
    let ids: Vec<_> = rest.emits.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["x-1"]);
    assert_eq!(rest.next_before, None);

    seen_by_the_admin_not_by_globex(&routes, &base, &emits).await;
    let refusal = routes
        .send(Method::GET, &format!("{base}?limit=1001"), Some(ACME_TOKEN))
        .await
        .refused(StatusCode::BAD_REQUEST);
    assert!(refusal.message.contains("1000"), "{refusal:?}");
}
