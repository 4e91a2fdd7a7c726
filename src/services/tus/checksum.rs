//! The checksum extension: `Upload-Checksum`'s algorithms, digests and their hashers.

use sha2::{Digest, Sha256};

use super::TusError;

/// A checksum algorithm of the checksum extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChecksumAlgorithm {
    Sha1,
    Md5,
    Sha256,
}

impl ChecksumAlgorithm {
    /// What `Tus-Checksum-Algorithm` lists.
    pub(crate) const ALL: &'static str = "sha1,md5,sha256";

    pub(crate) fn parse(name: &str) -> Result<Self, TusError> {
        match name.trim().to_ascii_lowercase().as_str() {
            "sha1" => Ok(ChecksumAlgorithm::Sha1),
            "md5" => Ok(ChecksumAlgorithm::Md5),
            "sha256" => Ok(ChecksumAlgorithm::Sha256),
            other => Err(TusError::UnsupportedChecksum(other.to_string())),
        }
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            ChecksumAlgorithm::Sha1 => "sha1",
            ChecksumAlgorithm::Md5 => "md5",
            ChecksumAlgorithm::Sha256 => "sha256",
        }
    }

    pub(super) fn hasher(self) -> ChecksumHasher {
        match self {
            ChecksumAlgorithm::Sha1 => ChecksumHasher::Sha1(sha1::Sha1::new()),
            ChecksumAlgorithm::Md5 => ChecksumHasher::Md5(md5::Md5::new()),
            ChecksumAlgorithm::Sha256 => ChecksumHasher::Sha256(Sha256::new()),
        }
    }
}

/// A request's `Upload-Checksum`: the algorithm and the digest it must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Checksum {
    pub algorithm: ChecksumAlgorithm,
    pub digest: Vec<u8>,
}

pub(super) enum ChecksumHasher {
    Sha1(sha1::Sha1),
    Md5(md5::Md5),
    Sha256(Sha256),
}

impl ChecksumHasher {
    pub(super) fn update(&mut self, data: &[u8]) {
        match self {
            ChecksumHasher::Sha1(h) => h.update(data),
            ChecksumHasher::Md5(h) => h.update(data),
            ChecksumHasher::Sha256(h) => h.update(data),
        }
    }

    pub(super) fn finalize(self) -> Vec<u8> {
        match self {
            ChecksumHasher::Sha1(h) => h.finalize().to_vec(),
            ChecksumHasher::Md5(h) => h.finalize().to_vec(),
            ChecksumHasher::Sha256(h) => h.finalize().to_vec(),
        }
    }
}
