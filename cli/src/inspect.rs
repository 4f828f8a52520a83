//! `dedisk inspect IMAGE`: what dedisk sees in an image, before anyone trusts it.

use anyhow::{Context, Result};

use crate::args::{Global, InspectArgs};
use crate::commands::Outcome;
use crate::output::{self, bytes};
use engine::source::detect::ImageFormat;
use engine::source::{open_input, Input, SourceOptions};

/// Extents shown without --extents.
const SHOWN_EXTENTS: usize = 20;

pub fn inspect(g: &Global, a: &InspectArgs) -> Result<Outcome> {
    let spec = a.image.to_string_lossy();
    let is_xva = match a.format.image_format() {
        Some(f) => f == ImageFormat::Xva,
        None => {
            let file = std::fs::File::open(&a.image)
                .with_context(|| format!("opening {}", a.image.display()))?;
            let len = file.metadata()?.len();
            engine::source::detect::detect(&file, len)? == ImageFormat::Xva
        }
    };
    if is_xva {
        return inspect_xva(g, &spec);
    }
    let opts = engine::source::image::OpenOptions {
        direct: false,
        format: a.format.image_format(),
        qcow2_snapshot: a.qcow2_snapshot.clone(),
    };
    let r = engine::source::image::inspect(&a.image, &opts)
        .with_context(|| format!("inspecting {}", a.image.display()))?;
    if g.json {
        output::json(&serde_json::to_value(&r).expect("inspection serializes"));
        return Ok(Outcome::default());
    }
    for (depth, layer) in r.chain.iter().enumerate() {
        let indent = "  ".repeat(depth);
        if depth > 0 {
            output::line(format!("{indent}backing file:"));
        }
        output::line(format!("{indent}image:          {}", layer.path.display()));
        output::line(format!("{indent}format:         {}", layer.format));
        output::line(format!(
            "{indent}virtual size:   {} ({} bytes)",
            bytes(layer.virtual_size),
            layer.virtual_size
        ));
        if let Some(c) = layer.cluster_bytes {
            output::line(format!("{indent}cluster size:   {}", bytes(c)));
        }
        for (k, v) in &layer.details {
            output::line(format!("{indent}{:<15} {v}", format!("{k}:")));
        }
    }
    output::line(format!(
        "allocated:      {} ({} bytes) in {} extent(s)",
        bytes(r.allocated_bytes),
        r.allocated_bytes,
        r.extents.len()
    ));
    let shown = if a.extents {
        r.extents.len()
    } else {
        SHOWN_EXTENTS
    };
    for (s, e) in r.extents.iter().take(shown) {
        output::line(format!("  {s:>16}..{e:<16} {}", bytes(e - s)));
    }
    if r.extents.len() > shown {
        output::line(format!(
            "  ... {} more (--extents lists all)",
            r.extents.len() - shown
        ));
    }
    Ok(Outcome::default())
}

/// An XVA is a stream: inspecting it reads it all, checking every block's checksum.
fn inspect_xva(g: &Global, spec: &str) -> Result<Outcome> {
    let opts = SourceOptions {
        format: Some(ImageFormat::Xva),
        ..Default::default()
    };
    let Input::Xva(export) =
        open_input(spec, &opts).with_context(|| format!("inspecting {spec}"))?
    else {
        anyhow::bail!("{spec}: not an XVA export");
    };
    let mut disks = Vec::new();
    for mut d in export.disks {
        let extents = engine::source::data_extents(|pos| d.source.next_data(pos))
            .with_context(|| format!("inspecting {spec}"))?;
        let allocated: u64 = extents.iter().map(|(s, e)| e - s).sum();
        disks.push(serde_json::json!({
            "label": d.label, "name": d.name, "virtual_size": d.size_bytes,
            "allocated_bytes": allocated, "extents": extents,
        }));
    }
    if g.json {
        output::json(&serde_json::json!({ "format": "xva", "path": spec, "disks": disks }));
        return Ok(Outcome::default());
    }
    output::line(format!("image:          {spec}"));
    output::line("format:         xva (every block checksum verified)");
    for d in &disks {
        output::line(format!(
            "disk {}: {:?}, virtual size {}, allocated {} in {} extent(s)",
            d["label"].as_str().unwrap_or(""),
            d["name"].as_str().unwrap_or(""),
            bytes(d["virtual_size"].as_u64().unwrap_or(0)),
            bytes(d["allocated_bytes"].as_u64().unwrap_or(0)),
            d["extents"].as_array().map_or(0, |e| e.len())
        ));
    }
    Ok(Outcome::default())
}
