//! The Process service. TODO: implement.

use crate::State;

pub struct ProcessService {
    #[allow(dead_code)]
    state: State,
}

impl ProcessService {
    pub fn new(state: State) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl proto::v1::process_server::Process for ProcessService {}
