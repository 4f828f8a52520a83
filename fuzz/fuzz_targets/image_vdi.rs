//! A vdi image from arbitrary bytes: open, check the map, read what it maps.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "common/image.rs"]
mod image;

fuzz_target!(|data: &[u8]| image::run(engine::source::detect::ImageFormat::Vdi, data));
