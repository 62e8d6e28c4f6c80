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
