//! The Process service: one-shot commands, PTY sessions that outlive their
//! clients, and named background processes.

pub mod spawn;

use crate::State;

pub use spawn::command;

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
