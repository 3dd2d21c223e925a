//! The pure pieces of the `conscope` binary that are reached from outside it:
//! the decoder of alert messages, which the fuzz targets in `fuzz/` feed
//! arbitrary bytes, and the terminal text helpers it prints with. Nothing here
//! does IO. Everything else of the binary lives in `main.rs`'s module tree,
//! which uses these modules from here (`conscope::text`, `conscope::alerts::format`).

pub mod alerts {
    //! `conscope alerts`'s pure part (its consumer loop is the binary's `alerts`).

    pub mod format;
}

pub mod text;
