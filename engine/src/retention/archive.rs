//! The archive: where retention writes finished workflows before deleting them, through the
//! `object_store` crate (a local directory, or any S3-compatible store). An object is one batch:
//! gzip-compressed JSON lines, one [`Record`] a line, readable with `zcat | jq`.

use std::{
    io::{Read, Write},
    sync::Arc,
};

use chrono::{DateTime, Utc};
use flate2::{Compression, read::GzDecoder, write::GzEncoder};
use object_store::{
    ObjectStore, PutPayload, aws::AmazonS3Builder, local::LocalFileSystem, path::Path,
    prefix::PrefixStore,
};
use orderflow_core::{History, RecordedEvent, WorkflowId};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::store::WorkflowRow;

/// What went wrong with the archive.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The archive URL is not one this build can open; the message names the flag's problem.
    #[error("{0}")]
    Url(String),
    /// The store refused or failed a read or write (retry later).
    #[error("archive store: {0}")]
    Store(#[from] object_store::Error),
    /// An object is not gzip-compressed JSON lines of records.
    #[error("archive object {key} is not readable: {why}")]
    Corrupt { key: String, why: String },
}

/// A workflow as archived: its final row and its whole history (in the replay format).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub workflow: ArchivedRow,
    pub history: History,
}

/// The workflow's row when it was archived.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArchivedRow {
    pub id: Uuid,
    pub workflow_type: String,
    pub version: i32,
    pub status: String,
    pub reason: Option<String>,
    pub state: Value,
    pub last_seq: i64,
    pub business_keys: Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Record {
    pub fn new(row: WorkflowRow, events: Vec<RecordedEvent>) -> Self {
        let history = History {
            workflow_id: WorkflowId(row.id),
            workflow_type: row.workflow_type.clone(),
            version: row.version as u32,
            events,
        };
        Self {
            workflow: ArchivedRow {
                id: row.id,
                workflow_type: row.workflow_type,
                version: row.version,
                status: row.status,
                reason: row.reason,
                state: row.state,
                last_seq: row.last_seq,
                business_keys: row.business_keys,
                created_at: row.created_at,
                updated_at: row.updated_at,
            },
            history,
        }
    }
}

/// Records as one object's bytes.
pub fn encode(records: &[Record]) -> Vec<u8> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    for r in records {
        // Writing to memory cannot fail, nor can serializing these types.
        serde_json::to_writer(&mut gz, r).expect("records serialize");
        gz.write_all(b"\n").expect("writing to memory");
    }
    gz.finish().expect("writing to memory")
}

/// An object's records.
pub fn decode(key: &str, bytes: &[u8]) -> Result<Vec<Record>, ArchiveError> {
    let corrupt = |why: String| ArchiveError::Corrupt {
        key: key.to_owned(),
        why,
    };
    let mut text = String::new();
    GzDecoder::new(bytes)
        .read_to_string(&mut text)
        .map_err(|e| corrupt(format!("not gzip-compressed text: {e}")))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(n, l)| serde_json::from_str(l).map_err(|e| corrupt(format!("line {}: {e}", n + 1))))
        .collect()
}

/// An object store to archive into.
#[derive(Debug, Clone)]
pub struct Archive {
    store: Arc<dyn ObjectStore>,
    url: String,
}

impl Archive {
    /// Opens the archive at `url`: `file:///dir` (or a plain absolute path; the directory is
    /// created), or `s3://bucket/prefix` with the endpoint and credentials from the usual `AWS_*`
    /// variables (`AWS_ENDPOINT` and `AWS_ALLOW_HTTP` for MinIO and other S3-compatible stores).
    pub fn open(url: &str) -> Result<Self, ArchiveError> {
        let store: Arc<dyn ObjectStore> = if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(ArchiveError::Url(format!(
                    "`{url}` names no bucket (s3://BUCKET/PREFIX)"
                )));
            }
            let s3 = AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .build()
                .map_err(|e| ArchiveError::Url(format!("`{url}`: {e}")))?;
            let prefix = prefix.trim_matches('/');
            if prefix.is_empty() {
                Arc::new(s3)
            } else {
                Arc::new(PrefixStore::new(s3, prefix))
            }
        } else {
            let dir = url.strip_prefix("file://").unwrap_or(url);
            if !dir.starts_with('/') {
                return Err(ArchiveError::Url(format!(
                    "`{url}` is neither file:///ABSOLUTE/DIR nor s3://BUCKET/PREFIX"
                )));
            }
            std::fs::create_dir_all(dir)
                .map_err(|e| ArchiveError::Url(format!("`{url}`: creating {dir}: {e}")))?;
            Arc::new(
                LocalFileSystem::new_with_prefix(dir)
                    .map_err(|e| ArchiveError::Url(format!("`{url}`: {e}")))?,
            )
        };
        Ok(Self {
            store,
            url: url.to_owned(),
        })
    }

    /// An archive over any object store (tests, other backends).
    pub fn with_store(store: Arc<dyn ObjectStore>, url: impl Into<String>) -> Self {
        Self {
            store,
            url: url.into(),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Writes the object `key` whole, replacing any earlier one (a batch written again after a
    /// crash replaces its first object; both the local store and S3 replace atomically).
    pub async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), ArchiveError> {
        self.store
            .put(&Path::from(key), PutPayload::from(bytes))
            .await?;
        Ok(())
    }

    /// The records of object `key`.
    pub async fn records(&self, key: &str) -> Result<Vec<Record>, ArchiveError> {
        let bytes = self.store.get(&Path::from(key)).await?.bytes().await?;
        decode(key, &bytes)
    }

    /// The record of workflow `id` in object `key`.
    pub async fn find(&self, key: &str, id: Uuid) -> Result<Option<Record>, ArchiveError> {
        Ok(self
            .records(key)
            .await?
            .into_iter()
            .find(|r| r.workflow.id == id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_archive_urls_are_checked() {
        let e = Archive::open("relative/dir").unwrap_err().to_string();
        assert!(e.contains("neither file:///"), "{e}");
        let e = Archive::open("s3://").unwrap_err().to_string();
        assert!(e.contains("names no bucket"), "{e}");
    }

    #[test]
    fn retention_archive_objects_round_trip_and_reject_garbage() {
        assert!(decode("k", b"not gzip").is_err());
        assert_eq!(decode("k", &encode(&[])).unwrap(), Vec::new());
    }
}
