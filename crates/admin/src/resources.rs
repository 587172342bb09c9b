//! The `/apisix/admin/...` resource endpoints, as APISIX's Admin API v3
//! answers them (`apisix/admin/resource.lua`, `v3_adapter.lua`), and the
//! portcullis extensions under `/portcullis/v1/`.
//!
//! A write goes: parse → resolve its id as APISIX does → build the whole
//! candidate config (what is stored plus this change) → `Live::check` →
//! store it with its change record → `Live::apply`. Anything refused before
//! the store step leaves the store untouched.

use bytes::Bytes;
use portcullis_config::{Kind, Live, RawConfig, RawResource, Snapshot};
use portcullis_core::ConfigError;
use portcullis_store::{secrets, ChangeFilter, ChangeMeta, Store, StoreError};
use serde_json::{json, Map, Value};

use crate::{patch, references, Admin, Ctx, Mode, Reply};

#[path = "etcd_mode.rs"]
mod etcd_mode;

/// What a path names.
struct Target {
    kind: Kind,
    /// For credentials, the consumer they belong to.
    consumer: Option<String>,
    /// The resource's own id (for credentials, without the consumer).
    id: Option<String>,
    /// What follows the id: PATCH replaces that field.
    sub_path: String,
}

impl Target {
    /// The id the store and the config know the resource by.
    fn full_id(&self, own: &str) -> String {
        match &self.consumer {
            Some(user) => format!("{user}/{own}"),
            None => own.to_string(),
        }
    }
}

/// A resource as an answer shows it.
struct Entry {
    id: String,
    value: Value,
    created_index: u64,
    modified_index: u64,
}

/// APISIX's singular names, used in its messages (`missing route id`).
fn label(kind: Kind) -> &'static str {
    match kind {
        Kind::Routes => "route",
        Kind::Services => "service",
        Kind::Upstreams => "upstream",
        Kind::Consumers => "consumer",
        Kind::Credentials => "credential",
        Kind::ConsumerGroups => "consumer group",
        Kind::PluginConfigs => "plugin config",
        Kind::GlobalRules => "global rule",
        Kind::Ssls => "ssl",
        Kind::PluginMetadata => "plugin_metadata",
    }
}

/// The etcd key APISIX shows for a resource.
fn key_of(kind: Kind, id: &str) -> String {
    match (kind, id.split_once('/')) {
        (Kind::Credentials, Some((user, cred))) => {
            format!("/apisix/consumers/{user}/credentials/{cred}")
        }
        _ => format!("/apisix/{}/{id}", kind.as_str()),
    }
}

fn origin(kind: Kind, id: &str) -> String {
    format!("{}/{id}", kind.as_str())
}

fn item(kind: Kind, e: &Entry) -> Value {
    json!({
        "key": key_of(kind, &e.id),
        "value": secrets::masked(kind, &e.value),
        "createdIndex": e.created_index,
        "modifiedIndex": e.modified_index,
    })
}

fn internal(e: StoreError) -> Reply {
    tracing::error!(error = %e, "admin store operation failed");
    Reply::error(500, "failed to access the store")
}

fn parse_target(rest: &str) -> Result<Target, Reply> {
    let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let Some(&res) = segs.first() else {
        return Err(Reply::error(404, "Unsupported resource type: "));
    };
    if res == "consumers" && segs.get(2) == Some(&"credentials") {
        return Ok(Target {
            kind: Kind::Credentials,
            consumer: Some(segs[1].to_string()),
            id: segs.get(3).map(|s| s.to_string()),
            sub_path: segs.get(4..).map(|s| s.join("/")).unwrap_or_default(),
        });
    }
    let kind = Kind::parse(res)
        .filter(|k| *k != Kind::Credentials)
        .ok_or_else(|| Reply::error(404, format!("Unsupported resource type: {res}")))?;
    Ok(Target {
        kind,
        consumer: None,
        id: segs.get(1).map(|s| s.to_string()),
        sub_path: segs.get(2..).map(|s| s.join("/")).unwrap_or_default(),
    })
}

pub(crate) async fn handle(admin: &Admin, ctx: &Ctx, rest: &str, body: &Bytes) -> Reply {
    if let Some(plugin) = rest.strip_prefix("plugins") {
        return plugins(ctx, plugin.trim_matches('/'));
    }
    let target = match parse_target(rest) {
        Ok(t) => t,
        Err(r) => return r,
    };
    if let (Some(etcd), false) = (&admin.etcd, ctx.method == http::Method::GET) {
        return etcd_mode::write(admin, etcd, ctx, &target, body)
            .await
            .unwrap_or_else(|r| r);
    }
    let result = match ctx.method {
        http::Method::GET => Ok(get(admin, ctx, &target)),
        http::Method::PUT => put_or_post(admin, ctx, &target, body, false).await,
        http::Method::POST => put_or_post(admin, ctx, &target, body, true).await,
        http::Method::PATCH => patch(admin, ctx, &target, body).await,
        http::Method::DELETE => delete(admin, ctx, &target).await,
        _ => Err(Reply::error(404, "not found")),
    };
    result.unwrap_or_else(|r| r)
}

fn plugins(ctx: &Ctx, rest: &str) -> Reply {
    // APISIX re-reads its plugin list from config.yaml here. Ours is
    // compiled in and every config change already rebuilds the plugins, so
    // there is nothing to reload: answer as APISIX does, so scripts and
    // SDKs that call it keep working.
    if ctx.method == http::Method::PUT && rest == "reload" {
        return Reply::new(200, Value::String("done".into()));
    }
    if ctx.method != http::Method::GET {
        return Reply::error(405, "not supported method for plugins");
    }
    match rest {
        "" | "list" => Reply::new(
            200,
            Value::Array(
                portcullis_plugins::plugin_names()
                    .map(|n| Value::String(n.to_string()))
                    .collect(),
            ),
        ),
        name => match portcullis_plugins::plugin_schema(name) {
            Some(schema) => Reply::new(200, schema),
            None => Reply::error(404, format!("plugin not found: {name}")),
        },
    }
}

/// Every resource of `kind` the API can show, from the store or, when the
/// Admin API is read-only, from the configuration being served.
fn read_all(admin: &Admin, kind: Kind) -> Result<Vec<Entry>, Reply> {
    if let Some(etcd) = &admin.etcd {
        return Ok(etcd_mode::read_all(etcd, kind));
    }
    match &admin.mode {
        Mode::Store(store) => Ok(store
            .list(kind)
            .map_err(internal)?
            .into_iter()
            .map(|r| Entry {
                id: r.id,
                value: r.value,
                created_index: r.created_index,
                modified_index: r.modified_index,
            })
            .collect()),
        Mode::ReadOnly(_) => Ok(admin
            .live
            .load()
            .raw
            .of(kind)
            .iter()
            .map(|r| Entry {
                id: r.id.clone(),
                value: Value::clone(&r.value),
                created_index: 0,
                modified_index: 0,
            })
            .collect()),
    }
}

fn read_one(admin: &Admin, kind: Kind, id: &str) -> Result<Option<Entry>, Reply> {
    if let Some(etcd) = &admin.etcd {
        return Ok(etcd_mode::read_one(etcd, kind, id));
    }
    match &admin.mode {
        Mode::Store(store) => Ok(store.get(kind, id).map_err(internal)?.map(|r| Entry {
            id: r.id,
            value: r.value,
            created_index: r.created_index,
            modified_index: r.modified_index,
        })),
        Mode::ReadOnly(_) => Ok(read_all(admin, kind)?.into_iter().find(|e| e.id == id)),
    }
}

fn get(admin: &Admin, ctx: &Ctx, t: &Target) -> Reply {
    let result = match &t.id {
        Some(own) => read_one(admin, t.kind, &t.full_id(own)).map(|found| match found {
            Some(e) => Reply::new(200, item(t.kind, &e)),
            None => Reply::not_found(),
        }),
        None => read_all(admin, t.kind).and_then(|all| list(ctx, t, all)),
    };
    result.unwrap_or_else(|r| r)
}

/// A pattern APISIX matches with a regex; a pattern that is not a valid
/// regex matches as plain text rather than failing the request.
fn matches(pattern: &str, text: &str) -> bool {
    match regex::Regex::new(pattern) {
        Ok(re) => re.is_match(text),
        Err(_) => text.contains(pattern),
    }
}

fn list(ctx: &Ctx, t: &Target, all: Vec<Entry>) -> Result<Reply, Reply> {
    let prefix = t.consumer.as_ref().map(|u| format!("{u}/"));
    let q = &ctx.query;
    let mut items: Vec<Entry> = all
        .into_iter()
        .filter(|e| prefix.as_ref().is_none_or(|p| e.id.starts_with(p.as_str())))
        .filter(|e| {
            q.get("name").is_none_or(|n| {
                e.value
                    .get("name")
                    .and_then(Value::as_str)
                    .is_some_and(|v| matches(n, v))
            })
        })
        .filter(|e| {
            q.get("label").is_none_or(|l| {
                e.value
                    .get("labels")
                    .and_then(Value::as_object)
                    .is_some_and(|labels| labels.contains_key(l))
            })
        })
        .filter(|e| {
            q.get("uri").is_none_or(|u| {
                let one = e.value.get("uri").and_then(Value::as_str);
                let many = e.value.get("uris").and_then(Value::as_array);
                one.is_some_and(|v| matches(u, v))
                    || many
                        .is_some_and(|l| l.iter().filter_map(Value::as_str).any(|v| matches(u, v)))
            })
        })
        .collect();
    let total = items.len();
    let page = q.get("page").and_then(|p| p.parse::<usize>().ok());
    let page_size = q.get("page_size").and_then(|p| p.parse::<usize>().ok());
    if let (Some(page), Some(size)) = (page, page_size) {
        if !(10..=500).contains(&size) {
            return Err(Reply::error(400, "page_size must be between 10 and 500"));
        }
        items.sort_by_key(|e| e.created_index);
        let from = page.max(1).saturating_sub(1).saturating_mul(size);
        items = items.into_iter().skip(from).take(size).collect();
    }
    Ok(Reply::new(
        200,
        json!({
            "total": total,
            "list": items.iter().map(|e| item(t.kind, e)).collect::<Vec<_>>(),
        }),
    ))
}

fn writable(admin: &Admin) -> Result<&std::sync::Arc<Store>, Reply> {
    match &admin.mode {
        Mode::Store(store) => Ok(store),
        Mode::ReadOnly(msg) => Err(Reply::error(400, msg.clone())),
    }
}

fn parse_body(body: &Bytes, missing: &str) -> Result<Value, Reply> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(Reply::error(400, missing));
    }
    serde_json::from_slice(body)
        .map_err(|e| Reply::error(400, format!("invalid request body: {e}")))
}

fn parse_object(body: &Bytes) -> Result<Map<String, Value>, Reply> {
    match parse_body(body, "missing configurations")? {
        Value::Object(m) => Ok(m),
        _ => Err(Reply::error(
            400,
            "invalid configuration: expected a JSON object",
        )),
    }
}

fn ttl(ctx: &Ctx) -> Result<Option<f64>, Reply> {
    match ctx.query.get("ttl") {
        None => Ok(None),
        Some(t) => match t.parse::<f64>() {
            Ok(secs) if secs.is_finite() && secs > 0.0 => Ok(Some(secs)),
            _ => Err(Reply::error(
                400,
                "invalid argument ttl: should be a number",
            )),
        },
    }
}

/// An id as a body writes it: string or integer.
fn id_in(value: &Map<String, Value>, field: &str) -> Option<String> {
    match value.get(field)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Ids become path segments and etcd keys, so they are held to APISIX's
/// id pattern (`^[a-zA-Z0-9-_.]+$`, at most 64 characters).
fn check_id(field: &str, id: &str) -> Result<(), Reply> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Reply::error(
            400,
            format!("invalid configuration: {field}: must be 1 to 64 characters of a-z, A-Z, 0-9, '-', '_' and '.'"),
        ))
    }
}

/// Settle the id of a PUT or POST as APISIX does, and write it into the value.
fn resolve_id(
    admin: &Admin,
    t: &Target,
    value: &mut Map<String, Value>,
    post: bool,
) -> Result<String, Reply> {
    let name = label(t.kind);
    match t.kind {
        Kind::Consumers => {
            if post {
                return Err(Reply::error(
                    405,
                    "not supported `POST` method for consumer",
                ));
            }
            if let Some(path_user) = &t.id {
                match id_in(value, "username") {
                    None => {
                        value.insert("username".into(), Value::String(path_user.clone()));
                    }
                    Some(u) if &u != path_user => return Err(Reply::error(400, "wrong username")),
                    Some(_) => {}
                }
            }
            let user = id_in(value, "username")
                .ok_or_else(|| Reply::error(400, "invalid configuration: username: required"))?;
            check_id("username", &user)?;
            Ok(user)
        }
        Kind::PluginMetadata => {
            if post {
                return Err(Reply::error(
                    405,
                    "not supported `POST` method for plugin_metadata",
                ));
            }
            let plugin =
                t.id.clone()
                    .ok_or_else(|| Reply::error(400, "missing plugin name"))?;
            if portcullis_plugins::plugin_schema(&plugin).is_none() {
                return Err(Reply::error(400, "invalid plugin name"));
            }
            value.insert("id".into(), Value::String(plugin.clone()));
            Ok(plugin)
        }
        _ => {
            let own = if post {
                if t.id.is_some() || value.contains_key("id") {
                    return Err(Reply::error(
                        400,
                        format!("wrong {name} id, do not need it"),
                    ));
                }
                admin
                    .store()
                    .ok_or_else(|| Reply::error(400, "read-only"))?
                    .next_id()
                    .map_err(internal)?
            } else {
                let body_id = id_in(value, "id");
                match (&t.id, body_id) {
                    (Some(p), Some(b)) if *p != b => {
                        return Err(Reply::error(400, format!("wrong {name} id")))
                    }
                    (Some(p), _) => p.clone(),
                    (None, Some(b)) => b,
                    (None, None) => return Err(Reply::error(400, format!("missing {name} id"))),
                }
            };
            check_id("id", &own)?;
            value.insert("id".into(), Value::String(own.clone()));
            Ok(t.full_id(&own))
        }
    }
}

/// APISIX refuses client-set timestamps on PUT and POST.
fn forbid_timestamps(value: &Map<String, Value>) -> Result<(), Reply> {
    for field in ["create_time", "update_time"] {
        if value.contains_key(field) {
            return Err(Reply::error(
                400,
                format!("the property is forbidden:  {field}"),
            ));
        }
    }
    Ok(())
}

/// The one message a refused write answers with: APISIX's own words for
/// plugin and reference errors, `invalid configuration: <field>: <why>`
/// otherwise. An error in another resource (an edit that breaks a route
/// using it) names that resource.
fn describe(kind: Kind, origin: &str, errors: &[ConfigError]) -> String {
    let Some(e) = errors
        .iter()
        .find(|e| e.resource == origin)
        .or_else(|| errors.first())
    else {
        return "invalid configuration".into();
    };
    let ours = e.resource == origin;
    let msg = &e.message;
    // Messages the config layer already words as APISIX does.
    if msg.starts_with("failed to fetch ")
        || msg.starts_with("invalid plugins configuration: ")
        || msg == "consumer not found"
    {
        return msg.clone();
    }
    let plugin = msg.starts_with("failed to check the configuration of plugin")
        || msg.starts_with("unknown plugin");
    if plugin {
        if ours && matches!(kind, Kind::Consumers | Kind::Credentials) {
            format!("invalid plugins configuration: {msg}")
        } else {
            msg.clone()
        }
    } else if ours {
        format!("invalid configuration: {}", e.field_message())
    } else {
        format!("invalid configuration: {e}")
    }
}

/// Validate and compile the candidate config; refusals name the field.
fn prepare(live: &Live, candidate: RawConfig, kind: Kind, id: &str) -> Result<Snapshot, Reply> {
    live.prepare(candidate)
        .map_err(|errors| Reply::error(400, describe(kind, &origin(kind, id), &errors)))
}

/// API keys and basic-auth passwords are stored as digests, never as
/// written (see portcullis_plugins::secrets_at_rest).
pub(crate) fn seal(kind: Kind, value: &mut Value) {
    if matches!(kind, Kind::Consumers | Kind::Credentials) {
        if let Some(Value::Object(plugins)) = value.get_mut("plugins") {
            portcullis_plugins::secrets_at_rest::seal_credentials(plugins);
        }
    }
}

/// The served configuration, to build a write's candidate from. In store
/// mode it is what the store holds (every write and expiry goes through
/// here), and copying it copies pointers, not JSON.
fn served(live: &Live) -> RawConfig {
    RawConfig::clone(&live.load().raw)
}

/// Serve what the store now holds. The write was checked against the same
/// config moments ago under the write lock, so a failure here means the
/// check and the build disagree: logged loudly, the old config keeps serving.
pub(crate) fn apply_from_store(live: &Live, store: &Store) {
    match store.load_raw() {
        Ok(raw) => {
            if let Err(errors) = live.apply(raw) {
                for e in &errors {
                    tracing::error!(error = %e, "stored configuration was refused by the snapshot build");
                }
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot read the store to apply it"),
    }
}

fn meta(ctx: &Ctx) -> ChangeMeta {
    ChangeMeta::new(ctx.actor.clone(), ctx.client.clone(), ctx.method.as_str())
}

/// Check, store and apply one resource; answer with it.
fn commit(
    admin: &Admin,
    store: &Store,
    ctx: &Ctx,
    kind: Kind,
    id: &str,
    mut value: Value,
    ttl: Option<f64>,
) -> Result<Reply, Reply> {
    seal(kind, &mut value);
    let mut candidate = served(&admin.live);
    candidate.upsert(
        kind,
        RawResource {
            id: id.to_string(),
            value: value.clone().into(),
            origin: origin(kind, id),
        },
    );
    let mut snapshot = prepare(&admin.live, candidate.clone(), kind, id)?;
    if let Some(held) = crate::approvals::hold(
        admin,
        store,
        ctx,
        kind,
        id,
        Some(&value),
        ttl,
        &snapshot.raw,
    ) {
        return held;
    }
    let out = store
        .put(kind, id, value, ttl, &meta(ctx))
        .map_err(internal)?;
    let stored = store
        .get(kind, id)
        .map_err(internal)?
        .ok_or_else(|| Reply::error(500, "the stored resource vanished"))?;
    // Serve exactly what is stored (the store adds create/update times).
    candidate.upsert(
        kind,
        RawResource {
            id: id.to_string(),
            value: stored.value.clone().into(),
            origin: origin(kind, id),
        },
    );
    snapshot.raw = std::sync::Arc::new(candidate);
    admin.live.install(snapshot);
    let entry = Entry {
        id: stored.id,
        value: stored.value,
        created_index: out.created_index,
        modified_index: out.modified_index,
    };
    let status = if out.created { 201 } else { 200 };
    Ok(Reply::new(status, item(kind, &entry)))
}

fn consumer_must_exist(store: &Store, t: &Target) -> Result<(), Reply> {
    if let Some(user) = &t.consumer {
        if store
            .get(Kind::Consumers, user)
            .map_err(internal)?
            .is_none()
        {
            return Err(Reply::error(404, "consumer not found"));
        }
    }
    Ok(())
}

async fn put_or_post(
    admin: &Admin,
    ctx: &Ctx,
    t: &Target,
    body: &Bytes,
    post: bool,
) -> Result<Reply, Reply> {
    let store = writable(admin)?;
    let mut value = parse_object(body)?;
    forbid_timestamps(&value)?;
    let ttl = ttl(ctx)?;
    let _one_writer = admin.write_lock.lock().await;
    consumer_must_exist(store, t)?;
    let id = resolve_id(admin, t, &mut value, post)?;
    let mut value = Value::Object(value);
    if let Some(previous) = store.get(t.kind, &id).map_err(internal)? {
        secrets::restore_masked(t.kind, &mut value, &previous.value);
    }
    commit(admin, store, ctx, t.kind, &id, value, ttl)
}

async fn patch(admin: &Admin, ctx: &Ctx, t: &Target, body: &Bytes) -> Result<Reply, Reply> {
    let store = writable(admin)?;
    let own =
        t.id.clone()
            .ok_or_else(|| Reply::error(400, format!("missing {} id", label(t.kind))))?;
    let id = t.full_id(&own);
    let change = parse_body(body, "missing new configuration")?;
    if t.sub_path.is_empty() && !change.is_object() {
        return Err(Reply::error(400, "invalid configuration"));
    }
    let ttl = ttl(ctx)?;
    let _one_writer = admin.write_lock.lock().await;
    let previous = store
        .get(t.kind, &id)
        .map_err(internal)?
        .ok_or_else(Reply::not_found)?;
    let mut value = previous.value.clone();
    if t.sub_path.is_empty() {
        patch::merge_patch(&mut value, &change);
    } else {
        patch::replace_at(&mut value, &t.sub_path, change).map_err(|e| Reply::error(400, e))?;
    }
    // The id is the resource's name: a patch may not rename it.
    let (field, expected, wrong) = match t.kind {
        Kind::Consumers => ("username", own.clone(), "wrong username".to_string()),
        _ => ("id", own.clone(), format!("wrong {} id", label(t.kind))),
    };
    let same = match value.get(field) {
        None => true,
        Some(Value::String(s)) => *s == expected,
        Some(Value::Number(n)) => n.to_string() == expected,
        Some(_) => false,
    };
    if !same {
        return Err(Reply::error(400, wrong));
    }
    if let Value::Object(obj) = &mut value {
        obj.insert(field.into(), Value::String(expected));
    }
    secrets::restore_masked(t.kind, &mut value, &previous.value);
    commit(admin, store, ctx, t.kind, &id, value, ttl)
}

/// A DELETE's change to the candidate config, in every mode: refused while
/// something still uses the resource (unless `?force=true`), and a
/// consumer takes its credentials with it.
pub(crate) fn remove_for_delete(
    candidate: &mut RawConfig,
    ctx: &Ctx,
    kind: Kind,
    id: &str,
) -> Result<(), Reply> {
    if ctx.query.get("force").map(String::as_str) != Some("true") {
        if let Some(msg) = references::still_used(candidate, kind, id) {
            return Err(Reply::error(400, msg));
        }
    }
    candidate.remove(kind, id);
    if kind == Kind::Consumers {
        let prefix = format!("{id}/");
        let creds: Vec<String> = candidate
            .of(Kind::Credentials)
            .iter()
            .filter(|c| c.id.starts_with(&prefix))
            .map(|c| c.id.clone())
            .collect();
        for c in creds {
            candidate.remove(Kind::Credentials, &c);
        }
    }
    Ok(())
}

async fn delete(admin: &Admin, ctx: &Ctx, t: &Target) -> Result<Reply, Reply> {
    let store = writable(admin)?;
    let own =
        t.id.clone()
            .ok_or_else(|| Reply::error(400, format!("missing {} id", label(t.kind))))?;
    let id = t.full_id(&own);
    let _one_writer = admin.write_lock.lock().await;
    if store.get(t.kind, &id).map_err(internal)?.is_none() {
        return Err(Reply::not_found());
    }
    let mut candidate = served(&admin.live);
    remove_for_delete(&mut candidate, ctx, t.kind, &id)?;
    let snapshot = prepare(&admin.live, candidate, t.kind, &id)?;
    if let Some(held) =
        crate::approvals::hold(admin, store, ctx, t.kind, &id, None, None, &snapshot.raw)
    {
        return held;
    }
    store.delete(t.kind, &id, &meta(ctx)).map_err(internal)?;
    admin.live.install(snapshot);
    Ok(Reply::new(
        200,
        json!({"deleted": "1", "key": key_of(t.kind, &id)}),
    ))
}

/// `/portcullis/v1/...`.
pub(crate) async fn extension(admin: &Admin, ctx: &Ctx, rest: &str, body: &Bytes) -> Reply {
    if ["audit", "quarantine"].iter().any(|p| {
        rest.strip_prefix(p)
            .is_some_and(|r| r.is_empty() || r.starts_with('/'))
    }) {
        return crate::audit_api::handle(admin, ctx, rest, body).await;
    }
    match rest.trim_end_matches('/') {
        "changes" if ctx.method == http::Method::GET => changes(admin, ctx).await,
        "changes" => Reply::error(405, "only GET is supported here"),
        _ => Reply::error(404, "404 Route Not Found"),
    }
}

async fn changes(admin: &Admin, ctx: &Ctx) -> Reply {
    let number = |name: &str| -> Result<Option<i64>, Reply> {
        match ctx.query.get(name) {
            None => Ok(None),
            Some(v) => v.parse::<i64>().map(Some).map_err(|_| {
                Reply::error(
                    400,
                    format!("invalid argument {name}: should be an integer"),
                )
            }),
        }
    };
    let (since, limit) = match (number("since"), number("limit")) {
        (Ok(s), Ok(l)) => (s, l),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let filter = ChangeFilter {
        resource: ctx.query.get("resource").cloned(),
        since,
        actor: ctx.query.get("actor").cloned(),
        limit: limit.map(|l| l.clamp(1, 10_000) as usize),
    };
    if let Some(etcd) = &admin.etcd {
        return etcd_mode::changes(etcd, &filter).await;
    }
    let Some(store) = admin.store() else {
        return Reply::new(200, json!({"total": 0, "list": []}));
    };
    match store.changes(&filter) {
        Ok(list) => Reply::new(200, json!({"total": list.len(), "list": list})),
        Err(e) => internal(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_keys_sit_under_their_consumer() {
        assert_eq!(
            key_of(Kind::Credentials, "jack/c1"),
            "/apisix/consumers/jack/credentials/c1"
        );
        assert_eq!(key_of(Kind::Routes, "1"), "/apisix/routes/1");
    }

    #[test]
    fn credential_paths_name_consumer_and_credential() {
        let t = parse_target("consumers/jack/credentials/c1").unwrap();
        assert_eq!(t.kind, Kind::Credentials);
        assert_eq!(t.full_id("c1"), "jack/c1");
        let t = parse_target("routes/1/plugins/key-auth").unwrap();
        assert_eq!(t.sub_path, "plugins/key-auth");
        assert!(parse_target("credentials/x").is_err());
    }

    #[test]
    fn errors_in_the_written_resource_name_only_the_field() {
        let errs = vec![
            ConfigError::new("upstream.nodes", "expected at least one node")
                .in_resource("routes/1"),
        ];
        assert_eq!(
            describe(Kind::Routes, "routes/1", &errs),
            "invalid configuration: upstream.nodes: expected at least one node"
        );
    }

    #[test]
    fn consumer_plugin_errors_read_as_apisix_words_them() {
        let errs = vec![ConfigError::new(
            "plugins.key-auth",
            "failed to check the configuration of plugin key-auth err: property \"key\" is required",
        )
        .in_resource("consumers/jack")];
        assert_eq!(
            describe(Kind::Consumers, "consumers/jack", &errs),
            "invalid plugins configuration: failed to check the configuration of plugin key-auth err: property \"key\" is required"
        );
    }
}
