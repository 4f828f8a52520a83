//! `dedisk inspect IMAGE`: what dedisk sees in an image, before anyone trusts it.

use anyhow::{Context, Result};

use crate::args::{Global, InspectArgs};
use crate::context::Outcome;
use crate::output::{self, bytes};
use engine::source::{Inspected, SourceOptions, XvaDiskInfo};

/// Extents shown without --extents.
const SHOWN_EXTENTS: usize = 20;

pub fn inspect(g: &Global, a: &InspectArgs) -> Result<Outcome> {
    let opts = SourceOptions {
        direct: false,
        format: a.format.source_format(),
        qcow2_snapshot: a.qcow2_snapshot.clone(),
        dirty_bitmap: None,
    };
    let r = engine::source::inspect(&a.image, &opts)
        .with_context(|| format!("inspecting {}", a.image.display()))?;
    let r = match r {
        Inspected::Image(r) => r,
        Inspected::Xva { path, disks, .. } => return show_xva(g, &path, &disks),
    };
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

/// An XVA is a stream: inspecting it read it all, checking every block's checksum.
fn show_xva(g: &Global, spec: &str, disks: &[XvaDiskInfo]) -> Result<Outcome> {
    if g.json {
        output::json(&serde_json::json!({ "format": "xva", "path": spec, "disks": disks }));
        return Ok(Outcome::default());
    }
    output::line(format!("image:          {spec}"));
    output::line("format:         xva (every block checksum verified)");
    for d in disks {
        output::line(format!(
            "disk {}: {:?}, virtual size {}, allocated {} in {} extent(s)",
            d.label,
            d.name,
            bytes(d.virtual_size),
            bytes(d.allocated_bytes),
            d.extents.len()
        ));
    }
    Ok(Outcome::default())
}
