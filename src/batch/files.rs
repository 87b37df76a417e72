//! File bytes on disk (`batch.files_dir`): uploads streamed in from a multipart body, contents
//! streamed out, single lines read at their offset, and output files written line by line.
//! Nothing here holds a whole file in memory. A file is written under a `.part` name and renamed
//! when complete, so a crash never leaves a half file under a real id. The metadata rows are the
//! store's (`store::files`); this module owns only the bytes.

use std::path::{Path, PathBuf};

use axum::extract::Multipart;
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt, BufWriter};

use crate::error::ApiError;

/// Where file `id`'s bytes live. Ids are made by Tollgate (`file-` + hex) and looked up in the
/// store before any path is built, so a client never chooses a path.
pub fn path(dir: &Path, id: &str) -> PathBuf {
    dir.join(id)
}

/// What an upload brought.
pub struct Upload {
    pub bytes: u64,
    pub filename: String,
    pub purpose: Option<String>,
}

/// Receive a multipart upload (`file` and `purpose` fields, in either order) into `id`'s place
/// in `dir`, at most `max` bytes of file; the file is complete under its id when this returns
/// `Ok`. On error nothing is left behind.
pub async fn receive(
    dir: &Path,
    id: &str,
    max: u64,
    mut form: Multipart,
) -> Result<Upload, ApiError> {
    tokio::fs::create_dir_all(dir).await.map_err(|e| {
        tracing::error!(dir = %dir.display(), error = %e, "cannot create batch.files_dir");
        ApiError::Internal
    })?;
    let part = dir.join(format!("{id}.part"));
    let result = receive_into(&part, max, &mut form).await;
    match result {
        Ok(u) => {
            tokio::fs::rename(&part, path(dir, id)).await.map_err(|e| {
                tracing::error!(error = %e, "cannot rename an uploaded file");
                ApiError::Internal
            })?;
            Ok(u)
        }
        Err(e) => {
            let _ = tokio::fs::remove_file(&part).await;
            Err(e)
        }
    }
}

async fn receive_into(part: &Path, max: u64, form: &mut Multipart) -> Result<Upload, ApiError> {
    let bad = |e: axum::extract::multipart::MultipartError| {
        ApiError::invalid(
            format!("the upload is not a valid multipart form: {e}"),
            None,
        )
    };
    let mut up = Upload {
        bytes: 0,
        filename: String::new(),
        purpose: None,
    };
    /// The most a `purpose` field may hold (OpenAI's values are a few characters).
    const MAX_PURPOSE_BYTES: usize = 1024;
    let mut seen_file = false;
    while let Some(mut field) = form.next_field().await.map_err(bad)? {
        match field.name() {
            Some("purpose") => {
                // Read in pieces, bounded: a field is not read whole into memory.
                let mut text = Vec::new();
                while let Some(chunk) = field.chunk().await.map_err(bad)? {
                    if text.len() + chunk.len() > MAX_PURPOSE_BYTES {
                        return Err(ApiError::invalid(
                            format!("the purpose field is longer than {MAX_PURPOSE_BYTES} bytes"),
                            Some("purpose"),
                        ));
                    }
                    text.extend_from_slice(&chunk);
                }
                let text = String::from_utf8_lossy(&text);
                up.purpose = Some(text.chars().take(64).collect());
            }
            Some("file") if !seen_file => {
                seen_file = true;
                up.filename = field
                    .file_name()
                    .unwrap_or("upload.jsonl")
                    .chars()
                    .take(255)
                    .collect();
                let file = tokio::fs::File::create(part).await.map_err(|e| {
                    tracing::error!(error = %e, "cannot create an upload file");
                    ApiError::Internal
                })?;
                let mut out = BufWriter::new(file);
                while let Some(chunk) = field.chunk().await.map_err(bad)? {
                    up.bytes += chunk.len() as u64;
                    if up.bytes > max {
                        return Err(ApiError::BodyTooLarge {
                            limit: usize::try_from(max).unwrap_or(usize::MAX),
                        });
                    }
                    out.write_all(&chunk).await.map_err(io_error)?;
                }
                out.flush().await.map_err(io_error)?;
                out.into_inner().sync_all().await.map_err(io_error)?;
            }
            // Unknown fields are read past (bounded by the body's own limit).
            _ => while field.chunk().await.map_err(bad)?.is_some() {},
        }
    }
    if !seen_file {
        return Err(ApiError::invalid(
            "the upload has no 'file' field",
            Some("file"),
        ));
    }
    Ok(up)
}

fn io_error(e: std::io::Error) -> ApiError {
    tracing::error!(error = %e, "batch file I/O failed");
    ApiError::Internal
}

/// `len` bytes at `offset` of the file at `p` (one input line).
pub async fn read_at(p: &Path, offset: u64, len: usize) -> std::io::Result<Bytes> {
    let mut f = tokio::fs::File::open(p).await?;
    f.seek(std::io::SeekFrom::Start(offset)).await?;
    let mut buf = vec![0u8; len];
    f.read_exact(&mut buf).await?;
    Ok(Bytes::from(buf))
}

/// An output or error file being written, line by line.
pub struct LineFile {
    part: PathBuf,
    out: BufWriter<tokio::fs::File>,
    pub bytes: u64,
    pub lines: u64,
}

impl LineFile {
    pub async fn create(dir: &Path, id: &str) -> std::io::Result<LineFile> {
        tokio::fs::create_dir_all(dir).await?;
        let part = dir.join(format!("{id}.part"));
        let out = BufWriter::new(tokio::fs::File::create(&part).await?);
        Ok(LineFile {
            part,
            out,
            bytes: 0,
            lines: 0,
        })
    }

    pub async fn line(&mut self, text: &str) -> std::io::Result<()> {
        self.out.write_all(text.as_bytes()).await?;
        self.out.write_all(b"\n").await?;
        self.bytes += text.len() as u64 + 1;
        self.lines += 1;
        Ok(())
    }

    /// Flush, sync and move the file to its id's place.
    pub async fn finish(mut self, dir: &Path, id: &str) -> std::io::Result<()> {
        self.out.flush().await?;
        self.out.get_ref().sync_all().await?;
        tokio::fs::rename(&self.part, path(dir, id)).await
    }

    /// Throw the partial file away.
    pub async fn discard(self) {
        let _ = tokio::fs::remove_file(&self.part).await;
    }
}
