//! The AsyncAPI 3.0 document of the WebSocket protocol (`GET /v1/ws`),
//! written by hand in `docs/asyncapi.json` and served at
//! `/v1/asyncapi.json`. Its stats and swap schemas are copies of the
//! OpenAPI document's; the tests below keep their fields the same.

use actix_web::HttpResponse;

/// The document, as written.
pub const DOCUMENT: &str = include_str!("../../docs/asyncapi.json");

/// The WebSocket protocol, as an AsyncAPI 3.0 document.
#[utoipa::path(get, path = "/v1/asyncapi.json", tag = "document",
    responses((status = 200, description = "The WebSocket protocol of `/v1/ws` (AsyncAPI 3.0)", body = Object)))]
pub async fn document() -> HttpResponse {
    HttpResponse::Ok().content_type("application/json").body(DOCUMENT)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;
    use utoipa::OpenApi;

    use super::*;

    fn parsed() -> Value {
        serde_json::from_str(DOCUMENT).expect("docs/asyncapi.json is JSON")
    }

    /// The value a local `$ref` (`#/a/b`) points at.
    fn resolve<'a>(document: &'a Value, reference: &str) -> Option<&'a Value> {
        document.pointer(reference.strip_prefix('#')?)
    }

    /// Every `$ref` in `value`.
    fn references<'a>(value: &'a Value, found: &mut Vec<&'a str>) {
        match value {
            Value::Object(fields) => {
                for (name, value) in fields {
                    match (name.as_str(), value) {
                        ("$ref", Value::String(reference)) => found.push(reference),
                        _ => references(value, found),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|item| references(item, found)),
            _ => {}
        }
    }

    #[test]
    fn the_document_is_asyncapi_3_and_every_reference_resolves() {
        let document = parsed();
        assert_eq!(document["asyncapi"], "3.0.0");
        let mut found = Vec::new();
        references(&document, &mut found);
        assert!(found.len() > 50, "{} references", found.len());
        for reference in found {
            assert!(resolve(&document, reference).is_some(), "{reference} points at nothing");
        }
        // Operations name only their channel's messages (AsyncAPI 3 requires it).
        let channel_messages = document["channels"]["ws"]["messages"].as_object().expect("the channel's messages");
        for (name, operation) in document["operations"].as_object().expect("operations") {
            let mut listed: Vec<&Value> = operation["messages"].as_array().expect("messages").iter().collect();
            listed.extend(operation["reply"]["messages"].as_array().into_iter().flatten());
            for message in listed {
                let reference = message["$ref"].as_str().expect("a reference");
                let key =
                    reference.strip_prefix("#/channels/ws/messages/").unwrap_or_else(|| panic!("{name}: {reference}"));
                assert!(channel_messages.contains_key(key), "{name}: {reference}");
            }
        }
    }

    #[test]
    fn every_request_and_frame_type_has_its_message_and_every_frame_is_closed() {
        let document = parsed();
        let messages = &document["components"]["messages"];
        let kind = |name: &str, field: &str| {
            let payload = &messages[name]["payload"];
            // `subscribed` has several forms; each names the type.
            let forms: Vec<&Value> = match payload["oneOf"].as_array() {
                Some(forms) => forms.iter().collect(),
                None => vec![payload],
            };
            for form in &forms {
                assert_eq!(form["additionalProperties"], false, "{name}: a stray field must fail");
                assert!(form["required"].as_array().is_some_and(|r| r.contains(&field.into())), "{name}");
            }
            forms[0]["properties"][field]["const"].as_str().map(str::to_owned)
        };
        for op in ["subscribe", "unsubscribe", "list_subscriptions", "ping"] {
            assert_eq!(kind(op, "op").as_deref(), Some(op));
        }
        let frames =
            ["subscribed", "swap", "stats", "candle", "skipped", "unsubscribed", "subscriptions", "error", "pong"];
        for frame in frames {
            assert_eq!(kind(frame, "type").as_deref(), Some(frame));
        }
        let sent: BTreeSet<&str> = document["operations"]["sendFrames"]["messages"]
            .as_array()
            .expect("the frames sent")
            .iter()
            .filter_map(|m| m["$ref"].as_str()?.rsplit('/').next())
            .collect();
        assert_eq!(sent, frames.into());
    }

    /// A validator of the payload of message `name`.
    fn payload_validator(document: &Value, name: &str) -> jsonschema::Validator {
        let schema = serde_json::json!({
            "$ref": format!("#/components/messages/{name}/payload"),
            "components": document["components"],
        });
        jsonschema::validator_for(&schema).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    #[test]
    fn the_examples_match_their_payloads_and_the_schemas_can_fail() {
        let document = parsed();
        let messages = document["components"]["messages"].as_object().expect("messages");
        let mut examples = 0;
        for (name, message) in messages {
            let validator = payload_validator(&document, name);
            for example in message["examples"].as_array().into_iter().flatten() {
                let payload = &example["payload"];
                let errors: Vec<String> = validator.iter_errors(payload).map(|e| e.to_string()).collect();
                assert!(errors.is_empty(), "{name}: {errors:?}\n{payload}");
                examples += 1;
            }
        }
        assert!(examples >= 8, "{examples} examples");

        let subscribed = payload_validator(&document, "subscribed");
        let snapshot = messages["subscribed"]["examples"][0]["payload"].clone();
        let with = |field: &str, value: Value| {
            let mut frame = snapshot.clone();
            frame[field] = value;
            frame
        };
        assert!(!subscribed.is_valid(&with("recovered", true.into())), "recovered needs missed");
        let mut recovered = with("recovered", true.into());
        recovered["missed"] = 3.into();
        assert!(subscribed.is_valid(&recovered));
        recovered["reason"] = "epoch_changed".into();
        assert!(!subscribed.is_valid(&recovered), "a reason only when not recovered");
        let mut lost = with("recovered", false.into());
        lost["reason"] = "history_expired".into();
        assert!(subscribed.is_valid(&lost));
        assert!(!subscribed.is_valid(&with("stray", 1.into())), "a stray field fails");
        assert!(!subscribed.is_valid(&with("seen", true.into())), "seen is only ever false");
        let mut already = messages["subscribed"]["examples"][1]["payload"].clone();
        assert!(subscribed.is_valid(&already));
        already["seq"] = 0.into();
        assert!(!subscribed.is_valid(&already), "no seq with already");

        let swap = payload_validator(&document, "swap");
        let mut frame = messages["swap"]["examples"][0]["payload"].clone();
        frame["offset"] = "1733312345123-0".into();
        assert!(!swap.is_valid(&frame), "an offset has three parts");
        frame["offset"] = "1733312345123-0-2".into();
        frame["swap"]["status"] = "failed".into();
        assert!(!swap.is_valid(&frame), "failed swaps are not sent");
    }

    /// Property names and required fields of `schema`, looked up in `document`.
    fn shape(document: &Value, schema: &str) -> (BTreeSet<String>, BTreeSet<String>) {
        let schema = &document["components"]["schemas"][schema];
        let names = schema["properties"].as_object().expect("properties").keys().cloned().collect();
        let required = schema["required"].as_array().expect("required").iter().map(|r| r.to_string()).collect();
        (names, required)
    }

    #[test]
    fn the_stats_swap_and_candle_schemas_have_the_fields_of_the_openapi_documents() {
        let asyncapi = parsed();
        let openapi = serde_json::to_value(super::super::openapi::ApiDoc::openapi()).expect("the OpenAPI document");
        for (ours, theirs) in [
            ("Stats", "StatsBody"),
            ("Totals", "Totals"),
            ("Windows", "Windows"),
            ("Window", "Window"),
            ("Swap", "SwapDoc"),
        ] {
            assert_eq!(shape(&asyncapi, ours), shape(&openapi, theirs), "AsyncAPI {ours} against OpenAPI {theirs}");
        }
        // A candle frame's bucket is REST's candle and `closed`.
        let (mut names, mut required) = shape(&asyncapi, "Candle");
        assert!(names.remove("closed") && required.remove("\"closed\""), "{names:?}");
        assert_eq!((names, required), shape(&openapi, "Candle"), "AsyncAPI Candle against OpenAPI Candle");
        for (ours, theirs) in [("Amount", "Amount"), ("Price", "Price")] {
            let pattern = |document: &Value, name: &str| document["components"]["schemas"][name]["pattern"].clone();
            assert_eq!(pattern(&asyncapi, ours), pattern(&openapi, theirs), "{ours}");
        }
    }
}
