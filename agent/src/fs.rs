//! The Filesystem service. TODO: implement.

use crate::State;

pub struct FsService {
    #[allow(dead_code)]
    state: State,
}

impl FsService {
    pub fn new(state: State) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl proto::v1::filesystem_server::Filesystem for FsService {}
