//! Writes the wire format's JSON Schema documents to `protocol/schemas/` (see
//! `orderflow_queue::wire`). Run it after changing a message type in `orderflow_core::protocol`
//! or the AMQP envelope, and commit the files; `queue/tests/wire.rs` fails until they match.
//!
//! ```sh
//! cargo run -p orderflow-queue --example protocol_schemas
//! ```

use std::path::Path;

use orderflow_queue::wire;

fn main() -> std::io::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(wire::SCHEMA_DIR);
    std::fs::create_dir_all(&dir)?;
    let dir = dir.canonicalize()?;
    for (file, doc) in wire::documents() {
        let path = dir.join(file);
        std::fs::write(&path, wire::render(&doc))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
