//! The container init program: imageapi-server starts it as PID 1 of each container's new
//! namespaces (from a sealed copy, see `actors::container::InitProgram`); it builds the
//! container's root and executes the container's command. It is a binary of its own, a twentieth
//! of the service's size, because each exec maps and relocates the whole program.

fn main() {
    actors::container::run_if_init();
    eprintln!("imageapi-init: imageapi-server starts this program as a container's init; it takes no commands");
    std::process::exit(2);
}
