//! The web pages, embedded in the binary: no build step, no files to install.

use axum::response::Html;

pub async fn text() -> Html<&'static str> {
    Html(include_str!("text.html"))
}

pub async fn pixel() -> Html<&'static str> {
    Html(include_str!("pixel.html"))
}
