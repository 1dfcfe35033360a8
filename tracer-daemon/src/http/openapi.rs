//! The OpenAPI document `/openapi.json` serves: generated from the handlers and types
//! (utoipa), then told what the handlers check that Rust types cannot say, so a client (or
//! a fuzzer such as schemathesis) that follows the document is never refused, and one that
//! does not always is: value ranges and patterns, the one-kind-of-target rule, known syscall
//! names, every error status each operation answers with, and the links from a created
//! session to what can be done with it.
//!
//! Each rule here mirrors a check in `session::spec` or `http` and uses the same constants.
use serde_json::{json, Map, Value};
use utoipa::OpenApi as _;

use super::ApiDoc;
use crate::session::spec::{
    capture_bounds, FTRACE_BUFFER_KB, MAX_LABEL_LEN, MAX_LIST_LEN, MAX_NAME_LEN, MAX_NODE_NAME_LEN,
    TTL_PATTERN,
};
use crate::sink::export::config::ENDPOINT_PATTERN;

/// The document, with the constraints and responses the generated one lacks; `cluster`:
/// for a node of a cluster (`--etcd`), which also takes cluster sessions.
pub fn document(cluster: bool) -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_else(|_| json!({}));
    let schemas = &mut doc["components"]["schemas"];
    schemas["Error"] = json!({
        "type": "object",
        "required": ["error", "message"],
        "properties": {
            "error": {"type": "string", "description": "a stable code (see docs/api.md)"},
            "message": {"type": "string"},
        },
    });
    constrain_create(schemas);
    constrain_scope(schemas, cluster);
    schemas["Target"] = target_schema();
    schemas["StatusChange"]["properties"]["status"] =
        json!({"type": "string", "enum": ["running", "stopped"]});
    constrain_queries(&mut doc["paths"]);
    add_error_responses(&mut doc["paths"]);
    add_links(&mut doc["paths"]);
    if !cluster {
        single_node_paths(&mut doc["paths"]);
    }
    doc
}

/// A field that may also be `null` (absent), as serde reads an `Option`.
fn nullable(schema: Value) -> Value {
    json!({"oneOf": [{"type": "null"}, schema]})
}

fn name_schema(max: usize) -> Value {
    json!({"type": "string", "minLength": 1, "maxLength": max, "pattern": "^[A-Za-z0-9._-]+$"})
}

/// Syscall names this architecture knows, as `syscalls` and `conditions` take them.
fn syscall_names() -> Value {
    let names: Vec<&str> = syscalls::Sysno::iter().map(|sysno| sysno.name()).collect();
    json!(names)
}

fn ttl_schema() -> Value {
    json!({"type": "string", "pattern": TTL_PATTERN})
}

fn constrain_create(schemas: &mut Value) {
    let create = &mut schemas["CreateSession"]["properties"];
    create["name"] = nullable(name_schema(MAX_NAME_LEN));
    create["tenant"] = nullable(name_schema(64));
    create["label"] = nullable(json!({
        "type": "string", "maxLength": MAX_LABEL_LEN,
        "pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f]*$",
    }));
    create["syscalls"] = nullable(json!({
        "type": "array", "minItems": 1, "maxItems": MAX_LIST_LEN,
        "items": {"type": "string", "enum": syscall_names()},
    }));
    let pids = json!({
        "type": "array", "minItems": 1, "maxItems": MAX_LIST_LEN,
        "items": {"type": "integer", "minimum": 1, "maximum": u32::MAX},
    });
    schemas["Conditions"]["properties"]["tgids"] = nullable(pids);
    let limits = &mut schemas["Limits"]["properties"];
    limits["ttl"] = nullable(ttl_schema());
    limits["max_events"] = nullable(json!({"type": "integer", "minimum": 1, "maximum": u64::MAX}));
    limits["ftrace_buffer_kb"] = nullable(json!({
        "type": "integer", "minimum": FTRACE_BUFFER_KB.start(), "maximum": FTRACE_BUFFER_KB.end(),
    }));
    let capture = &mut schemas["Capture"]["properties"];
    for (field, (min, max)) in capture_bounds() {
        capture[field] = nullable(json!({"type": "integer", "minimum": min, "maximum": max}));
    }
    capture["data_syscalls"] = nullable(json!({
        "type": "array", "maxItems": MAX_LIST_LEN,
        "items": {"type": "string", "enum": crate::session::spec::DATA_SYSCALLS},
    }));
    let otlp = &mut schemas["OtlpRequest"]["properties"];
    otlp["endpoint"] = json!({"type": "string", "pattern": ENDPOINT_PATTERN});
    otlp["protocol"] =
        nullable(json!({"type": "string", "pattern": "^\\s*(grpc|http/protobuf|http)\\s*$"}));
    otlp["compression"] = nullable(json!({"type": "string", "pattern": "^\\s*(gzip|none|)\\s*$"}));
    otlp["headers"] = nullable(json!({
        "type": "object",
        "propertyNames": {"pattern": "^[A-Za-z0-9._-]+$"},
        "additionalProperties": {"type": "string", "pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f]*$"},
    }));
    let launch = &mut schemas["Launch"]["properties"];
    launch["image"] = json!({"type": "string", "minLength": 1, "maxLength": 256});
    launch["command"] = json!({"type": "array", "maxItems": 256, "items": {"type": "string"}});
    launch["env"] = json!({
        "type": "object", "additionalProperties": {"type": "string"},
        "propertyNames": {"minLength": 1, "pattern": "^[^=]*$"},
    });
    launch["ttl"] = nullable(ttl_schema());
}

/// Where a session runs: a single node takes only `local` sessions (the cluster's fields
/// are not there); a cluster node takes both.
fn constrain_scope(schemas: &mut Value, cluster: bool) {
    if !cluster {
        let remove = [
            ("CreateSession", "nodes"),
            ("CreateSession", "node_selector"),
            ("Limits", "max_events_per_node"),
        ];
        for (schema, field) in remove {
            if let Some(properties) = schemas[schema]["properties"].as_object_mut() {
                properties.remove(field);
            }
        }
        schemas["CreateSession"]["properties"]["scope"] =
            json!({"type": "string", "enum": ["local"]});
        return;
    }
    let create = &mut schemas["CreateSession"]["properties"];
    create["nodes"] = nullable(json!({
        "type": "array", "minItems": 1, "maxItems": MAX_LIST_LEN,
        "items": name_schema(MAX_NODE_NAME_LEN),
    }));
    create["node_selector"] = nullable(json!({
        "type": "object", "minProperties": 1,
        "propertyNames": {"minLength": 1, "maxLength": 253, "pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f]*$"},
        "additionalProperties": {"type": "string", "maxLength": 253, "pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f]*$"},
    }));
    schemas["Limits"]["properties"]["max_events_per_node"] =
        nullable(json!({"type": "integer", "minimum": 1, "maximum": u64::MAX}));
}

/// A single node has no nodes: no `/v1/nodes`, and no `node` to ask events of.
fn single_node_paths(paths: &mut Value) {
    if let Some(paths) = paths.as_object_mut() {
        paths.remove("/v1/nodes");
    }
    for path in ["/v1/sessions/{id}/events", "/v1/sessions/{id}/stream"] {
        if let Some(list) = paths[path]["get"]["parameters"].as_array_mut() {
            list.retain(|parameter| parameter["name"] != "node");
        }
    }
}

/// A target is exactly one kind: a cgroup, pids, a launch, or containers (a name and/or
/// labels). The other fields may be left out or `null`.
fn target_schema() -> Value {
    let fields = ["cgroup", "pids", "container", "labels", "launch"];
    let variant = |given: &[(&str, Value)]| {
        let mut properties = Map::new();
        for field in fields {
            let schema = given
                .iter()
                .find(|(name, _)| *name == field)
                .map_or_else(|| json!({"type": "null"}), |(_, schema)| schema.clone());
            properties.insert(field.to_owned(), schema);
        }
        let required: Vec<&str> = given
            .iter()
            .filter(|(_, schema)| schema.get("oneOf").is_none())
            .map(|(name, _)| *name)
            .collect();
        json!({"type": "object", "properties": properties, "required": required,
               "additionalProperties": false})
    };
    let cgroup = json!({"type": "string", "pattern": "^(?!.*/\\.\\.(/|$))/"});
    let pids = json!({
        "type": "array", "minItems": 1, "maxItems": MAX_LIST_LEN,
        "items": {"type": "integer", "minimum": 1, "maximum": u32::MAX},
    });
    let container = json!({"type": "string", "minLength": 1, "maxLength": 128});
    let labels = json!({"type": "object", "minProperties": 1,
                        "additionalProperties": {"type": "string"}});
    let launch = json!({"$ref": "#/components/schemas/Launch"});
    json!({
        "description": "What a session traces: exactly one of a cgroup, pids, a launched \
                        container, or running containers by name and/or labels.",
        "oneOf": [
            variant(&[("cgroup", cgroup)]),
            variant(&[("pids", pids)]),
            variant(&[("launch", launch)]),
            variant(&[("container", container.clone()), ("labels", nullable(labels.clone()))]),
            variant(&[("labels", labels)]),
        ],
    })
}

/// Query parameters, as the handlers parse them.
fn constrain_queries(paths: &mut Value) {
    let list = &mut paths["/v1/sessions"]["get"]["parameters"];
    set_param(
        list,
        "limit",
        json!({"type": "integer", "minimum": 1, "maximum": 1000}),
    );
    for path in ["/v1/sessions/{id}/events", "/v1/sessions/{id}/stream"] {
        let Some(operation) = paths[path]["get"].as_object_mut() else {
            continue;
        };
        let parameters = operation.entry("parameters").or_insert_with(|| json!([]));
        set_param(
            parameters,
            "since",
            json!({"type": "string", "format": "date-time"}),
        );
        set_param(
            parameters,
            "until",
            json!({"type": "string", "format": "date-time"}),
        );
        set_param(
            parameters,
            "pid",
            json!({"type": "integer", "minimum": 0, "maximum": u32::MAX}),
        );
        set_param(
            parameters,
            "after_seq",
            json!({"type": "integer", "minimum": 0, "maximum": u64::MAX}),
        );
        // Each takes only its own: `follow` is for the download, `token` for the WebSocket.
        let other = if path.ends_with("/events") {
            "token"
        } else {
            "follow"
        };
        if let Some(list) = parameters.as_array_mut() {
            list.retain(|parameter| parameter["name"] != other);
        }
    }
}

fn set_param(parameters: &mut Value, name: &str, schema: Value) {
    let Some(list) = parameters.as_array_mut() else {
        return;
    };
    for parameter in list
        .iter_mut()
        .filter(|parameter| parameter["name"] == name)
    {
        parameter["schema"] = schema.clone();
    }
}

/// Every error status each operation can answer with, each with the error body.
fn add_error_responses(paths: &mut Value) {
    // 401 and 403 whenever tokens are in use; 400 for a malformed id or query.
    let common = [400, 401, 403];
    // 503 wherever a cluster session may be involved: etcd is unreachable.
    let errors: [(&str, &str, &[u16]); 10] = [
        ("/v1/sessions", "get", &[]),
        ("/v1/sessions", "post", &[408, 409, 413, 415, 422, 503, 507]),
        ("/v1/sessions/{id}", "get", &[404, 503]),
        (
            "/v1/sessions/{id}",
            "put",
            &[404, 408, 409, 413, 415, 422, 503, 507],
        ),
        ("/v1/sessions/{id}", "delete", &[404, 503]),
        (
            "/v1/sessions/{id}/start",
            "post",
            &[404, 409, 422, 503, 507],
        ),
        ("/v1/sessions/{id}/stop", "post", &[404, 409, 503]),
        ("/v1/sessions/{id}/events", "get", &[404, 503]),
        ("/v1/sessions/{id}/stream", "get", &[404, 503]),
        ("/v1/nodes", "get", &[404, 503]),
    ];
    for (path, method, statuses) in errors {
        let Some(responses) = paths[path][method]["responses"].as_object_mut() else {
            continue;
        };
        for status in common.iter().chain(statuses) {
            responses.insert(
                status.to_string(),
                json!({
                    "description": error_description(*status),
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                }),
            );
        }
    }
}

fn error_description(status: u16) -> &'static str {
    match status {
        400 => "a malformed id, query or body",
        401 => "no token, or an unknown one",
        403 => "the caller's role does not allow it",
        404 => "no such session (or not the caller's); /v1/nodes: not a cluster node",
        408 => "the body did not arrive in time",
        409 => "not allowed in the session's state, or a duplicate",
        413 => "the body is too large",
        415 => "the body is not JSON",
        422 => "a field's value is not acceptable, or the target is unavailable",
        503 => "the Docker engine, the kernel's session slots or (cluster sessions) etcd are unavailable",
        507 => "the data directory's disk is full",
        _ => "an error",
    }
}

/// A created session's id leads to everything that can be done with it.
fn add_links(paths: &mut Value) {
    let operations = [
        ("GetSession", "read"),
        ("StartSession", "start"),
        ("StopSession", "stop"),
        ("ChangeStatus", "put_status"),
        ("DeleteSession", "delete"),
        ("GetEvents", "events"),
    ];
    let links: Map<String, Value> = operations
        .iter()
        .map(|(name, operation)| {
            (
                (*name).to_owned(),
                json!({"operationId": operation, "parameters": {"id": "$response.body#/id"}}),
            )
        })
        .collect();
    if let Some(created) = paths["/v1/sessions"]["post"]["responses"]["201"].as_object_mut() {
        created.insert("links".into(), Value::Object(links));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_node_offers_no_cluster_and_a_cluster_node_does() {
        let single = document(false);
        assert!(single["paths"].get("/v1/nodes").is_none());
        let params = &single["paths"]["/v1/sessions/{id}/events"]["get"]["parameters"];
        assert!(!params
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "node"));
        let create = &single["components"]["schemas"]["CreateSession"]["properties"];
        assert_eq!(create["scope"]["enum"], json!(["local"]));
        assert!(create.get("nodes").is_none());

        let cluster = document(true);
        assert!(cluster["paths"]["/v1/nodes"]["get"]["responses"]["503"].is_object());
        let params = &cluster["paths"]["/v1/sessions/{id}/events"]["get"]["parameters"];
        assert!(params
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "node"));
        let create = &cluster["components"]["schemas"]["CreateSession"]["properties"];
        assert!(create["nodes"].is_object());
    }
}
