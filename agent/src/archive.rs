//! The Archive service. TODO: implement.

use crate::State;

pub struct ArchiveService {
    #[allow(dead_code)]
    state: State,
}

impl ArchiveService {
    pub fn new(state: State) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl proto::v1::archive_server::Archive for ArchiveService {}
