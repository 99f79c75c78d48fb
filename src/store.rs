//! Call records (`CallStore`), on sled.
//!
//! The call life cycle and its REST API come with issue 4; for now the store only opens the
//! database so the data directory is created and locked at start.

use std::path::Path;

/// The durable store of call records.
#[derive(Clone)]
pub struct CallStore {
    db: sled::Db,
}

impl CallStore {
    pub fn open(dir: &Path) -> Result<Self, sled::Error> {
        Ok(Self {
            db: sled::open(dir)?,
        })
    }

    /// Writes everything to disk.
    pub fn flush(&self) -> Result<(), sled::Error> {
        self.db.flush().map(|_| ())
    }
}
