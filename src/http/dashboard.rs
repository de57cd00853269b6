//! The live dashboard: a static page at `/` and its files under
//! `/dashboard/`, embedded in the binary from `web/` at compile time. The
//! page reads only the public API (`/v1/...`, `/v1/ws`, `/metrics`) with
//! relative URLs, so it works behind a proxy, with TLS and with API keys.

use actix_web::http::header;
use actix_web::{web, HttpResponse};

use super::get_only;

/// One embedded file: name under `/dashboard/`, media type, bytes.
struct Asset {
    name: &'static str,
    media_type: &'static str,
    bytes: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $media_type:literal) => {
        Asset { name: $name, media_type: $media_type, bytes: include_bytes!(concat!("../../web/", $name)) }
    };
}

/// Every file of `web/` (a unit test keeps this list and the folder equal).
const ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("app.js", "text/javascript; charset=utf-8"),
    asset!("api.js", "text/javascript; charset=utf-8"),
    asset!("live.js", "text/javascript; charset=utf-8"),
    asset!("chart.js", "text/javascript; charset=utf-8"),
    asset!("format.js", "text/javascript; charset=utf-8"),
    asset!("favicon.svg", "image/svg+xml"),
];

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(get_only("/", index)).service(get_only("/dashboard/{name}", file));
}

fn find(name: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|asset| asset.name == name)
}

fn respond(asset: &Asset) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(asset.media_type)
        // The files change with the binary; a reload must not mix versions.
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .body(asset.bytes)
}

async fn index() -> HttpResponse {
    respond(find("index.html").expect("index.html is embedded"))
}

async fn file(name: web::Path<String>) -> HttpResponse {
    match find(&name) {
        Some(asset) => respond(asset),
        None => HttpResponse::NotFound().json(serde_json::json!({
            "error": {"code": "not_found", "message": format!("no dashboard file {:?}", name.as_str())}
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test as http_test;

    #[test]
    fn every_file_of_web_is_embedded_and_nothing_else() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("web");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .filter(|name| !name.starts_with('.'))
            .collect();
        let mut embedded: Vec<String> = ASSETS.iter().map(|a| a.name.to_owned()).collect();
        on_disk.sort();
        embedded.sort();
        assert_eq!(embedded, on_disk, "ASSETS in src/http/dashboard.rs must list exactly the files of web/");
    }

    #[actix_web::test]
    async fn the_page_and_its_files_are_served_and_unknown_names_are_404() {
        let app = http_test::init_service(actix_web::App::new().configure(routes)).await;
        let page = http_test::call_service(&app, http_test::TestRequest::get().uri("/").to_request()).await;
        assert_eq!(page.status(), 200);
        assert_eq!(page.headers().get(header::CONTENT_TYPE).unwrap(), "text/html; charset=utf-8");
        let body = http_test::read_body(page).await;
        assert!(std::str::from_utf8(&body).unwrap().contains("src=\"dashboard/app.js\""));

        let script =
            http_test::call_service(&app, http_test::TestRequest::get().uri("/dashboard/app.js").to_request()).await;
        assert_eq!(script.status(), 200);
        assert_eq!(script.headers().get(header::CONTENT_TYPE).unwrap(), "text/javascript; charset=utf-8");

        for uri in ["/dashboard/nope.js", "/dashboard/..%2FCargo.toml"] {
            let missing = http_test::call_service(&app, http_test::TestRequest::get().uri(uri).to_request()).await;
            assert_eq!(missing.status(), 404, "{uri}");
        }
    }
}
