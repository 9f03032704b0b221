//! A container's lifecycle: one table says what each state allows. The container actor is the
//! one that applies it, so every decision about a container is taken in one place, in order.

use super::wire::ContainerState;

/// What a client asks of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `PATCH state=running`.
    Start,
    /// `PATCH state=exited`.
    Stop,
    /// `PATCH state=paused`.
    Pause,
    /// `DELETE`.
    Delete,
    /// `DELETE force=true`.
    ForceDelete,
}

impl Action {
    /// The action a `PATCH state=` asks for; `None` for a state a client cannot ask for.
    pub fn of_wanted_state(state: ContainerState) -> Option<Action> {
        match state {
            ContainerState::Running => Some(Action::Start),
            ContainerState::Exited => Some(Action::Stop),
            ContainerState::Paused => Some(Action::Pause),
            _ => None,
        }
    }
}

/// What the container actor does for an allowed action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing to do: the container is there already.
    Stay,
    Launch,
    Thaw,
    /// Send the stop signal (thawing a paused init first), then `stopping`.
    RequestStop,
    Freeze,
    /// Nothing runs: the container may go.
    Remove,
    /// Kill the init (thawing it first), then go.
    KillAndRemove,
}

/// Why an action is refused in a state: a hint for the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused(pub &'static str);

const WAIT_FOR_EXIT: Refused = Refused("wait until it has exited");
const NOT_FROM_HERE: Refused = Refused("that change is not possible from this state");
const STOP_FIRST: Refused = Refused("stop it first (PATCH state=exited) or delete with force=true");

/// The table: what `action` does in `state`.
pub fn transition(state: ContainerState, action: Action) -> Result<Step, Refused> {
    use Action::*;
    use ContainerState::*;
    match (state, action) {
        (Running, Start) | (Paused, Pause) | (Exited | Stopping | Dead, Stop) => Ok(Step::Stay),
        (Created | Exited | Dead, Start) => Ok(Step::Launch),
        (Paused, Start) => Ok(Step::Thaw),
        (Running | Paused, Stop) => Ok(Step::RequestStop),
        (Running, Pause) => Ok(Step::Freeze),
        (Created | Exited | Dead, Delete | ForceDelete) => Ok(Step::Remove),
        (Running | Stopping | Paused, ForceDelete) => Ok(Step::KillAndRemove),
        (Running | Stopping | Paused, Delete) => Err(STOP_FIRST),
        (Stopping, Start | Pause) => Err(WAIT_FOR_EXIT),
        (Created, Stop | Pause) | (Exited | Dead, Pause) => Err(NOT_FROM_HERE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_container_with_no_init_goes_without_force() {
        for state in ContainerState::ALL {
            let runs = matches!(
                state,
                ContainerState::Running | ContainerState::Stopping | ContainerState::Paused
            );
            assert_eq!(
                transition(state, Action::Delete).is_err(),
                runs,
                "{state:?}"
            );
            assert!(transition(state, Action::ForceDelete).is_ok(), "{state:?}");
        }
    }

    #[test]
    fn a_stopping_container_only_finishes_stopping() {
        for action in [Action::Start, Action::Pause, Action::Delete] {
            assert!(transition(ContainerState::Stopping, action).is_err());
        }
        assert_eq!(
            transition(ContainerState::Stopping, Action::Stop),
            Ok(Step::Stay)
        );
    }

    #[test]
    fn a_paused_container_resumes_or_stops() {
        assert_eq!(
            transition(ContainerState::Paused, Action::Start),
            Ok(Step::Thaw)
        );
        assert_eq!(
            transition(ContainerState::Paused, Action::Stop),
            Ok(Step::RequestStop)
        );
    }
}
