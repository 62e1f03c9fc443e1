//! The Git service. TODO: implement.

use crate::State;

pub struct GitService {
    #[allow(dead_code)]
    state: State,
}

impl GitService {
    pub fn new(state: State) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl proto::v1::git_server::Git for GitService {}
